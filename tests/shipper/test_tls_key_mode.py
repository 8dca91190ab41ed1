"""A ``--tls-key`` every user of the host can read (a Kubernetes secret mounted with the default
mode, 0644) is named in a WARNING at start and at a reload, with what to do: the shipper still
uses it (shipper/tls_keys.py, shared with the aggregator)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import daemon, tls_reload
from shipper.config import load_config
from tests.shipper.receiver import Receiver
from tests.shipper.shipping import REPO, shipper_args
from tests.shipper.tlsgen import make_client_cert, secret_volume


def _client_files(tmp_path: Path, mode: int) -> tuple[Path, dict[str, Path]]:
    """A CA and a client pair mounted as a secret volume whose files have ``mode``."""
    ca, cert, key = make_client_cert(tmp_path)
    return ca, secret_volume(tmp_path / "secret", {"tls.crt": cert, "tls.key": key}, mode)


def _tls_args(ca: Path, files: dict[str, Path]) -> list[str]:
    return [
        *("--tls", "--tls-ca", str(ca)),
        *("--tls-cert", str(files["tls.crt"]), "--tls-key", str(files["tls.key"])),
    ]


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_the_shipper_warns_of_a_key_every_user_can_read_at_start(tmp_path: Path, mode: int) -> None:
    ca, files = _client_files(tmp_path, mode)
    receiver = Receiver()
    try:
        args = shipper_args(tmp_path, receiver, *_tls_args(ca, files), "--once")
        done = subprocess.run(
            [sys.executable, "-m", "shipper.daemon", *args],
            capture_output=True,
            text=True,
            timeout=45,
            cwd=REPO,
        )
    finally:
        receiver.close()
    assert done.returncode == 0, done.stderr[-3000:]
    real = (tmp_path / "secret" / "..data" / "tls.key").resolve()
    warned = [line for line in done.stderr.splitlines() if "can be read by every user" in line]
    if mode & 0o004:
        (line,) = warned
        assert "level=warning logger=logq.shipper" in line
        assert f"--tls-key {files['tls.key']} (a link to {real})" in line
        assert "(mode 0644)" in line and f"chmod 600 {real}" in line
    else:
        assert not warned, done.stderr


def test_a_rotated_key_every_user_can_read_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client certificate and key rotated in place (cert-manager) to files of mode 0644:
    the reload that takes them warns, as the start did."""
    ca, files = _client_files(tmp_path, 0o600)
    receiver = Receiver()
    try:
        cfg = load_config(shipper_args(tmp_path, receiver, *_tls_args(ca, files)))
    finally:
        receiver.close()
    with caplog.at_level(logging.WARNING, logger="logq.shipper"):
        tls = daemon._tls(cfg)
        assert tls is not None and not caplog.messages
        first = tls.context
        (tmp_path / "new").mkdir()
        _, new_cert, new_key = make_client_cert(tmp_path / "new")
        for name, source in (("tls.crt", new_cert), ("tls.key", new_key)):
            real = files[name].resolve()
            real.write_bytes(source.read_bytes())
            real.chmod(0o644)
        monkeypatch.setattr(tls_reload, "RELOAD_CHECK_SECONDS", 0.0)
        assert tls.current() is not first  # the new pair is taken
    assert any("can be read by every user" in m for m in caplog.messages), caplog.messages


KEY = "a-strong-shared-key-of-32-chars!"


@pytest.mark.parametrize(
    ("mode", "secret", "warned"),
    [(0o644, True, True), (0o600, True, False), (0o644, False, False)],
)
def test_a_config_file_with_secrets_every_user_can_read_is_warned_about(
    tmp_path: Path, mode: int, secret: bool, warned: bool
) -> None:
    """A ``--config`` file holding the shared key (a ConfigMap, a file written with the default
    umask) gives it to every user of the host: a WARNING names the file, its mode and the keys,
    never their values. Without secrets, any mode is fine."""
    conf = tmp_path / "shipper.toml"
    conf.write_text(f'shared_key = "{KEY}"\n' if secret else 'hostname = "h"\n')
    conf.chmod(mode)
    receiver = Receiver(shared_key=KEY if secret else None)
    try:
        args = shipper_args(tmp_path, receiver, "--config", str(conf), "--once")
        done = subprocess.run(
            [sys.executable, "-m", "shipper.daemon", *args],
            capture_output=True,
            text=True,
            timeout=45,
            cwd=REPO,
        )
    finally:
        receiver.close()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "holds secrets" in line]
    assert KEY not in done.stderr
    if not warned:
        assert not lines, done.stderr
        return
    (line,) = lines
    assert "level=warning logger=logq.shipper" in line
    assert f"--config {conf} can be read by every user of this host (mode 0644)" in line
    assert "holds secrets (shared_key)" in line and f"chmod 600 {conf}" in line
