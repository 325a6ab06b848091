"""Fixtures: throw-away repositories and gateways, the relay sink, a real Dovecot, `mailtrack serve`.

Helpers live in tests/helpers/ (see its __init__); this file builds fixtures from them, and marks
each test by what it needs (pyproject.toml registers the markers):
- dovecot: it uses the `dovecot` fixture (a real Dovecot; it FAILS, not skips, without one);
- network: it starts a listener or a server on loopback: any test using a fixture in
  NETWORK_FIXTURES, or marked so by hand. A test that listens without the marker fails (the
  `listening_is_marked` fixture), so a new test cannot forget it;
- offline: neither of the two (`pytest -m offline` runs everything that needs no server);
- slow: set by hand on the tests that take a second or more (`pytest --durations`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import helpers.ports
from helpers.dovecot import DovecotError, DovecotServer
from helpers.ports import free_port
from helpers.repos import NONINTERACTIVE, issues_repo, make_gateway, make_repo
from helpers.servers import ADDRESS, Served, Server, clone
from helpers.sink import Sink
from helpers.tracker import ALICE, Tracker
from mailtrack.config import GatewayConfig, ListenConfig
from mailtrack.inbound.smtp import SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Component, Project
from mailtrack.tracker.store import Change
from mailtrack.worker.pipeline import Gateway

LISTENER_ADDRESSES = Ours(main="issues@example.test", control="control@example.test")  # the `start` fixture's

# Fixtures that start a listener or a server on loopback (`start` starts our listener).
NETWORK_FIXTURES = {"dovecot", "sink", "tracker", "server", "served", "start"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "dovecot" in fixtures:
            item.add_marker(pytest.mark.dovecot)
        if fixtures & NETWORK_FIXTURES and not item.get_closest_marker("network"):
            item.add_marker(pytest.mark.network)
        if not (item.get_closest_marker("dovecot") or item.get_closest_marker("network")):
            item.add_marker(pytest.mark.offline)


@pytest.fixture(autouse=True)
def listening_is_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test not marked `network` that listens on a socket (itself, in a thread, or through
    helpers.servers.Server) fails, naming what it started: mark it, or use a fixture that is."""
    if request.node.get_closest_marker("network"):
        yield
        return
    started: list[str] = []
    real_listen = socket.socket.listen

    def listen(sock: socket.socket, *args: int) -> None:
        started.append(f"a socket listening on {sock.getsockname()!r}")
        real_listen(sock, *args)

    monkeypatch.setattr(socket.socket, "listen", listen)
    monkeypatch.setattr(helpers.ports, "unmarked_listeners", started)
    yield
    if started:
        pytest.fail(f"this test starts {', '.join(started)} but is not marked network: add @pytest.mark.network "
                    "(or use a fixture that starts the server: NETWORK_FIXTURES in tests/conftest.py)", pytrace=False)


@pytest.fixture(autouse=True)
def git_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with its own HOME and no system git config, as dulwich's compat tests do, and
    nothing it runs may ask on a terminal (helpers.repos.NONINTERACTIVE)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text("[user]\n\tname = Jane Doe\n\temail = jane@example.org\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    for var, value in NONINTERACTIVE.items():
        monkeypatch.setenv(var, value)


# --- repositories and gateways ----------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A repository with an initialised issues branch and one commit on main."""
    yield issues_repo(tmp_path / "repo")


@pytest.fixture
def gateway(repo: Path) -> Iterator[Gateway]:
    """The gateway of project "proj" with the default configuration (replies rate-limited as shipped)."""
    g = make_gateway(repo, reply_rate_limit=GatewayConfig().reply_rate_limit)
    yield g
    g.close()
    g.store.close()


@pytest.fixture
def gw(repo: Path) -> Iterator[Gateway]:
    """The gateway of project "proj", boss@example.org a maintainer, replies not rate-limited in practice."""
    g = make_gateway(repo, maintainers=["boss@example.org"])
    yield g
    g.close()
    g.store.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """An empty spool of its own (not a gateway's)."""
    return Spool(tmp_path / "spool")


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on from now on, in order (it still syncs them)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


# --- servers on loopback ----------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A running relay sink that accepts everything (helpers/sink.py)."""
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def tracker(repo: Path, sink: Sink) -> Tracker:
    """A repository whose project has component core (owner Olga), notified up to now."""
    t = Tracker(repo, sink)
    project = Project(components=[Component("core", ["Olga Owner <olga@example.org>"])], closed_statuses=["closed"])
    t.change(ALICE, lambda s: Change("project", {"project.xml": project.to_bytes()}))
    assert 0 == t.notify()
    return t


@pytest.fixture
def start(spool: Spool) -> Iterator[Callable[..., SmtpListener]]:
    """start(**ListenConfig fields, spool_=, addresses=, on_accept=, postmaster_forward=) -> a running
    listener for issues@example.test on a free loopback port, stopped afterwards."""
    running: list[SmtpListener] = []

    def start_listener(*, spool_: Spool | None = None, addresses: Ours = LISTENER_ADDRESSES, on_accept: Any = None,
                       postmaster_forward: str = "", **fields: Any) -> SmtpListener:
        config = replace(ListenConfig(port=free_port(), server_name="gw.example.test"), **fields)
        listener = SmtpListener(config, spool_ or spool, addresses, on_accept=on_accept, postmaster_forward=postmaster_forward)
        listener.start()
        running.append(listener)
        helpers.ports.wait_for(lambda: listener.active_sessions == 0, what="the start-up probe session to end")
        return listener

    yield start_listener
    for listener in running:
        listener.stop()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary folder (tmp_path can be too long for a Unix socket's 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="mailtrack-sock-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`mailtrack serve` on a fresh repository (no issues branch yet), on a free port."""
    repo = make_repo(tmp_path / "gw")
    s = Server(repo, free_port())
    s.start()
    yield s
    if s.proc and s.proc.poll() is None:
        s.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`mailtrack serve` on a gateway repository under an address git send-email accepts, and a clone of it."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port(), extra=f'address = "{ADDRESS}"', address=ADDRESS)
    server.start()
    try:
        yield Served(repo, server, clone(repo, tmp_path / "clone"))
    finally:
        assert 0 == server.stop()


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
        check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    try:
        yield cert, key
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(tls_cert: tuple[Path, Path]) -> Iterator[DovecotServer]:
    """A real Dovecot (IMAP + STARTTLS, IMAPS, LMTP) on loopback for the session; FAILS if absent.

    Its certificate is `tls_cert`'s (trust it with `tls_cert[0]`); any user logs in with
    helpers.dovecot.PASSWORD.
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
    """A fresh Dovecot user (own INBOX and Archive) for one test; password helpers.dovecot.PASSWORD."""
    return dovecot.add_user(f"user{next(_users)}")
