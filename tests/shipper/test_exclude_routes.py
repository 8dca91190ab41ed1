"""``--exclude`` where a file is found by more than one route, or its metadata is not there:
reviewer R2's findings on the first version (each test failed on it).

- One file found by a Docker or CRI root and by a ``--path`` glob has two keys; only one of them
  matched, and the other route shipped the excluded container whole (F1).
- An excluded container whose ``config.v2.json`` could not be read for a pass (``docker rm``
  deletes the folder's files one by one) was taken as unlabelled and read from its start (F7).
- Fluent Bit's comma-separated ``Exclude_Path`` list was one glob that matched nothing (F3).
- A pattern on kubelet's ``/var/log/containers`` symlink let the first lines out: kubelet makes
  the link after the container started (F2).
- Lifting an exclusion counted the files rotated away meanwhile as lost (F5); a pass between a
  rotation's rename and the new file logged the excluded source again and dipped the gauge (F6);
  kubelet links and ``--path`` files were matched again at every pass (F4).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from shipper.config import load_config
from shipper.daemon import Shipper, main
from shipper.discover import Discoverer
from shipper.exclude import Excluder, Exclusion
from shipper.metrics import Metrics
from tests.shipper.hostgen import make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import append_docker
from tests.shipper.test_exclude import UID, pod_log, ship_once, shipped

pytestmark = pytest.mark.integration

LINK_ID = "0123456789abcdef" * 4
NONE = Path("/nonexistent-root")


def discoverer(
    excludes: Iterable[str] = (),
    docker: Path = NONE,
    cri: Path = NONE,
    paths: tuple[str, ...] = (),
    excluder: Excluder | None = None,
) -> Discoverer:
    return Discoverer(docker, cri, paths, (), excluder or Excluder(excludes))


def read(d: Discoverer) -> list[str]:
    """The keys one pass would read."""
    return sorted(s.key for s in d.scan().specs)


def test_a_file_excluded_by_one_route_is_excluded_by_every_route(tmp_path: Path) -> None:
    """A Docker root plus ``--path '<root>/*/*-json.log'`` (Fluent Bit's usual ``Path``), and a
    CRI root plus ``--path '<pods>/*/*/*.log'``: the ``file:`` keys only know the file's name,
    the ``docker:``/``cri:`` keys the label and the namespace."""
    docker, pods = tmp_path / "containers", tmp_path / "pods"
    make_container(docker, "a" * 64, "app", lines=["a1"])
    make_container(docker, "b" * 64, "vault-agent", {"logq.exclude": "true"}, lines=["SECRET"])
    make_container(docker, "c" * 64, "debug", lines=["noise"])
    pod_log(pods, "kube-system", "vault-0", "agent", ["SECRET"])
    pod_log(pods, "prod", "web-0", "main", ["w1"])
    globs = (f"{docker}/*/*-json.log", f"{pods}/*/*/*.log")
    scan = discoverer(["debug", "kube-system/*"], docker, pods, globs).scan()
    # Each file is one source, the Docker or CRI one (Discoverer._read_once), so the
    # exclusions of the docker:/cri: keys hold for the file whatever the route.
    assert sorted(s.key for s in scan.specs) == [
        f"cri:prod_web-0_{UID}/main/0.log",
        f"docker:{'a' * 64}",
    ]
    assert sorted(scan.excluded) == [
        f"cri:kube-system_vault-0_{UID}/agent/0.log",
        f"docker:{'b' * 64}",
        f"docker:{'c' * 64}",
    ]
    assert scan.read_as == {f"file:{docker}/{c * 64}/{c * 64}-json.log" for c in "abc"} | {
        f"file:{pods}/{pod}_{UID}/{ctr}/0.log"
        for pod, ctr in (("kube-system_vault-0", "agent"), ("prod_web-0", "main"))
    }


def test_a_dockershim_pod_log_of_a_labelled_container_is_excluded(tmp_path: Path) -> None:
    """dockershim and cri-dockerd link ``/var/log/pods`` files to Docker's json logs: the CRI
    key of the link is excluded with the Docker container it reads (by the same inode)."""
    docker, pods = tmp_path / "containers", tmp_path / "pods"
    log = make_container(docker, "b" * 64, "vault", {"logq.exclude": "on"}, lines=["SECRET"])
    folder = pods / f"prod_vault-0_{UID}" / "agent"
    folder.mkdir(parents=True)
    (folder / "0.log").symlink_to(log)
    scan = discoverer((), docker, pods).scan()
    assert scan.specs == []
    assert scan.read_as == {f"cri:prod_vault-0_{UID}/agent/0.log"}  # read as the Docker one


def test_a_file_excluded_by_one_glob_is_excluded_by_another(tmp_path: Path) -> None:
    """Two ``--path`` globs reaching one file by different paths (a symlinked folder): same
    inode, so excluded by its path under either."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "api.log").write_text("a\n")
    (logs / "debug.log").write_text("d\n")
    (tmp_path / "alias").symlink_to(logs)
    globs = (f"{logs}/*.log", f"{tmp_path}/alias/*.log")
    scan = discoverer([f"{logs}/debug.log"], paths=globs).scan()
    assert [s.key for s in scan.specs] == [f"file:{logs}/api.log"]  # one file, one source
    assert list(scan.excluded) == [f"file:{logs}/debug.log"]
    assert scan.read_as == {f"file:{tmp_path}/alias/api.log", f"file:{tmp_path}/alias/debug.log"}


def test_a_container_excluded_by_label_is_not_shipped_through_path(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The real program: nothing of the labelled container reaches the aggregator."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", lines=["a1", "a2"])
    make_container(docker, "b" * 64, "vault-agent", {"logq.exclude": "true"}, lines=["SECRET"])
    ship_once(tmp_path, receiver, "--path", f"{docker}/{'b' * 8}*/*-json.log", docker=docker)
    assert shipped(receiver) == {"app": 2}


@pytest.mark.parametrize("damage", ["removed", "not JSON"])
def test_an_excluded_container_stays_excluded_while_its_metadata_cannot_be_read(
    tmp_path: Path, damage: str
) -> None:
    """Its last verdict stands meanwhile; a container never seen before is shipped under its
    id as ever (nothing is known of it)."""
    docker = tmp_path / "containers"
    log = make_container(docker, "e" * 64, "vault-agent", {"logq.exclude": "true"}, lines=["S"])
    by_name = make_container(docker, "d" * 64, "debug-1", lines=["noise"])
    d = discoverer(["debug-*"], docker)
    assert read(d) == []
    for config in (log.parent / "config.v2.json", by_name.parent / "config.v2.json"):
        if damage == "removed":
            config.unlink()
        else:
            config.write_text('{"ID": "trunc')
    for _ in range(2):
        assert read(d) == []
    make_container(docker, "f" * 64, "new", lines=["x"])
    (docker / ("f" * 64) / "config.v2.json").unlink()
    assert read(d) == [f"docker:{'f' * 64}"]


def test_a_comma_separated_list_is_several_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fluent Bit's ``Exclude_Path *.gz,*.zip`` form, as a flag and in the TOML file; ``[,]``
    still matches a comma; an empty item is refused as an empty pattern is (exit 2)."""
    conf = tmp_path / "shipper.toml"
    conf.write_text('exclude = "*/debug.log, */audit.log"\n')
    assert load_config(["--config", str(conf)]).excludes == ("*/debug.log", "*/audit.log")
    cfg = load_config(["--exclude", "*/debug.log,*/audit.log", "--exclude", "a[,]b"])
    assert cfg.excludes == ("*/debug.log", "*/audit.log", "a[,]b")
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("api.log", "debug.log", "audit.log", "a,b.log"):
        (logs / name).write_text("x\n")
    d = discoverer(cfg.excludes, paths=(f"{logs}/*.log",), excluder=Excluder(cfg.excludes))
    assert read(d) == [f"file:{logs}/api.log"]  # a,b.log: its service "a,b" matches a[,]b
    assert read(discoverer(["*/debug.log,*/a[,]b.log"], paths=(f"{logs}/*.log",))) == [
        f"file:{logs}/api.log",
        f"file:{logs}/audit.log",
    ]
    state = tmp_path / "state"
    assert main(["--exclude", "debug-*,", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "--exclude 'debug-*,' holds an empty pattern" in err and err.count("\n") == 1
    assert not state.exists()


def test_a_kubelet_link_pattern_excludes_the_pod_log_before_the_link_exists(
    tmp_path: Path,
) -> None:
    """``--cri-root`` sees ``0.log`` before kubelet makes its link (after the container
    started; again at each restart): a pattern on the link's path keeps it out from the first
    pass, by the link's name without its container id. Fluent Bit's pattern on kubelet's own
    folder works without any ``--path``."""
    pods, links = tmp_path / "pods", tmp_path / "links"
    links.mkdir()
    secret = pod_log(pods, "kube-system", "vault-0", "agent", ["SECRET"])
    pod_log(pods, "prod", "web-0", "main", ["w1"])
    web = f"cri:prod_web-0_{UID}/main/0.log"
    d = discoverer([f"{links}/*_kube-system_*"], cri=pods, paths=(f"{links}/*.log",))
    scan = d.scan()
    assert [s.key for s in scan.specs] == [web]
    assert [why.matched for _, why in scan.excluded.values()] == ["path"]
    (links / f"vault-0_kube-system_agent-{LINK_ID}.log").symlink_to(secret)
    restarted = secret.parent / "1.log"
    restarted.write_bytes(secret.read_bytes())
    assert read(d) == [web]
    assert len(d.scan().excluded) == 2
    kubelets = discoverer(["/var/log/containers/*_kube-system_*"], cri=pods)
    assert read(kubelets) == [web]


def test_the_verdict_cache_holds_for_links_and_path_files(tmp_path: Path) -> None:
    """An unchanged source is matched once, not at every pass: also pod logs found through
    ``--cri-root`` and kubelet's links (two routes to one key), and ``--path`` files (new
    objects at every pass). A changed name is matched again."""
    pods, links, logs = tmp_path / "pods", tmp_path / "links", tmp_path / "logs"
    links.mkdir()
    logs.mkdir()
    docker = tmp_path / "containers"
    config = make_container(docker, "a" * 64, "app", lines=["a"]).parent / "config.v2.json"
    for i in range(5):
        target = pod_log(pods, "prod", f"web-{i}", "main", ["x"])
        (links / f"web-{i}_prod_main-{LINK_ID}.log").symlink_to(target)
        (logs / f"app-{i}.log").write_text("x\n")
    checked: list[str] = []

    class Counting(Excluder):
        def check(
            self,
            key: str,
            fields: Mapping[str, str],
            paths: Iterable[Path | str] = (),
            labels: Mapping[str, str] | None = None,
        ) -> Exclusion | None:
            checked.append(key)
            return super().check(key, fields, paths, labels)

    globs = (f"{links}/*.log", f"{logs}/*.log")
    d = discoverer(docker=docker, cri=pods, paths=globs, excluder=Counting(["debug-*"]))
    assert len(d.scan().specs) == 11
    first = len(checked)
    checked.clear()
    d.scan()
    assert checked == []
    assert first == 11  # one check a source, also for the pod logs found by two routes
    config.write_text(config.read_text().replace('"/app"', '"/debug-app"'))
    scan = d.scan()
    assert checked == [f"docker:{'a' * 64}"] and list(scan.excluded) == checked


def excluded_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("logq_shipper_excluded_sources")


def lost(metrics: Metrics, reason: str) -> float:
    sample = metrics.registry.get_sample_value(
        "logq_shipper_files_lost_total", {"service": "app", "reason": reason}
    )
    return sample or 0.0


def test_a_rotation_does_not_forget_an_excluded_source(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Passes between Docker's rename of the live file and its new file: the source is still
    logged once and counted; a removed container stops being counted at once."""
    caplog.set_level(logging.INFO, logger="logq.shipper")
    docker = tmp_path / "containers"
    noisy = make_container(docker, "b" * 64, "debug-sidecar", lines=["noise"])
    cfg = load_config(shipper_args(tmp_path, receiver, "--exclude", "debug-*", docker=docker))
    metrics = Metrics()

    async def go() -> None:
        shipper = Shipper(cfg, metrics)
        try:
            shipper._sync_sources(await shipper._discover())
            gauges = [excluded_gauge(metrics)]
            for rotate in (True, False) * 3:
                if rotate:
                    noisy.rename(noisy.with_name(noisy.name + ".1"))
                else:
                    append_docker(noisy, 0, 1, "noise")
                shipper._sync_sources(await shipper._discover())
                gauges.append(excluded_gauge(metrics))
            assert gauges == [1.0] * 7
            shutil.rmtree(noisy.parent)
            shipper._sync_sources(await shipper._discover())
            assert excluded_gauge(metrics) == 0.0
            assert not shipper.runners
        finally:
            await shipper.client.close()
            shipper.registry.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert caplog.text.count("source excluded, not read") == 1


def test_lifting_an_exclusion_after_rotations_counts_no_loss(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A shipped container renamed into the pattern, rotated twice while excluded (``max-file
    2``: the file holding its checkpoint is deleted), renamed back: the lines written meanwhile
    were kept out on purpose. No ``deleted_unread`` (operations.md pages on it), no WARNING;
    what its files still hold is shipped, nothing twice."""
    caplog.set_level(logging.INFO, logger="logq.shipper")
    docker = tmp_path / "containers"
    log = make_container(docker, "a" * 64, "app", lines=["a0", "a1"])
    config = log.parent / "config.v2.json"
    args = ("--poll-interval", "0.05", "--discover-interval", "0.1", "--exclude", "debug-*")
    cfg = load_config(shipper_args(tmp_path, receiver, *args, docker=docker))
    metrics = Metrics()

    def rename(old: str, new: str) -> None:
        config.write_text(config.read_text().replace(f'"/{old}"', f'"/{new}"'))

    async def go() -> None:
        shipper = Shipper(cfg, metrics)
        run = asyncio.create_task(shipper.run())
        await until(lambda: len(receiver.records) == 2)
        rename("app", "debug-app")
        shipper._sync_sources(await shipper._discover())
        await until(lambda: not shipper.runners)
        append_docker(log, 2, 1, "x")
        log.rename(log.with_name(log.name + ".1"))
        append_docker(log, 3, 1, "y")
        log.with_name(log.name + ".1").rename(log.with_name(log.name + ".2"))
        log.rename(log.with_name(log.name + ".1"))
        log.with_name(log.name + ".2").unlink()
        append_docker(log, 4, 1, "z")
        rename("debug-app", "app")
        shipper._sync_sources(await shipper._discover())
        await until(lambda: len(receiver.records) == 4)
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    assert [r["log"] for _, _, r in receiver.records] == ["a0", "a1", "y 3", "z 4"]
    assert receiver.duplicates == 0
    assert lost(metrics, "deleted_unread") == 0.0
    assert "deleted before it was read to the end" not in caplog.text
    assert "deleted while its source was excluded" in caplog.text


def test_a_docker_log_also_reached_by_path_is_shipped_once_as_docker(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Fluent Bit's usual ``Path /var/lib/docker/containers/*/*.log``, given as ``--path`` on a
    host whose Docker root is read too: each line once, parsed as the Docker record it is
    (not also as a plain line holding the JSON framing, under a service named ``<id>-json``)."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", lines=["a1", "a2", "a3"])
    stderr = ship_once(tmp_path, receiver, "--path", f"{docker}/*/*.log", docker=docker)
    logs = sorted(r["log"] for _, _, r in receiver.records)
    assert logs == ["a1", "a2", "a3"]
    assert {r["service"] for _, _, r in receiver.records} == {"app"}
    # One reader: an aggregator that does not drop resent offsets (Fluentd) gets 3 lines too.
    assert "sources=1 excluded=0 lines_acked=3" in stderr
    assert "the same log file is found twice" in stderr
