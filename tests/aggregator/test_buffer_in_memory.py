"""A ``--buffer-dir`` on a file system held in memory (tmpfs, ramfs: ``/dev/shm``, ``/run``, a
Kubernetes ``emptyDir`` with ``medium: Memory``) is warned about at start (aggregator/diskguard.py):
an ack says the records are on disk, and there they are gone with the host's next restart.
Tried by hand: ``--buffer-dir /dev/shm/buf`` started without a word."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.diskguard import file_system_type
from tests.aggregator.helpers import start_aggregator

MOUNTS = r"""22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683772k
40 22 0:40 / /var/lib/logq rw,relatime - xfs /dev/vdb rw
41 40 0:41 / /var/lib/logq/buf rw,relatime - tmpfs tmpfs rw
42 22 0:42 / /mnt/my\040disk rw,relatime - ramfs none rw
43 25 0:43 / /dev/shm rw,relatime - ext4 /dev/vdc rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/", "ext4"),
        ("/var/lib/logq/buffer", "xfs"),  # not under /var/lib/logq/buf: a name's start only
        ("/var/lib/logq/buf/x", "tmpfs"),
        ("/mnt/my disk/b", "ramfs"),  # \040 in mountinfo is a space
        ("/dev/shm/b", "ext4"),  # mounted over: the last mount at a point counts
    ],
)
def test_the_file_system_of_a_folder_is_its_longest_mount_point(path: str, kind: str) -> None:
    assert file_system_type(path, MOUNTS) == kind


@pytest.fixture
def shm_folder() -> Iterator[Path]:
    shm = Path("/dev/shm")
    try:
        kind = file_system_type(str(shm), Path("/proc/self/mountinfo").read_text())
    except OSError:
        kind = None
    if kind != "tmpfs" or not shm.is_dir():
        pytest.skip("no tmpfs at /dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="logq-test-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_aggregator_warns_of_a_buffer_in_memory(tmp_path: Path, shm_folder: Path) -> None:
    proc = start_aggregator(tmp_path, extra=["--buffer-dir", str(shm_folder / "buf")])
    assert proc.stop() == 0
    text = proc.log_text()
    said = f'level=warning logger=logq.aggregator msg="--buffer-dir {shm_folder / "buf"} is on '
    assert said + "tmpfs" in text, text


def test_a_buffer_on_disk_says_nothing_of_it(tmp_path: Path) -> None:
    kind = file_system_type(str(tmp_path), Path("/proc/self/mountinfo").read_text())
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"the test folder is on {kind}")
    proc = start_aggregator(tmp_path)
    assert proc.stop() == 0
    assert "is on tmpfs" not in proc.log_text()
