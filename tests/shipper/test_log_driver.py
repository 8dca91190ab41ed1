"""A Docker container whose log driver is not json-file writes no ``<id>-json.log``: its output
never reaches the shipper. ECS's console defaults task definitions to ``awslogs``; such a
container was passed over in silence, a service missing from ``logq services`` with nothing
in the shipper's log to say why. Now discovery says it, once per service and driver."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shipper import discover as discover_mod
from shipper.discover import Discoverer

FAMILY = "com.amazonaws.ecs.task-definition-family"


def _container(root: Path, cid: str, driver: str | None, labels: dict[str, str]) -> Path:
    """A container folder as dockerd leaves it before (or without) any json-file log."""
    d = root / cid
    d.mkdir(parents=True)
    config = {"ID": cid, "Name": f"/ecs-{cid[:6]}", "Config": {"Image": "x:1", "Labels": labels}}
    (d / "config.v2.json").write_text(json.dumps(config))
    host: dict[str, object] = {"NetworkMode": "bridge"}
    if driver is not None:
        host["LogConfig"] = {"Type": driver, "Config": {}}
    (d / "hostconfig.json").write_text(json.dumps(host))
    return d


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discover_mod, "_OTHER_DRIVER", {}, raising=False)


def test_a_container_of_another_log_driver_is_named_once_per_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "containers"
    # Two tasks of one family on awslogs, one of another family on fluentd (FireLens).
    _container(root, "a" * 64, "awslogs", {FAMILY: "recipe"})
    _container(root, "b" * 64, "awslogs", {FAMILY: "recipe"})
    _container(root, "c" * 64, "fluentd", {FAMILY: "billing"})
    # Not said: json-file containers not started yet (named, or Docker's default), and one
    # kept out on purpose.
    started = _container(root, "d" * 64, "json-file", {FAMILY: "web"})
    _container(root, "e" * 64, None, {FAMILY: "web"})
    _container(root, "f" * 64, "awslogs", {FAMILY: "debug", "logq.exclude": "true"})
    d = Discoverer(root, tmp_path / "pods", ())
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        assert d.scan().specs == []
        (started / f"{'d' * 64}-json.log").write_bytes(b"")  # it started
        assert [s.service for s in d.scan().specs] == ["web"]
    said = [r.getMessage() for r in caplog.records if "log driver" in r.getMessage()]
    assert len(said) == 2, said
    recipe = next(m for m in said if "service=recipe" in m)
    assert "'awslogs' log driver" in recipe
    assert "logConfiguration.logDriver" in recipe
    assert any("'fluentd' log driver" in m and "service=billing" in m for m in said)
