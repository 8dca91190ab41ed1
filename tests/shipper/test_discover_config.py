"""Discovery (service naming, CRI layout, globs), configuration and the checkpoint registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper.checkpoint import FileState, Registry
from shipper.config import Endpoint, build_parser, load_config, parse_endpoint
from shipper.discover import (
    Discoverer,
    discover_all,
    node_names,
    pod_owner_name,
    rotated_siblings,
    service_name,
)
from shipper.errors import ConfigError, StartError
from shipper.formats import CriParser, DockerParser
from tests.shipper.hostgen import make_container

STATIC_UID = "6f2b9c3a1d4e5f60718293a4b5c6d7e8"  # kubelet's config hash: a static pod
POD_UID = "0b2c9f3e-1111-2222-3333-4444555566aa"  # an API-created pod


@pytest.mark.parametrize(
    ("pod", "uid", "owner"),
    [
        ("recipe-5d8f7c9b6d-x2x7k", POD_UID, "recipe"),
        ("node-agent-x2x7k", POD_UID, "node-agent"),
        ("report-28391234-x2x7k", POD_UID, "report"),
        ("db-0", POD_UID, "db"),
        ("standalone", POD_UID, "standalone"),
        ("my-app-v2-7c9b6d5f8-abcde", POD_UID, "my-app-v2-7c9b6d5f8-abcde"),  # 'a', 'e' never
        # Names ending in a number keep it: an Indexed Job's index cannot be told from it.
        ("migrate-42-x2x7k", POD_UID, "migrate-42"),
        ("gpu-driver-535-x2x7k", POD_UID, "gpu-driver-535"),
        ("train-0-x2x7k", POD_UID, "train-0"),
        ("report-28391234-3-x2x7k", POD_UID, "report-28391234-3"),
        # A StatefulSet whose name ends like the node's: every replica, one service.
        ("spark-worker-0", POD_UID, "spark-worker"),
        ("spark-worker-1", POD_UID, "spark-worker"),  # the node is worker-1
        ("spark-worker-2", POD_UID, "spark-worker"),
        ("kube-apiserver-node-1", POD_UID, "kube-apiserver-node"),  # not static: ordinal
        # Static pods (<name>-<node>, config-hash uid) lose this node's name.
        ("kube-apiserver-node-1", STATIC_UID, "kube-apiserver"),
        ("kube-proxy-worker-1", STATIC_UID, "kube-proxy"),
        ("etcd-ip-10-0-0-1", STATIC_UID, "etcd"),  # node named by its short host name
        ("kube-apiserver-node-2", STATIC_UID, "kube-apiserver-node"),  # another node's
    ],
)
def test_pod_owner_name(pod: str, uid: str, owner: str) -> None:
    nodes = node_names("node-1") + node_names("worker-1") + node_names("ip-10-0-0-1.ec2.internal")
    assert pod_owner_name(pod, nodes, uid) == owner


def test_static_pod_needs_the_node_name_and_a_config_hash_uid() -> None:
    assert pod_owner_name("kube-apiserver-node-1", ("node-1",), STATIC_UID) == "kube-apiserver"
    assert pod_owner_name("kube-apiserver-node-1", (), STATIC_UID) == "kube-apiserver-node"
    assert pod_owner_name("kube-apiserver-node-1", ("node-1",)) == "kube-apiserver-node"
    assert node_names("IP-10-0-0-1.EC2.internal") == ("ip-10-0-0-1.ec2.internal", "ip-10-0-0-1")
    assert pod_owner_name("node-1", ("node-1",), STATIC_UID) == "node"  # never strips to nothing
    labels = {"io.kubernetes.pod.name": "etcd-node-1", "io.kubernetes.pod.uid": STATIC_UID}
    assert service_name(labels, "k8s_etcd", ("node-1",)) == "etcd"  # Docker: uid from a label
    labels["io.kubernetes.pod.uid"] = POD_UID
    assert service_name(labels, "k8s_etcd", ("node-1",)) == "etcd-node"


def test_cri_static_pod_named_from_its_folder_uid(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    for folder in (
        f"kube-system_kube-proxy-worker-1_{STATIC_UID}",
        f"default_spark-worker-1_{POD_UID}",
        "default_spark-worker-2_0b2c9f3e-1111-2222-3333-4444555566bb",
    ):
        cdir = pods / folder / "app"
        cdir.mkdir(parents=True)
        (cdir / "0.log").write_bytes(b"")
    specs = Discoverer(tmp_path / "none", pods, (), node_names("worker-1")).scan().specs
    assert sorted(s.service for s in specs) == ["kube-proxy", "spark-worker", "spark-worker"]


def test_service_name_precedence() -> None:
    labels = {
        "logq.service": "explicit",
        "com.amazonaws.ecs.task-definition-family": "ecs",
        "com.docker.compose.service": "compose",
    }
    assert service_name(labels, "name") == "explicit"
    del labels["logq.service"]
    assert service_name(labels, "name") == "ecs"
    del labels["com.amazonaws.ecs.task-definition-family"]
    assert service_name(labels, "name") == "compose"
    assert service_name({"io.kubernetes.pod.name": "web-6d4b7c9f8-zq2xk"}, "k8s_x") == "web"
    assert service_name({}, "name") == "name"


def test_odd_pod_folders_are_shipped_or_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod folder with "_" in its pod part is still a pod (namespace and uid hold none); a
    folder that is not one is reported once, not skipped silently."""
    cri = tmp_path / "pods"
    for folder in ("ns_web_v2-0_uid-1", "lost+found", "ns_only"):
        (cri / folder / "app").mkdir(parents=True)
        (cri / folder / "app" / "0.log").write_bytes(b"")
    specs = [s for s in discover_all(tmp_path / "none", cri, ()) if s.format == "cri"]
    assert [(s.key, s.container_id) for s in specs] == [
        ("cri:ns_web_v2-0_uid-1/app/0.log", "uid-1/app")
    ]
    assert "not a pod folder" in caplog.text and "lost+found" in caplog.text
    caplog.clear()
    discover_all(tmp_path / "none", cri, ())
    assert "not a pod folder" not in caplog.text  # once per folder


def test_discover_docker_cri_and_paths(tmp_path: Path) -> None:
    docker = tmp_path / "containers"
    make_container(
        docker,
        "a" * 64,
        "recipe-app",
        {"com.docker.compose.service": "recipe"},
        image="recipe:3",
        lines=["x"],
    )
    (docker / ("b" * 64)).mkdir()  # no log file: not a source
    (docker / ("c" * 64)).mkdir()
    (docker / ("c" * 64) / f"{'c' * 64}-json.log").write_bytes(b"")  # no config.v2.json
    cri = tmp_path / "pods"
    cdir = cri / "shop_checkout-5d8f7c9b6d-x2x7k_0f1e-22" / "app"
    cdir.mkdir(parents=True)
    (cdir / "0.log").write_bytes(b"")
    (cdir / "0.log.20261128-120000").write_bytes(b"")
    (cdir / "1.log").write_bytes(b"")
    plain = tmp_path / "var" / "nginx"
    plain.mkdir(parents=True)
    (plain / "access.log").write_bytes(b"")
    (plain / "access.log.1.gz").write_bytes(b"")
    specs = {s.key: s for s in discover_all(docker, cri, (str(tmp_path / "var" / "**" / "*"),))}
    d = specs[f"docker:{'a' * 64}"]
    assert (d.service, d.container_name, d.image, d.format) == (
        "recipe",
        "recipe-app",
        "recipe:3",
        "docker",
    )
    c = specs[f"docker:{'c' * 64}"]
    assert c.container_name == "c" * 12 and c.service == "c" * 12
    cri_specs = [s for s in specs.values() if s.format == "cri"]
    assert sorted(s.path.name for s in cri_specs) == ["0.log", "1.log"]
    assert {s.service for s in cri_specs} == {"checkout"}
    assert cri_specs[0].container_id == "0f1e-22/app"
    p = [s for s in specs.values() if s.format == "plain"]
    assert [s.path.name for s in p] == ["access.log"] and p[0].service == "access"
    assert [x.name for x in rotated_siblings(cdir / "0.log")] == ["0.log.20261128-120000"]


def test_config_flags_file_and_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "shipper.toml"
    conf.write_text(
        'aggregator = ["a:1", "b:2"]\nmax-line-bytes = 4096\ncompress = "gzip"\n'
        'state_dir = "/tmp/s"\nbatch-lines = 10\nonce = true\n'
    )
    cfg = load_config(["--config", str(conf), "--batch-lines", "20"])
    assert cfg.aggregators == (Endpoint("a", 1), Endpoint("b", 2))
    assert cfg.max_line_bytes == 4096 and cfg.compress and cfg.once
    assert cfg.batch_lines == 20
    assert str(cfg.state_dir) == "/tmp/s"
    assert load_config([]).max_line_bytes == 256 * 1024
    assert load_config([]).docker_root == Path("/var/lib/docker/containers")


def test_config_errors_are_clear(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("no-such-key = 1\n")
    with pytest.raises(ConfigError, match="key 'no-such-key': unknown key"):
        load_config(["--config", str(conf)])
    with pytest.raises(ConfigError, match=": no such file; check the path"):
        load_config(["--config", str(tmp_path / "missing.toml")])
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_endpoint("host:notaport")
    assert parse_endpoint("[::1]:9") == Endpoint("::1", 9)
    assert parse_endpoint("agg") == Endpoint("agg", 24224)


def test_registry_roundtrip_and_lock(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put("1:2:ab", FileState("docker:x", "/p", "h:2:ab", 100, 90))
    reg.save()
    with pytest.raises(StartError, match="in use by another logq-shipper"):
        Registry(tmp_path)
    reg.close()
    again = Registry(tmp_path)
    st = again.get("1:2:ab")
    assert st is not None and (st.offset, st.acked, st.source_id) == (100, 90, "h:2:ab")
    again.close()
    (tmp_path / "checkpoints.json").write_text("{broken")
    fresh = Registry(tmp_path)
    assert fresh.items() == []
    assert list(tmp_path.glob("checkpoints.bad-*"))
    fresh.close()


def test_fresh_start_says_when_duplicates_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The aggregator drops re-read lines by source id, which embeds the host name: the
    message must not promise that unconditionally (a DaemonSet pod's default host name is new
    at every rollout)."""
    (tmp_path / "checkpoints.json").write_text("{broken")
    Registry(tmp_path).close()
    assert (
        "the aggregator drops the lines it already stored only if --hostname is the same as in "
        "the previous run (it is part of each file's source id), else they are stored twice"
    ) in caplog.text


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('once = "false"', "once"),
        ('tls = "no"', "tls"),
        ("tls = 1", "tls"),
        ('tls-no-verify = "true"', "tls-no-verify"),
    ],
)
def test_config_booleans_must_be_toml_booleans(tmp_path: Path, toml: str, key: str) -> None:
    """Before the fix ``once = "false"`` turned --once on: a non-empty string is truthy. The
    error names the file (it did not), also when the flag is given on the command line too
    (the file's wrong value then passed unseen)."""
    conf = tmp_path / "c.toml"
    conf.write_text(toml + "\n")
    prefix = rf"^--config {re.escape(str(conf))}: key {key!r}: must be true or false .* got "
    for flags in ([], [f"--{key}"]):
        with pytest.raises(ConfigError, match=prefix) as err:
            load_config(["--config", str(conf), *flags])
        assert "\n" not in str(err.value)
    conf.write_text("once = false\ntls = false\n")
    cfg = load_config(["--config", str(conf)])
    assert (cfg.once, cfg.tls) == (False, False)


def test_config_compress_names_the_file(tmp_path: Path) -> None:
    """``compress = 1`` was refused without naming the file or saying what to write."""
    conf = tmp_path / "c.toml"
    conf.write_text("compress = 1\n")
    with pytest.raises(
        ConfigError,
        match=rf"^--config {re.escape(str(conf))}: key 'compress': must be 'none' or 'gzip'",
    ):
        load_config(["--config", str(conf)])
    for value, gzip in (('"gzip"', True), ('"none"', False), ("true", True), ("false", False)):
        conf.write_text(f"compress = {value}\n")
        assert load_config(["--config", str(conf)]).compress is gzip


def test_help_says_a_missing_root_is_an_error_only_with_once() -> None:
    """The daemon warns and reads a given --docker-root / --cri-root once it appears (README,
    ``check_roots``); --help said it was an error whenever given and missing, and the exit
    status list said 2 for it."""
    text = " ".join(build_parser().format_help().split())
    assert "an error if given and missing" not in text
    assert text.count("given and missing: an error with --once, else read once it appears") == 2
    assert "2 bad configuration (also, with --once, a --docker-root or --cri-root" in text


def test_tls_options_without_tls_are_refused(tmp_path: Path) -> None:
    """They would be ignored and the logs sent as plain text."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError, match=r"^--tls-ca needs --tls"):
        load_config(["--tls-ca", str(ca)])
    with pytest.raises(ConfigError, match=r"^--tls-no-verify needs --tls"):
        load_config(["--tls-no-verify"])
    conf = tmp_path / "c.toml"
    conf.write_text(f'tls-ca = "{ca}"\n')
    with pytest.raises(ConfigError, match="needs --tls"):
        load_config(["--config", str(conf)])
    assert load_config(["--tls", "--tls-no-verify"]).tls_verify is False


def test_container_metadata_is_parsed_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle containers cost a stat per pass, not a JSON parse; a bad file is warned about once
    per version, and its fixed version is picked up."""
    docker = tmp_path / "containers"
    for i in range(3):
        make_container(docker, f"{i}" * 64, f"app{i}", {"logq.service": f"s{i}"}, lines=["x"])
    parsed: list[object] = []
    real = discover_mod._parse_meta
    monkeypatch.setattr(discover_mod, "_parse_meta", lambda doc: parsed.append(doc) or real(doc))
    d = Discoverer(docker, tmp_path / "none", ())
    assert sorted(s.service for s in d.scan().specs) == ["s0", "s1", "s2"]
    assert len(parsed) == 3
    for _ in range(3):
        d.scan()
    assert len(parsed) == 3  # nothing changed: nothing parsed again
    config = docker / ("1" * 64) / "config.v2.json"
    config.write_text('{"Name": "/app1", "Config": {"Labels": {"logq.servi')  # torn write
    specs = {s.container_name: s.service for s in d.scan().specs}
    assert specs["app1"] == "s1"  # its last good metadata meanwhile, not its id (k1, s24)
    for _ in range(3):
        d.scan()
    assert caplog.text.count("cannot read container metadata") == 1
    tmp = config.with_suffix(".tmp")
    tmp.write_text('{"Name": "/app1", "Config": {"Labels": {"logq.service": "fixed"}}}')
    tmp.replace(config)  # Docker's atomic write
    assert {s.container_name: s.service for s in d.scan().specs}["app1"] == "fixed"


@pytest.mark.parametrize("fast", [True, False], ids=["block", "per-line"])
def test_docker_and_cri_lines_lose_a_crlf_like_plain_ones(fast: bool) -> None:
    """Windows-style output ``text\\r\\n``: plain files always dropped the ``\\r``."""
    import json

    docs = [{"log": "crlf\r\n", "stream": "stdout", "time": "2026-11-28T12:00:00.1Z"}]
    docs.append({"log": "plain\n", "stream": "stdout", "time": "2026-11-28T12:00:00.2Z"})
    if not fast:  # a split entry sends the block down the per-line path
        docs.insert(0, {"log": "part", "stream": "stderr", "time": "2026-11-28T12:00:00.0Z"})
        docs.append({"log": "ed\r\n", "stream": "stderr", "time": "2026-11-28T12:00:00.3Z"})
    lines = [json.dumps(d).encode() for d in docs]
    out = DockerParser(65536).feed(lines, 0)
    expected = ["crlf", "plain"] + (["parted"] if not fast else [])
    assert sorted(out.logs) == sorted(expected)
    cri = CriParser(65536).feed(
        [
            b"2026-11-28T12:00:00.1Z stdout F crlf\r",
            b"2026-11-28T12:00:00.2Z stdout P part\r",  # a partial's \\r is content
            b"2026-11-28T12:00:00.3Z stdout F ed\r",
        ],
        0,
    )
    assert cri.logs == ["crlf", "part\red"]


def test_fixed_metadata_applies_to_new_lines_of_a_running_source(tmp_path: Path) -> None:
    """A container whose config.v2.json was torn when first seen ships under its id; once the
    file is fixed, its next lines carry the right service (before: never, until a restart)."""
    import asyncio

    from shipper.daemon import Shipper
    from tests.shipper.hostgen import docker_line
    from tests.shipper.receiver import Receiver
    from tests.shipper.shipping import quick_config

    docker = tmp_path / "containers"
    cid = "d" * 64
    log = make_container(docker, cid, "real-name", lines=["one"])
    config = docker / cid / "config.v2.json"
    config.write_text('{"Name": "/real-name", "Config": {"Labels": {"logq.servi')
    receiver = Receiver()
    cfg = quick_config(tmp_path, receiver, docker)

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        while len(receiver.records) < 1:
            await asyncio.sleep(0.05)
        tmp = config.with_suffix(".tmp")
        tmp.write_text('{"Name": "/real-name", "Config": {"Labels": {"logq.service": "pay"}}}')
        tmp.replace(config)
        while shipper.runners[f"docker:{cid}"].spec.service != "pay":
            await asyncio.sleep(0.05)
        with log.open("ab") as f:
            f.write(docker_line("two", 1))
        while len(receiver.records) < 2:
            await asyncio.sleep(0.05)
        shipper.request_stop()
        assert await run == 0

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        receiver.close()
    got = [(tag, r["service"], r["container_name"], r["log"]) for tag, _, r in receiver.records]
    assert got == [
        (f"logq.{cid[:12]}", cid[:12], cid[:12], "one"),
        ("logq.pay", "pay", "real-name", "two"),
    ]


def test_a_value_out_of_range_in_the_file_names_the_file(tmp_path: Path) -> None:
    """``batch_lines = 0`` in the file said only ``batch-lines must be positive``, as if a flag
    had been given. A flag's own bad value does not blame the file, and names the flag."""
    conf = tmp_path / "c.toml"
    conf.write_text("batch_lines = 0\nlog_level = 'info'\n")
    with pytest.raises(
        ConfigError,
        match=rf"^--config {re.escape(str(conf))}: key 'batch_lines': --batch-lines must",
    ):
        load_config(["--config", str(conf)])
    with pytest.raises(ConfigError, match=r"^--batch-lines must be at least 1; got 0$"):
        load_config(["--config", str(conf), "--batch-lines", "0"])


@pytest.mark.parametrize("toml", ['password = ["s3cret"]', 'shared_key = ["s3cret"]'])
def test_a_secret_of_the_wrong_type_is_not_shown(tmp_path: Path, toml: str) -> None:
    """The error quoted the value: a password in a list reached the journal."""
    conf = tmp_path / "c.toml"
    conf.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=r"got a list of str \(the value is a secret") as err:
        load_config(["--config", str(conf)])
    assert "s3cret" not in str(err.value)
