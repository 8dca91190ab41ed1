"""Container churn: nothing of a removed container stays in the shipper once it is shipped.

Containers come and go all day (one-off jobs, short ECS tasks, deploys): whatever the shipper
keeps per source, per file or per service must go with the container, or its memory grows with
every container the host ever ran (bench/churn.py measures it). The per-service Prometheus
series are the exception: they stay a day (tests/shipper/test_metrics_series.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipper import fd_budget
from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.hostgen import docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import quick_config
from tests.shipper.tailing import drain

CONTAINERS = 4
LINES = 3


def _spec(path: Path) -> SourceSpec:
    return SourceSpec(
        key=f"docker:{path.parent.name}",
        path=path,
        format="docker",
        service="job",
        container_id=path.parent.name,
        container_name="job",
    )


@pytest.mark.parametrize("removed", [True, False])
def test_a_tailer_forgets_a_source_whose_folder_is_gone(tmp_path: Path, removed: bool) -> None:
    """Once its folder is removed, a source's key cannot come back: it is not remembered. A
    source whose folder is still there may be found again, and is (its rotated files were
    read: see test_a_source_found_again_does_not_read_its_rotated_files_twice)."""
    cid = ("e" if removed else "f") * 64
    path = make_container(tmp_path / "containers", cid, "job", lines=["one", "two"])
    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(_spec(path), reg, "h", 65536)
        assert drain(t) == ["one", "two"]
        if removed:
            shutil.rmtree(path.parent)
        while t.cursors:  # the source is gone: drain and release
            assert t.read() is None
            t.poll(finishing=True)
        t.close()
        assert (reg.followed_at(f"docker:{cid}") is not None) is not removed
        assert reg.items() == []
    finally:
        reg.close()


@pytest.mark.parametrize("rotated_left", [False, True])
def test_a_source_whose_files_are_gone_is_not_kept_as_followed(
    tmp_path: Path, rotated_left: bool
) -> None:
    """The kubelet removes a restarted container's old ``N.log`` (its key never comes back)
    while the pod's folder stays: nothing of the source is left to find, and its entry in the
    registry's ``followed`` part would stay for good, rewritten at every save (one per
    container restart on the node, up to checkpoint.MAX_FOLLOWED). A source with a rotated
    file left keeps its entry: a restart that finds it again skips what was read."""
    folder = tmp_path / "ns_pod_uid" / "app"
    folder.mkdir(parents=True)
    path = folder / "0.log"
    path.write_text("2024-01-01T00:00:00.000000000Z stdout F one\n")
    spec = SourceSpec(key="cri:ns_pod_uid/app/0.log", path=path, format="cri", service="pod")
    reg = Registry(tmp_path / "state")
    try:
        t = Tailer(spec, reg, "h", 65536)
        assert drain(t) == ["one"]
        assert spec.key in reg._followed
        if rotated_left:
            path.rename(f"{path}.20240101-000000")
        else:
            path.unlink()
        while t.cursors:  # the source is gone: drain and release
            assert t.read() is None
            t.poll(finishing=True)
        t.close()
        assert (spec.key in reg._followed) is rotated_left
        assert (spec.key in json.loads(reg.snapshot())["followed"]) is rotated_left
    finally:
        reg.close()


@pytest.mark.integration
def test_removed_containers_leave_nothing_behind(tmp_path: Path) -> None:
    """A real shipper in this process: containers write, rotate, write again and are removed;
    once their sources ended, every per-source structure is empty again."""
    from shipper.daemon import Shipper

    docker = tmp_path / "containers"
    cids = [f"{i:x}" * 64 for i in range(1, CONTAINERS + 1)]
    logs = [
        make_container(docker, cid, f"job-{i}", lines=[f"{i} before {k}" for k in range(LINES)])
        for i, cid in enumerate(cids)
    ]
    receiver = Receiver()
    cfg = quick_config(tmp_path, receiver, docker)

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 90
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def go() -> None:
        shipper = Shipper(cfg)
        run = asyncio.create_task(shipper.run())
        await until(lambda: len(receiver.records) == CONTAINERS * LINES, "the first lines")
        for i, log in enumerate(logs):  # dockerd's rotation: rename, then a new live file
            log.rename(log.with_name(log.name + ".1"))
            log.write_bytes(b"".join(docker_line(f"{i} after {k}", k) for k in range(LINES)))
        await until(lambda: len(receiver.records) == 2 * CONTAINERS * LINES, "the new lines")
        # The rotated files are done: only the live files keep an endpoint ranking.
        assert len(shipper.client._ranks) <= CONTAINERS

        for cid in cids:
            shutil.rmtree(docker / cid)
        await until(lambda: not shipper.runners, "the removed containers' sources to end")
        await until(lambda: not shipper._gauge_paths, "a gauge tick without their files")

        assert shipper.client._ranks == {}, "endpoint rankings of files long done"
        assert [k for k in shipper.registry._followed if k.removeprefix("docker:") in cids] == []
        assert shipper.registry.items() == []
        saved = tmp_path / "state" / "checkpoints.json"
        await until(lambda: json.loads(saved.read_bytes())["files"] == {}, "the saved registry")
        assert shipper._missing == {}
        assert shipper.discoverer._meta == {} and shipper.discoverer._specs == {}
        assert shipper.file_watcher is not None and shipper.file_watcher.watches == 0
        assert not fd_budget.waiting_sources()
        shipper.request_stop()
        assert await run == 0

    try:
        asyncio.run(asyncio.wait_for(go(), 180))
    finally:
        receiver.close()
    assert sorted(r["log"] for _, _, r in receiver.records) == sorted(
        f"{i} {when} {k}" for i in range(CONTAINERS) for when in ("before", "after")
        for k in range(LINES)
    )  # fmt: skip
