"""deploy/: the Kubernetes manifest and the ECS task definitions, checked without a cluster.

No kubectl, cluster or AWS account here, so the manifests are checked against the real programs
and against each other, like docker-compose.yml in tests/test_compose.py: every logq container
runs one of our console scripts with flags its real ``--help`` lists; the shippers' aggregator
addresses name the aggregator pods (or ECS names) and the port the aggregator listens on; probes
and health checks hit the ``--metrics-listen`` port (readiness ``/healthz``, liveness and the ECS
check ``/metrics``); every path flag has a mount
(read-only where the shipper only reads) and is writable by the user the container runs as (a
host path is created root's: the image's ``logq`` user needs fsGroup, or a root ``chown`` that the
ECS aggregator waits for); the ECS task definitions pass botocore's validation of
``RegisterTaskDefinition`` (what ``aws ecs register-task-definition --cli-input-json`` sends).
Two tests run processes: the ECS health check command and the Kubernetes probe paths against a
real ``logq-aggregator`` (healthy, then with failing flushes, then a closed port), and the
DaemonSet's own shipper argv against a generated /var/log/pods.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from tests.support.pipeline import start_aggregator, start_shipper
from tests.support.procs import (
    LOCALHOST,
    console_script,
    free_port,
    log_tail,
    port_open,
    wait_until,
)
from tests.test_compose import dockerfile_user_dirs, flag_values, help_flags, our_programs

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes" / "logq.yaml"
ECS_AGGREGATOR = ROOT / "deploy" / "ecs" / "aggregator-task.json"
ECS_SHIPPER = ROOT / "deploy" / "ecs" / "shipper-task.json"
NAMESPACE = "logq"
IMAGE_UID = 10001  # the Dockerfile's `logq` user
PATH_FLAGS = ("--buffer-dir", "--state-dir", "--cri-root", "--docker-root")
READ_ONLY_FLAGS = ("--cri-root", "--docker-root")
WORKLOAD_KINDS = ("StatefulSet", "DaemonSet", "Deployment", "CronJob", "Job")
#: Fluentd's default chunk_limit_size (memory buffer, 8 MB = 8 MiB: Fluentd sizes are 1024-based)
#: plus room: the smallest --max-frame-bytes a deployment may set (docs/operations.md, clients).
MIN_FRAME_BYTES = 10 * 2**20


# -- loading --------------------------------------------------------------------------------------


@cache
def k8s_docs() -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(K8S.read_text()) if d)


def k8s(kind: str, name: str) -> dict[str, Any]:
    for doc in k8s_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"{K8S.name} has no {kind} {name}")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


@cache
def ecs(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def ecs_container(path: Path, name: str) -> dict[str, Any]:
    return next(c for c in ecs(path)["containerDefinitions"] if c["name"] == name)


def k8s_argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def ecs_argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("entryPoint", []) + container.get("command", [])]


def logq_containers() -> dict[str, list[str]]:
    """Every container of ours in deploy/, as ``file:workload/container`` -> argv."""
    out: dict[str, list[str]] = {}
    for doc in k8s_docs():
        if doc["kind"] in WORKLOAD_KINDS:
            for c in pod_spec(doc)["containers"]:
                out[f"k8s:{doc['metadata']['name']}/{c['name']}"] = k8s_argv(c)
    for path in (ECS_AGGREGATOR, ECS_SHIPPER):
        setup = ecs_setup_containers(ecs(path))
        for c in ecs(path)["containerDefinitions"]:
            if c["name"] not in setup:  # a one-shot `chown` (checked by the ownership tests)
                out[f"ecs:{ecs(path)['family']}/{c['name']}"] = ecs_argv(c)
    return out


def ecs_setup_containers(task: dict[str, Any]) -> set[str]:
    """Non-essential containers that an essential one waits for (``dependsOn``): one-shot setup
    steps such as the aggregator's buffer ``chown``, not daemons."""
    containers = task["containerDefinitions"]
    waited_for = {d["containerName"] for c in containers for d in c.get("dependsOn", [])}
    return {c["name"] for c in containers if not c.get("essential", True)} & waited_for


def k8s_aggregator() -> dict[str, Any]:
    return pod_spec(k8s("StatefulSet", "logq-aggregator"))["containers"][0]


def k8s_shipper() -> dict[str, Any]:
    return pod_spec(k8s("DaemonSet", "logq-shipper"))["containers"][0]


def multi_values(args: list[str], flag: str) -> list[str]:
    """Every value of a repeatable flag (``--aggregator`` a, ``--aggregator=b``)."""
    out = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith(flag + "="):
            out.append(arg.split("=", 1)[1])
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def subcommand(args: list[str]) -> list[str]:
    """``logq-aggregator compact ...`` and ``logq errors ...`` have subcommands; daemons not."""
    if len(args) > 1 and not args[1].startswith("-") and args[0] in ("logq", "logq-aggregator"):
        return args[:2]
    return args[:1]


@cache
def is_subcommand(program: str, name: str) -> bool:
    """True when ``program name --help`` is that subcommand's help, not the program's own (an
    unknown word is taken as a positional and prints the program's usage)."""
    done = subprocess.run(
        [str(console_script(program)), name, "--help"], capture_output=True, text=True, timeout=60
    )
    return f"usage: {program} {name}" in done.stdout + done.stderr


def unknown_flags(args: list[str]) -> set[str]:
    """Flags in ``args`` that the real program's ``--help`` does not list."""
    used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    return used - help_flags(*subcommand(args))


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory/storage quantity (``2Gi``, ``512Mi``, ``1G``) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"unsupported quantity {text!r}"
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    scale |= {"G": 10**9, "T": 10**12, None: 1}
    return int(m.group(1)) * scale[m.group(2)]


# -- both: the programs and their flags -----------------------------------------------------------


def test_manifests_hold_the_pipeline() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    assert ("Namespace", NAMESPACE) in kinds
    assert {("StatefulSet", "logq-aggregator"), ("DaemonSet", "logq-shipper")} <= kinds
    for doc in k8s_docs():
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]
    names = set(logq_containers())
    assert {"ecs:logq-aggregator/aggregator", "ecs:logq-shipper/shipper"} <= names


@pytest.mark.parametrize("name", sorted(logq_containers()))
def test_every_logq_container_runs_our_program_with_real_flags(name: str) -> None:
    args = logq_containers()[name]
    assert args, f"{name} has no command: the image's CMD would run a default aggregator"
    assert args[0] in our_programs(), f"{name} runs {args[0]!r}, not one of {our_programs()}"
    sub = subcommand(args)
    assert len(sub) == 1 or is_subcommand(*sub), f"{name}: no subcommand {' '.join(sub)!r}"
    bad = unknown_flags(args)
    assert not bad, f"{name}: {sorted(bad)} not in `{' '.join(subcommand(args))} --help`"


def test_the_flag_check_catches_a_misspelled_flag() -> None:
    args = k8s_argv(k8s_shipper())
    assert not unknown_flags(args)
    broken = [a.replace("--cri-root", "--cri-rot") for a in args]
    assert unknown_flags(broken) == {"--cri-rot"}
    agg = [*k8s_argv(k8s_aggregator()), "--buffer-compresion=zstd"]
    assert unknown_flags(agg) == {"--buffer-compresion"}
    assert is_subcommand("logq-aggregator", "compact")
    assert not is_subcommand("logq-aggregator", "compcat")


def test_every_logq_container_uses_one_image() -> None:
    images = {c["image"] for c in ecs(ECS_AGGREGATOR)["containerDefinitions"]}
    images |= {c["image"] for c in ecs(ECS_SHIPPER)["containerDefinitions"]}
    for doc in k8s_docs():
        if doc["kind"] in WORKLOAD_KINDS:
            images |= {c["image"] for c in pod_spec(doc)["containers"]}
    assert images == {"logq:latest"}
    assert K8S.read_text().count("logq:latest  # REPLACE") == len(
        [c for d in k8s_docs() if d["kind"] in WORKLOAD_KINDS for c in pod_spec(d)["containers"]]
    ), "every image line says it must be replaced"


@pytest.mark.parametrize(
    "argv",
    [k8s_argv(k8s_aggregator()), ecs_argv(ecs_container(ECS_AGGREGATOR, "aggregator"))],
    ids=["k8s", "ecs"],
)
def test_aggregator_settings_follow_operations_md(argv: list[str]) -> None:
    flags = flag_values(argv)
    # ":PORT": every address, IPv4 and IPv6 (0.0.0.0 is IPv4 only: an IPv6-only cluster)
    assert flags["--listen"].startswith(":"), "shippers on other hosts must reach it"
    assert flags["--metrics-listen"].startswith(":"), "probes and Prometheus come from outside"
    assert flags["--buffer-compression"] == "zstd"
    assert "--warehouse" not in flags, "the warehouse comes from $LOGQ_WAREHOUSE"
    assert flags["--buffer-dir"].startswith("/"), (
        "a relative buffer dir lands in the image's WORKDIR"
    )
    # A message over --max-frame-bytes is refused, and its client resends it forever: Fluentd's
    # default chunk (8 MB, one message) must fit, with room for the tag and options.
    assert int(flags["--max-frame-bytes"]) >= MIN_FRAME_BYTES


# -- Kubernetes ---------------------------------------------------------------------------------


def test_k8s_shippers_list_every_aggregator_pod_where_it_listens() -> None:
    sts = k8s("StatefulSet", "logq-aggregator")
    svc = k8s("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "one address per pod needs a headless Service"
    assert svc["spec"].get("publishNotReadyAddresses") is True, (
        "an aggregator with a failing /healthz still buffers: keep its name resolvable"
    )
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert sts["spec"]["replicas"] == 3

    listen_port = port_of(flag_values(k8s_argv(k8s_aggregator()))["--listen"])
    container_ports = {p["name"]: p["containerPort"] for p in k8s_aggregator()["ports"]}
    targets = {
        p["port"]: container_ports.get(p["targetPort"], p["targetPort"])
        for p in svc["spec"]["ports"]
    }
    name, ns = sts["metadata"]["name"], sts["metadata"]["namespace"]
    assert name == svc["metadata"]["name"]
    addresses = multi_values(k8s_argv(k8s_shipper()), "--aggregator")
    assert addresses == [f"{name}.{ns}.svc:{listen_port}"], "the Service name: every pod"
    assert targets[listen_port] == listen_port


def test_the_forward_port_is_open_on_udp_too_for_fluentds_heartbeat() -> None:
    """A Fluentd ``out_forward`` with ``heartbeat_type udp`` counts an aggregator down (and sends
    it nothing) unless its UDP heartbeat, sent to the Forward port, is answered
    (aggregator/udp_heartbeat.py): the port must reach the aggregator on UDP as on TCP."""
    agg = k8s_aggregator()
    listen_port = port_of(flag_values(k8s_argv(agg))["--listen"])
    container = {(p["containerPort"], p.get("protocol", "TCP")): p["name"] for p in agg["ports"]}
    assert {(listen_port, "TCP"), (listen_port, "UDP")} <= container.keys()
    svc = k8s("Service", "logq-aggregator")
    served = {(p["port"], p.get("protocol", "TCP")): p["targetPort"] for p in svc["spec"]["ports"]}
    for proto in ("TCP", "UDP"):
        assert served.get((listen_port, proto)) == container[(listen_port, proto)], proto
    ecs_agg = ecs_container(ECS_AGGREGATOR, "aggregator")
    ecs_port = port_of(flag_values(ecs_argv(ecs_agg))["--listen"])
    mapped = {(p["containerPort"], p["hostPort"], p["protocol"]) for p in ecs_agg["portMappings"]}
    assert {(ecs_port, ecs_port, "tcp"), (ecs_port, ecs_port, "udp")} <= mapped


def test_k8s_probes_hit_metrics_listen_and_healthz() -> None:
    agg = k8s_aggregator()
    metrics_port = port_of(flag_values(k8s_argv(agg))["--metrics-listen"])
    named = {p["name"]: p["containerPort"] for p in agg["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = agg[probe]["httpGet"]
        assert named.get(get["port"], get["port"]) == metrics_port, probe
    assert agg["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # operations.md section 5: /healthz turns 503 in an S3 outage, where a restart changes
    # nothing; liveness asks /metrics, served by the same event loop.
    assert agg["livenessProbe"]["httpGet"]["path"] == "/metrics"
    assert agg["livenessProbe"]["failureThreshold"] * agg["livenessProbe"]["periodSeconds"] >= 60
    sts = k8s("StatefulSet", "logq-aggregator")
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == metrics_port


def _k8s_mounts(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> {readOnly, source: the volume or claim template it refers to}."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for tmpl in workload["spec"].get("volumeClaimTemplates", []):
        volumes[tmpl["metadata"]["name"]] = {"claim": tmpl}
    out = {}
    for m in container.get("volumeMounts", []):
        assert m["name"] in volumes, f"mount of undeclared volume {m['name']}"
        out[m["mountPath"]] = {"readOnly": m.get("readOnly", False), "source": volumes[m["name"]]}
    return out


def _covering_mount(mounts: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The mount a path lives on: the longest mount path that is it or one of its parents."""
    covering = [p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")]
    return mounts[max(covering, key=len)] if covering else None


@pytest.mark.parametrize(
    ("kind", "name"), [("StatefulSet", "logq-aggregator"), ("DaemonSet", "logq-shipper")]
)
def test_k8s_every_path_flag_has_a_mount(kind: str, name: str) -> None:
    workload = k8s(kind, name)
    container = pod_spec(workload)["containers"][0]
    flags = flag_values(k8s_argv(container))
    mounts = _k8s_mounts(workload, container)
    used = [f for f in PATH_FLAGS if f in flags]
    assert used, f"{name} relies on default paths inside the container"
    for flag in used:
        mount = _covering_mount(mounts, flags[flag])
        assert mount, f"{name}: {flag}={flags[flag]} is not on a volume"
        assert mount["readOnly"] is (flag in READ_ONLY_FLAGS), f"{name}: {flag} read-only?"


def test_k8s_shipper_reads_node_logs_and_keeps_state_on_the_node() -> None:
    ds = k8s("DaemonSet", "logq-shipper")
    spec, shipper = pod_spec(ds), k8s_shipper()
    flags = flag_values(k8s_argv(shipper))
    mounts = _k8s_mounts(ds, shipper)
    assert flags["--cri-root"] == "/var/log/pods"
    assert mounts["/var/log/pods"]["source"]["hostPath"]["path"] == "/var/log/pods"
    state = mounts[flags["--state-dir"]]["source"]
    assert state["hostPath"]["path"] == "/var/lib/logq-shipper", "checkpoints outlive the pod"
    assert state["hostPath"]["type"] == "DirectoryOrCreate"
    assert shipper["securityContext"]["runAsUser"] == 0, "kubelet log files are root's"
    assert {"operator": "Exists"} in spec["tolerations"], "a shipper on every node"
    # --hostname=$(NODE_NAME): Kubernetes expands it from the downward API env.
    var = re.fullmatch(r"\$\((\w+)\)", flags["--hostname"])
    assert var, flags["--hostname"]
    env = {e["name"]: e for e in shipper["env"]}
    assert env[var.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert flags["--metrics-listen"].startswith(":"), "Prometheus scrapes it, IPv4 or IPv6"
    metrics_port = port_of(flags["--metrics-listen"])
    assert metrics_port in {p["containerPort"] for p in shipper["ports"]}
    assert int(ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]) == (
        metrics_port
    )
    # SIGTERM waits up to --retry-timeout (30 s by default) for in-flight acks.
    retry = float(flags.get("--retry-timeout", 30))
    assert spec["terminationGracePeriodSeconds"] > retry


def test_k8s_aggregator_buffer_volume_resources_and_shutdown() -> None:
    sts = k8s("StatefulSet", "logq-aggregator")
    spec, agg = pod_spec(sts), k8s_aggregator()
    flags = flag_values(k8s_argv(agg))
    buffer = _covering_mount(_k8s_mounts(sts, agg), flags["--buffer-dir"])
    assert buffer and "claim" in buffer["source"], "the buffer must outlive the pod"
    size = quantity_bytes(buffer["source"]["claim"]["spec"]["resources"]["requests"]["storage"])
    limit = int(flags["--buffer-limit-bytes"])
    assert size >= 2 * limit, "backpressure (buffer limit) must come well before a full volume"
    # Shutdown flush: up to 60 s of writing out, plus the time to stop accepting.
    assert spec["terminationGracePeriodSeconds"] >= 90
    res = agg["resources"]
    assert quantity_bytes(res["requests"]["memory"]) == quantity_bytes(res["limits"]["memory"])
    assert quantity_bytes(res["limits"]["memory"]) == 2 * 2**30, "operations.md: give 2 GiB"
    # The image runs as `logq`; a fresh volume is root's unless fsGroup hands it over.
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert spec["securityContext"]["fsGroup"] == IMAGE_UID
    assert f"--uid {IMAGE_UID}" in (ROOT / "Dockerfile").read_text()


def test_k8s_warehouse_and_identity_come_from_configmap_and_service_accounts() -> None:
    config = k8s("ConfigMap", "logq")["data"]
    assert config["LOGQ_WAREHOUSE"].startswith("s3://")
    for kind, name in (("StatefulSet", "logq-aggregator"), ("CronJob", "logq-compact")):
        workload = k8s(kind, name)
        container = pod_spec(workload)["containers"][0]
        refs = {e["configMapRef"]["name"] for e in container.get("envFrom", [])}
        keyed = {
            e["name"]: e["valueFrom"]["configMapKeyRef"]
            for e in container.get("env", [])
            if "configMapKeyRef" in e.get("valueFrom", {})
        }
        assert "logq" in refs or keyed.get("LOGQ_WAREHOUSE", {}).get("name") == "logq", name
        assert "--warehouse" not in flag_values(k8s_argv(container)), name
    for doc in k8s_docs():
        if doc["kind"] in WORKLOAD_KINDS:
            account = pod_spec(doc)["serviceAccountName"]
            k8s("ServiceAccount", account)
    assert "eks.amazonaws.com/role-arn" in K8S.read_text(), "say where the IRSA role goes"


def test_k8s_selectors_match_their_pods() -> None:
    for kind, name in (("StatefulSet", "logq-aggregator"), ("DaemonSet", "logq-shipper")):
        workload = k8s(kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    pdb = k8s("PodDisruptionBudget", "logq-aggregator")
    labels = k8s("StatefulSet", "logq-aggregator")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    # hostPath volumes are refused below the `privileged` Pod Security level.
    namespace = k8s("Namespace", NAMESPACE)["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "privileged"


def test_k8s_compaction_runs_once_not_on_every_aggregator() -> None:
    flags = flag_values(k8s_argv(k8s_aggregator()))
    assert "--compact-interval" not in flags, "compaction is the CronJob's (2Gi aggregators)"
    job = k8s("CronJob", "logq-compact")
    assert job["spec"]["concurrencyPolicy"] == "Forbid", "two compactors can merge twice"
    args = k8s_argv(pod_spec(job)["containers"][0])
    assert args[:2] == ["logq-aggregator", "compact"]


# -- ECS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ECS_AGGREGATOR, ECS_SHIPPER], ids=lambda p: p.stem)
def test_ecs_task_definition_is_what_register_task_definition_accepts(path: Path) -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(ecs(path), shape)
    assert not report.has_errors(), report.generate_report()
    # The check itself can fail:
    assert ParamValidator().validate({**ecs(path), "stopTimeout": 120}, shape).has_errors()


def _ecs_mounts(path: Path, container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in ecs(path).get("volumes", [])}
    out = {}
    for m in container.get("mountPoints", []):
        assert m["sourceVolume"] in volumes, m
        out[m["containerPath"]] = {
            "readOnly": m.get("readOnly", False),
            "source": volumes[m["sourceVolume"]],
        }
    return out


@pytest.mark.parametrize(
    ("path", "name"), [(ECS_AGGREGATOR, "aggregator"), (ECS_SHIPPER, "shipper")]
)
def test_ecs_every_path_flag_has_a_mount(path: Path, name: str) -> None:
    container = ecs_container(path, name)
    flags = flag_values(ecs_argv(container))
    mounts = _ecs_mounts(path, container)
    used = [f for f in PATH_FLAGS if f in flags]
    assert used
    for flag in used:
        mount = _covering_mount(mounts, flags[flag])
        assert mount, f"{name}: {flag}={flags[flag]} is not on a volume"
        assert mount["readOnly"] is (flag in READ_ONLY_FLAGS), f"{name}: {flag} read-only?"
        # A host path outlives the task: the buffer for a restart or a drain, the checkpoints.
        assert mount["source"]["host"]["sourcePath"], flag


def test_ecs_shipper_is_a_root_host_daemon_reading_docker_logs() -> None:
    task, shipper = ecs(ECS_SHIPPER), ecs_container(ECS_SHIPPER, "shipper")
    flags = flag_values(ecs_argv(shipper))
    assert flags["--docker-root"] == "/var/lib/docker/containers"
    mount = _ecs_mounts(ECS_SHIPPER, shipper)["/var/lib/docker/containers"]
    assert mount["source"]["host"]["sourcePath"] == "/var/lib/docker/containers"
    assert "EC2" in task["requiresCompatibilities"], "bind mounts of the host: EC2 launch type"
    assert shipper["user"] in ("0", "root", "0:0")
    # Host network: the default --hostname is the instance's name, as rows should say.
    assert task["networkMode"] == "host" and "--hostname" not in flags
    assert shipper["stopTimeout"] > float(flags.get("--retry-timeout", 30))


def test_ecs_shippers_reach_every_aggregator_where_it_listens() -> None:
    agg = ecs_container(ECS_AGGREGATOR, "aggregator")
    listen_port = port_of(flag_values(ecs_argv(agg))["--listen"])
    mapped = {p["containerPort"] for p in agg["portMappings"]}
    assert listen_port in mapped
    addresses = multi_values(ecs_argv(ecs_container(ECS_SHIPPER, "shipper")), "--aggregator")
    assert len(addresses) >= 3 and len(set(addresses)) == len(addresses), addresses
    assert {port_of(a) for a in addresses} == {listen_port}
    hosts = [a.rsplit(":", 1)[0] for a in addresses]
    assert all(h.split(".", 1)[1] == hosts[0].split(".", 1)[1] for h in hosts), (
        "one service-discovery namespace"
    )


def test_ecs_aggregator_health_stop_and_warehouse() -> None:
    task, agg = ecs(ECS_AGGREGATOR), ecs_container(ECS_AGGREGATOR, "aggregator")
    flags = flag_values(ecs_argv(agg))
    metrics_port = port_of(flags["--metrics-listen"])
    assert metrics_port in {p["containerPort"] for p in agg["portMappings"]}
    check = agg["healthCheck"]["command"]
    assert check[0] == "CMD" and check[1] == "python", "the slim image has no curl or wget"
    # ECS replaces a task whose check fails (liveness): /healthz turns 503 in an S3 outage,
    # where a restart does not help (operations.md section 5), so the check asks /metrics.
    assert f"http://127.0.0.1:{metrics_port}/metrics" in check[-1]
    assert agg["stopTimeout"] >= 90
    env = {e["name"]: e["value"] for e in agg["environment"]}
    assert env["LOGQ_WAREHOUSE"].startswith("s3://")
    assert task["taskRoleArn"].startswith("arn:aws:iam::") and "REPLACE" in task["taskRoleArn"]
    # No cron on ECS: the aggregators compact, one at a time (the leader), and the one merging
    # holds up to 4 x 160 MiB of decoded rows: operations.md gives them 3 GiB.
    assert int(flags["--compact-interval"]) > 0, "without compaction the ledger never expires"
    assert int(task["memory"]) == 3072


# -- who may write the volumes ------------------------------------------------------------------
#
# The image runs as `logq` (uid 10001). A host path that Docker or the kubelet creates is root's,
# mode 0755: an aggregator whose buffer is one dies at start with `Permission denied: .../lock` and
# restarts forever. These checks fail a deployment where a non-root container writes a volume that
# nothing hands over to it (an init `chown`, fsGroup, or the image's own directory copied into a
# new Docker volume).

WRITTEN_FLAGS = ("--buffer-dir", "--state-dir")


def _ecs_uid(container: dict[str, Any]) -> int:
    """The uid an ECS container runs as: its ``user`` (``uid``, ``uid:gid``, a name), else the
    image's USER."""
    user = str(container.get("user", "")).split(":", 1)[0]
    named = {"": IMAGE_UID, "logq": IMAGE_UID, "root": 0}
    assert user in named or user.isdigit(), f"{container['name']}: unknown user {user!r}"
    return named[user] if user in named else int(user)


def _chowns_to(argv: list[str], uid: int, path: str) -> bool:
    """``chown [-R] UID[:GID] PATH...`` that hands ``path`` (or a parent, with -R) to ``uid``."""
    operands = [a for a in argv[1:] if not a.startswith("-")]
    if argv[:1] != ["chown"] or len(operands) < 2:
        return False
    if operands[0].split(":", 1)[0] not in (str(uid), "logq" if uid == IMAGE_UID else str(uid)):
        return False
    recursive = "-R" in argv
    return any(
        t == path or (recursive and path.startswith(t.rstrip("/") + "/")) for t in operands[1:]
    )


def _ecs_owner_fixed(
    task: dict[str, Any], container: dict[str, Any], volume: str, uid: int
) -> bool:
    """A setup container that ``container`` waits for (SUCCESS: it exited 0) runs as root and
    chowns the root of ``volume`` to ``uid``."""
    by_name = {c["name"]: c for c in task["containerDefinitions"]}
    for dep in container.get("dependsOn", []):
        setup = by_name[dep["containerName"]]
        if dep["condition"] != "SUCCESS" or _ecs_uid(setup) != 0:
            continue
        for m in setup.get("mountPoints", []):
            writable = m["sourceVolume"] == volume and not m.get("readOnly", False)
            if writable and _chowns_to(ecs_argv(setup), uid, m["containerPath"]):
                return True
    return False


def _ecs_copied_up(volume: dict[str, Any], container_path: str) -> bool:
    """A Docker volume made by ECS (local driver, not a bind of a host device) that Docker fills
    from the image's directory, owner included."""
    config = volume.get("dockerVolumeConfiguration")
    if not config or "host" in volume or config.get("driver", "local") != "local":
        return False
    if "bind" in str(config.get("driverOpts", {}).get("o", "")):
        return False
    autoprovisioned = config.get("scope") == "task" or config.get("autoprovision") is True
    return autoprovisioned and container_path in dockerfile_user_dirs()


def ecs_unwritable_mounts(task: dict[str, Any]) -> list[str]:
    """The written path flags of a task's non-root containers that sit on a volume their user
    cannot write on a fresh container instance."""
    volumes = {v["name"]: v for v in task.get("volumes", [])}
    setup = ecs_setup_containers(task)
    problems = []
    for container in task["containerDefinitions"]:
        uid = _ecs_uid(container)
        if container["name"] in setup or uid == 0:
            continue
        flags = flag_values(ecs_argv(container))
        mounts = {m["containerPath"]: m for m in container.get("mountPoints", [])}
        for flag in (f for f in WRITTEN_FLAGS if f in flags):
            mount = _covering_mount(mounts, flags[flag])
            if mount is None:
                continue  # test_ecs_every_path_flag_has_a_mount reports it
            volume = volumes[mount["sourceVolume"]]
            if _ecs_copied_up(volume, mount["containerPath"]):
                continue
            if _ecs_owner_fixed(task, container, mount["sourceVolume"], uid):
                continue
            where = volume.get("host", {}).get("sourcePath", volume["name"])
            problems.append(
                f"{container['name']}: {flag}={flags[flag]} is on {where}, which the host "
                f"creates as root's (0755); uid {uid} cannot write it (no setup container "
                "chowns it first)"
            )
    return problems


def _k8s_uid(spec: dict[str, Any], container: dict[str, Any]) -> int:
    """The uid a container runs as: its securityContext, the pod's, else the image's USER."""
    uid = container.get("securityContext", {}).get("runAsUser")
    uid = spec.get("securityContext", {}).get("runAsUser") if uid is None else uid
    return IMAGE_UID if uid is None else int(uid)


def k8s_unwritable_mounts(workload: dict[str, Any]) -> list[str]:
    """Writable mounts of a workload's non-root containers that their user cannot write: a
    hostPath (created root's, and fsGroup does not apply to it) or a claim without fsGroup, unless
    a root init container ``chown``s the volume to that user first."""
    spec = pod_spec(workload)
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    inits = spec.get("initContainers", [])
    problems = []
    for container in inits + spec["containers"]:
        uid = _k8s_uid(spec, container)
        if uid == 0:
            continue
        # Init containers run in order, all before the main ones.
        before = inits[: inits.index(container)] if container in inits else inits
        handed = {
            m["name"]
            for init in before
            for m in init.get("volumeMounts", [])
            if _k8s_uid(spec, init) == 0
            and not m.get("readOnly", False)
            and _chowns_to(k8s_argv(init), uid, m["mountPath"])
        }
        mounts = _k8s_mounts(workload, container)
        for m in container.get("volumeMounts", []):
            path, source = m["mountPath"], mounts[m["mountPath"]]["source"]
            if m.get("readOnly", False) or m["name"] in handed:
                continue
            if "hostPath" in source:
                problems.append(
                    f"{container['name']}: {path} is the node's {source['hostPath']['path']}, "
                    f"root's; uid {uid} cannot write it"
                )
            elif ("claim" in source or "persistentVolumeClaim" in source) and fs_group is None:
                problems.append(
                    f"{container['name']}: {path} is a new volume, root's without fsGroup; "
                    f"uid {uid} cannot write it"
                )
    return problems


@pytest.mark.parametrize("path", [ECS_AGGREGATOR, ECS_SHIPPER], ids=lambda p: p.stem)
def test_ecs_containers_can_write_their_volumes(path: Path) -> None:
    assert ecs_unwritable_mounts(ecs(path)) == []


def test_ecs_buffer_owner_runs_before_the_aggregator() -> None:
    """The aggregator's buffer is a host path (it outlives the task, on the instance's data
    volume): a root setup container hands it to the image's user, and the aggregator starts only
    once that exited 0."""
    task = ecs(ECS_AGGREGATOR)
    agg = ecs_container(ECS_AGGREGATOR, "aggregator")
    (setup_name,) = ecs_setup_containers(task)
    setup = ecs_container(ECS_AGGREGATOR, setup_name)
    assert agg["dependsOn"] == [{"containerName": setup_name, "condition": "SUCCESS"}]
    assert setup["essential"] is False, "it exits: an essential one would stop the task"
    assert setup["image"] == agg["image"], "no second image to pull or replace"
    assert not setup.get("portMappings") and not setup.get("healthCheck")
    buffer = _covering_mount(
        _ecs_mounts(ECS_AGGREGATOR, agg), flag_values(ecs_argv(agg))["--buffer-dir"]
    )
    assert buffer and "host" in buffer["source"]
    assert _ecs_uid(setup) == 0 and _chowns_to(ecs_argv(setup), IMAGE_UID, "/var/lib/logq/buffer")


def _without_setup(task: dict[str, Any]) -> dict[str, Any]:
    """The task as it was before the fix: the aggregator alone on the host path."""
    task = copy.deepcopy(task)
    setup = ecs_setup_containers(task)
    task["containerDefinitions"] = [
        c for c in task["containerDefinitions"] if c["name"] not in setup
    ]
    for c in task["containerDefinitions"]:
        c.pop("dependsOn", None)
    return task


def _setup_of(task: dict[str, Any]) -> dict[str, Any]:
    (name,) = ecs_setup_containers(task)
    return next(c for c in task["containerDefinitions"] if c["name"] == name)


def test_ecs_ownership_check_catches_a_root_owned_buffer() -> None:
    task = ecs(ECS_AGGREGATOR)
    (problem,) = ecs_unwritable_mounts(_without_setup(task))
    assert "--buffer-dir=/var/lib/logq/buffer" in problem and f"uid {IMAGE_UID}" in problem

    def broken(change: Any) -> list[str]:
        mutated = copy.deepcopy(task)
        change(mutated)
        return ecs_unwritable_mounts(mutated)

    agg = [c["name"] for c in task["containerDefinitions"]].index("aggregator")
    # Started, not finished: the aggregator may open the buffer before the chown.
    assert broken(
        lambda t: t["containerDefinitions"][agg]["dependsOn"][0].update(condition="START")
    )
    assert broken(lambda t: _setup_of(t).update(command=["chown", "-R", "0:0", "/var/lib/logq"]))
    assert broken(lambda t: _setup_of(t).pop("user"))  # as `logq` it cannot chown
    assert broken(lambda t: _setup_of(t).update(mountPoints=[]))  # chowns its own dir
    # Root needs no help; a Docker volume autoprovisioned at the image's own buffer dir is filled
    # from it, owner included; the same volume at a path the image lacks is root's.
    as_root = _without_setup(task)
    as_root["containerDefinitions"][0]["user"] = "0"
    assert ecs_unwritable_mounts(as_root) == []
    named = _without_setup(task)
    named["volumes"] = [
        {
            "name": "buffer",
            "dockerVolumeConfiguration": {
                "scope": "shared",
                "autoprovision": True,
                "driver": "local",
            },
        }
    ]
    assert ecs_unwritable_mounts(named) == []
    named["volumes"][0]["dockerVolumeConfiguration"]["driverOpts"] = {
        "type": "none",
        "o": "bind",
        "device": "/data/logq-buffer",
    }
    assert ecs_unwritable_mounts(named), "a bind of a host dir is not copied up"


@pytest.mark.parametrize(
    ("kind", "name"),
    [(d["kind"], d["metadata"]["name"]) for d in k8s_docs() if d["kind"] in WORKLOAD_KINDS],
)
def test_k8s_containers_can_write_their_volumes(kind: str, name: str) -> None:
    assert k8s_unwritable_mounts(k8s(kind, name)) == []


def test_k8s_ownership_check_catches_root_owned_volumes() -> None:
    sts = copy.deepcopy(k8s("StatefulSet", "logq-aggregator"))
    del pod_spec(sts)["securityContext"]["fsGroup"]
    (problem,) = k8s_unwritable_mounts(sts)
    assert "/var/lib/logq/buffer is a new volume" in problem
    ds = copy.deepcopy(k8s("DaemonSet", "logq-shipper"))
    pod_spec(ds)["containers"][0]["securityContext"]["runAsUser"] = IMAGE_UID
    (problem,) = k8s_unwritable_mounts(ds)  # the checkpoints; the log mount is read-only
    assert "/var/lib/logq-shipper" in problem
    # Storage that ignores fsGroup: a root init container that chowns the volume fixes it.
    init = {
        "name": "buffer-owner",
        "image": "logq:latest",
        "command": ["chown", "-R", f"{IMAGE_UID}:{IMAGE_UID}", "/buffer"],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
        "volumeMounts": [{"name": "buffer", "mountPath": "/buffer"}],
    }
    pod_spec(sts)["initContainers"] = [init]
    assert k8s_unwritable_mounts(sts) == []
    init["securityContext"]["runAsUser"] = IMAGE_UID  # cannot chown
    assert k8s_unwritable_mounts(sts)


# -- the health check, run for real --------------------------------------------------------------


def _run_check(
    command: list[str], port: int, task: Path = ECS_AGGREGATOR, name: str = "aggregator"
) -> subprocess.CompletedProcess[str]:
    """The ECS ``CMD python -c ...`` with this Python and ``port`` in place of the real one."""
    assert command[:2] == ["CMD", "python"]
    original = port_of(flag_values(ecs_argv(ecs_container(task, name)))["--metrics-listen"])
    args = [a.replace(f"127.0.0.1:{original}/", f"127.0.0.1:{port}/") for a in command[2:]]
    assert any(f":{port}/" in a for a in args), "the port was substituted"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30)


def _get(url: str) -> int:
    """HTTP status of a GET (urllib raises on 4xx/5xx: turn that back into the status)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _forward_one_record(port: int) -> None:
    """One Forward message with a chunk id; returns once the aggregator acked it (buffered)."""
    message = ["logq.deploy-check", [[int(time.time()), {"log": "hello\n"}]], {"chunk": "ZGVw"}]
    with socket.create_connection((LOCALHOST, port), timeout=30) as sock:
        sock.sendall(msgpack.packb(message))
        unpacker = msgpack.Unpacker()
        while True:
            data = sock.recv(4096)
            assert data, "the aggregator closed the connection without an ack"
            unpacker.feed(data)
            for reply in unpacker:
                assert reply == {"ack": "ZGVw"}, reply
                return


@pytest.mark.integration
def test_ecs_health_check_and_k8s_probes_against_a_real_aggregator(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """200 while flushes succeed: the ECS check exits 0 and both probes pass. Flushes failing
    past --unhealthy-after: readiness fails, while liveness and the ECS check still pass (a
    restart would not help). A closed port: the check exits non-zero."""
    command = ecs_container(ECS_AGGREGATOR, "aggregator")["healthCheck"]["command"]
    probes = {
        p: k8s_aggregator()[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")
    }
    metrics_port = free_port()
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    agg = start_aggregator(
        str(warehouse),
        tmp_path,
        subprocess_env,
        "--metrics-listen",
        f"{LOCALHOST}:{metrics_port}",
        "--buffer-compression",
        "zstd",
        "--unhealthy-after",
        "1",
    )
    base = f"http://{LOCALHOST}:{metrics_port}"
    try:
        wait_until(lambda: port_open(LOCALHOST, metrics_port), 60, "metrics", agg.proc, agg.log)
        done = _run_check(command, metrics_port)
        assert done.returncode == 0, done.stderr
        for probe, path in probes.items():
            assert _get(base + path) == 200, probe

        # The warehouse refuses writes (a file where its directory was): flushes fail.
        shutil.rmtree(warehouse)
        warehouse.write_text("not a directory")
        _forward_one_record(agg.port)
        wait_until(lambda: _get(base + "/healthz") == 503, 60, "/healthz 503", agg.proc, agg.log)
        still = _run_check(command, metrics_port)
        assert still.returncode == 0, f"ECS must not replace it during an outage: {still.stderr}"
        assert _get(base + probes["readinessProbe"]) == 503
        assert _get(base + probes["livenessProbe"]) == 200, "liveness must not restart it now"

        # The warehouse is back: the shutdown flush writes the buffered record, exit 0.
        warehouse.unlink()
        warehouse.mkdir()
    finally:
        status = agg.terminate(timeout=90)
    assert status == 0, log_tail(agg.log)
    assert list(warehouse.rglob("*.parquet")), "the buffered record reached the warehouse"
    closed = _run_check(command, free_port())
    assert closed.returncode != 0
    assert "Connection refused" in closed.stderr or "URLError" in closed.stderr


def test_shipper_liveness_asks_livez_on_its_metrics_port() -> None:
    """/livez (event loop stuck), not /healthz (also 503 on a full state disk: a restart
    frees nothing there)."""
    k8s_container = k8s_shipper()
    port = port_of(flag_values(k8s_argv(k8s_container))["--metrics-listen"])
    probe = k8s_container["livenessProbe"]["httpGet"]
    named = {p["name"]: p["containerPort"] for p in k8s_container["ports"]}
    assert (probe["path"], named.get(probe["port"], probe["port"])) == ("/livez", port)
    ecs_shipper = ecs_container(ECS_SHIPPER, "shipper")
    port = port_of(flag_values(ecs_argv(ecs_shipper))["--metrics-listen"])
    assert f"http://127.0.0.1:{port}/livez" in ecs_shipper["healthCheck"]["command"][-1]


@pytest.mark.integration
def test_ecs_shipper_health_check_against_a_real_shipper(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The shipper task's check passes against a following shipper (even with no aggregator
    reachable: deliveries failing are not a reason to restart it) and fails on a closed port."""
    command = ecs_container(ECS_SHIPPER, "shipper")["healthCheck"]["command"]
    port = free_port()
    (tmp_path / "containers").mkdir()
    shipper = start_shipper(
        f"{LOCALHOST}:{free_port()}",  # nobody listens there
        tmp_path / "containers",
        tmp_path / "state",
        subprocess_env,
        "--metrics-listen",
        f"{LOCALHOST}:{port}",
    )
    try:
        wait_until(lambda: port_open(LOCALHOST, port), 60, "metrics", shipper.proc, shipper.log)
        done = _run_check(command, port, ECS_SHIPPER, "shipper")
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/livez", timeout=10) as resp:
            assert resp.read() == b"ok\n", "the health page, not a page of metrics"
    finally:
        status = shipper.terminate(timeout=60)
    assert status == 0, log_tail(shipper.log)
    assert _run_check(command, free_port(), ECS_SHIPPER, "shipper").returncode != 0


@pytest.mark.integration
def test_k8s_shipper_command_ships_a_cri_node_for_real(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The DaemonSet's own argv, run with ``--once`` on a generated /var/log/pods: every line
    arrives, ``host`` is the node name from ``$(NODE_NAME)``, and aggregator names that do not
    resolve (a StatefulSet pod being rescheduled) are failed over like a refused connection."""
    import pyarrow.dataset as pads

    from cli.demohost import write_host

    manifest = write_host(tmp_path / "pods", requests=40, long_line=False, layout="cri")
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    agg = start_aggregator(str(warehouse), tmp_path, subprocess_env)
    node = "node-7"
    here = {
        "--cri-root": str(tmp_path / "pods"),
        "--state-dir": str(tmp_path / "state"),
        "--metrics-listen": f"{LOCALHOST}:{free_port()}",
    }
    container = k8s_shipper()
    env_names = {e["name"] for e in container["env"]}
    args: list[str] = []
    for arg in k8s_argv(container)[1:]:
        name, _, value = arg.partition("=")
        if name == "--aggregator":  # in-cluster names: unresolvable here, so they count as down
            value = f"{value.rsplit(':', 1)[0]}.invalid:{port_of(value)}"
        value = here.get(name, value)
        for var in env_names:  # what the kubelet does with $(VAR) in args
            value = value.replace(f"$({var})", node)
        args.append(f"{name}={value}")
    # The pod has no /var/lib/docker/containers; this machine might: point the default elsewhere
    # (at an empty folder: a --docker-root given that does not exist is an error).
    (tmp_path / "none").mkdir()
    args += [f"--aggregator={agg.address}", f"--docker-root={tmp_path / 'none'}", "--once"]
    try:
        done = subprocess.run(
            [str(console_script("logq-shipper")), *args],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "name or service not known" in done.stderr or "resolution" in done.stderr
    finally:
        status = agg.terminate(timeout=90)
    assert status == 0, log_tail(agg.log)
    for table in ("envoy_access", "container_logs"):
        rows = pads.dataset(warehouse / table, format="parquet", partitioning="hive").to_table(
            columns=["host"]
        )
        assert rows.num_rows == len(manifest.rows(table)), table
        assert set(rows.column("host").to_pylist()) == {node}, table
