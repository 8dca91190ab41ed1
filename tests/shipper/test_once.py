"""End to end through the real ``logq-shipper`` program in ``--once`` mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import wire
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver, free_port
from tests.shipper.shipping import empty_root

pytestmark = pytest.mark.integration


def run_shipper(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper.daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_once_ships_every_line_with_metadata(tmp_path: Path, receiver: Receiver) -> None:
    root = tmp_path / "containers"
    envoy = [
        f'[2026-11-28T12:00:00.{i:03d}Z] "GET /r/{i} HTTP/1.1" 200 - 0 5 1 1 "-" "ua" '
        f'"id{i}" "svc" "10.0.0.1:80"'
        for i in range(500)
    ]
    make_container(
        root,
        "a" * 64,
        "recipe-envoy",
        labels={"com.amazonaws.ecs.task-definition-family": "recipe", "logq.format": "envoy"},
        image="envoyproxy/envoy:v1.31",
        lines=envoy,
    )
    make_container(
        root,
        "b" * 64,
        "billing-app",
        labels={"logq.service": "billing"},
        lines=[f"app line {i}" for i in range(300)],
    )
    res = run_shipper(
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--state-dir",
        str(tmp_path / "state"),
        "--once",
        "--cri-root",
        str(empty_root(tmp_path)),
        "--hostname",
        "host-1",
        "--batch-lines",
        "128",
    )
    assert res.returncode == 0, res.stderr
    recs = [r for _, _, r in receiver.records]
    assert len(recs) == 800
    by_service: dict[str, list[dict]] = {}
    for tag, _, r in receiver.records:
        assert tag == f"logq.{r['service']}"
        by_service.setdefault(r["service"], []).append(r)
    assert [r["log"] for r in by_service["recipe"]] == envoy
    assert [r["log"] for r in by_service["billing"]] == [f"app line {i}" for i in range(300)]
    first = by_service["recipe"][0]
    assert first[wire.KEY_CONTAINER_ID] == "a" * 64
    assert first[wire.KEY_CONTAINER_NAME] == "recipe-envoy"
    assert first[wire.KEY_IMAGE] == "envoyproxy/envoy:v1.31"
    assert first[wire.KEY_HOST] == "host-1"
    assert first[wire.KEY_FORMAT] == "envoy"
    assert first[wire.KEY_STREAM] == "stdout"
    assert first[wire.KEY_TIME] == "2026-11-28T12:00:00.000000123Z"
    assert "format" not in by_service["billing"][0]
    offsets = [r["offset"] for r in by_service["recipe"]]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    log_path = root / ("a" * 64) / f"{'a' * 64}-json.log"
    assert offsets[-1] == log_path.stat().st_size
    # Every message asked for an ack.
    assert all(o.get("chunk") for o in receiver.options)

    # A second run with the same state ships nothing again.
    res = run_shipper(
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(root),
        "--state-dir",
        str(tmp_path / "state"),
        "--once",
        "--cri-root",
        str(empty_root(tmp_path)),
    )
    assert res.returncode == 0, res.stderr
    assert len(receiver.records) == 800 and receiver.duplicates == 0


@pytest.mark.parametrize("key", ["s3cret-fluentd", "0123456789abcdef"])
def test_a_short_shared_key_is_warned_about_once_and_still_used(tmp_path: Path, key: str) -> None:
    """A short key is accepted (Fluentd setups share it with logq) but said to be weak at start,
    with how to make a strong one and never the key itself; a 16-character one is not."""
    receiver = Receiver(shared_key=key)
    try:
        root = tmp_path / "containers"
        make_container(root, "d" * 64, "web", lines=["hello"])
        res = run_shipper(
            *("--aggregator", receiver.address, "--shared-key", key),
            *("--docker-root", str(root), "--cri-root", str(empty_root(tmp_path))),
            *("--state-dir", str(tmp_path / "state"), "--once"),
        )
    finally:
        receiver.close()
    assert res.returncode == 0, res.stderr
    assert [r["log"] for _, _, r in receiver.records] == ["hello"]
    weak = [line for line in res.stderr.splitlines() if "openssl rand -hex 32" in line]
    if len(key) >= 16:
        assert weak == [], res.stderr
        return
    assert len(weak) == 1 and "level=warning" in weak[0], res.stderr
    assert f"{len(key)} characters" in weak[0] and key not in weak[0]


def test_once_fails_clearly_when_no_aggregator(tmp_path: Path) -> None:
    root = tmp_path / "containers"
    make_container(root, "c" * 64, "web", lines=["hello"])
    port = free_port()
    res = run_shipper(
        "--aggregator",
        f"127.0.0.1:{port}",
        "--docker-root",
        str(root),
        "--state-dir",
        str(tmp_path / "state"),
        "--once",
        "--retry-timeout",
        "1.5",
    )
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("logq-shipper: cannot reach aggregator 127.0.0.1:")
    assert "connection refused; is logq-aggregator running?" in last


def test_once_with_dns_down_names_dns_in_its_error(tmp_path: Path) -> None:
    """No aggregator name resolves (``.invalid`` never does, and fails at once): the last
    line says so and where to look, not "cannot reach aggregator" -- the aggregator may be
    up, it is the name or DNS that is wrong."""
    root = tmp_path / "containers"
    make_container(root, "c" * 64, "web", lines=["hello"])
    res = run_shipper(
        *("--aggregator", "name.invalid:24224", "--docker-root", str(root)),
        *("--state-dir", str(tmp_path / "state"), "--once", "--retry-timeout", "1.5"),
    )
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "logq-shipper: could not resolve aggregator name(s) name.invalid:24224 (tried for 1.5 s): "
    ), last
    assert last.endswith("; check DNS or --aggregator"), last
    assert "cannot reach" not in last


def test_once_cri_and_plain_files_with_gzip(tmp_path: Path, receiver: Receiver) -> None:
    from tests.shipper.hostgen import cri_line

    cdir = tmp_path / "pods" / "shop_checkout-5d8f7c9b6d-x2x7k_0f1e-22" / "app"
    cdir.mkdir(parents=True)
    (cdir / "0.log").write_bytes(
        cri_line("hello ", 0, tag="P") + cri_line("world", 1) + cri_line("oops", 2, "stderr")
    )
    plain = tmp_path / "var" / "batch.log"
    plain.parent.mkdir()
    plain.write_bytes(b"plain one\nplain two\nno newline yet")
    res = run_shipper(
        "--aggregator",
        receiver.address,
        "--docker-root",
        str(empty_root(tmp_path)),
        "--cri-root",
        str(tmp_path / "pods"),
        "--path",
        str(tmp_path / "var" / "*.log"),
        "--state-dir",
        str(tmp_path / "state"),
        "--once",
        "--compress",
        "gzip",
    )
    assert res.returncode == 0, res.stderr
    by = {}
    for _, _, r in receiver.records:
        by.setdefault(r["service"], []).append(r)
    assert [(r["log"], r["stream"]) for r in by["checkout"]] == [
        ("hello world", "stdout"),
        ("oops", "stderr"),
    ]
    assert by["checkout"][0]["container_id"] == "0f1e-22/app"
    assert by["checkout"][0]["container_name"] == "shop/checkout-5d8f7c9b6d-x2x7k/app"
    assert [r["log"] for r in by["batch"]] == ["plain one", "plain two"]
    assert all(o.get("compressed") == "gzip" for o in receiver.options)


def test_pod_logs_linked_to_docker_json_files(tmp_path: Path, receiver: Receiver) -> None:
    """dockershim / cri-dockerd: /var/log/pods files are symlinks to Docker json-file logs.
    They are read as Docker's format (not as CRI text), and a link into a folder the shipper
    cannot see is reported, not followed silently to nothing."""
    cid = "d" * 64
    target = tmp_path / "docker" / cid / f"{cid}-json.log"
    target.parent.mkdir(parents=True)
    lines = [("from docker\n", "stdout", "12.5"), ("to stderr\n", "stderr", "13")]
    target.write_text(
        "".join(
            json.dumps({"log": log, "stream": st, "time": f"2026-11-28T10:00:{sec}Z"}) + "\n"
            for log, st, sec in lines
        )
    )
    pods = tmp_path / "pods"
    linked = pods / "shop_cart-5d8f7c9b6d-x2x7k_0f1e-33" / "app"
    linked.mkdir(parents=True)
    (linked / "0.log").symlink_to(target)
    dangling = pods / "shop_gone-5d8f7c9b6d-x2x7k_0f1e-44" / "app"
    dangling.mkdir(parents=True)
    (dangling / "0.log").symlink_to(tmp_path / "unmounted" / cid / f"{cid}-json.log")
    res = run_shipper(
        "--aggregator", receiver.address,
        "--docker-root", str(empty_root(tmp_path)),
        "--cri-root", str(pods),
        "--state-dir", str(tmp_path / "state"),
        "--once",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = [(t, r["service"], r["log"], r["stream"]) for _, t, r in receiver.records]
    base = 1_795_860_000  # 2026-11-28T10:00:00Z
    assert got == [
        ((base + 12) * 10**9 + 500_000_000, "cart", "from docker", "stdout"),
        ((base + 13) * 10**9, "cart", "to stderr", "stderr"),
    ]
    assert "cannot see: mount " + str(tmp_path / "unmounted") in res.stderr


def test_once_over_tls_with_config_file(tmp_path: Path) -> None:
    from tests.shipper.tlsgen import make_ca_and_server, server_context

    ca, cert, key = make_ca_and_server(tmp_path)
    r = Receiver(tls=server_context(cert, key), shared_key="k3y")
    try:
        root = tmp_path / "containers"
        make_container(root, "e" * 64, "web", lines=["over tls"])
        conf = tmp_path / "shipper.toml"
        conf.write_text(
            f'aggregator = "{r.address}"\ndocker-root = "{root}"\n'
            f'state-dir = "{tmp_path / "state"}"\ntls = true\ntls-ca = "{ca}"\n'
            'shared-key = "k3y"\nonce = true\n'
        )
        res = run_shipper("--config", str(conf))
        assert res.returncode == 0, res.stderr
        assert r.lines() == ["over tls"]
    finally:
        r.close()


def _texts(i: int) -> str:
    """Line ``i``: 20 to 420 characters, the 100th 6,000 (over --batch-bytes 4096)."""
    return f"{i:04d} " + ("y" * 6000 if i == 100 else "x" * (15 + (i * 37) % 400))


def test_once_messages_hold_at_most_batch_bytes_of_log_text(
    tmp_path: Path, receiver: Receiver
) -> None:
    """With a small --batch-bytes and many lines, no Forward message carries more log text
    than it, but for a line longer than it, which goes alone. A read takes at least 64 KiB:
    its lines went out in one message, sixteen times the limit."""
    root = tmp_path / "containers"
    texts = [_texts(i) for i in range(1500)]
    make_container(root, "a" * 64, "app", lines=texts)
    res = run_shipper(
        *("--aggregator", receiver.address, "--docker-root", str(root)),
        *("--cri-root", str(empty_root(tmp_path)), "--state-dir", str(tmp_path / "state")),
        *("--once", "--batch-bytes", "4096"),
    )
    assert res.returncode == 0, res.stderr
    assert receiver.lines() == texts
    assert receiver.duplicates == 0
    sizes = [sum(map(len, chunk)) for chunk in receiver.chunks]
    over = [chunk for chunk in receiver.chunks if sum(map(len, chunk)) > 4096]
    assert over == [[texts[100]]]
    assert max(s for s in sizes if s <= 4096) > 3000  # filled, not one line each


def test_a_restart_after_messages_cut_from_one_read_sends_only_the_unacknowledged(
    tmp_path: Path,
) -> None:
    """Messages cut from one read (--batch-bytes far below it) acknowledged, then the run
    ends without more acks: the next run sends every line not acknowledged, and none that
    was. (The checkpoint of such a message is where its read began; the lines read again
    from there are dropped by their offsets.)"""
    root = tmp_path / "containers"
    texts = [_texts(i) for i in range(1500)]
    make_container(root, "a" * 64, "app", lines=texts)
    args = (
        *("--docker-root", str(root), "--cri-root", str(empty_root(tmp_path))),
        *("--state-dir", str(tmp_path / "state"), "--once", "--batch-bytes", "4096"),
    )
    stingy = Receiver(ack_first=5)
    try:
        res = run_shipper(
            "--aggregator", stingy.address, *args, "--ack-timeout", "0.5", "--retry-timeout", "2"
        )
        assert res.returncode == 1, res.stderr
        acked = [t for chunk in stingy.chunks[:5] for t in chunk]
    finally:
        stingy.close()
    assert 0 < len(acked) < 200
    second = Receiver()
    try:
        res = run_shipper("--aggregator", second.address, *args)
        assert res.returncode == 0, res.stderr
        assert second.lines() == texts[len(acked) :]
    finally:
        second.close()
