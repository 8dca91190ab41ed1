"""``/var/log/pods/.../0.log`` as a symlink to Docker's ``<id>-json.log`` (cri-dockerd).

Docker rotates the target: its rotated copies (``<id>-json.log.1``) lie beside the target, not
beside the link. Before the fix the shipper looked for them beside the link, so a burst that
rotated twice between two looks lost the middle file in silence, and a rotation while the
shipper was down was counted as a deleted file though it was still on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from shipper.checkpoint import Registry
from shipper.discover import SourceSpec
from shipper.tailer import Tailer
from tests.shipper.tailing import append_docker, drain


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """(Docker's log file, the pod folder's link to it)."""
    docker = tmp_path / "docker" / ("c" * 64)
    docker.mkdir(parents=True)
    target = docker / f"{'c' * 64}-json.log"
    target.write_bytes(b"")
    pod = tmp_path / "pods" / "default_web-0_0b2c9a4e-1111-2222-3333-444455556666" / "app"
    pod.mkdir(parents=True)
    link = pod / "0.log"
    os.symlink(target, link)
    return target, link


def _rotate(target: Path) -> None:
    """Docker's rotation with max-file 5: nothing is deleted."""
    for n in range(3, 0, -1):
        if Path(f"{target}.{n}").exists():
            os.replace(f"{target}.{n}", f"{target}.{n + 1}")
    os.replace(target, f"{target}.1")


def _tailer(link: Path, state: Path, lost: list[str]) -> tuple[Tailer, Registry]:
    reg = Registry(state)
    spec = SourceSpec(key="cri:web/app/0.log", path=link, format="docker", service="web")
    return Tailer(spec, reg, "h", 65536, on_loss=lost.append), reg


def test_two_rotations_between_looks_lose_nothing(tmp_path: Path) -> None:
    target, link = _layout(tmp_path)
    lost: list[str] = []
    append_docker(target, 0, 5)
    t, reg = _tailer(link, tmp_path / "state", lost)
    assert len(drain(t)) == 5
    append_docker(target, 5, 5)
    _rotate(target)  # the burst: a full file, then another, before the shipper looks
    append_docker(target, 10, 5)
    _rotate(target)
    append_docker(target, 15, 5)
    assert drain(t) == [f"line {i}" for i in range(5, 20)]
    assert lost == []
    reg.close()


def test_a_rotation_while_down_is_read_not_counted_as_deleted(tmp_path: Path) -> None:
    target, link = _layout(tmp_path)
    state = tmp_path / "state"
    lost: list[str] = []
    append_docker(target, 0, 10)
    t, reg = _tailer(link, state, lost)
    assert len(drain(t)) == 10
    append_docker(target, 10, 5)  # written, not read: the shipper stops
    t.close()
    reg.save()
    reg.close()
    _rotate(target)
    append_docker(target, 15, 5)
    t, reg = _tailer(link, state, lost)
    assert drain(t) == [f"line {i}" for i in range(10, 20)]
    assert lost == []
    reg.close()
