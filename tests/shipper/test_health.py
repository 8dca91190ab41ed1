"""The shipper's ``/healthz``: alive while its event loop ticks, 503 once the loop is stuck."""

from __future__ import annotations

import errno
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shipper import metrics as metrics_mod
from shipper.config import ConfigError, Endpoint, parse_endpoint
from shipper.metrics import Metrics
from tests.shipper.shipping import empty_root
from tests.support import procs

REPO = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_follows_the_event_loop_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics()
    m.lines_read.labels("svc").inc(2)
    server = m.serve(Endpoint("127.0.0.1", 0))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        m.tick()
        assert get(base + "/healthz") == (200, "ok\n")
        status, text = get(base + "/metrics")
        assert status == 200 and 'logq_shipper_lines_read_total{service="svc"} 2.0' in text
        # No tick for longer than STALL_SECONDS: the loop is stuck (the server thread is not).
        monkeypatch.setattr(metrics_mod, "STALL_SECONDS", 0.0)
        m.last_tick -= 5
        status, text = get(base + "/healthz")
        assert status == 503 and text.startswith("event loop stalled for 5s")
        assert get(base + "/livez")[0] == 503
        m.tick()
        monkeypatch.setattr(metrics_mod, "STALL_SECONDS", 30.0)
        assert get(base + "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_fails_while_checkpoints_cannot_be_written() -> None:
    """A full or read-only --state-dir is the operator's to fix: /healthz names it, and the
    failure counter exists at 0 before the first failure (increase() alerts see the first)."""
    m = Metrics()
    server = m.serve(Endpoint("127.0.0.1", 0))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        m.tick()
        assert "logq_shipper_checkpoint_write_failures_total 0.0" in get(base + "/metrics")[1]
        m.set_problem("checkpoints", "cannot write checkpoints to /s: No space left on device")
        assert get(base + "/healthz") == (
            503,
            "cannot write checkpoints to /s: No space left on device\n",
        )
        # A restart would not free the disk: the liveness endpoint stays 200.
        assert get(base + "/livez") == (200, "ok\n")
        m.set_problem("checkpoints", None)
        assert get(base + "/healthz") == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_listen_without_a_host_answers_on_ipv4_and_ipv6() -> None:
    """``--metrics-listen :PORT`` (the deploy manifests): every address. ``0.0.0.0`` is IPv4
    only, which an IPv6-only cluster's Prometheus and probes cannot reach."""
    assert parse_endpoint(":9881", what="--metrics-listen address", listen=True) == (
        Endpoint("", 9881)
    )
    with pytest.raises(ConfigError, match="no host"):
        parse_endpoint(":24224")  # an aggregator to send to needs one
    m = Metrics()
    server = m.serve(Endpoint("", 0))
    port = server.server_address[1]
    try:
        m.tick()
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        if socket.has_ipv6 and server.address_family == socket.AF_INET6:
            assert get(f"http://[::1]:{port}/healthz") == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_listen_without_a_host_is_ipv4_on_a_host_without_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel booted with ``ipv6.disable=1`` refuses an IPv6 socket: listen on IPv4."""

    def no_ipv6(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(metrics_mod._DualStackServer, "__init__", no_ipv6)
    m = Metrics()
    server = m.serve(Endpoint("", 0))
    try:
        m.tick()
        assert server.address_family == socket.AF_INET
        assert get(f"http://127.0.0.1:{server.server_address[1]}/healthz") == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()


def _dual_stack() -> bool:
    """Whether this host has IPv6: ``--metrics-listen :PORT`` then listens on both families
    (else on IPv4 alone)."""
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        ("127.0.0.1:0", ["http://127.0.0.1:{port}/metrics"]),
        (":0", ["http://0.0.0.0:{port}/metrics", "http://[::]:{port}/metrics"]),
    ],
)
def test_metrics_listen_port_0_takes_a_free_port_and_says_which(
    tmp_path: Path, listen: str, said: list[str]
) -> None:
    """``--metrics-listen HOST:0`` was refused ("port 0 is not in 1-65535"), where the
    aggregator's takes a free port and says which in its ``metrics on`` line. The shipper's
    says it too, at any ``--log-level`` (a log line would be hidden by ``error``): the URL
    answers, on one port for both families with ``:0``, as the aggregator's."""
    root = str(empty_root(tmp_path))
    log = tmp_path / "shipper.log"
    cmd = [
        *(sys.executable, "-m", "shipper.daemon", "--aggregator", "127.0.0.1:1"),
        *("--docker-root", root, "--cri-root", root, "--state-dir", str(tmp_path / "state")),
        *("--metrics-listen", listen, "--log-level", "error"),
    ]
    proc = procs.start_group(cmd, log, cwd=REPO)
    try:
        procs.wait_until(lambda: "metrics on" in log.read_text(), 60, "metrics line", proc, log)
        text = log.read_text()
        port = re.search(r"metrics on http://[^ ]+:(\d+)/metrics", text).group(1)  # type: ignore[union-attr]
        urls = said if _dual_stack() else said[:1]
        line = "metrics on " + " and ".join(url.format(port=port) for url in urls)
        assert text.splitlines() == [line]  # --log-level error holds: no other line
        assert get(f"http://127.0.0.1:{port}/livez") == (200, "ok\n")
    finally:
        assert procs.stop_group(proc, timeout=30, sig=signal.SIGTERM) == 0, log.read_text()
