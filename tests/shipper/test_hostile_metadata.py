"""Container metadata as a hostile or half-removed host gives it: strings that are no UTF-8
(JSON ``\\ud800`` escapes, raw bytes, folder names), label values that are not strings, and a
``config.v2.json`` that ``docker rm`` deleted before the log. One bad container must neither
stop the shipper for the whole host nor move another's lines to the wrong service."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shipper.discover import (
    LABEL_COMPOSE_SERVICE,
    LABEL_ECS_FAMILY,
    LABEL_SERVICE,
    Discoverer,
    pod_owner_name,
    service_name,
)
from tests.shipper.hostgen import cri_line, docker_line, make_container
from tests.shipper.receiver import Receiver
from tests.shipper.test_discovery_metadata import run_daemon

UID = "11111111-2222-3333-4444-555555555555"


def raw_container(root: Path, n: int, config: bytes, text: str) -> str:
    """A container whose ``config.v2.json`` is ``config`` as given; returns its id."""
    cid = f"{n:064x}"
    folder = root / cid
    folder.mkdir(parents=True)
    (folder / "config.v2.json").write_bytes(config)
    (folder / f"{cid}-json.log").write_bytes(docker_line(text))
    return cid


def hostile_host(tmp_path: Path) -> tuple[Path, Path]:
    """Docker and CRI roots holding metadata no runtime writes, but a hostile host may."""
    docker = tmp_path / "docker"
    raw_container(
        docker, 1, rb'{"Name":"/sur","Config":{"Labels":{"logq.service":"x\ud800y"}}}', "a"
    )
    raw_container(docker, 2, rb'{"Name":"/n\udfffame","Config":{"Image":"\udc80"}}', "b")
    raw_container(docker, 3, rb'{"Name":"/f","Config":{"Labels":{"logq.format":"\ud800"}}}', "c")
    raw_container(docker, 4, b'{"Name":"/lat","Config":{"Labels":{"logq.service":"caf\xe9"}}}', "d")
    raw_container(docker, 5, b'{"Name":"/nul","Config":{"Labels":{"logq.service":null}}}', "e")
    # Folder names that are no UTF-8: a Docker folder with its json log, and a pod folder.
    odd = os.fsencode(docker) + b"/zz\xff"
    os.makedirs(odd)
    with open(odd + b"/zz\xff-json.log", "wb") as f:
        f.write(docker_line("f"))
    pods = tmp_path / "pods"
    container = os.fsencode(pods) + f"/default_p\xffd-x2x7k_{UID}/ap\xfep".encode("latin-1")
    os.makedirs(container)
    with open(container + b"/0.log", "wb") as f:
        f.write(cri_line("g"))
    return docker, pods


def test_metadata_that_is_no_utf8_is_shipped_not_fatal(tmp_path: Path) -> None:
    """Before: the first record whose service, name or folder held a lone surrogate raised
    ``UnicodeEncodeError`` in msgpack and the shipper exited 1 (``internal error``) with
    nothing shipped, for every container of the host; a label value with one Latin-1 byte
    lost the whole ``config.v2.json`` (service = the container id), and ``null`` became the
    service ``None``."""
    docker, pods = hostile_host(tmp_path)
    receiver = Receiver()
    try:
        done = run_daemon(
            *("--aggregator", receiver.address, "--state-dir", str(tmp_path / "state")),
            *("--docker-root", str(docker), "--cri-root", str(pods)),
        )
        assert done.returncode == 0, done.stderr
        got = {
            r["log"]: (r["service"], r["container_name"], r.get("format"))
            for *_, r in receiver.records
        }
    finally:
        receiver.close()
    assert got == {
        "a": ("x\ufffdy", "sur", None),
        "b": ("n\ufffdame", "n\ufffdame", None),
        "c": ("f", "f", "\ufffd"),
        "d": ("caf\ufffd", "lat", None),
        "e": ("nul", "nul", None),
        "f": ("zz\ufffd", "zz\ufffd", None),
        "g": ("p\ufffdd", "default/p\ufffdd-x2x7k/ap\ufffdp", None),
    }


def test_a_config_with_a_bom_keeps_its_labels(tmp_path: Path) -> None:
    """``json.load`` of the file's bytes skipped a UTF-8 BOM (a file saved by an editor); the
    text decoding that keeps a stray Latin-1 byte from losing the whole file must too, or the
    container is shipped under its id (rk1, s24)."""
    doc = b'{"Name":"/bom","Config":{"Labels":{"logq.service":"caf\xe9"}}}'
    raw_container(tmp_path, 1, b"\xef\xbb\xbf" + doc, "x")
    (spec,) = Discoverer(tmp_path, tmp_path / "no-pods", ()).scan().specs
    assert (spec.service, spec.container_name) == ("caf\ufffd", "bom")


def test_config_removed_before_the_log_keeps_the_service(tmp_path: Path) -> None:
    """``docker rm`` deletes a container's files one by one: a pass between the removal of
    ``config.v2.json`` and of the log took the container for one without metadata, and its
    last lines (all of its backlog, for a shipper behind) went to the service named by its id
    (seen with the real daemon: ``web`` then ``cdcdcdcdcdcd``)."""
    docker = tmp_path / "docker"
    labels = {"com.docker.compose.service": "web"}
    path = make_container(docker, "cd" * 32, "web-1", labels, lines=["first"])
    discoverer = Discoverer(docker, tmp_path / "no-pods", ())
    before = discoverer.scan().specs
    (path.parent / "config.v2.json").unlink()
    after = discoverer.scan().specs
    assert [s.service for s in before] == ["web"]
    assert after == before


def test_config_removed_between_its_stat_and_its_read_keeps_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same removal, caught between the ``stat`` of a changed ``config.v2.json`` and its
    ``open``, took the container for one without metadata for that pass: its lines went to
    the service named by its id until the next pass switched them back (rk1, s24)."""
    docker = tmp_path / "docker"
    labels = {"com.docker.compose.service": "web"}
    path = make_container(docker, "cd" * 32, "web-1", labels, lines=["first"])
    config = path.parent / "config.v2.json"
    discoverer = Discoverer(docker, tmp_path / "no-pods", ())
    before = discoverer.scan().specs
    config.write_text(config.read_text() + " ")  # a new version: read again
    stat = os.stat

    def stat_then_rm(name: object, *args: object, **kwargs: object) -> os.stat_result:
        st = stat(name, *args, **kwargs)  # type: ignore[arg-type]
        if os.fspath(name) == str(config):  # type: ignore[arg-type]
            config.unlink()
        return st

    monkeypatch.setattr(os, "stat", stat_then_rm)
    assert discoverer.scan().specs == before
    monkeypatch.undo()
    assert discoverer.scan().specs == before


def test_config_bad_after_a_good_version_keeps_the_last_good_metadata(tmp_path: Path) -> None:
    """A ``config.v2.json`` overwritten with something that does not parse (a tool writing it
    in place) keeps the labels last read, as the exclusion verdict already did; the fixed
    version is read again."""
    docker = tmp_path / "docker"
    path = make_container(docker, "cd" * 32, "web-1", {"logq.service": "web"}, lines=["x"])
    config = path.parent / "config.v2.json"
    discoverer = Discoverer(docker, tmp_path / "no-pods", ())
    assert [s.service for s in discoverer.scan().specs] == ["web"]
    config.write_text('{"Name":"/web-1","Config":{"Labels":{"logq.serv')
    assert [s.service for s in discoverer.scan().specs] == ["web"]
    doc = {"Name": "/web-1", "Config": {"Labels": {"logq.service": "api"}}}
    config.write_text(json.dumps(doc) + " ")
    assert [s.service for s in discoverer.scan().specs] == ["api"]


def test_a_blank_service_label_is_no_service_name() -> None:
    """An empty ``logq.service`` (or ECS / compose label) already fell through to the next
    rule; a blank one (``"  "``, a templating mistake) was taken as the name, and the
    aggregator, which strips it to nothing, stored the lines under ``svc-<hash>``."""
    compose = {LABEL_COMPOSE_SERVICE: "web"}
    assert service_name({LABEL_SERVICE: "  ", **compose}, "web-1") == "web"
    assert service_name({LABEL_SERVICE: "\t", LABEL_ECS_FAMILY: " \n"}, "web-1") == "web-1"
    assert service_name({LABEL_SERVICE: " api "}, "web-1") == " api "  # the aggregator strips


def generated(base: str, random: str = "x2x7k") -> str:
    """The name the API server gives an object with ``generateName: base``: the base cut to 58
    characters, then 5 random ones, no dash added (apiserver's ``names.SimpleNameGenerator``)."""
    return base[:58] + random


def test_pods_of_long_named_workloads_share_their_owner() -> None:
    """A ReplicaSet's pods are named ``generated(<rs>-)``: past 58 characters the base is cut,
    its dash with it, and the name (63 characters) no longer ends in ``-<5 random>``. Before,
    each such pod was a service of its own (the whole pod name), a new one at every restart;
    a cut through the template hash left part of it, a new service at every rollout."""
    deployment = "payments-reconciliation-worker-eu-west-1-primary"  # 48 characters
    hashes = ("7d9c8b6f5d", "6b8f7d9c4")  # cut to 9 characters; whole, its dash cut
    pods = [
        generated(f"{deployment}-{h}-", r) for h, r in zip(hashes, ("x2x7k", "qq4n9"), strict=True)
    ]
    longer = deployment + "-ab"  # 51: the cut leaves 6 of the hash's characters, then 2
    pods += [generated(f"{name}-7d9c8b6f5d-") for name in (longer, longer + "cde")]
    assert all(len(p) == 63 for p in pods)
    assert [pod_owner_name(p) for p in pods] == [deployment] * 2 + [longer, longer + "cde"]
    cron = "nightly-ledger-export-to-the-data-warehouse-eu-west1"  # 52: CronJob's longest
    assert pod_owner_name(generated(f"{cron}-29412345-")) == cron
    # Names that were not cut keep their rules.
    assert pod_owner_name(generated("a" * 55 + "-b-")) == "a" * 55 + "-b"
    assert pod_owner_name("db-" + "a" * 58 + "-0") == "db-" + "a" * 58


def test_a_pod_folder_that_is_no_utf8_keeps_its_key(tmp_path: Path) -> None:
    """The key (checkpoints, ``--exclude`` links) is made of the folder names as they are, so
    that it names one file; only what is sent is made text."""
    _, pods = hostile_host(tmp_path)
    (spec,) = Discoverer(tmp_path / "none", pods, ()).scan().specs
    folder = spec.path.parent
    assert spec.key == f"cri:{folder.parent.name}/{folder.name}/0.log"
    assert spec.container_name == "default/p\ufffdd-x2x7k/ap\ufffdp"


def test_a_63_character_name_not_cut_from_a_hash_keeps_its_old_service() -> None:
    """Only a tail a template hash or CronJob time can leave is taken for a cut (rk1, s24).
    Before, any 63-character name ending in 5 safe characters lost its last 5 (and its last
    part when made of safe characters): a bare pod (Airflow's ``<task>-<8 random>``) whose
    service was its name changed service, and two Deployments of 58 characters that differ in
    their last part (``-grpc``, ``-http``) were merged into one service."""
    airflow = "nightly-indexer-primary-worker-cron-3-prod-b-controlle-svip785z"
    bare = "scheduler-1-eu-collector-rpc-indexer-mgr-web-tcp-prome-96rl2fgd"
    for pod in (airflow, bare):
        assert len(pod) == 63
        assert pod_owner_name(pod) == pod
    twins = ["a" * 53 + "-grpc", "a" * 53 + "-http"]  # 58 characters each: their dash is cut
    owners = {pod_owner_name(generated(f"{name}-7d9c8b6f5d-")) for name in twins}
    assert len(owners) == 2
    daemonset = "node-local-dns-cache-with-a-very-long-name-for-the-eu-cluster-a"
    assert pod_owner_name(generated(daemonset + "-")) == generated(daemonset + "-")
    # Names that end in a number keep what the ordinal rule gave: the number goes.
    for n in range(1, 64):
        for ordinal in ("0", "10", "24567", "245678", "4567891"):
            name = ("db-" * 21)[:n].strip("-") or "d"
            pod = f"{name}-{ordinal}"[-63:]
            if pod.startswith(name):
                assert pod_owner_name(pod) == name, pod
