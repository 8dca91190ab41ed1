"""What discovery tells about a source, as Fluent Bit users expect it: the namespace and pod of
a Kubernetes line, the ECS container name, kubelet's ``/var/log/containers`` symlinks, and roots
given that do not exist."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper.config import load_config
from shipper.discover import Discoverer, check_roots, discover_paths
from shipper.errors import ConfigError
from tests.shipper.hostgen import cri_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root

REPO = Path(__file__).resolve().parents[2]
POD = "recipe-5d8f7c9b6d-x2x7k"
UID = "11111111-2222-3333-4444-555555555555"
CID = "0123456789abcdef" * 4


def pod_log(pods: Path, namespace: str, container: str = "app", uid: str = UID) -> Path:
    """``<pods>/<namespace>_<POD>_<uid>/<container>/0.log`` holding one CRI line."""
    folder = pods / f"{namespace}_{POD}_{uid}" / container
    folder.mkdir(parents=True)
    (folder / "0.log").write_bytes(cri_line(f"hello from {namespace}"))
    return folder / "0.log"


def kubelet_link(links: Path, target: Path, namespace: str = "prod") -> Path:
    """Kubelet's ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log`` -> ``target``."""
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{POD}_{namespace}_{target.parent.name}-{CID}.log"
    link.symlink_to(target)
    return link


def run_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper.daemon", "--once", "--hostname", "h", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_cri_container_name_tells_namespace_and_pod_apart(tmp_path: Path) -> None:
    """One Deployment in two namespaces: the same service (DESIGN's rule), and a container
    name ``<namespace>/<pod>/<container>`` that says which one logged (before: ``app`` for
    both, and nothing else told them apart)."""
    pods = tmp_path / "pods"
    pod_log(pods, "prod")
    pod_log(pods, "staging", uid=UID.replace("1", "2"))
    specs = Discoverer(tmp_path / "none", pods, ()).scan().specs
    assert sorted((s.service, s.container_name) for s in specs) == [
        ("recipe", f"prod/{POD}/app"),
        ("recipe", f"staging/{POD}/app"),
    ]


def test_ecs_container_name_label_wins_over_dockers_generated_name(tmp_path: Path) -> None:
    """The ECS agent names a container ``ecs-<family>-<revision>-<name>-<random>``: a new
    name at every task. Its label ``com.amazonaws.ecs.container-name`` is the task
    definition's stable name."""
    docker = tmp_path / "containers"
    ecs = {
        "com.amazonaws.ecs.container-name": "app",
        "com.amazonaws.ecs.task-definition-family": "recipe",
    }
    make_container(docker, "a" * 64, "ecs-recipe-12-app-0f1e2d3ce8a4c0b1d2f3", ecs, lines=["x"])
    make_container(docker, "b" * 64, "plain-docker", lines=["y"])
    specs = Discoverer(docker, tmp_path / "none", ()).scan().specs
    assert sorted((s.service, s.container_name) for s in specs) == [
        ("plain-docker", "plain-docker"),
        ("recipe", "app"),
    ]


def test_path_over_var_log_containers_ships_the_pod_logs_they_point_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--path '/var/log/containers/*.log'`` (Fluent Bit's usual Path): each symlink is read
    as the CRI pod log it points to, under the key ``--cri-root`` gives it, so given both each
    file is one source. Before: plain text, the CRI framing in every line and the container id
    in the service name."""
    caplog.set_level(logging.INFO, logger="logq.shipper.discover")
    pods = tmp_path / "pods"
    target = pod_log(pods, "prod")
    links = tmp_path / "containers"
    kubelet_link(links, target)
    pattern = str(links / "*.log")
    [spec] = discover_paths((pattern,))
    assert (spec.format, spec.path, spec.service) == ("cri", target, "recipe")
    assert spec.container_name == f"prod/{POD}/app"
    both = Discoverer(tmp_path / "none", pods, (pattern,)).scan().specs
    assert [s.key for s in both] == [spec.key]
    assert (
        "--path matches kubelet's symlinks: shipping the pod logs they point to as CRI "
        f"sources, as --cri-root {pods} would" in caplog.text
    )


def test_path_over_unmounted_pod_logs_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links into a ``/var/log/pods`` the shipper's container does not mount: nothing to read,
    said once (not per link and pass), naming the folder to mount. A link left for a moment
    to a removed pod (the folder is there) is skipped without a word."""
    monkeypatch.setattr(discover_mod, "_UNSEEN_PODS", set())
    links = tmp_path / "containers"
    removed = tmp_path / "pods" / f"prod_{POD}_{UID}" / "app" / "0.log"
    kubelet_link(links, removed)
    (tmp_path / "pods").mkdir()
    assert discover_paths((str(links / "*.log"),)) == []
    assert "cannot see" not in caplog.text
    unmounted = tmp_path / "unmounted"
    for ns in ("qa", "staging"):
        kubelet_link(links, unmounted / f"{ns}_{POD}_{UID}" / "app" / "0.log", ns)
    for _ in range(3):
        assert discover_paths((str(links / "*.log"),)) == []
    assert caplog.text.count(f"point into {unmounted}, which the shipper cannot see") == 1


def test_once_over_var_log_containers_ships_unframed_cri_records(tmp_path: Path) -> None:
    """The audit's run (s12), end to end: the line, its stream, the pod's service."""
    target = pod_log(tmp_path / "pods", "prod")
    kubelet_link(tmp_path / "containers", target)
    receiver = Receiver()
    try:
        done = run_daemon(
            *("--aggregator", receiver.address, "--state-dir", str(tmp_path / "state")),
            *("--docker-root", str(empty_root(tmp_path)), "--cri-root", str(empty_root(tmp_path))),
            *("--path", str(tmp_path / "containers" / "*.log")),
        )
        assert done.returncode == 0, done.stderr
        got = [
            (r["service"], r["stream"], r["log"], r["container_name"]) for *_, r in receiver.records
        ]
    finally:
        receiver.close()
    assert got == [("recipe", "stdout", "hello from prod", f"prod/{POD}/app")]


@pytest.mark.parametrize("flag", ["--cri-root", "--docker-root"])
def test_var_log_containers_as_a_root_is_refused(tmp_path: Path, flag: str) -> None:
    """Before: "no log files found" and exit 0 (the root scan reads folders, not links)."""
    pods = tmp_path / "pods"
    kubelet_link(tmp_path / "containers", pod_log(pods, "prod"))
    other = "--docker-root" if flag == "--cri-root" else "--cri-root"
    done = run_daemon(
        *("--aggregator", "127.0.0.1:1", "--state-dir", str(tmp_path / "state")),
        *(flag, str(tmp_path / "containers"), other, str(empty_root(tmp_path))),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"logq-shipper: {flag} {tmp_path / 'containers'} holds kubelet's symlinks "
        f"(<pod>_<namespace>_<container>-<id>.log), not "
        f"{'pod folders' if flag == '--cri-root' else 'containers'}: use --cri-root {pods}, "
        "the folder they point into (mount it read-only into the shipper's container)"
    )


@pytest.mark.parametrize("flag", ["--cri-root", "--docker-root"])
def test_a_root_given_that_does_not_exist_is_an_error(tmp_path: Path, flag: str) -> None:
    """A typo in a cron job's ``--once`` ran "successfully" shipping nothing (exit 0)."""
    typo = tmp_path / "var" / "log" / "pod"
    other = "--docker-root" if flag == "--cri-root" else "--cri-root"
    done = run_daemon(
        *("--aggregator", "127.0.0.1:1", "--state-dir", str(tmp_path / "state")),
        *(flag, str(typo), other, str(empty_root(tmp_path))),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"logq-shipper: {flag} {typo} does not exist: fix the path, or leave {flag} out to use "
        "its default (which may be missing)"
    )


def test_only_roots_given_must_exist(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Given by a flag or the config file: checked; defaulted: may be missing (a Kubernetes
    node has no Docker root)."""
    missing, file = tmp_path / "missing", tmp_path / "file"
    file.write_text("")
    check_roots(missing, missing, frozenset())
    with pytest.raises(ConfigError, match=r"^--docker-root .* does not exist"):
        check_roots(missing, tmp_path, frozenset({"docker_root"}))
    # A daemon is told, and reads the root once it appears (a host still booting).
    with caplog.at_level(logging.WARNING, logger="logq.shipper.discover"):
        check_roots(missing, tmp_path, frozenset({"docker_root"}), once=False)
    assert f"--docker-root {missing} does not exist (yet)" in caplog.text
    with pytest.raises(ConfigError, match=r"^--cri-root .* is not a directory"):
        check_roots(tmp_path, file, frozenset({"cri_root"}))
    conf = tmp_path / "shipper.toml"
    conf.write_text(f'cri-root = "{missing}"\n')
    assert "cri_root" in load_config(["--config", str(conf)]).given
    assert "docker_root" in load_config(["--docker-root", str(missing)]).given
    assert not {"docker_root", "cri_root"} & load_config([]).given
