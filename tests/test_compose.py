"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

No Docker runs here, so the compose file is checked against the real programs instead: every
logq service runs one of our console scripts with flags that its real ``--help`` lists (and the
SeaweedFS flags against the ``weed`` binary of the same release), and the settings that must agree
between services do: the shipper's aggregator address and the aggregator's listen port and
published ports, the warehouse bucket and the bucket-creation step, the S3 endpoint and
credentials and the SeaweedFS identities, the mounts and the flags that read them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.support.procs import console_script

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
_VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``$$`` substitution, recursively."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@cache
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def argv(service: dict[str, Any]) -> list[str]:
    def as_list(v: Any) -> list[str]:
        if v is None:
            return []
        return shlex.split(v) if isinstance(v, str) else [str(x) for x in v]

    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def flag_values(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` pairs (``--switch`` alone maps to "")."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                value = args[i + 1]
                i += 1
            out[name] = value
        i += 1
    return out


def our_programs() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def logq_services() -> dict[str, list[str]]:
    """Services that run our image, with their argv."""
    return {
        name: argv(svc)
        for name, svc in services().items()
        if "build" in svc or str(svc.get("image", "")).startswith("logq")
    }


_OPTION_LINE = re.compile(r"^(?:-\w,?\s+)?(--[A-Za-z0-9][\w-]*)")
_USAGE_FLAG = re.compile(r"\[(--[A-Za-z0-9][\w-]*)")


@cache
def help_flags(*command: str) -> frozenset[str]:
    """Flags a program really has: option rows and usage entries of its ``--help``."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    exe = str(console_script(command[0]))
    done = subprocess.run(
        [exe, *command[1:], "--help" if command[0] != "weed" else "-h"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    text = done.stdout + done.stderr
    assert "usage" in text.lower(), f"{command} --help printed no usage:\n{text}"
    flags = set(_USAGE_FLAG.findall(text))
    for line in text.splitlines():
        m = _OPTION_LINE.match(line.strip().strip("│┃").strip())
        if m:
            flags.add(m.group(1))
    if command[0] == "weed":  # Go's flag package: "-name" rows; accept "--name" too.
        flags = {f"-{m}" for m in re.findall(r"^\s+-([\w.]+)", text, re.M)}
    return frozenset(flags)


def dockerfile_user_dirs() -> frozenset[str]:
    """Directories the Dockerfile creates (``mkdir``) and gives to the image's ``USER``
    (``chown -R`` of them or of a parent), by name or uid.

    Docker fills a new, empty named volume from the image's directory at its mount point, owner
    included (copy-up): mounted at one of these, the volume is writable by the image's user. A
    host bind mount gets no such copy: Docker creates a missing host path as root's, mode 0755.
    """
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user, "the Dockerfile sets no USER"
    names = {user.group(1)}
    uid = re.search(rf"--uid (\d+)\b.*\b{re.escape(user.group(1))}\b", text)
    if uid:
        names.add(uid.group(1))
    made: set[str] = set()
    owned: set[str] = set()
    for run in re.findall(r"^RUN (.+)$", text, re.M):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            operands = [w for w in words[1:] if not w.startswith("-")]
            if words[:1] == ["mkdir"]:
                made |= set(operands)
            elif words[:1] == ["chown"] and "-R" in words and len(operands) > 1:
                owner = operands[0].split(":", 1)[0]
                owned |= set(operands[1:]) if owner in names else set()
    return frozenset(
        d for d in made if any(d == o or d.startswith(o.rstrip("/") + "/") for o in owned)
    )


def _subcommand(args: list[str]) -> list[str]:
    """``logq errors --x`` -> ``["logq", "errors"]``; daemons have no subcommand."""
    if args[0] == "logq" and len(args) > 1 and not args[1].startswith("-"):
        return args[:2]
    return args[:1]


# -- the programs ------------------------------------------------------------------------------


def test_compose_has_the_pipeline() -> None:
    assert {"seaweedfs", "aggregator", "shipper"} <= set(services())
    assert set(logq_services()) >= {"aggregator", "shipper"}


@pytest.mark.parametrize("name", sorted(logq_services()))
def test_every_logq_service_runs_our_program_with_real_flags(name: str) -> None:
    args = logq_services()[name]
    assert args, f"service {name} has no command"
    assert args[0] in our_programs(), f"{name} runs {args[0]!r}, not one of {our_programs()}"
    known = help_flags(*_subcommand(args))
    used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert used - known == set(), f"{name}: flags not in `{' '.join(_subcommand(args))} --help`"


def test_seaweedfs_flags_exist_in_the_same_release() -> None:
    svc = services()["seaweedfs"]
    version = subprocess.run(
        [str(console_script("weed")), "version"], capture_output=True, text=True, timeout=30
    ).stdout
    tag = svc["image"].rsplit(":", 1)[1]
    assert re.search(rf"\b{re.escape(tag)}\b", version), f"image tag {tag} vs {version!r}"
    args = argv(svc)
    assert args[:2] == ["server", "-s3"]
    known = help_flags("weed", "server")
    used = {a.split("=", 1)[0] for a in args[1:]}
    assert used - known == set()


# -- settings that must agree -------------------------------------------------------------------


def _listen(args: list[str]) -> tuple[str, int]:
    host, _, port = flag_values(args)["--listen"].rpartition(":")
    return host, int(port)


def _published(service: dict[str, Any]) -> set[int]:
    ports = set()
    for spec in service.get("ports", []):
        text = str(spec.get("target") if isinstance(spec, dict) else spec)
        ports.add(int(text.split("/")[0].rsplit(":", 1)[-1]))
    return ports


def test_ports_are_published_on_the_hosts_loopback_by_default() -> None:
    # The Forward port has no shared key in this file and SeaweedFS takes the default keys: a
    # laptop must not offer either to its network unless LOGQ_PUBLISH_ADDR says so.
    specs = [(name, str(spec)) for name, svc in services().items() for spec in svc.get("ports", [])]
    assert {name for name, _ in specs} == {"seaweedfs", "aggregator", "shipper"}
    for name, spec in specs:
        host, published, target = spec.rsplit(":", 2)
        assert host == "127.0.0.1", (name, spec)
        assert published == target.removesuffix("/udp"), (name, spec)
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    opened = interpolate(raw, {"LOGQ_PUBLISH_ADDR": "192.0.2.7"})
    assert all(
        str(s).startswith("192.0.2.7:") for svc in opened.values() for s in svc.get("ports", [])
    )


def test_shipper_reaches_the_aggregator_where_it_listens() -> None:
    agg_args = logq_services()["aggregator"]
    host, port = _listen(agg_args)
    assert host == "0.0.0.0", "other containers cannot reach an aggregator bound to loopback"
    target = flag_values(logq_services()["shipper"])["--aggregator"]
    target_host, _, target_port = target.rpartition(":")
    assert target_host == "aggregator" and target_host in services()
    assert int(target_port) == port
    assert port in _published(services()["aggregator"])
    # Fluentd's heartbeat_type udp asks the same port on UDP (aggregator/udp_heartbeat.py).
    specs = [str(s) for s in services()["aggregator"]["ports"]]
    assert any(s.endswith(f":{port}:{port}/udp") for s in specs), specs
    for name in ("aggregator", "shipper"):
        metrics = flag_values(logq_services()[name]).get("--metrics-listen")
        if metrics:
            assert int(metrics.rsplit(":", 1)[1]) in _published(services()[name])


def test_warehouse_bucket_endpoint_and_credentials_agree() -> None:
    agg = services()["aggregator"]
    warehouse = flag_values(argv(agg))["--warehouse"]
    env = environment(agg)
    assert warehouse.startswith("s3://")
    assert env["LOGQ_WAREHOUSE"] == warehouse
    bucket = urlparse(warehouse).netloc
    assert environment(services()["create-bucket"])["BUCKET"] == bucket
    # The CLI service queries the same warehouse through the same endpoint.
    if "logq" in services():
        cli_env = environment(services()["logq"])
        assert cli_env["LOGQ_WAREHOUSE"] == warehouse
        assert cli_env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]

    endpoint = urlparse(env["AWS_ENDPOINT_URL"])
    weed_args = argv(services()["seaweedfs"])
    s3_port = int(next(a for a in weed_args if a.startswith("-s3.port=")).split("=")[1])
    assert endpoint.hostname == "seaweedfs" and endpoint.port == s3_port
    assert s3_port in _published(services()["seaweedfs"])

    # The access key the aggregator signs with is an identity SeaweedFS knows.
    config_target = next(
        c["target"] for c in services()["seaweedfs"]["configs"] if c["source"] == "s3-identities"
    )
    assert f"-s3.config={config_target}" in weed_args
    identities = json.loads(compose()["configs"]["s3-identities"]["content"])["identities"]
    creds = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    for name in ("aggregator", "create-bucket", "logq"):
        if name in services():
            e = environment(services()[name])
            assert (e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"]) in creds, name


def test_credentials_follow_the_environment() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    env = {"LOGQ_S3_ACCESS_KEY": "prodkey", "LOGQ_S3_SECRET_KEY": "s3cr3t", "LOGQ_BUCKET": "b1"}
    doc = interpolate(raw, env)
    agg = doc["services"]["aggregator"]
    assert environment(agg)["AWS_ACCESS_KEY_ID"] == "prodkey"
    assert flag_values(argv(agg))["--warehouse"] == "s3://b1/warehouse"
    assert '"prodkey"' in doc["configs"]["s3-identities"]["content"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "rw")
    return out


def test_shipper_reads_docker_logs_read_only_and_keeps_state() -> None:
    shipper = services()["shipper"]
    flags = flag_values(logq_services()["shipper"])
    mounts = _mounts(shipper)
    root = flags["--docker-root"]
    assert root == "/var/lib/docker/containers"
    assert mounts[root] == ("/var/lib/docker/containers", "ro")
    state_source, _ = mounts[flags["--state-dir"]]
    assert state_source in compose()["volumes"], "checkpoints must survive a container restart"
    buffer_source, _ = _mounts(services()["aggregator"])[
        flag_values(logq_services()["aggregator"])["--buffer-dir"]
    ]
    assert buffer_source in compose()["volumes"], "the buffer must survive a container restart"


def compose_unwritable_mounts(doc: dict[str, Any]) -> list[str]:
    """Writable mounts of our non-root services that their user could not write: a host bind
    mount (created root's, 0755) or a named volume at a path the image does not hand to its user
    (the copy-up would make it root's too)."""
    problems = []
    for name, svc in doc["services"].items():
        if not ("build" in svc or str(svc.get("image", "")).startswith("logq")):
            continue
        if str(svc.get("user", "")).split(":", 1)[0] in ("0", "root"):
            continue
        for target, (source, mode) in _mounts(svc).items():
            if mode == "ro":
                continue
            if source not in (doc.get("volumes") or {}):
                problems.append(f"{name}: {target} is the host's {source}, root-owned")
            elif target not in dockerfile_user_dirs():
                problems.append(f"{name}: volume {source} at {target}, not an image user's dir")
    return problems


def test_non_root_services_can_write_their_volumes() -> None:
    """The aggregator runs as the image's `logq` user: its buffer must be a named volume at a
    directory the Dockerfile gives to that user, or it dies with `Permission denied: .../lock`."""
    assert compose_unwritable_mounts(compose()) == []
    assert "user" not in services()["aggregator"], "the aggregator runs unprivileged"
    buffer_dir = flag_values(logq_services()["aggregator"])["--buffer-dir"]
    assert buffer_dir in dockerfile_user_dirs()
    # The check can fail: a bind mount, and a named volume where the image has no such dir.
    for volumes, expected in (
        (["./buffer:/var/lib/logq/buffer"], "host's ./buffer"),
        (["aggregator-buffer:/data/buffer"], "not an image user's dir"),
    ):
        doc = copy.deepcopy(compose())
        doc["services"]["aggregator"]["volumes"] = volumes
        (problem,) = compose_unwritable_mounts(doc)
        assert expected in problem


def test_aggregator_takes_a_fluentd_chunk() -> None:
    """Fluentd sends a buffer chunk (8 MB by default) as one message; a bigger one than
    --max-frame-bytes is refused and resent forever."""
    from aggregator.config import Settings

    flags = flag_values(logq_services()["aggregator"])
    limit = int(flags.get("--max-frame-bytes", Settings().max_frame_bytes))
    assert limit >= 10 * 2**20


def test_the_aggregator_compacts() -> None:
    """Nothing else compacts here (no cron): without it every flush stays a small file and the
    offset ledger's hours never expire."""
    flags = flag_values(logq_services()["aggregator"])
    assert int(flags["--compact-interval"]) > 0


def test_start_order_and_health() -> None:
    s = services()
    assert s["create-bucket"]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    assert (
        s["aggregator"]["depends_on"]["create-bucket"]["condition"]
        == "service_completed_successfully"
    )
    assert s["shipper"]["depends_on"]["aggregator"]["condition"] == "service_healthy"
    metrics = flag_values(logq_services()["aggregator"])["--metrics-listen"]
    health = " ".join(s["aggregator"]["healthcheck"]["test"])
    assert f"127.0.0.1:{metrics.rsplit(':', 1)[1]}/healthz" in health


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_installs_the_package_from_the_build_context() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    # At the releases the suite passed with (constraints.txt), as make test installs them.
    assert re.search(r"^RUN pip install -c constraints\.txt \.", text, re.M)
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = set()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = line.split()[:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
            assert src not in ignored, f"{src} is excluded by .dockerignore"
            copied.add(src)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = {"pyproject.toml", pyproject["project"]["readme"], "constraints.txt"}
    assert packages | needed <= copied
    for name, svc in services().items():
        if "build" in svc:
            assert svc["build"] in (".", "./"), name
    assert "24224" in re.search(r"^EXPOSE (.+)$", text, re.M).group(1)  # type: ignore[union-attr]


def test_the_images_default_command_is_a_real_aggregator_serving_what_it_exposes() -> None:
    """``docker run logq`` runs the CMD: real flags, and a port for every port it EXPOSEs."""
    text = re.sub(r"\\\n\s*", "", DOCKERFILE.read_text())  # join continued lines
    cmd = json.loads(re.search(r"^CMD (\[.+\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert cmd[0] == "logq-aggregator"
    used = {a.split("=", 1)[0] for a in cmd if a.startswith("--")}
    assert used <= help_flags(*_subcommand(cmd))
    flags = flag_values(cmd)
    listening = {flags[f].rsplit(":", 1)[1] for f in ("--listen", "--metrics-listen")}
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())  # type: ignore[union-attr]
    assert exposed == listening


def test_a_non_editable_install_gets_every_module_and_data_file() -> None:
    """The image installs with ``pip install .`` (not editable, unlike the dev venv): every
    package folder must be found by setuptools and every data file matched by package-data."""
    import fnmatch

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = pyproject["tool"]["setuptools"]
    data = tool.get("package-data", {})
    for top in (p.rstrip("*") for p in tool["packages"]["find"]["include"]):
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__":
                continue
            files = [f for f in folder.iterdir() if f.is_file()]
            if any(f.suffix == ".py" for f in files):
                assert (folder / "__init__.py").exists(), f"{folder} is not a package"
            for f in files:
                if f.suffix in (".py", ".pyc"):
                    continue
                rel = f.relative_to(ROOT / top).as_posix()
                patterns = data.get(top, [])
                assert any(fnmatch.fnmatch(rel, p) for p in patterns), (
                    f"{top}/{rel} would be missing from the image: add it to "
                    f"[tool.setuptools.package-data] {top}"
                )
