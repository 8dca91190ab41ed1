"""The demo host generator: Docker's on-disk layout, and a manifest that matches what it wrote.

The e2e tests trust the manifest as the truth, so here every written entry is read back with an
independent parser (plain ``json`` and a regex for Envoy's default format) and compared with it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.demohost import write_host
from cli.demoruntime import DOCKER_SPLIT_BYTES, docker_entry, rfc3339nano

NOW = datetime(2026, 11, 28, 15, 7, 30, 123456, tzinfo=UTC)
ENVOY = re.compile(
    r'^\[(?P<start>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(?P<method>\S+) (?P<path>\S+) '
    r'(?P<protocol>\S+)" (?P<code>\d+) (?P<flags>\S+) (?P<rx>\d+) (?P<tx>\d+) (?P<dur>\d+) '
    r'(?P<ust>\d+|-) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<rid>[^"]*)" "(?P<auth>[^"]*)" '
    r'"(?P<up>[^"]*)"$'
)
DOCKER_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def _none(value: str) -> str | None:
    return None if value == "-" else value


def _read_entries(manifest) -> dict[str, list[dict]]:
    out = {}
    for c in manifest.containers:
        with open(c.log_path, encoding="utf-8") as f:
            out[c.id] = [json.loads(line) for line in f]
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    return write_host(tmp_path_factory.mktemp("host") / "containers", seed=3, now=NOW)


def test_same_seed_and_time_write_the_same_bytes(tmp_path: Path) -> None:
    a = write_host(tmp_path / "a", seed=9, now=NOW, requests=50)
    b = write_host(tmp_path / "b", seed=9, now=NOW, requests=50)
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*-json.log"))
    files_b = sorted(p.relative_to(b.root) for p in b.root.rglob("*-json.log"))
    assert files_a == files_b
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes()
    c = write_host(tmp_path / "c", seed=10, now=NOW, requests=50)
    assert c.access != a.access


def test_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError):
        write_host(tmp_path, now=NOW)


def test_docker_layout_and_ecs_metadata(host) -> None:
    dirs = sorted(p for p in host.root.iterdir())
    assert len(dirs) == len(host.containers) == 10
    for c in host.containers:
        assert c.log_path == host.root / c.id / f"{c.id}-json.log"
        assert re.fullmatch(r"[0-9a-f]{64}", c.id)
        config = json.loads((host.root / c.id / "config.v2.json").read_text())
        assert config["ID"] == c.id and config["Name"] == f"/{c.name}"
        labels = config["Config"]["Labels"]
        assert labels["com.amazonaws.ecs.task-definition-family"] == c.service
        assert labels["com.amazonaws.ecs.container-name"] == c.container_name  # the column
        assert labels["com.amazonaws.ecs.task-arn"].startswith("arn:aws:ecs:")
        for key in ("cluster", "container-name", "task-definition-version"):
            assert labels[f"com.amazonaws.ecs.{key}"]
        image = config["Config"]["Image"]
        assert image.startswith("envoyproxy/envoy:v1.31") == (c.role == "envoy")
    roles = Counter((c.service, c.role) for c in host.containers)
    assert set(roles.values()) == {1} and len({s for s, _ in roles}) == 5


def test_every_entry_is_docker_json_and_matches_the_manifest(host) -> None:
    entries = _read_entries(host)
    assert sum(len(e) for e in entries.values()) == host.docker_entries
    access_rows, log_rows = [], []
    names = {c.id: c for c in host.containers}
    for cid, items in entries.items():
        c = names[cid]
        times = [e["time"] for e in items]
        assert all(DOCKER_TIME.match(t) for t in times)
        assert times == sorted(times, key=lambda t: datetime.fromisoformat(t[:26].rstrip("Z")))
        pending = ""
        for e in items:
            assert set(e) == {"log", "stream", "time"} and e["stream"] in ("stdout", "stderr")
            if not e["log"].endswith("\n"):  # a 16 KiB part; the rest follows
                assert len(e["log"].encode()) == DOCKER_SPLIT_BYTES
                pending += e["log"]
                continue
            line, pending = pending + e["log"][:-1], ""
            stamp = datetime.fromisoformat(e["time"][:23] + "+00:00")
            m = ENVOY.match(line) if c.role == "envoy" and e["stream"] == "stdout" else None
            if m:
                start = datetime.fromisoformat(m["start"].replace("Z", "+00:00"))
                assert start == stamp, "Envoy START_TIME and the runtime time disagree"
                access_rows.append(
                    {
                        "timestamp": start, "service": c.service, "container_id": cid,
                        "container_name": c.container_name, "method": m["method"],
                        "path": m["path"], "protocol": m["protocol"],
                        "response_code": int(m["code"]),
                        "response_flags": m["flags"], "bytes_received": int(m["rx"]),
                        "bytes_sent": int(m["tx"]), "duration_ms": int(m["dur"]),
                        "upstream_service_time_ms": None if m["ust"] == "-" else int(m["ust"]),
                        "x_forwarded_for": _none(m["xff"]), "user_agent": m["ua"],
                        "request_id": m["rid"], "authority": m["auth"],
                        "upstream_host": _none(m["up"]),
                    }
                )  # fmt: skip
            else:
                log_rows.append(
                    {
                        "timestamp": stamp, "service": c.service, "container_id": cid,
                        "container_name": c.container_name, "stream": e["stream"], "message": line,
                    }
                )  # fmt: skip
        assert pending == ""

    def key(row: dict) -> str:
        return json.dumps(row, default=str, sort_keys=True)

    assert sorted(map(key, access_rows)) == sorted(map(key, host.access))
    assert sorted(map(key, log_rows)) == sorted(map(key, host.logs))


def test_traffic_is_realistic(host) -> None:
    access = host.access
    codes = Counter(r["response_code"] for r in access)
    share_5xx = sum(n for code, n in codes.items() if 500 <= code <= 599) / len(access)
    assert 0.01 <= share_5xx <= 0.10
    flags = {r["response_flags"] for r in access}
    assert {"UF", "UH", "UF,URX", "UT", "UO", "NR", "DC", "-"} <= flags
    assert codes[0] > 0 and all(
        r["response_flags"] == "DC" for r in access if r["response_code"] == 0
    )
    assert any((r["upstream_host"] or "").startswith("[2600:") for r in access)
    assert any(r["x_forwarded_for"] is None for r in access)
    assert any(r["upstream_service_time_ms"] is None for r in access)
    assert any("?" in r["path"] and "&" in r["path"] for r in access)
    # x-request-id is shared across hops: the same id in several services' sidecars.
    services_by_id: dict[str, set[str]] = {}
    for r in access:
        services_by_id.setdefault(r["request_id"], set()).add(r["service"])
    assert any(len(s) >= 3 for s in services_by_id.values())
    assert all(n == 1 for n in Counter((r["service"], r["request_id"]) for r in access).values())
    # The incident makes one route of recipe the top error.
    (path, code, _), count = host.errors("recipe").most_common(1)[0]
    assert path == "/api/v1/recipes/feed" and code >= 500 and count >= 10
    times = [r["timestamp"] for r in access]
    assert NOW - timedelta(hours=2) <= min(times) and max(times) < NOW
    streams = Counter((r["stream"], r["message"].startswith("Traceback")) for r in host.logs)
    assert streams[("stderr", True)] > 0 and streams[("stdout", False)] > 0
    assert any(r["message"].startswith("{") for r in host.logs)  # JSON app lines


def test_counts_and_summary(host) -> None:
    counts = host.counts()
    assert set(counts["envoy_access"]) == set(host.services)
    assert sum(counts["envoy_access"].values()) == len(host.access)
    summary = json.loads(json.dumps(host.summary()))
    assert summary["containers"] == 10
    assert sum(summary["errors_5xx"].values()) == sum(host.errors().values())


def test_rfc3339nano_trims_like_go() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)
    assert rfc3339nano(t) == "2026-01-02T03:04:05.12Z"
    assert rfc3339nano(t, 7) == "2026-01-02T03:04:05.120000007Z"
    assert rfc3339nano(t.replace(microsecond=0)) == "2026-01-02T03:04:05Z"


def test_docker_entry_escapes_html_like_go() -> None:
    line = docker_entry("a<b>&c \u00e9\n", "stdout", "2026-01-02T03:04:05Z")
    assert line == (
        '{"log":"a\\u003cb\\u003e\\u0026c \u00e9\\n","stream":"stdout",'
        '"time":"2026-01-02T03:04:05Z"}\n'
    )
    assert json.loads(line)["log"] == "a<b>&c \u00e9\n"


def test_rotation_shifts_files_like_dockerd(tmp_path: Path) -> None:
    from cli.demohost import HostWriter

    manifest = write_host(tmp_path / "c", seed=1, now=NOW, requests=10, long_line=False)
    c = manifest.containers[0]
    first = c.log_path.read_bytes()
    writer = HostWriter.resume(manifest)
    assert writer.rotate(c) == c.log_path.with_name(c.log_path.name + ".1")
    assert c.log_path.read_bytes() == b""
    c.log_path.write_bytes(b"second\n")
    writer.rotate(c)
    assert c.log_path.with_name(c.log_path.name + ".2").read_bytes() == first
    assert c.log_path.with_name(c.log_path.name + ".1").read_bytes() == b"second\n"


def test_cri_layout_is_kubelets(tmp_path: Path) -> None:
    manifest = write_host(tmp_path / "pods", seed=2, now=NOW, requests=30, layout="cri")
    for c in manifest.containers:
        pod_dir = c.log_path.parent.parent.name
        namespace, pod, uid = pod_dir.split("_")
        assert namespace == "shop"
        assert c.log_path.name == "0.log" and c.id == f"{uid}/{c.name}"
        assert re.fullmatch(rf"{c.service}-[bcdfghjklmnpqrstvwxz2456789]{{10}}-[a-z0-9]{{5}}", pod)
        for line in c.log_path.read_text().splitlines():
            assert re.match(r"^\S+Z (stdout|stderr) [PF] ", line), line
    with pytest.raises(ValueError, match="unknown layout"):
        write_host(tmp_path / "x", layout="podman")
