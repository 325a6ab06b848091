"""Logging in to a real Dovecot: OAuth 2.0 (XOAUTH2, OAUTHBEARER) with a token command, a password
command, and the log lines a person reads when it fails (a refused login, an untrusted certificate,
a failing command) and when it works again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.dovecot import DovecotServer, poller_config
from helpers.ports import wait_for
from mailtrack.inbound.imap import ImapPoller
from mailtrack.queue.spool import Spool

MakePoller = Callable[..., ImapPoller]


def mail(n: int | str) -> bytes:
    return f"From: alice@example.test\nSubject: mail {n}\nMessage-ID: <auth-{n}@example.test>\n\nbody\n".encode()


@pytest.fixture
def make_poller(dovecot: DovecotServer, imap_user: str, spool: Spool) -> Iterator[MakePoller]:
    """make_poller(**config fields) -> an ImapPoller for this test's user, closed afterwards."""
    pollers: list[ImapPoller] = []

    def make(**fields: Any) -> ImapPoller:
        pollers.append(ImapPoller(poller_config(dovecot, imap_user, **fields), spool))
        return pollers[-1]

    yield make
    for poller in pollers:
        poller.close()


@pytest.fixture
def running() -> Iterator[Callable[[ImapPoller], threading.Event]]:
    """running(poller) -> its stop event: run() in a thread, stopped and joined at the end."""
    started: list[tuple[threading.Thread, threading.Event]] = []

    def start(poller: ImapPoller) -> threading.Event:
        stop = threading.Event()
        thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
        thread.start()
        started.append((thread, stop))
        return stop

    yield start
    for thread, stop in started:
        stop.set()
        thread.join(timeout=15)
        assert False is thread.is_alive()


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """The poller's log lines at exactly `level`."""
    return [r.getMessage() for r in caplog.records if r.name == "mailtrack.inbound.imap" and r.levelno == level]


@pytest.mark.parametrize(("auth", "method"), [("xoauth2", "XOAUTH2"), ("oauthbearer", "OAUTHBEARER")])
def test_oauth2_login_with_a_token_command(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, auth: str, method: str,
) -> None:  # fmt: skip
    """auth = xoauth2 / oauthbearer logs in with the token token_command prints, asked afresh at
    each login (Dovecot's oauth2 passdb checks it with the introspection endpoint); the token is in
    no log line, not even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    first = dovecot.grant_token(imap_user)
    token_file.write_text(first + "\n")
    dovecot.append(imap_user, mail(1))
    poller = make_poller(auth=auth, password="", token_command=f"cat '{token_file}'")
    asked = dovecot.introspection.requests
    assert 1 == poller.poll_once()
    poller.close()
    second = dovecot.grant_token(imap_user)
    token_file.write_text(second + "\n")
    del dovecot.introspection.tokens[first]  # expired: only a fresh token logs in now
    dovecot.append(imap_user, mail(2))
    assert 1 == poller.poll_once()
    assert (2, ["mail 1", "mail 2"]) == (dovecot.introspection.requests - asked, dovecot.subjects(imap_user, "Archive"))
    assert 2 == dovecot.log().count(f"Login: user=<{imap_user}>, method={method}")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert (False, False) == (first in logged, second in logged)


def test_password_command_is_run_at_each_login(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, tmp_path: Path
) -> None:
    """password_command's first line of output is the password (as isync's PassCmd); it runs at each login."""
    runs = tmp_path / "runs"
    poller = make_poller(password="", password_command=f"echo run >> '{runs}'; printf 'secret\\nnot this\\n'")
    dovecot.append(imap_user, mail(1))
    assert 1 == poller.poll_once()
    poller.close()
    assert 0 == poller.poll_once()
    assert ["run", "run"] == runs.read_text().split()


@pytest.mark.slow  # Dovecot makes each refused login wait longer (2 s, then 4 s)
def test_a_refused_login_is_an_error_once_and_its_end_a_warning_once(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, running: Callable[[ImapPoller], threading.Event],
) -> None:  # fmt: skip
    """A wrong password: one ERROR naming the account and what to check (no Python bytes repr), the
    same failure again only at DEBUG; once the password is right, one WARNING says it works again
    (visible without -v), and the first login was one INFO line."""
    caplog.set_level(logging.DEBUG, logger="mailtrack.inbound.imap")
    password_file = tmp_path / "password"
    password_file.write_text("wrong\n")
    dovecot.append(imap_user, mail(1))
    poller = make_poller(password="", password_file=str(password_file), backoff_initial=0.05, backoff_max=0.1)
    running(poller)
    wait_for(lambda: len([r for r in caplog.records if "refused the login" in r.getMessage()]) >= 2,
             timeout=60, what="two refused logins")  # fmt: skip
    password_file.write_text("secret\n")
    wait_for(lambda: dovecot.subjects(imap_user, "Archive") == ["mail 1"], timeout=60, what="the mail in Archive")
    where = f"{imap_user}@127.0.0.1:{dovecot.imap_port}/INBOX"
    expected = [
        f"{where}: 127.0.0.1:{dovecot.imap_port} refused the login of {imap_user} (password): "
        f"[AUTHENTICATIONFAILED] Authentication failed.; check username and the password in {password_file}; "
        "trying again in 0.05s"
    ]
    assert expected == lines(caplog, logging.ERROR)
    [again] = lines(caplog, logging.WARNING)
    assert again.startswith(f"{where}: logged in again (password, plain, IDLE) after ")
    assert [] == [line for line in lines(caplog, logging.INFO) if "logged in" in line or "reconnected" in line]
    assert 1 <= len([line for line in lines(caplog, logging.DEBUG) if "refused the login" in line])


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"auth": "xoauth2", "password": "", "token_command": "echo 'refresh token revoked' >&2; exit 3"},
         "token_command exited with status 3: refresh token revoked"),
        ({"password": "", "password_command": "true"}, "password_command printed nothing"),
        ({"password": "", "password_file": "/nonexistent/password"},
         "password_file /nonexistent/password: No such file or directory"),
        ({"security": "starttls", "tls_ca_file": "/nonexistent/ca.pem"},
         "tls_ca_file /nonexistent/ca.pem: No such file or directory"),
    ],
)  # fmt: skip
def test_what_a_login_needs_and_lacks_is_an_error_that_says_so(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, caplog: pytest.LogCaptureFixture,
    running: Callable[[ImapPoller], threading.Event], fields: dict[str, str], error: str,
) -> None:  # fmt: skip
    """A failing password or token command (its status and the last line of its stderr), an
    unreadable password file or CA file: one ERROR that names it."""
    running(make_poller(**fields))
    wait_for(lambda: lines(caplog, logging.ERROR), what="the error")
    where = f"{imap_user}@127.0.0.1:{dovecot.imap_port}/INBOX"
    assert [f"{where}: cannot log in: {error}; trying again in 0.05s"] == lines(caplog, logging.ERROR)


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_an_untrusted_certificate_logs_why(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, caplog: pytest.LogCaptureFixture,
    running: Callable[[ImapPoller], threading.Event], security: str,
) -> None:  # fmt: skip
    """Without the right CA, IMAPS and STARTTLS log the verification error and the name checked
    (not `[Errno 9] Bad file descriptor` from closing the broken socket), as an ERROR."""
    port = dovecot.imaps_port if security == "tls" else dovecot.imap_port
    poller = make_poller(security=security, port=port)
    with pytest.raises(Exception) as info:  # noqa: B017 - which one is the point
        poller.poll_once()
    assert "SSLCertVerificationError" == type(info.value).__name__
    running(poller)
    wait_for(lambda: lines(caplog, logging.ERROR), what="the error")
    expected = (
        f"{imap_user}@127.0.0.1:{port}/INBOX: the TLS certificate of 127.0.0.1:{port} does not verify "
        "(CERTIFICATE_VERIFY_FAILED: self-signed certificate; the name checked: 127.0.0.1): set tls_ca_file "
        "to the CA that signed it, or host to a name the certificate is for; trying again in 0.05s"
    )
    assert [expected] == lines(caplog, logging.ERROR)
