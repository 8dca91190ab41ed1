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
from tests.aggregator.helpers import serving
from tests.aggregator.test_inflight import HeldBuffer
from tests.shipper.tlsgen import encrypted_copy, make_ca_and_server


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
