"""A throwaway CA and a server certificate for 127.0.0.1, made with ``cryptography``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server(tmp: Path, dns_names: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """Returns (ca.pem, server.pem, server.key); the certificate names 127.0.0.1 and localhost,
    or only ``dns_names`` when given."""
    names = [x509.DNSName(n) for n in dns_names] or [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    return _issue(tmp, "logq test CA", "127.0.0.1", names, "server")


def make_client_cert(tmp: Path, name: str = "client") -> tuple[Path, Path, Path]:
    """A CA of its own and a client certificate it signed, for mutual TLS: returns
    (``<name>-ca.pem``, ``<name>.pem``, ``<name>.key``)."""
    return _issue(tmp, f"logq {name} CA", f"logq {name}", [], name)


def _issue(
    tmp: Path, ca_name: str, subject: str, names: list[x509.GeneralName], stem: str
) -> tuple[Path, Path, Path]:
    """A new CA and a certificate it signed for ``subject`` (``names`` as subjectAltName),
    written as PEM files: the CA's as ``ca.pem`` for a server, ``<stem>-ca.pem`` otherwise."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    ca_pem = tmp / ("ca.pem" if stem == "server" else f"{stem}-ca.pem")
    cert_pem, key_pem = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_pem.chmod(0o600)  # as a private key should be: 0644 is warned about (tls_keys.py)
    return ca_pem, cert_pem, key_pem


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context; with ``client_ca``, mutual TLS (a client certificate it signed)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def encrypted_copy(key: Path, passphrase: str) -> Path:
    """``key`` encrypted with ``passphrase`` (PKCS#8, as ``openssl pkcs8 -topk8`` writes it),
    beside it as ``<stem>-encrypted.key``."""
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    out = key.with_name(f"{key.stem}-encrypted.key")
    out.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
    )
    out.chmod(0o600)
    return out


def secret_volume(folder: Path, files: dict[str, Path], mode: int) -> dict[str, Path]:
    """``files`` (name: source) laid out as the kubelet mounts a Secret volume in ``folder``:
    each ``<name>`` a link to ``..data/<name>``, ``..data`` a link to a timestamped folder
    holding the files with ``mode`` (a volume's ``defaultMode``). The mounted paths, by name."""
    real = folder / "..2026_12_06_06_00_00.000000001"
    real.mkdir(parents=True)
    (folder / "..data").symlink_to(real.name)
    mounted = {}
    for name, source in files.items():
        (real / name).write_bytes(source.read_bytes())
        (real / name).chmod(mode)
        (folder / name).symlink_to(f"..data/{name}")
        mounted[name] = folder / name
    return mounted
