"""Writing fake hosts for tests: Docker json-file containers and CRI pod logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def ts(i: int) -> str:
    t = T0 + timedelta(milliseconds=i)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}123Z"


def docker_line(text: str, i: int = 0, stream: str = "stdout", nl: bool = True) -> bytes:
    doc = {"log": text + ("\n" if nl else ""), "stream": stream, "time": ts(i)}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def make_container(
    root: Path,
    cid: str,
    name: str,
    labels: dict[str, str] | None = None,
    image: str = "app:1",
    lines: list[str] | None = None,
) -> Path:
    """``<root>/<cid>/config.v2.json`` and ``<cid>-json.log``; returns the log path."""
    d = root / cid
    d.mkdir(parents=True, exist_ok=True)
    config = {"ID": cid, "Name": "/" + name, "Config": {"Image": image, "Labels": labels or {}}}
    (d / "config.v2.json").write_text(json.dumps(config))
    path = d / f"{cid}-json.log"
    with open(path, "ab") as f:
        for i, text in enumerate(lines or []):
            f.write(docker_line(text, i))
    return path


def cri_line(text: str, i: int = 0, stream: str = "stdout", tag: str = "F") -> bytes:
    return f"{ts(i)} {stream} {tag} {text}\n".encode()
