"""Keeping chosen containers out, as Fluent Bit users do with ``Exclude_Path`` and the
``fluentbit.io/exclude`` annotation: ``--exclude PATTERN`` (a glob against the service name, the
container name and the log file's path) and the Docker label ``logq.exclude=true``.

Before, there was no way: the shipper's own container, a debug sidecar or a container that
logs secrets was always shipped. An excluded source is never opened, never checkpointed, said
once in the log and counted in ``logq_shipper_excluded_sources``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shipper import daemon
from shipper.config import load_config
from shipper.daemon import Shipper, main
from shipper.discover import Discoverer
from shipper.metrics import Metrics
from tests.shipper.hostgen import cri_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import shipper_args, until
from tests.shipper.tailing import append_docker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UID = "11111111-2222-3333-4444-555555555555"
LINK_ID = "0123456789abcdef" * 4
EXCLUDED = "source excluded, not read"


def ship_once(tmp_path: Path, receiver: Receiver, *args: str, **roots: Path) -> str:
    """Run ``logq-shipper --once`` (a real process) into ``receiver``; its stderr (exit 0)."""
    argv = [*shipper_args(tmp_path, receiver), *_roots(roots), *args]
    res = subprocess.run(
        [sys.executable, "-m", "shipper.daemon", "--once", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    return res.stderr


def _roots(roots: dict[str, Path]) -> list[str]:
    """``--docker-root`` / ``--cri-root`` after shipper_args' own (the last one wins)."""
    return [a for key, root in roots.items() for a in (f"--{key}-root", str(root))]


def shipped(receiver: Receiver) -> Counter[str]:
    """How many records the receiver stored per ``container_name``."""
    return Counter(r["container_name"] for _, _, r in receiver.records)


def excluded_lines(stderr: str) -> dict[str, str]:
    """``key -> matched`` of the INFO lines that say a source is excluded."""
    out = {}
    for line in stderr.splitlines():
        if EXCLUDED in line:
            fields = dict(p.split("=", 1) for p in line.split('" ', 1)[1].split() if "=" in p)
            out[fields["key"]] = fields["matched"]
    return out


def checkpointed(tmp_path: Path) -> set[str]:
    """The source keys in the shipper's checkpoint registry."""
    doc = json.loads((tmp_path / "state" / "checkpoints.json").read_text())
    return {entry["source"] for entry in doc["files"].values()}


def pod_log(pods: Path, namespace: str, pod: str, container: str, lines: list[str]) -> Path:
    """``<pods>/<namespace>_<pod>_<UID>/<container>/0.log`` holding CRI ``lines``."""
    folder = pods / f"{namespace}_{pod}_{UID}" / container
    folder.mkdir(parents=True)
    path = folder / "0.log"
    path.write_bytes(b"".join(cri_line(text, i) for i, text in enumerate(lines)))
    return path


def test_docker_containers_excluded_by_name_service_path_and_label(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Four ways out of a Docker host, one container each; the fifth is shipped whole: a
    Compose sidecar by its container name (its service, ``recipe``, does not match), a service,
    a path, and an ECS container by its label ``logq.exclude=true`` (ECS and Compose containers
    are Docker's)."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", lines=["a1", "a2"])
    compose = {"com.docker.compose.service": "recipe"}
    make_container(docker, "b" * 64, "recipe-debug-1", compose, lines=["noise"])
    make_container(docker, "c" * 64, "vault-agent", {"logq.service": "vault"}, lines=["secret"])
    make_container(docker, "d" * 64, "by-path", lines=["pathed"])
    ecs = {
        "com.amazonaws.ecs.container-name": "logq-shipper",
        "com.amazonaws.ecs.task-definition-family": "logging",
        "logq.exclude": "true",
    }
    make_container(docker, "e" * 64, "ecs-logging-3-logq-shipper-9a8b", ecs, lines=["own"])
    stderr = ship_once(
        tmp_path,
        receiver,
        *("--exclude", "*-debug-*", "--exclude", "vault", "--exclude", f"{docker}/{'d' * 8}*"),
        docker=docker,
    )
    assert shipped(receiver) == {"app": 2}
    assert excluded_lines(stderr) == {
        f"docker:{'b' * 64}": "container_name",
        f"docker:{'c' * 64}": "service",
        f"docker:{'d' * 64}": "path",
        f"docker:{'e' * 64}": "label",
    }
    assert checkpointed(tmp_path) == {f"docker:{'a' * 64}"}


def test_cri_pods_excluded_by_namespace_container_and_path(
    tmp_path: Path, receiver: Receiver
) -> None:
    """On Kubernetes the container name ``<namespace>/<pod>/<container>`` drops a namespace
    or one container of every pod; ``/var/log/pods`` paths work as well."""
    pods = tmp_path / "pods"
    pod = "recipe-5d8f7c9b6d-x2x7k"
    pod_log(pods, "prod", pod, "app", ["r1", "r2", "r3"])
    pod_log(pods, "prod", pod, "debug", ["d1"])
    pod_log(pods, "kube-system", "coredns-6d4b75cb6d-bz7qv", "coredns", ["c1"])
    pod_log(pods, "prod", "ingest-0", "app", ["i1"])
    stderr = ship_once(
        tmp_path,
        receiver,
        *("--exclude", "kube-system/*", "--exclude", "*/debug/*.log", "--exclude", "ingest"),
        cri=pods,
    )
    assert shipped(receiver) == {f"prod/{pod}/app": 3}
    assert sorted(excluded_lines(stderr).values()) == ["container_name", "path", "service"]
    assert checkpointed(tmp_path) == {f"cri:prod_{pod}_{UID}/app/0.log"}


def test_path_files_and_kubelet_links_excluded_by_fluent_bit_patterns(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``--path`` files by their path or name, and kubelet's ``/var/log/containers`` links by
    the link's own path: Fluent Bit's ``Exclude_Path /var/log/containers/*_kube-system_*``
    works as it is, although the pod log behind the link is what is read."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "api.log").write_text("api 1\napi 2\n")
    (logs / "debug.log").write_text("debug 1\n")
    (logs / "audit.secret.log").write_text("secret 1\n")
    pods = tmp_path / "pods"
    links = tmp_path / "var-log-containers"
    links.mkdir()
    for namespace, pod, text in (("prod", "web-0", "w1"), ("kube-system", "proxy-0", "k1")):
        target = pod_log(pods, namespace, pod, "main", [text])
        (links / f"{pod}_{namespace}_main-{LINK_ID}.log").symlink_to(target)
    stderr = ship_once(
        tmp_path,
        receiver,
        *("--path", str(logs / "*.log"), "--path", str(links / "*.log")),
        *("--exclude", "*/debug.log", "--exclude", "audit.*"),
        *("--exclude", f"{links}/*_kube-system_*"),
    )
    assert shipped(receiver) == {"api.log": 2, "prod/web-0/main": 1}
    assert sorted(excluded_lines(stderr).values()) == ["container_name", "path", "path"]


def test_exclude_in_the_config_file(tmp_path: Path, receiver: Receiver) -> None:
    """``exclude`` is a ``--config`` key like every flag: a list, or one string."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", lines=["a1"])
    make_container(docker, "b" * 64, "debug-sidecar", lines=["noise"])
    make_container(docker, "c" * 64, "chatty", lines=["chat"])
    conf = tmp_path / "shipper.toml"
    conf.write_text('[shipper]\nexclude = ["debug-*", "chat*"]\n')
    ship_once(tmp_path, receiver, "--config", str(conf), docker=docker)
    assert shipped(receiver) == {"app": 1}
    conf.write_text('exclude = "debug-*"\n')
    assert load_config(["--config", str(conf)]).excludes == ("debug-*",)


@pytest.mark.parametrize(
    ("argv", "toml"),
    [(["--exclude", ""], None), (["--exclude", "  "], None), ([], 'exclude = ["app", ""]')],
)
def test_an_empty_pattern_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    toml: str | None,
) -> None:
    """An empty pattern (an unset variable in a template) is one line and exit 2, not a
    pattern that matches nothing while the operator believes a container is kept out."""

    def started(level: str) -> None:
        raise AssertionError("the configuration was accepted: the shipper would start")

    monkeypatch.setattr(daemon, "setup_logging", started)
    where = ""  # a value from the file: the message says which file
    if toml is not None:
        conf = tmp_path / "shipper.toml"
        conf.write_text(toml + "\n")
        argv = ["--config", str(conf)]
        where = f"--config {conf}: key 'exclude': "
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"logq-shipper: {where}--exclude is empty") and err.count("\n") == 1
    assert "pass a glob" in err
    assert not (tmp_path / "state").exists()


def test_a_label_neither_true_nor_false_is_shipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``logq.exclude=ture``: shipped (as any other value but true, yes, on or 1), and said
    once, not at every discovery pass."""
    docker = tmp_path / "containers"
    make_container(docker, "a" * 64, "app", {"logq.exclude": "ture"}, lines=["x"])
    make_container(docker, "b" * 64, "off", {"logq.exclude": "False"}, lines=["x"])
    make_container(docker, "c" * 64, "on", {"logq.exclude": "YES"}, lines=["x"])
    discoverer = Discoverer(docker, tmp_path / "none", ())
    for _ in range(3):
        scan = discoverer.scan()
        assert sorted(s.container_name for s in scan.specs) == ["app", "off"]
        assert list(scan.excluded) == [f"docker:{'c' * 64}"]
    assert caplog.text.count("label logq.exclude is neither true nor false") == 1


def test_a_followed_source_that_becomes_excluded_stops_and_keeps_its_checkpoint(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon: an excluded container is never opened, logged once over many passes and
    counted. A shipped container renamed into the pattern (``docker rename``) stops being
    read; its checkpoint stays, so a run without the exclusion ships exactly the lines written
    meanwhile: none twice, none lost."""
    caplog.set_level(logging.INFO, logger="logq.shipper")
    docker = tmp_path / "containers"
    kept = make_container(docker, "a" * 64, "app", lines=["a0", "a1"])
    noisy = make_container(docker, "b" * 64, "debug-sidecar", lines=["noise"])
    args = ("--poll-interval", "0.05", "--discover-interval", "0.1", "--exclude", "debug-*")
    cfg = load_config(shipper_args(tmp_path, receiver, *args, docker=docker))
    metrics = Metrics()
    opened: list[str] = []
    real_open = os.open

    def spy(path: str, *a: int, **kw: int) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)

    def excluded_gauge() -> float | None:
        return metrics.registry.get_sample_value("logq_shipper_excluded_sources")

    async def go() -> None:
        shipper = Shipper(cfg, metrics)

        async def passes(n: int) -> None:
            """Discovery passes now, besides the daemon's own (inotify makes those rare)."""
            for _ in range(n):
                shipper._sync_sources(await shipper._discover())

        run = asyncio.create_task(shipper.run())
        await until(lambda: len(receiver.records) == 2)
        await passes(3)
        assert excluded_gauge() == 1.0
        # docker rename app debug-app: the next pass excludes it.
        config = kept.parent / "config.v2.json"
        config.write_text(config.read_text().replace('"/app"', '"/debug-app"'))
        await passes(1)
        await until(lambda: f"docker:{'a' * 64}" not in shipper.runners)
        assert excluded_gauge() == 2.0
        append_docker(kept, 2, 3, "a")
        append_docker(noisy, 1, 2, "noise")
        await passes(3)
        assert not shipper.runners
        shipper.request_stop()
        assert await run == 0

    asyncio.run(asyncio.wait_for(go(), 60))
    monkeypatch.undo()
    assert [r["log"] for _, _, r in receiver.records] == ["a0", "a1"]
    # Its metadata is read (its labels may exclude it; see shipper.regular), its logs never.
    metadata = str(noisy.parent / "config.v2.json")
    assert opened and not [p for p in opened if p.startswith(str(noisy.parent)) and p != metadata]
    assert caplog.text.count(f"{EXCLUDED} key=docker:{'b' * 64}") == 1
    assert caplog.text.count("source excluded: stops reading") == 1
    assert checkpointed(tmp_path) == {f"docker:{'a' * 64}"}

    ship_once(tmp_path, receiver, "--exclude", "debug-sidecar", docker=docker)
    assert [r["log"] for _, _, r in receiver.records] == ["a0", "a1", "a 2", "a 3", "a 4"]
    assert receiver.duplicates == 0


def test_an_excluded_sources_checkpoint_outlives_the_stale_checkpoint_sweep(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Excluded across restarts for longer than a week (checkpoints of sources not found are
    dropped then): its checkpoint stays while the file does, so lifting the exclusion ships
    only what was written meanwhile, and nothing twice. A run that excludes everything says
    so, not "no log files found"."""
    docker = tmp_path / "containers"
    log = make_container(docker, "a" * 64, "app", lines=["a0", "a1"])
    ship_once(tmp_path, receiver, docker=docker)
    registry = tmp_path / "state" / "checkpoints.json"
    doc = json.loads(registry.read_text())
    for entry in doc["files"].values():
        entry["updated"] = 1.0  # saved in 1970: far past STALE_CHECKPOINT_SECONDS
    registry.write_text(json.dumps(doc))
    stderr = ship_once(tmp_path, receiver, "--exclude", "app", docker=docker)
    assert "every log file found is excluded" in stderr and "no log files found" not in stderr
    assert checkpointed(tmp_path) == {f"docker:{'a' * 64}"}
    append_docker(log, 2, 2, "a")
    ship_once(tmp_path, receiver, docker=docker)
    assert [r["log"] for _, _, r in receiver.records] == ["a0", "a1", "a 2", "a 3"]
    assert receiver.duplicates == 0
