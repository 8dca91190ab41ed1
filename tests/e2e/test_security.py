"""Shared key and TLS between the real shipper and aggregator processes.

A host that ships over the network to a shared aggregator fleet needs both: the Forward
shared-key handshake (HELO/PING/PONG) keeps strangers from writing, TLS keeps the lines private.
The right key over TLS delivers every line; a wrong key is refused with a clear message and
nothing reaches the warehouse.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import pty
import socket
import subprocess
import termios
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.demohost import write_host
from tests.shipper.tlsgen import encrypted_copy, make_ca_and_server, make_client_cert
from tests.support.expect import assert_tables_match
from tests.support.metrics import metrics_base, sample
from tests.support.pipeline import Aggregator, run_shipper_once, start_aggregator
from tests.support.procs import console_script

pytestmark = pytest.mark.integration

KEY = "s3cret-forward-key"
PASSPHRASE = "key-passphrase-123"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), as an operator would make with openssl."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logq-aggregator.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "aggregator.crt", folder / "aggregator.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _every_line_arrives(
    tmp_path: Path,
    seed: int,
    env: dict[str, str],
    aggregator: list[str],
    shipper: list[str],
    aggregator_env: dict[str, str] | None = None,
    requests: int = 40,
) -> None:
    """A host's containers shipped once by ``logq-shipper SHIPPER`` to ``logq-aggregator
    AGGREGATOR``: both exit 0 and the warehouse holds every line."""
    manifest = write_host(tmp_path / "containers", seed=seed, requests=requests, long_line=False)
    warehouse = str(tmp_path / "warehouse")
    agg = start_aggregator(warehouse, tmp_path, aggregator_env or env, *aggregator)
    try:
        done = run_shipper_once(agg.address, manifest.root, tmp_path / "state", env, *shipper)
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    assert_tables_match(manifest, warehouse, env, socket.gethostname())


def test_tls_and_shared_key_deliver_every_line(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    cert, key = _self_signed(tmp_path)
    _every_line_arrives(
        tmp_path, 31, subprocess_env,
        ["--shared-key", KEY, "--tls-cert", str(cert), "--tls-key", str(key)],
        ["--shared-key", KEY, "--tls", "--tls-ca", str(cert), "--compress", "gzip"],
        requests=80,
    )  # fmt: skip


def test_wrong_shared_key_is_refused_and_nothing_is_stored(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    manifest = write_host(tmp_path / "containers", seed=32, requests=20, long_line=False)
    warehouse = tmp_path / "warehouse"
    agg = start_aggregator(str(warehouse), tmp_path, subprocess_env, "--shared-key", KEY)
    try:
        done = run_shipper_once(
            agg.address, manifest.root, tmp_path / "state", subprocess_env,
            "--shared-key", "not-the-key", "--retry-timeout", "3",
        )  # fmt: skip
        assert done.returncode != 0
        message = done.stdout + done.stderr
        assert "--shared-key" in message, message[-2000:]  # says what to fix
        assert "Traceback" not in message, message[-2000:]  # one clear line, not a dump
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    assert list(warehouse.rglob("*.parquet")) == []


def test_user_authentication_in_the_handshake(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Fluentd's ``user_auth``: the right user delivers; a wrong password or no user is refused
    with a message naming the flags to fix, and stores nothing."""
    manifest = write_host(tmp_path / "containers", seed=33, requests=30, long_line=False)
    warehouse = str(tmp_path / "warehouse")
    config = tmp_path / "aggregator.toml"
    config.write_text('user = ["alice:wonder land", "bob:builder"]\n')
    agg = start_aggregator(
        warehouse, tmp_path, subprocess_env, "--shared-key", KEY, "--config", str(config)
    )
    try:
        for n, creds in enumerate(
            (["--username", "alice", "--password", "wrong"], [], ["--username", "mallory"])
        ):
            env = {**subprocess_env, "LOGQ_SHIPPER_PASSWORD": "wonder land"}
            done = run_shipper_once(
                agg.address, manifest.root, tmp_path / f"refused-{n}", env,
                "--shared-key", KEY, "--retry-timeout", "3", *creds,
            )  # fmt: skip
            message = done.stdout + done.stderr
            assert done.returncode != 0, message[-2000:]
            assert "--username" in message, message[-2000:]
            assert "Traceback" not in message, message[-2000:]
        assert list(Path(warehouse).rglob("*.parquet")) == []
        done = run_shipper_once(
            agg.address, manifest.root, tmp_path / "state", subprocess_env,
            "--shared-key", KEY, "--username", "alice", "--password", "wonder land",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    assert "username/password mismatch" in agg.log.read_text()
    assert_tables_match(manifest, warehouse, subprocess_env, socket.gethostname())


def test_mutual_tls_takes_only_clients_with_a_certificate_its_ca_signed(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """``--tls-client-ca``: a shipper with a client certificate that CA signed delivers every
    line; one without a certificate, or with one another CA signed, is refused in the TLS
    handshake and stores nothing, its error saying what to pass."""
    manifest = write_host(tmp_path / "containers", seed=34, requests=30, long_line=False)
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, client_cert, client_key = make_client_cert(tmp_path)
    _, stranger_cert, stranger_key = make_client_cert(tmp_path, "stranger")
    warehouse = str(tmp_path / "warehouse")
    agg = start_aggregator(
        warehouse, tmp_path, subprocess_env, "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-client-ca", str(client_ca),
    )  # fmt: skip
    tls = ["--tls", "--tls-ca", str(ca), "--retry-timeout", "3"]
    try:
        refused = run_shipper_once(
            agg.address, manifest.root, tmp_path / "no-cert", subprocess_env, *tls
        )
        message = refused.stdout + refused.stderr
        assert refused.returncode != 0, message[-2000:]
        assert "pass --tls-cert and --tls-key" in message, message[-2000:]
        assert "Traceback" not in message and "internal error" not in message, message[-2000:]
        stranger = run_shipper_once(
            agg.address, manifest.root, tmp_path / "stranger", subprocess_env, *tls,
            "--tls-cert", str(stranger_cert), "--tls-key", str(stranger_key),
        )  # fmt: skip
        message = stranger.stdout + stranger.stderr
        assert stranger.returncode != 0, message[-2000:]
        assert "Traceback" not in message and "internal error" not in message, message[-2000:]
        assert list(Path(warehouse).rglob("*.parquet")) == []
        done = run_shipper_once(
            agg.address, manifest.root, tmp_path / "state", subprocess_env, *tls,
            "--tls-cert", str(client_cert), "--tls-key", str(client_key),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert agg.terminate() == 0, agg.log.read_text()
    finally:
        agg.kill()
    log = agg.log.read_text()
    assert "has it no certificate signed by --tls-client-ca?" in log
    assert_tables_match(manifest, warehouse, subprocess_env, socket.gethostname())


def _start_args(program: str, tmp_path: Path) -> list[str]:
    """The least a daemon needs to get as far as loading its TLS files (the shipper: --once,
    an aggregator nobody listens on)."""
    if program == "logq-aggregator":
        return ["--listen", "127.0.0.1:0", "--buffer-dir", str(tmp_path / "buf")]
    return ["--aggregator", "127.0.0.1:1", "--state-dir", str(tmp_path / "state"), "--once"]


@pytest.mark.parametrize(
    ("program", "args", "message"),
    [
        ("logq-aggregator", ["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert"),
        (
            "logq-aggregator",
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{cert}.missing"],
            "cannot load --tls-client-ca",
        ),
        ("logq-shipper", ["--tls-cert", "{cert}", "--tls-key", "{key}"], "--tls-cert needs --tls"),
        ("logq-shipper", ["--tls", "--tls-cert", "{cert}"], "needs both --tls-cert and --tls-key"),
        (
            "logq-aggregator",
            ["--tls-cert", "{cert}", "--tls-key", "{encrypted}"],
            "is encrypted: give its passphrase with --tls-key-password or "
            "$LOGQ_AGGREGATOR_TLS_KEY_PASSWORD",
        ),
        (
            "logq-aggregator",
            ["--tls-cert", "{cert}", "--tls-key", "{encrypted}", "--tls-key-password", "wrong"],
            "(is the passphrase, --tls-key-password or $LOGQ_AGGREGATOR_TLS_KEY_PASSWORD, the",
        ),
        ("logq-aggregator", ["--tls-key-password", "x"], "--tls-key-password needs --tls-cert"),
        (
            "logq-shipper",
            ["--tls", "--tls-cert", "{cert}", "--tls-key", "{encrypted}"],
            "is encrypted: give its passphrase with --tls-key-password or "
            "$LOGQ_SHIPPER_TLS_KEY_PASSWORD",
        ),
        (
            "logq-shipper",
            [
                "--tls",
                "--tls-cert",
                "{cert}",
                "--tls-key",
                "{encrypted}",
                "--tls-key-password",
                "no",
            ],
            "(is the passphrase, --tls-key-password or $LOGQ_SHIPPER_TLS_KEY_PASSWORD, the key's?)",
        ),
        (
            "logq-shipper",
            ["--tls", "--tls-cert", "{ca}", "--tls-key", "{key}"],
            "cannot load --tls-cert",
        ),
    ],
)
def test_client_certificate_flags_that_cannot_work_exit_2(
    tmp_path: Path, subprocess_env: dict[str, str], program: str, args: list[str], message: str
) -> None:
    ca, cert, key = make_ca_and_server(tmp_path)
    encrypted = encrypted_copy(key, PASSPHRASE)
    paths = {"ca": str(ca), "cert": str(cert), "key": str(key), "encrypted": str(encrypted)}
    common = _start_args(program, tmp_path)
    done = subprocess.run(
        [str(console_script(program)), *common, *(a.format(**paths) for a in args)],
        env=subprocess_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_encrypted_keys_open_with_their_passphrase(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Encrypted private keys on both ends of mutual TLS (Fluent Bit's ``tls.key_passwd``,
    Fluentd's ``private_key_passphrase``): the aggregator's passphrase from
    $LOGQ_AGGREGATOR_TLS_KEY_PASSWORD, the shipper's from --tls-key-password; every line
    arrives."""
    ca, cert, key = make_ca_and_server(tmp_path)
    client_ca, client_cert, client_key = make_client_cert(tmp_path)
    server_key, shipper_key = encrypted_copy(key, PASSPHRASE), encrypted_copy(client_key, "other")
    _every_line_arrives(
        tmp_path, 35, subprocess_env,
        ["--tls-cert", str(cert), "--tls-key", str(server_key), "--tls-client-ca", str(client_ca)],
        ["--tls", "--tls-ca", str(ca), "--tls-cert", str(client_cert), "--tls-key",
         str(shipper_key), "--tls-key-password", "other"],
        {**subprocess_env, "LOGQ_AGGREGATOR_TLS_KEY_PASSWORD": PASSPHRASE},
    )  # fmt: skip


@pytest.mark.parametrize("program", ["logq-aggregator", "logq-shipper"])
def test_an_encrypted_key_without_its_passphrase_asks_no_terminal(
    tmp_path: Path, subprocess_env: dict[str, str], program: str
) -> None:
    """OpenSSL asks for a missing passphrase on the controlling terminal: a daemon started
    from a shell sat at "Enter PEM pass phrase:" (and a key rotated to an encrypted one would
    have stopped the aggregator's event loop there). It exits 2 instead, naming the flag."""
    _, cert, key = make_ca_and_server(tmp_path)
    encrypted = encrypted_copy(key, PASSPHRASE)
    common = _start_args(program, tmp_path)
    tls = ["--tls-cert", str(cert), "--tls-key", str(encrypted)]
    if program == "logq-shipper":
        tls.insert(0, "--tls")
    leader, terminal = pty.openpty()

    def on_the_terminal() -> None:  # in the child: the pty becomes its controlling terminal
        os.setsid()
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [str(console_script(program)), *common, *tls],
        env=subprocess_env, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=on_the_terminal,
    )  # fmt: skip
    os.close(terminal)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.returncode == 2, err
    assert "is encrypted: give its passphrase with --tls-key-password" in err, err


def test_tls_server_name_verifies_an_aggregator_addressed_by_ip(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """An aggregator whose certificate names only a DNS name, reached at 127.0.0.1 (an IP
    behind a load balancer, a name that resolves elsewhere): refused as a name mismatch, the
    error naming --tls-server-name; with --tls-server-name that name (Fluent Bit's
    ``tls.vhost``), every line arrives."""
    ca, cert, key = make_ca_and_server(tmp_path, dns_names=("aggregator.logq.test",))
    agg = start_aggregator(
        str(tmp_path / "refused"), tmp_path, subprocess_env,
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    try:
        refused = run_shipper_once(
            agg.address, write_host(tmp_path / "one", seed=36, requests=5).root,
            tmp_path / "refused-state", subprocess_env, "--tls", "--tls-ca", str(ca),
            "--retry-timeout", "2",
        )  # fmt: skip
    finally:
        agg.kill()
    message = refused.stdout + refused.stderr
    assert refused.returncode != 0, message[-2000:]
    assert "is not for this address" in message and "--tls-server-name" in message, message
    _every_line_arrives(
        tmp_path, 36, subprocess_env,
        ["--tls-cert", str(cert), "--tls-key", str(key)],
        ["--tls", "--tls-ca", str(ca), "--tls-server-name", "aggregator.logq.test"],
    )  # fmt: skip


def _not_allowed_count(agg: Aggregator) -> float:
    """``connections_closed_total{reason="not_allowed"}`` from the aggregator's metrics port."""
    series = 'logq_aggregator_connections_closed_total{reason="not_allowed"}'
    return sample(metrics_base(agg.log.read_text()), series)


def test_allow_network_takes_only_the_listed_clients(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """--allow-network (Fluentd's in_forward ``<client> network``): a shipper on 127.0.0.1 is
    closed by an aggregator that takes only 10.0.0.0/8 and 2001:db8::/32, before it reads a
    byte: the shipper fails, nothing is stored, the metric counts it and the log says why.
    Listed (127.0.0.0/8), it delivers every line."""
    refusing = start_aggregator(
        str(tmp_path / "refused"), tmp_path, subprocess_env,
        "--allow-network", "10.0.0.0/8", "--allow-network", "2001:db8::/32",
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    try:
        before = _not_allowed_count(refusing)  # (the start-up check's probe was one)
        refused = run_shipper_once(
            refusing.address, write_host(tmp_path / "one", seed=37, requests=5).root,
            tmp_path / "refused-state", subprocess_env, "--retry-timeout", "2",
        )  # fmt: skip
        after = _not_allowed_count(refusing)
    finally:
        refusing.kill()
    assert refused.returncode != 0, (refused.stdout + refused.stderr)[-2000:]
    assert after > before
    assert "not in --allow-network" in refusing.log.read_text()
    assert not list((tmp_path / "refused").rglob("*.parquet"))
    _every_line_arrives(tmp_path, 37, subprocess_env, ["--allow-network", "127.0.0.0/8"], [])
