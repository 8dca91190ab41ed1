"""Which lines are tried as Envoy access lines: data planes named without "envoy" (Consul's,
Kuma's, Emissary's, ECS Service Connect's, Istio's proxyv2 image), near-miss names that are
apps, Envoy's stderr, and the ``format plain`` opt-out."""

from __future__ import annotations

import pyarrow as pa
import pytest

from aggregator.batch import records_table, route
from aggregator.decode import records_batch, to_ipc
from tests.aggregator.helpers import envoy_line, record

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns
#: What Envoy writes to stderr itself (its default log format): never an access line.
DIAG = "[2026-11-28 10:00:00.123][14][warning][config] [source/common/config/grpc.cc:1] gone"
#: Consul's default access-log format is JSON, with Istio's key names.
CONSUL_JSON = (
    '{"start_time":"2026-11-28T10:00:00.123Z","method":"GET","path":"/api","protocol":"HTTP/1.1",'
    '"response_code":503,"response_flags":"UF","bytes_received":0,"bytes_sent":91,'
    '"duration":4,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":"curl/8.5.0",'
    '"request_id":"6f1c1b9a-1d2e-4f00-9c6a-0d1e2f3a4b5c","authority":"web","upstream_host":null}'
)


def table_of(records: list[dict]) -> pa.Table:
    batch = records_batch("logq.recipe", pa.array([T0] * len(records), pa.int64()), records)
    return records_table([to_ipc(batch)])


def codes(records: list[dict]) -> list[int]:
    """Response codes of the lines that went to ``envoy_access``."""
    tables = route(table_of(records)).tables
    return tables["envoy_access"]["response_code"].to_pylist() if "envoy_access" in tables else []


@pytest.mark.parametrize(
    "image",
    [
        "hashicorp/consul-dataplane:1.5.2",  # consul-k8s
        "registry.connect.redhat.com/hashicorp/consul-dataplane-fips:1.5.2-ubi",  # FIPS build
        "public.ecr.aws/hashicorp/consul-dataplane:1.5.2",  # consul-ecs
        "kumahq/kuma-dp:2.7.3",
        "kong/kuma-dp:2.7.3",  # Kong Mesh
        "docker.io/emissaryingress/emissary:3.9.1",
        "datawire/ambassador:1.14.4",
        "datawire/aes:1.14.4",  # Ambassador Edge Stack
        "ecs-service-connect-agent:interface-v1",  # loaded by the ECS agent on EC2
        "registry.internal:5000/mesh/kuma-dp@sha256:" + "ab" * 32,
        # Istio's sidecar, in a container named freely (ECS, compose).
        "docker.io/istio/proxyv2:1.24.1",
        "gcr.io/istio-release/proxyv2:1.24.1",
        "istio/proxyv2:1.24.1-distroless",
        "istio/proxyv2@sha256:" + "cd" * 32,
    ],
)
def test_data_plane_images_named_without_envoy_are_candidates(image: str) -> None:
    rec = record(envoy_line(code=502), image=image, container_name="sidecar")
    bad = record("not an access line", image=image, container_name="sidecar")
    routed = route(table_of([rec, bad]))
    assert routed.tables["envoy_access"]["response_code"].to_pylist() == [502]
    assert routed.parse_failures == {"recipe": 1}


@pytest.mark.parametrize(
    "name",
    [
        # Kubernetes (CRI): <namespace>/<pod>/<container>, no image known.
        "shop/recipe-5d8f7c9b6d-x2x7k/consul-dataplane",
        "shop/recipe-5d8f7c9b6d-x2x7k/consul-dataplane-api",  # consul-k8s multi-port pods
        "shop/recipe-5d8f7c9b6d-x2x7k/kuma-sidecar",
        "emissary/emissary-ingress-6d9f8c7b5-x2x7k/emissary-ingress",  # the Helm chart
        "ambassador/ambassador-6d9f8c7b5-x2x7k/ambassador",  # the YAML manifests
        # ECS: the task definition's container name, and Docker's name (FireLens, fluentd).
        "consul-dataplane",
        "ecs-service-connect-nconQf",
        "/ecs-recipe-12-consul-dataplane-a4eafbb3d4c7f1e16e00",
        "/ecs-recipe-12-ecs-service-connect-nconQf-d2c7f1e16e00aa",
    ],
)
def test_data_plane_container_names_are_candidates(name: str) -> None:
    assert codes([record(envoy_line(code=503), container_name=name)]) == [503]


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("shop/brand-ambassador-api-5d8f7c9b6d-x2x7k/brand-ambassador-api", None),
        ("emissary/emissary-ingress-agent-6d9f8c7b5-x2x7k/ambassador-agent", None),
        ("emissary-system/emissary-apiext-6d9f8c7b5-x2x7k/emissary-apiext", None),
        ("kuma-system/kuma-control-plane-5d8f7c9b6d-x2x7k/control-plane", None),
        ("shop/consul-dataplane-5d8f7c9b6d-x2x7k/app", None),  # a pod, not the sidecar
        ("shop/recipe-5d8f7c9b6d-x2x7k/myconsul-dataplane", None),
        # An app of the task family service-connect-nginx (AWS's Service Connect tutorial):
        # Docker's name, as FireLens and Docker's fluentd driver send it (less its "/").
        ("ecs-service-connect-nginx-1-webserver-e8a4b1c2d3e4f5a6b7c8", None),
        ("/ecs-service-connect-nginx-1-webserver-e8a4b1c2d3e4f5a6b7c8", None),
        ("agent", "docker.io/ambassador/ambassador-agent:1.0.21"),
        ("control-plane", "kumahq/kuma-cp:2.7.3"),
        ("consul", "hashicorp/consul:1.17.1"),
        ("crypto", "mycorp/aes-vault:1.2"),
        ("app", "mycorp/ambassador-portal:3"),
        ("proxy", "mycorp/haproxyv2:2.9"),  # proxyv2 only as the repository's last part
        ("proxy", "mycorp/proxyv2-tools:1"),
        ("proxy", "proxyv2:1"),  # no repository path: not Istio's image
    ],
)
def test_near_miss_names_are_not_candidates(name: str, image: str | None) -> None:
    rec = record(envoy_line(), container_name=name, **({"image": image} if image else {}))
    routed = route(table_of([rec]))
    assert "envoy_access" not in routed.tables
    assert routed.tables["container_logs"]["message"].to_pylist() == [envoy_line()]
    assert routed.parse_failures == {}


def test_stderr_access_lines_parse_and_diagnostics_stay_uncounted() -> None:
    """Consul's ``AccessLogs { Type = "stderr" }`` writes access lines where Envoy writes its
    diagnostics: the access lines are stored as such, the rest as container lines, uncounted."""
    dp = "shop/recipe-5d8f7c9b6d-x2x7k/consul-dataplane"
    records = [
        record(CONSUL_JSON, container_name=dp, stream="stderr"),
        record(DIAG, container_name=dp, stream="stderr"),
        record(envoy_line(code=504), service="cart", container_name="envoy", stream="stderr"),
        record("not an access line", service="cart", container_name="envoy", stream="stderr"),
    ]
    routed = route(table_of(records))
    envoy = routed.tables["envoy_access"]
    assert envoy["response_code"].to_pylist() == [503, 504]
    assert envoy["response_flags"].to_pylist() == ["UF", "-"]
    assert envoy["service"].to_pylist() == ["recipe", "cart"]
    logs = routed.tables["container_logs"]
    assert logs["message"].to_pylist() == [DIAG, "not an access line"]
    assert logs["stream"].to_pylist() == ["stderr", "stderr"]
    # Stderr candidates only: no service gets a count, not even a 0 that could never grow.
    assert routed.parse_failures == {}


def test_stderr_lines_beside_stdout_ones_count_only_stdout_failures() -> None:
    name = "shop/recipe-5d8f7c9b6d-x2x7k/kuma-sidecar"
    records = [
        record(envoy_line(code=200), container_name=name),
        record("[bad] stdout line", container_name=name),
        record(DIAG, container_name=name, stream="stderr"),
        record(envoy_line(code=201), container_name=name, stream="stderr"),
        record(envoy_line(), service="cart", container_name="envoy", stream="stderr"),
    ]
    routed = route(table_of(records))
    assert routed.tables["envoy_access"]["response_code"].to_pylist() == [200, 201, 200]
    assert routed.tables["container_logs"]["message"].to_pylist() == ["[bad] stdout line", DIAG]
    assert routed.parse_failures == {"recipe": 1}


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("shop/recipe-5d8f7c9b6d-x2x7k/consul-dataplane", None),
        ("shop/recipe-5d8f7c9b6d-x2x7k/kuma-sidecar", None),
        ("ambassador/ambassador-6d9f8c7b5-x2x7k/ambassador", None),
        ("ecs-service-connect-nconQf", None),
        ("sidecar", "kong/kuma-dp:2.7.3"),
        ("sidecar", "datawire/aes:1.14.4"),
        ("sidecar", "ecs-service-connect-agent:interface-v1"),
    ],
)
def test_format_plain_opts_every_new_rule_out(name: str, image: str | None, stream: str) -> None:
    extra = {"image": image} if image else {}
    rec = record(envoy_line(), container_name=name, stream=stream, format="plain", **extra)
    routed = route(table_of([rec]))
    assert "envoy_access" not in routed.tables
    assert routed.tables["container_logs"].num_rows == 1
    assert routed.parse_failures == {}


#: A data plane's own log lines, as its programs print them by default (aggregator/
#: envoy_diagnostics.py): Envoy's log, Istio's pilot-agent and Envoy under Istio, kuma-dp (zap),
#: consul-dataplane (hclog), Emissary's entrypoint (logrus) and diagd.
OWN_LINES = [
    DIAG,
    "[2026-11-28 10:00:00.123][1][info][main] initializing epoch 0",
    "2026-11-28T10:00:00.123456Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod:15012",
    "2026-11-28T10:00:00.123456Z\twarning\tenvoy config external/envoy/source/x.cc:1\tgone\t"
    "thread=15",
    '2026-11-28T10:00:00.123Z\tINFO\tkuma-dp.run\tstarting Kuma DP\t{"version": "2.7.3"}',
    "2026-11-28T10:00:00.123Z [INFO]  consul-dataplane: started consul-dataplane process",
    'time="2026-11-28 10:00:00.1234" level=info msg="Started Ambassador" func=main',
    "2026-11-28 10:00:00 diagd 3.9.1 [P15TMainThread] INFO: starting Envoy",
    '{"level":"info","time":"2026-11-28T10:00:00.123456Z","scope":"ads","msg":"ADS: new"}',
    '{"@level":"info","@message":"started","@module":"consul-dataplane","@timestamp":"x"}',
    "2026-11-28T11:00:00.123+0100\tINFO\tkuma-dp.run\tstarting Kuma DP",
    # Not the data plane's own, but as hopeless: Kuma's TCP format, no response code to store.
    "[2026-11-28T14:00:00.123Z] - default 10.244.0.12(frontend_kuma-demo_svc_8080)->"
    "10.244.0.15:6379(redis_kuma-demo_svc_6379) took 1234ms, sent 100 bytes, received: 200 bytes",
]


def test_a_data_planes_own_lines_on_stdout_are_kept_but_not_counted() -> None:
    """Istio's pilot-agent logs to stdout beside Envoy's access lines (and Envoy itself may,
    with ``--log-path /dev/stdout``): those lines are no access line that failed to parse, so
    the failure metric, which an alert watches, must not rise with them. A line that is
    neither still counts."""
    name = "shop/recipe-5d8f7c9b6d-x2x7k/istio-proxy"
    broken = '[2026-11-28T10:00:00.123Z] "GET /api HTTP/1.1" 200 - cut short'
    records = [record(line, container_name=name) for line in [envoy_line(), *OWN_LINES, broken]]
    routed = route(table_of(records))
    assert routed.tables["envoy_access"]["response_code"].to_pylist() == [200]
    assert routed.tables["container_logs"]["message"].to_pylist() == [*OWN_LINES, broken]
    assert routed.parse_failures == {"recipe": 1}


@pytest.mark.parametrize(
    "line",
    [
        envoy_line(),
        CONSUL_JSON,
        "[2026-11-28 10:00:00.123] app started",  # no thread or level: an app's own line
        "2026-11-28T10:00:00Z info not tab-separated",
        '"time=\\"x\\" level=info" quoted',
        '{"start_time":"2026-11-28T10:00:00.123Z","level":"info","response_code":200}',
        # A JSON access line in a format logq does not read, with a static level key first.
        '{"level":"info","time":"2026-11-28T10:00:00.123Z","code":200,"path":"/"}',
        '{"@level":"info","@timestamp":"2026-11-28T10:00:00.123Z","status_code":"x"}',
    ],
)
def test_access_lines_and_app_lines_are_not_taken_for_a_data_planes_own(line: str) -> None:
    from aggregator.envoy_diagnostics import diagnostic

    assert diagnostic(pa.array([line, None])).to_pylist() == [False, False]
