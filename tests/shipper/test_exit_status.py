"""logq-shipper's exit statuses: 2 when the command must change (a usage error), 1 when the host
refuses what a start needs, the command being right (a port in use, a ``--state-dir`` that
cannot be used or that another shipper holds). Both said in one line with what to do; the
state dir and the metrics port exited 2, as if the command were wrong."""

from __future__ import annotations

import socket
from pathlib import Path

from shipper.checkpoint import Registry
from shipper.errors import listen_error
from tests.shipper.shipping import empty_root
from tests.shipper.test_discovery_metadata import run_daemon


def _refused(tmp_path: Path, *args: str) -> tuple[int, str]:
    """The exit status and last stderr line of a ``--once`` shipper given ``args``."""
    root = str(empty_root(tmp_path))
    done = run_daemon(
        "--aggregator", "127.0.0.1:1", "--docker-root", root, "--cri-root", root, *args
    )
    assert "Traceback" not in done.stderr
    return done.returncode, done.stderr.strip().splitlines()[-1]


def test_a_state_dir_the_host_refuses_exits_1(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    state = tmp_path / "afile" / "state"
    status, last = _refused(tmp_path, "--state-dir", str(state))
    assert status == 1, last
    assert last.startswith(f"logq-shipper: --state-dir {state} is not a directory"), last
    assert "point --state-dir at a directory" in last


def test_a_state_dir_another_shipper_holds_exits_1(tmp_path: Path) -> None:
    held = Registry(tmp_path / "state")
    try:
        status, last = _refused(tmp_path, "--state-dir", str(tmp_path / "state"))
    finally:
        held.close()
    assert status == 1, last
    assert "is in use by another logq-shipper" in last


def test_a_metrics_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ("--state-dir", str(tmp_path / "state"), "--metrics-listen", f"127.0.0.1:{port}")
        status, last = _refused(tmp_path, *args)
    assert status == 1, last
    assert last.startswith(f"logq-shipper: cannot listen on 127.0.0.1:{port} (--metrics-listen)")
    assert "another process listens there: stop it or pick another port" in last, last


def test_a_metrics_address_not_on_this_host_says_so(tmp_path: Path) -> None:
    """A --metrics-listen address this host does not have (TEST-NET-1, RFC 5737: on no host)
    was answered "stop the process that listens there or pick another --metrics-listen", as if
    its port were taken: the aggregator's hints (``listen_error``) now say what is wrong."""
    address = "192.0.2.1:9110"
    status, last = _refused(
        tmp_path, "--state-dir", str(tmp_path / "s"), "--metrics-listen", address
    )
    assert status == 1, last
    assert last.startswith(f"logq-shipper: cannot listen on {address} (--metrics-listen): "), last
    assert "this host has no such address: use 127.0.0.1, :PORT" in last, last
    assert "stop the process that listens there" not in last, last


def test_a_host_name_that_does_not_resolve_says_so() -> None:
    """The hint both daemons give for a --listen / --metrics-listen host name that does not
    resolve (a typo): not "check the address", nor the shipper's old "stop the process that
    listens there". Built from the error getaddrinfo raises, no resolver asked."""
    failed = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    said = str(listen_error("--metrics-listen", "metrics.local:9110", failed))
    assert said == (
        "cannot listen on metrics.local:9110 (--metrics-listen): Name or service not known; "
        "the host name does not resolve: use an IP address or a name this host knows"
    )


def test_a_bad_flag_value_still_exits_2(tmp_path: Path) -> None:
    status, last = _refused(tmp_path, "--state-dir", str(tmp_path / "s"), "--batch-lines", "0")
    assert status == 2, last
    assert last.endswith("--batch-lines must be at least 1; got 0"), last
