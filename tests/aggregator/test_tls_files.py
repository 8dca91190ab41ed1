"""A rotated TLS certificate is served without a restart (aggregator/tls_files.py): new
connections get the files as they now are, looked at most every RELOAD_CHECK_SECONDS; a pair
caught half-rotated (a new certificate beside the old key) is not taken, the previous one is
served meanwhile."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from pathlib import Path

import pytest

from aggregator.metrics import Metrics
from aggregator.server import ServerLimits
from aggregator.tls_files import CertificateError, TlsFiles
from shipper.tls_reload import RELOAD_CHECK_SECONDS
from tests.aggregator.helpers import serving, start_aggregator
from tests.aggregator.test_inflight import HeldBuffer
from tests.shipper.tlsgen import encrypted_copy, make_ca_and_server, secret_volume


async def _trusted(host: str, port: int, ca: Path) -> bool:
    """Whether a client trusting only ``ca`` completes a TLS handshake with the server."""
    client = ssl.create_default_context(cafile=str(ca))
    try:
        _, writer = await asyncio.open_connection(host, port, ssl=client)
    except ssl.SSLCertVerificationError:
        return False
    writer.close()
    return True


def test_a_rotated_certificate_is_served_to_new_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_ca, old_cert, old_key = make_ca_and_server(tmp_path / "old")
    new_ca, new_cert, new_key = make_ca_and_server(tmp_path / "new")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    now = [0.0]
    files = TlsFiles(str(cert), str(key), clock=lambda: now[0])

    async def scenario() -> None:
        async with serving(HeldBuffer(), Metrics(), ServerLimits(), tls_files=files) as (
            _,
            host,
            port,
        ):
            assert await _trusted(host, port, old_ca)
            shutil.copy(new_cert, cert)  # the certificate rotated, its key not yet
            assert await _trusted(host, port, old_ca)  # not looked at before the interval
            now[0] += RELOAD_CHECK_SECONDS
            with caplog.at_level(logging.WARNING, logger="logq.aggregator.server"):
                assert await _trusted(host, port, old_ca)  # half-rotated: the old pair stays
            assert any("do not load" in m for m in caplog.messages), caplog.messages
            shutil.copy(new_key, key)
            assert await _trusted(host, port, old_ca)  # changed, but not looked at yet
            now[0] += RELOAD_CHECK_SECONDS
            assert await _trusted(host, port, new_ca)  # the new pair, no restart
            assert not await _trusted(host, port, old_ca)

    asyncio.run(scenario())


def test_unchanged_files_are_not_loaded_again(tmp_path: Path) -> None:
    _, cert, key = make_ca_and_server(tmp_path)
    now = [0.0]
    files = TlsFiles(str(cert), str(key), clock=lambda: now[0])
    first = files.current()
    now[0] += 10 * RELOAD_CHECK_SECONDS
    assert files.current() is first


@pytest.mark.parametrize("password", [None, "pass-1"])
def test_a_key_rotated_to_an_encrypted_one_opens_with_the_passphrase_or_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, password: str | None
) -> None:
    """A rotated key that is encrypted: with --tls-key-password it is opened; without, the
    files are refused with a WARNING naming the flag (the previous pair stays), never
    OpenSSL's prompt on the terminal, which would hold the event loop."""
    (tmp_path / "new").mkdir()
    _, cert, key = make_ca_and_server(tmp_path)
    _, new_cert, new_key = make_ca_and_server(tmp_path / "new")
    now = [0.0]
    files = TlsFiles(str(cert), str(key), clock=lambda: now[0], key_password=password)
    first = files.current()
    shutil.copy(new_cert, cert)
    shutil.copy(encrypted_copy(new_key, "pass-1"), key)
    now[0] += RELOAD_CHECK_SECONDS
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.server"):
        taken = files.current()
    if password is None:
        assert taken is first
        assert any("is encrypted" in m and "--tls-key-password" in m for m in caplog.messages)
    else:
        assert taken is not first and not caplog.messages


def test_a_file_that_cannot_be_read_is_named_with_what_to_do(tmp_path: Path) -> None:
    """OpenSSL's error for a missing or unreadable file (``[Errno 2] No such file or
    directory``) named neither of the two files: the start's line now names the one at fault,
    its flag and the process's uid, at start and on a rotation (WARNING, the pair kept)."""
    _, cert, key = make_ca_and_server(tmp_path)
    missing = tmp_path / "gone.key"
    with pytest.raises(CertificateError) as caught:
        TlsFiles(str(cert), str(missing))
    text = str(caught.value)
    assert text.startswith(f"--tls-key {missing} cannot be read (No such file or directory; "), text
    assert "running as uid" in text and text.endswith("a file this user can read")
    with pytest.raises(CertificateError, match=f"^--tls-cert {tmp_path} cannot be read"):
        TlsFiles(str(tmp_path), str(key))  # a folder given for the certificate
    # Files that are read but are no pair keep their own words.
    with pytest.raises(CertificateError, match="they must be a PEM certificate and its"):
        TlsFiles(str(key), str(cert))


def _mode_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in caplog.messages if "every user" in m]


def test_a_key_every_user_can_read_is_warned_about_at_start_and_at_a_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Kubernetes secret mounted with the default mode (0644) leaves the private key readable
    by every user of the node or container: a WARNING at start names the file (the link and the
    file it points to, whose mode counts), its mode and what to do; the key is still used (a
    refusal would stop a fleet at its next restart). A rotation to an exposed key warns again;
    a key readable by its owner and group only (0400, 0440 with fsGroup) does not warn."""
    (tmp_path / "new").mkdir()
    _, cert, key = make_ca_and_server(tmp_path)
    _, new_cert, new_key = make_ca_and_server(tmp_path / "new")
    mounted = secret_volume(tmp_path / "secret", {"tls.crt": cert, "tls.key": key}, 0o644)
    real = (tmp_path / "secret" / "..data" / "tls.key").resolve()
    now = [0.0]
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.server"):
        files = TlsFiles(str(mounted["tls.crt"]), str(mounted["tls.key"]), clock=lambda: now[0])
    (warning,) = _mode_warnings(caplog)
    assert warning.startswith(f"--tls-key {mounted['tls.key']} (a link to {real}) can be read by")
    assert "(mode 0644)" in warning and f"chmod 600 {real}" in warning
    assert "defaultMode: 0400" in warning
    caplog.clear()
    first = files.current()
    (real.parent / "tls.crt").write_bytes(new_cert.read_bytes())  # rotated in place, same modes
    real.write_bytes(new_key.read_bytes())
    now[0] += RELOAD_CHECK_SECONDS
    with caplog.at_level(logging.WARNING, logger="logq.aggregator.server"):
        assert files.current() is not first  # the new pair is taken, and still exposed
    assert len(_mode_warnings(caplog)) == 1
    caplog.clear()
    for mode in (0o600, 0o400, 0o440, 0o640):
        real.chmod(mode)
        with caplog.at_level(logging.WARNING, logger="logq.aggregator.server"):
            TlsFiles(str(mounted["tls.crt"]), str(mounted["tls.key"]))
        assert not _mode_warnings(caplog), (oct(mode), caplog.messages)


def test_the_aggregator_warns_of_a_key_every_user_can_read_and_serves(tmp_path: Path) -> None:
    """The real program: a 0644 key is named in a WARNING at start, and the port listens."""
    _, cert, key = make_ca_and_server(tmp_path)
    key.chmod(0o644)
    proc = start_aggregator(tmp_path, extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    assert proc.stop() == 0
    text = proc.log_text()
    assert f'level=warning logger=logq.aggregator.server msg="--tls-key {key} can be' in text, text
    assert "(mode 0644)" in text


def test_the_aggregator_warns_of_a_config_file_with_secrets_every_user_can_read(
    tmp_path: Path,
) -> None:
    """Its own secrets and those of a ``[shipper]`` table it skips: all of them are exposed."""
    conf = tmp_path / "logq.toml"
    conf.write_text('[aggregator]\nshared-key = "k-0123456789abcdef"\n[shipper]\npassword = "pw"\n')
    conf.chmod(0o644)
    proc = start_aggregator(tmp_path, extra=["--config", str(conf)])
    assert proc.stop() == 0
    text = proc.log_text()
    said = f'level=warning logger=logq.aggregator msg="--config {conf} can be read by every user'
    assert said in text, text
    assert "holds secrets (password, shared-key)" in text
    assert "k-0123456789abcdef" not in text
