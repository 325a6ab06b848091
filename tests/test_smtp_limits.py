"""The listener against an attacker and an RFC: sessions per client, idle sessions, long lines,
postmaster, and a second `mailtrack serve` on the same Unix socket. Real listeners on loopback
(aiosmtpd on a free port, a real Unix socket), smtplib and swaks as clients."""

from __future__ import annotations

import contextlib
import email
import json
import smtplib
import socket
import subprocess
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path

import pytest

from helpers.cli import mailtrack, mailtrack_command
from helpers.ports import free_port, wait_for
from helpers.repos import read_names
from mailtrack.config import ConfigError, ListenConfig
from mailtrack.inbound.smtp import SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.mail.parse import parse
from mailtrack.queue.spool import Spool

FROM = "alice@example.test"
ADDRESSES = Ours(main="issues@example.test", control="control@example.test")

StartListener = Callable[..., SmtpListener]


def message(subject: str = "Hello", to: str = "issues@example.test", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Some text.\n")
    return msg


def kept(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


def header(raw: bytes, name: str) -> list[str]:
    return [str(v) for v in email.message_from_bytes(raw, policy=default_policy).get_all(name, [])]


# --- sessions ---------------------------------------------------------------------------------


def hog(port: int, source: str, n: int) -> tuple[list[smtplib.SMTP], list[int]]:
    """Open `n` sessions from `source`, each kept alive by NOOP: (the open ones, the greeting codes of the refused)."""
    held, refused = [], []
    for _ in range(n):
        try:
            client = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10)
        except smtplib.SMTPConnectError as e:
            refused.append(e.smtp_code)
            continue
        assert 250 == client.noop()[0]
        held.append(client)
    return held, refused


@pytest.mark.parametrize(("per_client", "expected"), [(0, (4, [], 421)), (2, (2, [421, 421], 250))])
def test_one_client_cannot_hold_every_session(start: StartListener, spool: Spool, per_client: int,
                                              expected: tuple[int, list[int], int]) -> None:
    """One address opening max_sessions sessions kept alive by NOOP: with no per-client limit (the
    old behaviour) it holds all 4 and another sender gets 421; with max_sessions_per_client = 2 it
    gets 2, is refused 421 for the rest, and a sender from another address delivers."""
    listener = start(max_sessions=4, max_sessions_per_client=per_client)
    port = listener.config.port
    held, refused = hog(port, "127.0.0.1", 4)
    wait_for(lambda: listener.active_sessions == len(held), what="the attacker's sessions")
    try:
        with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.2", 0), timeout=10) as legit:
            legit.send_message(message("legit"))
            code = 250
    except smtplib.SMTPConnectError as e:
        code = e.smtp_code
    finally:
        for client in held:
            client.close()
    assert expected == (len(held), refused, code)
    assert (["legit"] if code == 250 else []) == [header(r, "Subject")[0] for r in kept(spool.root / "incoming" / "new")]


def test_per_client_refusal_says_why(start: StartListener) -> None:
    """The session over max_sessions_per_client is greeted 421 4.7.0 naming the address as the reason."""
    listener = start(max_sessions_per_client=1)
    held, _ = hog(listener.config.port, "127.0.0.1", 1)
    try:
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.SMTP("127.0.0.1", listener.config.port, timeout=10)
    finally:
        held[0].close()
    assert (421, b"4.7.0 Too many connections from your address, try again later") == (
        info.value.smtp_code, info.value.smtp_error)


def test_a_session_that_only_sends_noop_expires(start: StartListener) -> None:
    """NOOP, RSET and VRFY do not keep a session: after idle_timeout without a mail it gets 421 4.4.2
    and is closed, and its slot is free again (with max_sessions = 1: a new session is greeted 220)."""
    listener = start(idle_timeout=0.5, max_sessions=1)
    client = smtplib.SMTP("127.0.0.1", listener.config.port, timeout=10)
    client.ehlo()
    codes: list[int] = []

    def cut() -> bool:
        try:
            codes.append(client.docmd(["NOOP", "RSET", "VRFY x"][len(codes) % 3])[0])
        except smtplib.SMTPServerDisconnected:
            codes.append(-1)
        return codes[-1] in (421, -1)

    try:
        wait_for(cut, timeout=30, what="the idle session to be closed")
    finally:
        client.close()
    wait_for(lambda: listener.active_sessions == 0, what="the slot to be freed")
    with smtplib.SMTP("127.0.0.1", listener.config.port, timeout=10) as other:
        assert 250 == other.noop()[0]
    assert 421 == codes[-1]
    assert set(codes[:-1]) <= {250, 252}


def test_a_session_in_data_does_not_expire(start: StartListener, spool: Spool) -> None:
    """A slow DATA is no idle session: it outlives a NOOP session opened after it, and its mail is taken."""
    listener = start(idle_timeout=0.5)
    port = listener.config.port
    slow = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        slow.ehlo()
        slow.mail(FROM)
        slow.rcpt("issues@example.test")
        assert 354 == slow.docmd("DATA")[0]
        idle = smtplib.SMTP("127.0.0.1", port, timeout=10)

        def idle_cut() -> bool:
            try:
                return idle.noop()[0] == 421
            except smtplib.SMTPServerDisconnected:
                return True

        try:
            wait_for(idle_cut, timeout=30, what="the idle session, opened later, to be closed")
        finally:
            idle.close()
        slow.send(message("slow").as_bytes(policy=SMTP_POLICY) + b".\r\n")
        assert 250 == slow.getreply()[0]
    finally:
        slow.close()
    assert [["slow"]] == [header(r, "Subject") for r in kept(spool.root / "incoming" / "new")]


# --- long lines -------------------------------------------------------------------------------


def test_a_long_header_line_is_accepted_and_kept(start: StartListener, spool: Spool) -> None:
    """A 5,000-character header line and a 100,000-character body line (aiosmtpd: a permanent
    500 Line too long) get 250, from smtplib and from swaks, and are kept whole."""
    listener = start()
    long_value = "x" * 5000
    raw = (f"From: {FROM}\r\nTo: issues@example.test\r\nSubject: long\r\nMessage-ID: <long@example.test>\r\n"
           f"X-Long: {long_value}\r\n\r\n{'y' * 100_000}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        assert {} == client.sendmail(FROM, ["issues@example.test"], raw)
    result = subprocess.run(
        ["swaks", "--hide-informational", "--server", "127.0.0.1", "--port", str(listener.config.port),
         "--from", FROM, "--to", "issues@example.test", "--header", f"X-Long: {long_value}", "--body", "short"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert 0 == result.returncode, result.stdout + result.stderr
    first, second = kept(spool.root / "incoming" / "new")
    assert ([long_value], True, [long_value]) == (
        header(first, "X-Long"), b"\n" + b"y" * 100_000 + b"\n" in first, header(second, "X-Long"))
    assert "long" == parse(first).subject


def test_a_line_longer_than_the_size_limit_is_a_552_and_the_session_goes_on(start: StartListener, spool: Spool) -> None:
    """One line of 300,000 bytes over a max_message_size of 100,000: 552 (too big, not 500), nothing
    kept, and the next mail in the same session is taken."""
    listener = start(max_message_size=100_000)
    raw = f"From: {FROM}\r\nSubject: huge\r\n\r\n{'z' * 300_000}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.helo()  # no ESMTP, no SIZE: the size is only known at the end of DATA
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(FROM, ["issues@example.test"], raw)
        client.send_message(message("after"))
    assert (552, [["after"]]) == (info.value.smtp_code, [header(r, "Subject") for r in kept(spool.root / "incoming" / "new")])


# --- postmaster -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rcpt", "code"), [
    ("postmaster@example.test", 250), ("POSTMASTER@Example.TEST", 250), ("Postmaster", 250),
    ("postmaster@other.test", 550), ("postmaster+x@example.test", 550),
])  # fmt: skip
def test_postmaster_is_accepted_at_rcpt(start: StartListener, rcpt: str, code: int) -> None:
    """RFC 5321 4.5.1: postmaster at our domain, any case, and a bare <Postmaster> are taken; other domains are not."""
    listener = start()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        client.mail(FROM)
        assert code == client.rcpt(rcpt)[0]


def test_postmaster_mail_is_kept_for_the_admin_never_for_the_tracker(start: StartListener, spool: Spool) -> None:
    """Mail to postmaster goes to <spool>/postmaster/new, not to incoming; a mail to postmaster and
    issues@ is kept in both, each copy with its own Delivered-To; with postmaster_forward, a copy is
    queued to the admin with a null sender."""
    listener = start(postmaster_forward="admin@example.org")
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.send_message(message("to postmaster", to="postmaster@example.test"))
        client.send_message(message("both"), to_addrs=["postmaster@example.test", "issues@example.test"])
    box, incoming = kept(spool.root / "postmaster" / "new"), kept(spool.root / "incoming" / "new")
    assert [["to postmaster"], ["both"]] == [header(r, "Subject") for r in box]
    assert [["postmaster@example.test"], ["postmaster@example.test"]] == [header(r, "Delivered-To") for r in box]
    assert ([["both"]], [["issues@example.test"]]) == ([header(r, "Subject") for r in incoming],
                                                       [header(r, "Delivered-To") for r in incoming])
    envelopes = [json.loads(p.read_text()) for p in sorted((spool.root / "outbox" / "env").iterdir())]
    assert [{"sender": "", "recipients": ["admin@example.org"]}] * 2 == envelopes


def test_postmaster_forward_to_an_address_of_ours_is_refused(spool: Spool) -> None:
    """postmaster_forward = an address of ours would loop: the listener refuses to be made."""
    with pytest.raises(ConfigError, match="is an address of ours"):
        SmtpListener(ListenConfig(), spool, ADDRESSES, postmaster_forward="issues+x@example.test")


def test_a_flood_to_postmaster_is_bounded_and_the_tracker_still_takes_mail(start: StartListener, spool: Spool) -> None:
    """Anyone may write to postmaster, and nothing empties its Maildir but the admin: a stranger's
    flood would fill the disk (and the outbox, with postmaster_forward). Past max_postmaster_mails
    unread mails, or max_postmaster_bytes of them, RCPT to postmaster is a 452 (mailbox full, try
    later) and nothing more is kept or forwarded; the tracker's own address takes mail all the same,
    and once the admin has read the mail (new -> cur), postmaster takes mail again."""
    listener = start(max_postmaster_mails=3, postmaster_forward="admin@example.org")
    box = spool.root / "postmaster"
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        for i in range(3):
            assert {} == client.send_message(message(f"flood {i}", to="postmaster@example.test"))
        client.mail(FROM)
        assert 452 == client.rcpt("postmaster@example.test")[0]
        assert 250 == client.rcpt("issues@example.test")[0]
        client.rset()
        assert {} == client.send_message(message("a report"))
    assert (3, 3, [["a report"]]) == (len(kept(box / "new")), len(list((spool.root / "outbox" / "env").iterdir())),
                                      [header(r, "Subject") for r in kept(spool.root / "incoming" / "new")])
    for path in (box / "new").iterdir():
        path.rename(box / "cur" / (path.name + ":2,S"))
    heavy = start(max_postmaster_bytes=2000, spool_=spool)
    with smtplib.SMTP("127.0.0.1", heavy.config.port) as client:
        assert {} == client.send_message(message("after reading", to="postmaster@example.test", X_Pad="x" * 3000))
        client.mail(FROM)
        assert 452 == client.rcpt("postmaster@example.test")[0]


@pytest.mark.network
def test_postmaster_mail_in_serve_is_shown_by_status_and_never_becomes_an_issue(repo: Path) -> None:
    """Through a real `mailtrack serve`: mail to postmaster@ is taken (250), `mailtrack process`
    makes no issue of it, and `mailtrack status` shows it waiting in the postmaster Maildir."""
    port = free_port()
    config = repo / "mt.toml"
    config.write_text(f'[gateway]\nproject = "proj"\naddress = "issues@example.test"\n[[listen]]\nport = {port}\n')
    before = read_names(repo)
    with served(repo, config, f"smtp 127.0.0.1:{port}"):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert {} == client.send_message(message("for the admin", to="postmaster@example.test"))
    assert 0 == mailtrack("process", repo=repo, config=config).returncode
    status = mailtrack("status", repo=repo, config=config, text=True)
    box = repo / ".git" / "mailtrack" / "spool" / "postmaster"
    assert (before, 1) == (read_names(repo), len(kept(box / "new")))
    assert f"postmaster: 1 new, 0 read, in the Maildir {box}" in status.stdout.splitlines()


# --- one Unix socket, two `mailtrack serve` ---------------------------------------------------


@contextlib.contextmanager
def served(repo: Path, config: Path, where: str) -> Iterator[list[str]]:
    """`mailtrack serve` running until the block ends (SIGTERM, exit 0); yields the lines it wrote
    to stderr before its line saying where it listens."""
    proc = subprocess.Popen(mailtrack_command("--repo", str(repo), "--config", str(config), "serve"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    before: list[str] = []
    try:
        while f"listening on {where} for" not in (line := proc.stderr.readline()):
            assert line, f"serve did not start: {before}"
            before.append(line.rstrip("\n"))
        yield before
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert 0 == proc.returncode


def serve_to_the_end(repo: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`mailtrack serve` expected to refuse to start (a timeout fails the test: it stole the socket)."""
    return subprocess.run(mailtrack_command("--repo", str(repo), "--config", str(config), "serve"), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)


def lmtp_config(repo: Path, path: Path) -> Path:
    config = repo / "lmtp.toml"
    config.write_text(f'[gateway]\nproject = "proj"\naddress = "issues@example.test"\n'
                      f'[[listen]]\nprotocol = "lmtp"\nsocket = "{path}"\n')
    return config


def lmtp_deliver(path: Path, subject: str) -> int:
    with smtplib.LMTP(str(path), timeout=10) as client:
        client.ehlo()
        client.mail(FROM)
        client.rcpt("issues@example.test")
        return client.data(message(subject).as_bytes(policy=SMTP_POLICY))[0]


@pytest.mark.network
def test_a_second_serve_does_not_steal_a_live_socket(repo: Path, socket_dir: Path) -> None:
    """A second `mailtrack serve` on the socket the first one answers on exits 71 with one line on
    stderr and leaves the socket alone: the first still takes mail, and removes its socket at its end."""
    path = socket_dir / "lmtp.sock"
    config = lmtp_config(repo, path)
    with served(repo, config, f"lmtp unix:{path}"):
        inode = path.stat().st_ino
        second = serve_to_the_end(repo, config)
        assert (71, [f"mailtrack: cannot listen on lmtp unix:{path}: the socket is in use: a listener answers on it "
                     "(another mailtrack serve?)"]) == (second.returncode, second.stderr.splitlines())
        assert (inode, 250) == (path.stat().st_ino, lmtp_deliver(path, "after the second"))
    assert False is path.exists()


@pytest.mark.network
def test_a_stale_socket_is_removed_and_anything_else_is_left(repo: Path, socket_dir: Path) -> None:
    """A socket nobody listens on (a killed serve's) is removed and serve starts on it; a plain file at
    the path is no socket: serve exits 71 and the file stays."""
    path = socket_dir / "lmtp.sock"
    config = lmtp_config(repo, path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with served(repo, config, f"lmtp unix:{path}") as log:
        assert 250 == lmtp_deliver(path, "on a stale socket")
    assert [True] == [line.endswith(f"WARNING mailtrack.inbound.smtp: removed the stale socket {path}") for line in log]
    path.write_text("not a socket")
    refused = serve_to_the_end(repo, config)
    assert (71, [f"mailtrack: cannot listen on lmtp unix:{path}: the path exists and is not a socket (left as it is)"],
            "not a socket") == (refused.returncode, refused.stderr.splitlines(), path.read_text())


def test_stop_removes_only_its_own_socket(start: StartListener, socket_dir: Path) -> None:
    """A listener whose socket was replaced meanwhile (another process bound the path) leaves that one."""
    path = socket_dir / "lmtp.sock"
    listener = start(protocol="lmtp", socket=str(path))
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(path))
        listener.stop()
        assert True is path.exists()
    finally:
        other.close()
