"""Records of stock Fluent Bit (kubernetes filter), ECS FireLens and Docker's fluentd log driver
get logq's service, stream, container and host from their own metadata (aggregator.clientmeta).

The shapes are those these clients send (Fluent Bit's kubernetes filter, FireLens's
``ecs_*`` keys, Docker's ``source``/``/name``). Two go through a real ``logq-aggregator``
process: FireLens-shaped records with the PyPI ``fluent-logger`` (Message mode), Fluent-Bit-
Kubernetes-shaped ones as CompressedPackedForward with an ack (Fluent Bit's ``Compress gzip``).
The rest decode through :func:`aggregator.decode.decode` on every path (msgspec PackedForward,
Forward, Message) and :func:`aggregator.batch.route`.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pytest
from fluent import sender

from aggregator import batch as routing
from aggregator import decode as dec
from aggregator import packed, tags
from shipper import wire
from tests.aggregator.helpers import (
    envoy_line,
    read_acks,
    read_table,
    start_aggregator,
    wait_rows,
)
from tests.support import pipeline
from tests.support.procs import free_port, wait_until

DOCKER_ID = "4f3a" + "0" * 56 + "beef"
POD = "recipe-7d9f8b6c5d-x2x9z"
#: How logq-shipper names the container too: namespace and pod tell replicas apart.
ENVOY_NAME = f"default/{POD}/envoy"
K8S_TAG = f"kube.var.log.containers.{POD}_default_envoy-{DOCKER_ID}.log"
IMAGE = "envoyproxy/envoy:v1.31.2"
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0f4e8d2c6b7a4b1e9c3d5f7a9b1c3d5e"
ENVOY_DIAG = "[2026-11-29 10:00:00.000][1][info][main] [source/server/server.cc:432] initializing"
#: Docker's name of consul-ecs's sidecar, as FireLens sends it.
CONSUL_DOCKER_NAME = "/ecs-recipe-12-consul-dataplane-b6fbbc4e5d8f2a27f100"


def _now_line() -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return envoy_line(when=when)


def kube_record(log: str, stream: str = "stdout", **kube: Any) -> dict[str, Any]:
    """A record of Fluent Bit's tail input + kubernetes filter (Merge_Log off)."""
    meta: dict[str, Any] = {
        "pod_name": POD,
        "namespace_name": "default",
        "pod_id": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "labels": {"app": "recipe", "pod-template-hash": "7d9f8b6c5d"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-28T10:00:00Z"},
        "host": "node-1",
        "container_name": "envoy",
        "docker_id": DOCKER_ID,
        "container_hash": "envoyproxy/envoy@sha256:" + "ab" * 32,
        "container_image": IMAGE,
    }
    meta.update(kube)
    return {
        "log": log + "\n",
        "stream": stream,
        "time": "2026-11-29T10:00:00.123456789Z",
        "kubernetes": meta,
    }


def firelens_record(log: str, source: str = "stdout", **over: Any) -> dict[str, Any]:
    """A record of the Fluent Bit FireLens runs inside an ECS task (EC2 launch type)."""
    rec: dict[str, Any] = {
        "source": source,
        "log": log,
        "container_id": DOCKER_ID,
        "container_name": "/ecs-recipe-12-envoy-a4eafbb3d4c7f1e16e00",
        "ecs_cluster": "prod",
        "ecs_task_arn": TASK_ARN,
        "ecs_task_definition": "recipe:12",
    }
    rec.update(over)
    return rec


def docker_record(log: str, source: str = "stdout") -> dict[str, Any]:
    """A record of Docker's fluentd log driver (its default tag is the short container id)."""
    return {
        "container_id": DOCKER_ID,
        "container_name": "/recipe-envoy-1",
        "source": source,
        "log": log,
    }


T0 = 1_795_860_000_123_456_789


def _event_time(ns: int) -> wire.EventTime:
    return wire.EventTime(ns // 1_000_000_000, ns % 1_000_000_000)


def decode_all_ways(tag: str, records: list[dict[str, Any]]) -> pa.RecordBatch:
    """The batch of ``records`` as PackedForward (msgspec path), Forward and Message mode; all
    three must be equal (and the general path's too)."""
    frame = wire.encode_packed_forward(tag, [(T0 + i, r) for i, r in enumerate(records)])
    obj = msgpack.unpackb(frame, raw=False)
    batch, _ = dec.decode(obj, 1 << 30)
    general = dec._fast_entries(tag, dec._unpack_entries(obj[1]))
    assert general is not None
    assert batch.equals(general[0])
    forward = [tag, [[_event_time(T0 + i), r] for i, r in enumerate(records)]]
    assert dec.decode(forward, 1 << 30)[0].equals(batch)
    for i, r in enumerate(records):
        message = [tag, _event_time(T0 + i), r]
        assert dec.decode(message, 1 << 30)[0].to_pylist() == batch.slice(i, 1).to_pylist()
    return batch


def column(batch: pa.RecordBatch, name: str) -> list[Any]:
    return batch.column(name).to_pylist()


def routed(batch: pa.RecordBatch) -> routing.Routed:
    return routing.route(pa.Table.from_batches([batch]))


# --- unit level: every decode path ----------------------------------------------------------


def test_fluent_bit_kubernetes_records_get_service_container_image_host() -> None:
    records = [kube_record(_now_line()), kube_record(ENVOY_DIAG, stream="stderr")]
    batch = decode_all_ways(K8S_TAG, records)
    assert column(batch, "service") == ["recipe", "recipe"]  # the pod's owner, not "log"
    assert column(batch, "stream") == ["stdout", "stderr"]
    assert column(batch, "container_name") == [ENVOY_NAME, ENVOY_NAME]
    assert column(batch, "container_id") == [DOCKER_ID, DOCKER_ID]
    assert column(batch, "host") == ["node-1", "node-1"]
    assert column(batch, "image") == [IMAGE, IMAGE]
    out = routed(batch)
    assert out.tables["envoy_access"]["service"].to_pylist() == ["recipe"]
    assert out.tables["container_logs"]["message"].to_pylist() == [ENVOY_DIAG]
    assert out.parse_failures == {"recipe": 0}


def test_a_shipper_sized_kubernetes_message_takes_the_msgspec_path() -> None:
    records = [kube_record(f"line {i}") for i in range(100)]
    frame = wire.encode_packed_forward(K8S_TAG, [(T0 + i, r) for i, r in enumerate(records)])
    obj = msgpack.unpackb(frame, raw=False)
    cols = packed.client_columns(obj[1], obj[2]["size"], dec.DICT_STRING)
    assert cols is not None  # not declined to the general path
    batch = decode_all_ways(K8S_TAG, records)
    assert set(column(batch, "service")) == {"recipe"}
    assert set(column(batch, "container_name")) == {ENVOY_NAME}


@pytest.mark.parametrize(
    ("kube", "service"),
    [
        ({"labels": {"logq.service": "checkout"}}, "checkout"),  # the label wins
        # An empty or blank label names nothing: the pod's owner, as logq-shipper decides
        # (shipper.discover.service_name), not one `svc-<hash>` folder for every such pod.
        ({"labels": {"logq.service": ""}, "pod_name": "db-0"}, "db"),
        ({"labels": {"logq.service": " \t"}, "pod_name": "db-0"}, "db"),
        ({"pod_name": "report-28391234-x2x7k"}, "report"),  # CronJob
        ({"pod_name": "db-0"}, "db"),  # StatefulSet
        ({"pod_name": "agent-x2x7k"}, "agent"),  # DaemonSet
        # A static pod (``<name>-<node>``), told by the kubelet's config hash annotation ...
        (
            {
                "pod_name": "kube-apiserver-node-a",
                "host": "node-a",
                "annotations": {"kubernetes.io/config.hash": "0123456789abcdef0123456789abcdef"},
            },
            "kube-apiserver",
        ),
        # ... and a regular pod whose name happens to end with the node's stays whole.
        ({"pod_name": "spark-node-a", "host": "node-a"}, "spark-node-a"),
    ],
)
def test_kubernetes_service_follows_the_shippers_rules(kube: dict[str, Any], service: str) -> None:
    batch = decode_all_ways(K8S_TAG, [kube_record("hello", **kube)])
    assert column(batch, "service") == [service]


#: Services that name nothing: empty, and blank (only whitespace, Unicode's too).
NO_NAMES = ["", " ", "   ", "\t\n", "\u00a0", "\u3000 "]


@pytest.mark.parametrize("blank", NO_NAMES)
def test_a_blank_service_takes_the_next_source_as_an_empty_one_does(blank: str) -> None:
    """A record's own ``service`` of only whitespace names nothing
    (:func:`shipper.discover.names_service`): the tag's service (a kubelet log's pod owner), as
    for an empty one, not a ``svc-<hash>`` folder per run of spaces. A message mixing it with a
    named record keeps that record's name."""
    plain = decode_all_ways("app.checkout", [{"log": "a", "service": blank}, {"log": "b"}])
    named = decode_all_ways("app.checkout", [{"log": "c", "service": "orders"}] * 2)
    mixed = decode_all_ways(
        "app.checkout", [{"log": "d", "service": blank}, {"log": "e", "service": "orders"}]
    )
    kube = decode_all_ways(K8S_TAG, [{**kube_record("f"), "service": blank}])
    assert routed(plain).tables["container_logs"]["service"].to_pylist() == ["checkout"] * 2
    assert routed(named).tables["container_logs"]["service"].to_pylist() == ["orders"] * 2
    assert routed(mixed).tables["container_logs"]["service"].to_pylist() == ["checkout", "orders"]
    assert routed(kube).tables["container_logs"]["service"].to_pylist() == ["recipe"]


def test_firelens_records_get_family_stream_and_bare_container_name() -> None:
    records = [firelens_record(_now_line()), firelens_record(ENVOY_DIAG, source="stderr")]
    batch = decode_all_ways("envoy-firelens-0f4e8d2c6b7a4b1e9c3d5f7a9b1c3d5e", records)
    assert column(batch, "service") == ["recipe", "recipe"]  # not one service per task
    assert column(batch, "stream") == ["stdout", "stderr"]
    # The task definition's container name, as logq-shipper names it on ECS (not Docker's
    # ecs-recipe-12-envoy-a4eafbb3d4c7f1e16e00, new at every task).
    assert column(batch, "container_name") == ["envoy"] * 2
    out = routed(batch)
    assert out.tables["envoy_access"]["service"].to_pylist() == ["recipe"]
    assert out.tables["container_logs"]["stream"].to_pylist() == ["stderr"]
    assert out.parse_failures == {"recipe": 0}  # the stderr line is no failed access line


@pytest.mark.parametrize(
    ("docker_name", "task_definition", "expected"),
    [
        # Docker's name of an ECS container: ecs-<family>-<revision>-<container>-<20 hex>.
        ("/ecs-recipe-12-app-e8a4f0d2c1b3a59ae201", "recipe:12", "app"),
        ("/ecs-recipe-12-order-api-e8a4f0d2c1b3a59ae201", "recipe:12", "order-api"),
        (
            "/ecs-my_family-3-ecs-service-connect-1a2B-00aa11bb22cc33dd44ee",
            "my_family:3",
            "ecs-service-connect-1a2B",
        ),
        # Fluent Bit's ecs filter: ADD container_name $DockerContainerName and
        # ADD ecs_task_definition $TaskDefinitionFamily (no revision there).
        ("ecs-recipe-12-app-e8a4f0d2c1b3a59ae201", "recipe", "app"),
        # Digits in the family and in the container's name.
        ("/ecs-svc-2-5-3-x-00aa11bb22cc33dd44ee", "svc-2:5", "3-x"),
        ("/ecs-svc-2-3-x-00aa11bb22cc33dd44ee", "svc:2", "3-x"),
        # Not that task's container: kept as sent (less Docker's leading /).
        (
            "/ecs-other-12-app-e8a4f0d2c1b3a59ae201",
            "recipe:12",
            "ecs-other-12-app-e8a4f0d2c1b3a59ae201",
        ),
        (
            "/ecs-recipe-13-app-e8a4f0d2c1b3a59ae201",
            "recipe:12",
            "ecs-recipe-13-app-e8a4f0d2c1b3a59ae201",
        ),
        ("/ecs-recipe-12-app", "recipe:12", "ecs-recipe-12-app"),
        # The agent's random part is 20 hex digits (RandHex: 10 bytes): a name without it
        # whose last word reads as hex is not cut there ("web-cafe" is no container "web").
        ("/ecs-recipe-12-web-cafe", "recipe:12", "ecs-recipe-12-web-cafe"),
        ("/ecs-recipe-12-web-e8a4f0d2c1b3", "recipe:12", "ecs-recipe-12-web-e8a4f0d2c1b3"),
        ("/app", "recipe:12", "app"),  # Fargate names it as the task definition does
    ],
)
def test_an_ecs_containers_docker_name_becomes_its_task_definition_name(
    docker_name: str, task_definition: str, expected: str
) -> None:
    """FireLens (Docker's fluentd driver) sends Docker's generated name; logq-shipper stores the
    ECS container name (label com.amazonaws.ecs.container-name): both agree, so a fleet half
    on FireLens or Fluent Bit and half on logq-shipper gives one name per container."""
    rec = firelens_record("x", container_name=docker_name, ecs_task_definition=task_definition)
    batch = decode_all_ways("app-firelens-0f4e8d2c6b7a4b1e9c3d5f7a9b1c3d5e", [rec])
    assert column(batch, "container_name") == [expected]
    assert column(batch, "service") == [task_definition.partition(":")[0]]


def test_fluent_bit_ecs_filter_records_get_the_task_definitions_container_name() -> None:
    """Fluent Bit tailing Docker's files on ECS EC2, with its ecs filter's ``ADD
    ecs_task_definition $TaskDefinitionFamily`` and ``ADD container_name
    $DockerContainerName``: a ``stream`` key, no ``source``."""
    tag = f"ecs.var.lib.docker.containers.{DOCKER_ID}.{DOCKER_ID}-json.log"
    rec = {
        "log": "hello\n",
        "stream": "stderr",
        "ecs_task_definition": "recipe",
        "container_name": "ecs-recipe-12-app-e8a4f0d2c1b3a59ae201",
    }
    batch = decode_all_ways(tag, [rec, dict(rec, container_name="sidecar")])
    assert column(batch, "container_name") == ["app", "sidecar"]
    assert column(batch, "service") == ["recipe", "recipe"]
    assert column(batch, "stream") == ["stderr", "stderr"]


def test_docker_fluentd_driver_stream_and_container_name() -> None:
    records = [docker_record(_now_line()), docker_record(ENVOY_DIAG, source="stderr")]
    batch = decode_all_ways(DOCKER_ID[:12], records)
    # The default tag (the short id) names no service: the container's name does.
    assert column(batch, "service") == ["recipe-envoy-1", "recipe-envoy-1"]
    assert column(batch, "stream") == ["stdout", "stderr"]
    assert column(batch, "container_name") == ["recipe-envoy-1", "recipe-envoy-1"]
    assert column(batch, "container_id") == [DOCKER_ID, DOCKER_ID]
    out = routed(batch)
    assert len(out.tables["envoy_access"]) == 1
    assert out.tables["container_logs"]["stream"].to_pylist() == ["stderr"]
    assert out.parse_failures == {"recipe-envoy-1": 0}


def test_docker_fluentd_driver_with_its_own_tag_keeps_the_tag_rule() -> None:
    batch = decode_all_ways("docker.checkout", [docker_record("order 1")])
    assert column(batch, "service") == [None]  # route() takes "checkout" from the tag
    assert routed(batch).tables["container_logs"]["service"].to_pylist() == ["checkout"]
    assert column(batch, "container_name") == ["recipe-envoy-1"]


def test_a_kubernetes_map_without_a_namespace_gives_the_bare_container_name() -> None:
    rec = kube_record("hello")
    del rec["kubernetes"]["namespace_name"]
    batch = decode_all_ways(K8S_TAG, [rec])
    assert column(batch, "container_name") == ["envoy"]


def test_a_clients_own_top_level_keys_win() -> None:
    """Fluent Bit's ``Merge_Log On`` lifts the application's keys: they are the record's."""
    rec = kube_record("hello", labels={"logq.service": "from-label"})
    rec.update(service="own", host="own-host", stream="stderr")
    rec["source"] = "stdout"
    batch = decode_all_ways(K8S_TAG, [rec])
    assert column(batch, "service") == ["own"]
    assert column(batch, "host") == ["own-host"]
    assert column(batch, "stream") == ["stderr"]
    assert column(batch, "container_name") == [ENVOY_NAME]  # the one key it lacked


def test_records_without_client_metadata_are_unchanged() -> None:
    """A fluent-logger record keeps the tag rule; a leading ``/`` is only Docker's when the
    record also has Docker's ``source``."""
    batch = decode_all_ways("app.checkout", [{"message": "order 1", "container_name": "/x"}])
    assert column(batch, "service") == [None]
    assert column(batch, "stream") == [None]
    assert column(batch, "container_name") == ["/x"]


HOSTILE: list[dict[str, Any]] = [
    {"log": "a", "kubernetes": "not a map"},
    {"log": "b", "kubernetes": [1, 2, 3]},
    {"log": "c", "kubernetes": {"pod_name": 5, "host": ["x"], "labels": "app=x"}},
    {"log": "d", "kubernetes": {"labels": [["logq.service", "x"]], "annotations": 7}},
    {"log": "e", "kubernetes": {"labels": {"logq.service": {"k": 1}}, "container_name": b"env"}},
    {"log": "f", "kubernetes": {1: "x", "pod_name": "p" * 100_000}},
    {"log": "g", "kubernetes": {f"k{i}": {"v": i} for i in range(20_000)}},
    {"log": "h", "source": {"stdout": 1}, "ecs_task_definition": 12},
    {"log": "i", "source": "console", "ecs_task_definition": ":"},
    {"log": "j", "kubernetes": None, "source": None, "ecs_task_definition": None},
    {"log": "k", "kubernetes": {"pod_name": "-" * 252 + "x"}},
]


def test_hostile_metadata_is_treated_as_absent() -> None:
    batch = decode_all_ways("app.hostile", HOSTILE)
    assert column(batch, "log") == list("abcdefghijk")
    assert column(batch, "service")[:-1] == [None] * 10
    assert column(batch, "service")[-1] == "-" * 252 + "x"  # a name like any other
    for key in ("stream", "container_name", "host", "image", "container_id"):
        assert column(batch, key) == [None] * len(HOSTILE), key
    assert routed(batch).tables["container_logs"].num_rows == len(HOSTILE)


def test_invalid_utf8_in_metadata_is_replaced_not_fatal() -> None:
    entry = msgpack.packb(
        [
            msgpack.ExtType(0, (1_795_860_000).to_bytes(4, "big") + bytes(4)),
            {"log": "x", "source": "stdout", "ecs_task_definition": "recXipe:3"},
        ],
        use_bin_type=True,
    ).replace(b"recXipe", b"rec\xffipe")
    batch, _ = dec.decode(["tag", entry, {"size": 1}], 1 << 30)
    # Its partition value: the bad byte dropped, a hash of the name as sent keeping it apart
    # from a service named recipe (athena.schema.sanitize_service).
    assert column(batch, "service") == ["recipe-" + hashlib.sha1(b"rec\xffipe").hexdigest()[:10]]
    assert column(batch, "stream") == ["stdout"]


# --- real aggregator processes ---------------------------------------------------------------


@pytest.mark.integration
def test_firelens_through_fluent_logger_lands_by_task_family(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    warehouse = str(tmp_path / "warehouse")
    metrics_port = free_port()
    agg = pipeline.start_aggregator(
        warehouse, tmp_path, subprocess_env, "--metrics-listen", f"127.0.0.1:{metrics_port}"
    )
    try:
        logger = sender.FluentSender(
            "envoy-firelens-0f4e8d2c6b7a4b1e9c3d5f7a9b1c3d5e",
            host="127.0.0.1",
            port=agg.port,
            nanosecond_precision=True,
        )
        assert logger.emit(None, firelens_record(_now_line())), logger.last_error
        assert logger.emit(None, firelens_record(ENVOY_DIAG, source="stderr")), logger.last_error
        # consul-ecs's sidecar, with Consul's proxy-defaults AccessLogs { Type = "stderr" }: its
        # access lines share stderr with Envoy's diagnostics.
        for line in (_now_line().replace("/api/items", "/consul"), ENVOY_DIAG + " (consul)"):
            rec = firelens_record(line, source="stderr", container_name=CONSUL_DOCKER_NAME)
            assert logger.emit(None, rec), logger.last_error
        logger.close()
        wait_until(
            lambda: all(
                read_table(warehouse, t).num_rows for t in ("envoy_access", "container_logs")
            ),
            120,
            "rows in both tables",
            proc=agg.proc,
            log=agg.log,
        )
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def scraped() -> str:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read().decode()

        # The files are visible a moment before the flush's metrics are recorded.
        series = 'logq_aggregator_envoy_parse_failures_total{service="recipe"}'
        wait_until(lambda: series in scraped(), 60, "the flush's metrics", proc=agg.proc)
        metrics = scraped()
    finally:
        assert agg.terminate() == 0
    sql = "SELECT service, container_name, path FROM envoy_access ORDER BY container_name"
    access = pipeline.logq_json_in_process(["sql", sql, "--warehouse", warehouse], subprocess_env)
    assert access == [
        {
            "service": "recipe",
            "container_name": "consul-dataplane",
            "path": "/consul?id=5&sort=asc",
        },
        {
            "service": "recipe",
            "container_name": "envoy",
            "path": "/api/items?id=5&sort=asc",
        },
    ]
    sql = "SELECT service, stream, message FROM container_logs ORDER BY message"
    logs = pipeline.logq_json_in_process(["sql", sql, "--warehouse", warehouse], subprocess_env)
    assert logs == [
        {"service": "recipe", "stream": "stderr", "message": ENVOY_DIAG},
        {"service": "recipe", "stream": "stderr", "message": ENVOY_DIAG + " (consul)"},
    ]
    assert 'logq_aggregator_envoy_parse_failures_total{service="recipe"} 0.0' in metrics


@pytest.mark.integration
def test_fluent_bit_kubernetes_compressed_packed_forward_lands_by_pod_owner(
    tmp_path: Path,
) -> None:
    agg = start_aggregator(tmp_path)
    now = time.time_ns()
    records = [kube_record(_now_line()) for _ in range(3)] + [
        kube_record(ENVOY_DIAG, stream="stderr")
    ]
    try:
        with agg.connect() as sock:
            entries = [(now + i, r) for i, r in enumerate(records)]
            sock.sendall(wire.encode_packed_forward(K8S_TAG, entries, "k1", compress=True))
            assert read_acks(sock, 1) == ["k1"]
        access = wait_rows(agg.warehouse, "envoy_access", 3, agg, timeout=120)
        logs = wait_rows(agg.warehouse, "container_logs", 1, agg, timeout=120)
    finally:
        assert agg.stop() == 0
    assert set(access["service"].to_pylist()) == {"recipe"}
    assert set(access["container_name"].to_pylist()) == {ENVOY_NAME}
    assert set(access["host"].to_pylist()) == {"node-1"}
    assert set(access["container_id"].to_pylist()) == {DOCKER_ID}
    assert logs.select(["service", "stream", "message"]).to_pylist() == [
        {"service": "recipe", "stream": "stderr", "message": ENVOY_DIAG}
    ]


def test_a_message_mixing_clients_and_pods_fills_each_record() -> None:
    """One message of several shapes (a Fluentd aggregator relaying): each record by its own
    metadata, on the msgspec path as on the general one."""
    records = [
        kube_record("a"),
        kube_record("b", pod_name="db-0", container_name="postgres", container_image="pg:16"),
        firelens_record("c", source="stderr"),
        {"log": "d", "service": "plain"},
        docker_record("e"),
        kube_record("f"),
    ]
    frame = wire.encode_packed_forward("relay", [(T0 + i, r) for i, r in enumerate(records)])
    obj = msgpack.unpackb(frame, raw=False)
    assert packed.client_columns(obj[1], obj[2]["size"], dec.DICT_STRING, "relay") is not None
    batch = decode_all_ways("relay", records)
    assert column(batch, "service") == ["recipe", "db", "recipe", "plain", None, "recipe"]
    assert column(batch, "container_name") == [
        ENVOY_NAME,
        "default/db-0/postgres",
        "envoy",
        None,
        "recipe-envoy-1",
        ENVOY_NAME,
    ]
    assert column(batch, "image") == [IMAGE, "pg:16", None, None, None, IMAGE]
    assert column(batch, "stream") == ["stdout", "stdout", "stderr", None, "stdout", "stdout"]


def test_fluent_bit_5_entries_with_metadata_fill_too() -> None:
    """Fluent Bit >= 5.0.5 sends ``[[EventTime, {metadata}], record]`` entries."""
    entries = [[[_event_time(T0), {}], kube_record("x")]]
    blob = b"".join(wire.pack(e) for e in entries)
    for obj in ([K8S_TAG, entries], [K8S_TAG, blob, {"size": 1, "compressed": "text"}]):
        batch, _ = dec.decode(obj, 1 << 30)
        assert column(batch, "service") == ["recipe"]
        assert column(batch, "container_name") == [ENVOY_NAME]


@pytest.mark.parametrize(
    ("tag", "is_one"),
    [
        (f"ecs.var.lib.docker.containers.{DOCKER_ID}.{DOCKER_ID}-json.log", True),
        (f"kube.var.log.pods.default_{POD}_0b1c.envoy.0.log", True),  # /var/log/pods
        ("docker.srv.app.logs.app.log", True),  # Fluentd's in_tail on a plain file
        (K8S_TAG, False),  # the kubelet's full file name: the pod's owner names the service
        ("app.log", False),  # chosen as it is: a folder and a file name at least
        ("kube.var.log.containers.x.gz", False),
        ("recipe", False),
    ],
)
def test_file_path_tags(tag: str, is_one: bool) -> None:
    assert tags.file_path_tag(tag) is is_one


@pytest.mark.integration
def test_records_a_file_path_tag_leaves_in_service_log_are_named_in_a_warning(
    tmp_path: Path,
) -> None:
    """Fluent Bit tailing Docker's files on ECS EC2 (``Tag ecs.*``, as its ecs filter's
    examples do) tags them ``ecs.var.lib.docker.containers.<id>.<id>-json.log``: without the
    filter's ``ADD ecs_task_definition`` every container of the host lands in one service,
    ``log``, the tag's last part. The aggregator says so, naming the tag and the fix."""
    docker_tag = f"ecs.var.lib.docker.containers.{DOCKER_ID}.{DOCKER_ID}-json.log"
    agg = start_aggregator(tmp_path)
    now = time.time_ns()
    try:
        with agg.connect() as sock:
            named = {"log": "named", "stream": "stdout", "ecs_task_definition": "recipe"}
            sock.sendall(wire.encode_packed_forward(docker_tag, [(now, named)], "n1"))
            # Fluent Bit's kubernetes filter absent, the kubelet's full file name: the pod's
            # owner names the service, not "log".
            sock.sendall(wire.encode_packed_forward(K8S_TAG, [(now, {"log": "pod"})], "n2"))
            sock.sendall(wire.encode_packed_forward("logs.log", [(now, {"log": "x"})], "n3"))
            assert read_acks(sock, 3) == ["n1", "n2", "n3"]
            wait_rows(agg.warehouse, "container_logs", 3, agg, timeout=120)
            quiet = agg.log_text()
            unnamed = {"log": "unnamed", "stream": "stdout"}
            sock.sendall(wire.encode_packed_forward(docker_tag, [(now, unnamed)], "u1"))
            assert read_acks(sock, 1) == ["u1"]
        logs = wait_rows(agg.warehouse, "container_logs", 4, agg, timeout=120)
    finally:
        assert agg.stop() == 0
    said = agg.log_text()[len(quiet) :]
    services = dict(zip(logs["message"].to_pylist(), logs["service"].to_pylist(), strict=True))
    assert services == {"named": "recipe", "pod": "recipe", "x": "log", "unnamed": "log"}
    # A tag that is not a file's path ("logs.log" names its service on purpose) is not one.
    assert "name no service" not in quiet
    assert "name no service: stored under the tag's last part, 'log'" in said
    assert f"tag={docker_tag}" in said
    assert "ADD ecs_task_definition $TaskDefinitionFamily" in said
