"""Fixtures for the network edges: a real Dovecot, a fresh IMAP user, a TLS certificate.

Registered in tests/conftest.py with `pytest_plugins = ["conftest_edges"]`. Helpers (free_port,
wait_for, DovecotServer) live in tests/dovecot.py: import them from there, not from this module.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dovecot import DovecotError, DovecotServer, free_port
from sink import Sink


@pytest.fixture(scope="session")
def dovecot(tls_cert: tuple[Path, Path]) -> Iterator[DovecotServer]:
    """A real Dovecot (IMAP + STARTTLS, IMAPS, LMTP) on loopback for the session; FAILS if absent.

    Its certificate is `tls_cert`'s (trust it with `tls_cert[0]`); any user logs in with
    dovecot.PASSWORD.
    """
    try:
        server = DovecotServer(
            imap_port=free_port(), lmtp_port=free_port(), tls=tls_cert, imaps_port=free_port()
        )
    except DovecotError as error:
        pytest.fail(str(error))
    try:
        server.start()
        yield server
    finally:
        server.remove()


_users = itertools.count(1)


@pytest.fixture
def imap_user(dovecot: DovecotServer) -> str:
    """A fresh Dovecot user (own INBOX and Archive) for one test; password dovecot.PASSWORD."""
    return dovecot.add_user(f"user{next(_users)}")


@pytest.fixture(scope="session")
def tls_cert() -> Iterator[tuple[Path, Path]]:
    """(certificate, key): a self-signed certificate for localhost / 127.0.0.1, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    folder = Path(tempfile.mkdtemp(prefix="mailtrack-tls-"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield cert, key
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running relay sink that accepts everything (tests/sink.py)."""
    s = Sink().start()
    yield s
    s.stop()
