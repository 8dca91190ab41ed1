"""``followed`` entries of containers and pods removed while the shipper was down are dropped
at start, after the first discovery pass (see :mod:`shipper.followed`); entries whose folder
is there, may be there, or cannot be placed are kept."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import pytest

from shipper import followed
from shipper.checkpoint import Registry
from shipper.config import load_config
from shipper.daemon import Shipper
from shipper.followed import gone_followed
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import empty_root, shipper_args

POD = "ns_web-1_0b5e6f4e-1d2c-4c3b-9a8f-7e6d5c4b3a21"
POD_GONE = "ns_web-2_1b5e6f4e-1d2c-4c3b-9a8f-7e6d5c4b3a21"
A, B, C = "a" * 64, "b" * 64, "c" * 64


def prune_followed(reg: Registry, docker_root: Path | None, pod_roots: list[Path]) -> list[str]:
    """What the daemon does after its first pass (``Shipper._prune_followed``): the entries
    whose folders are gone, looked at, then forgotten; returns their keys."""
    dropped = gone_followed(reg.followed_sources(), docker_root, pod_roots)
    for source in dropped:
        reg.forget_followed(source)
    return dropped


def _registry(state: Path, sources: list[str]) -> Registry:
    reg = Registry(state)
    for source in sources:
        reg.note_followed(source, 1000.0)
    return reg


def test_entries_of_gone_folders_are_dropped_and_the_others_kept(tmp_path: Path) -> None:
    docker, pods = tmp_path / "docker", tmp_path / "pods"
    (docker / A).mkdir(parents=True)  # a container with no log yet, or excluded: kept
    (pods / POD / "app").mkdir(parents=True)  # a container folder without logs now: kept
    (pods / POD / "side").mkdir()
    keep = [f"docker:{A}", f"cri:{POD}/app/0.log", f"cri:{POD}/app/1.log", "file:/gone/x.log"]
    drop = [f"docker:{B}", f"cri:{POD}/old/0.log", f"cri:{POD_GONE}/app/0.log"]
    reg = _registry(tmp_path / "state", keep + drop)
    assert sorted(prune_followed(reg, docker, [pods])) == sorted(drop)
    assert sorted(reg.followed_sources()) == sorted(keep)
    reg.close()


@pytest.mark.parametrize("root", ["missing", "empty", "a-file"])
def test_nothing_is_dropped_under_a_root_that_proves_nothing(tmp_path: Path, root: str) -> None:
    """A root not there (not mounted into the shipper yet), empty (an empty mount point) or no
    folder: its sources' folders are not looked for."""
    docker = tmp_path / "docker"
    if root == "empty":
        docker.mkdir()
    elif root == "a-file":
        docker.write_text("")
    reg = _registry(tmp_path / "state", [f"docker:{B}", f"cri:{POD_GONE}/app/0.log"])
    assert prune_followed(reg, docker, [docker]) == []
    assert len(reg.followed_sources()) == 2
    reg.close()


def test_a_folder_that_cannot_be_looked_at_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES (a shipper not root, Docker's 0700 folders) is no proof that it is gone."""
    docker = tmp_path / "docker"
    (docker / A).mkdir(parents=True)
    real = os.stat

    def stat(path: str | os.PathLike[str], *args: object, **kw: object) -> os.stat_result:
        if Path(path) == docker / B:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(followed.os, "stat", stat)
    reg = _registry(tmp_path / "state", [f"docker:{B}"])
    assert prune_followed(reg, docker, []) == []
    reg.close()


def test_the_start_drops_them_and_looks_under_every_pod_root(tmp_path: Path) -> None:
    """A ``--once`` run prunes after its first discovery pass: a pod reached only through
    ``--path`` symlinks (kubelet's ``/var/log/containers``) into a folder other than
    ``--cri-root`` is looked for there too, and kept."""
    docker, cri, pods = tmp_path / "docker", empty_root(tmp_path, "cri"), tmp_path / "pods"
    make_container(docker, A, "stays", lines=["x"])
    live = pods / POD / "app" / "0.log"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"")
    links = tmp_path / "links"
    links.mkdir()
    (links / f"web-1_ns_app-{A}.log").symlink_to(live)
    kept = [f"docker:{A}", f"cri:{POD}/app/0.log"]
    gone = [f"docker:{B}", f"docker:{C}", f"cri:{POD_GONE}/app/0.log"]
    reg = _registry(tmp_path / "state", kept + gone)
    reg.save()
    reg.close()
    receiver = Receiver()
    args = [*shipper_args(tmp_path, receiver, docker=docker, cri=cri), "--once"]
    cfg = load_config([*args, "--path", str(links / "*.log")])
    try:
        assert asyncio.run(asyncio.wait_for(Shipper(cfg).run(), 30)) == 0
    finally:
        receiver.close()
    saved = json.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    assert sorted(saved["followed"]) == sorted(kept)


def test_nothing_is_dropped_under_a_root_that_holds_none_of_the_entries(tmp_path: Path) -> None:
    """``--docker-root`` / ``--cri-root`` changed since the entries were written (pointed at
    another folder, to be set back later), or another folder seen where the real one gets
    mounted: a root holding none of the entries' folders is not where they came from. Under
    the roots they came from, the gone ones go."""
    other_docker, other_pods = tmp_path / "other-docker", tmp_path / "other-pods"
    (other_docker / C).mkdir(parents=True)  # containers of their own, none of the entries'
    (other_pods / POD / "app").mkdir(parents=True)
    sources = [f"docker:{A}", f"docker:{B}", f"cri:{POD_GONE}/app/0.log"]
    reg = _registry(tmp_path / "state", sources)
    assert prune_followed(reg, other_docker, [other_pods]) == []
    assert sorted(reg.followed_sources()) == sorted(sources)
    (other_docker / A).mkdir()  # the entries' root after all: B is gone
    (other_pods / POD_GONE).mkdir()  # the pod is there, its container folder is not
    reg.note_followed(f"cri:{POD}/app/0.log", 1000.0)
    assert sorted(prune_followed(reg, other_docker, [other_pods])) == sorted(
        [f"docker:{B}", f"cri:{POD_GONE}/app/0.log"]
    )
    reg.close()


def test_pods_reached_through_symlinks_are_kept_after_a_pass_that_failed(tmp_path: Path) -> None:
    """The folders of pods that ``--path`` symlinks lead to (not ``--cri-root``) are known only
    from the links the pass saw: a pass that could not list the links' folder saw none, and
    its pods, looked for under ``--cri-root`` alone, looked gone."""
    from shipper.discover import Scan

    cri, pods = tmp_path / "cri", tmp_path / "pods"
    (cri / POD / "app").mkdir(parents=True)  # --cri-root, vouched for by POD's entry
    (pods / POD_GONE / "app").mkdir(parents=True)  # a pod only the links lead to
    state = tmp_path / "state"
    sources = [f"cri:{POD}/app/0.log", f"cri:{POD_GONE}/app/0.log"]
    reg = _registry(state, sources)
    reg.save()
    reg.close()
    receiver = Receiver()
    try:
        args = [*shipper_args(tmp_path, receiver, cri=cri), "--path", str(tmp_path / "l/*.log")]
        shipper = Shipper(load_config(args))
        asyncio.run(shipper._prune_followed(Scan(failures=["cannot list l: Too many open files"])))
        assert sorted(shipper.registry.followed_sources()) == sorted(sources)
        shipper.registry.close()
    finally:
        receiver.close()
