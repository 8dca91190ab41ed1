"""How container runtimes write log files, reproduced for the demo host.

Docker's json-file driver: one JSON object per line (``log``, ``stream``, ``time``), Go's encoder
escaping ``<``, ``>`` and ``&``, ``time`` in ``RFC3339Nano`` (trailing zeros trimmed), messages
over 16 KiB split into entries of which only the last ends in ``\\n``; metadata in
``config.v2.json``. CRI (containerd, CRI-O, read by the kubelet): ``<time> <stream> <P|F> <text>``,
``P`` for a part that more parts follow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: Docker's json-file driver (and containerd's CRI logger) split messages longer than this.
DOCKER_SPLIT_BYTES = 16 * 1024


def rfc3339nano(ts: datetime, nanos: int = 0) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: up to 9 fraction digits, trailing zeros trimmed."""
    ts = ts.astimezone(UTC)
    frac = f"{ts.microsecond * 1000 + nanos:09d}".rstrip("0")
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def docker_entry(log: str, stream: str, time: str) -> str:
    """One json-file line as dockerd writes it (Go's encoder escapes ``<``, ``>``, ``&``)."""
    doc = {"log": log, "stream": stream, "time": time}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text + "\n"


def cri_entry(part: str, stream: str, time: str, last: bool) -> str:
    """One CRI log line: ``<RFC3339Nano> <stream> <P|F> <text>`` (``P``: more parts follow)."""
    text = part[:-1] if last and part.endswith("\n") else part
    tag = "F" if last else "P"
    return f"{time} {stream} {tag} {text}\n"


def split_parts(text: str) -> list[str]:
    """The json-file entries of one line: 16 KiB pieces, only the last ending in ``\\n``."""
    data = text.encode("utf-8") + b"\n"
    if len(data) <= DOCKER_SPLIT_BYTES:
        return [data.decode("utf-8")]
    parts, start = [], 0
    while start < len(data):
        end = min(start + DOCKER_SPLIT_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never cut inside a character
            end -= 1
        parts.append(data[start:end].decode("utf-8"))
        start = end
    return parts


def docker_config(
    *,
    cid: str,
    name: str,
    image: str,
    role: str,
    labels: dict[str, str],
    started: datetime,
    log_path: Path,
    pid: int,
    image_id: str,
    env: list[str],
) -> dict[str, Any]:
    """The part of dockerd's ``config.v2.json`` a log shipper reads (and a little context)."""
    envoy = role == "envoy"
    return {
        "ID": cid,
        "Created": rfc3339nano(started - timedelta(seconds=2)),
        "Path": "/docker-entrypoint.sh" if envoy else "python",
        "Args": ["envoy", "-c", "/etc/envoy/envoy.yaml"] if envoy else ["-m", "app"],
        "State": {"Running": True, "Pid": pid, "ExitCode": 0, "StartedAt": rfc3339nano(started)},
        "Image": image_id,
        "Name": f"/{name}",
        "Driver": "overlay2",
        "LogPath": str(log_path),
        "Config": {"Hostname": cid[:12], "Image": image, "Env": env, "Labels": labels},
        "HostConfig": {
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "50m", "max-file": "5"}}
        },
    }
