"""Discovery (service naming, CRI layout, globs), configuration and the checkpoint registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.checkpoint import FileState, Registry
from shipper.config import Endpoint, load_config, parse_endpoint
from shipper.discover import discover_all, pod_owner_name, rotated_siblings, service_name
from shipper.errors import ConfigError
from tests.shipper.hostgen import make_container


@pytest.mark.parametrize(
    ("pod", "owner"),
    [
        ("recipe-5d8f7c9b6d-x2x7k", "recipe"),
        ("node-agent-x2x7k", "node-agent"),
        ("report-28391234-x2x7k", "report"),
        ("db-0", "db"),
        ("standalone", "standalone"),
        ("my-app-v2-7c9b6d5f8-abcde", "my-app-v2-7c9b6d5f8-abcde"),  # 'a', 'e' never generated
    ],
)
def test_pod_owner_name(pod: str, owner: str) -> None:
    assert pod_owner_name(pod) == owner


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
    with pytest.raises(ConfigError, match="unknown key 'no-such-key'"):
        load_config(["--config", str(conf)])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(["--config", str(tmp_path / "missing.toml")])
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_endpoint("host:notaport")
    assert parse_endpoint("[::1]:9") == Endpoint("::1", 9)
    assert parse_endpoint("agg") == Endpoint("agg", 24224)


def test_registry_roundtrip_and_lock(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put("1:2:ab", FileState("docker:x", "/p", "h:2:ab", 100, 90))
    reg.save()
    with pytest.raises(ConfigError, match="in use by another logq-shipper"):
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
