"""The SMTP/LMTP listener over loopback, driven by smtplib and by swaks (an independent client)."""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
import stat
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path

import pytest

from helpers.ports import wait_for
from mailtrack.inbound.smtp import ListenConfig, SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.mail.parse import parse
from mailtrack.queue.spool import Spool

FROM = "alice@example.test"
ADDRESSES = Ours(main="issues@example.test", control="control@example.test")

StartListener = Callable[..., SmtpListener]


def message(
    subject: str = "Hello", body: str = "Some text.\n", to: str = "issues@example.test"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    msg.set_content(body)
    return msg


def spooled(spool: Spool) -> list[bytes]:
    """The mails waiting in incoming/new, oldest first."""
    new = spool.root / "incoming" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())]


def headers(raw: bytes, name: str) -> list[str]:
    return [str(v) for v in BytesParser(policy=default_policy).parsebytes(raw).get_all(name, [])]


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--hide-informational", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )


def test_accepts_main_plus_and_control_addresses(start: StartListener, spool: Spool) -> None:
    """Mail to the main address, a plus form and control (any case) is spooled with Delivered-To."""
    listener = start()
    rcpts = ["issues@example.test", "Issues+42@Example.TEST", "CONTROL@example.test"]
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        for rcpt in rcpts:
            assert {} == client.send_message(message(rcpt), to_addrs=[rcpt])
    assert [[r] for r in rcpts] == [headers(raw, "Delivered-To") for raw in spooled(spool)]


def test_spooled_mail_records_the_envelope_and_has_lf_line_ends(
    start: StartListener, spool: Spool
) -> None:
    """The spooled file: Return-Path, Delivered-To, Received, then the mail as sent, LF ends."""
    listener = start()
    msg = message(body=".a line starting with a dot\n")
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.sendmail(FROM, ["issues+7@example.test"], msg.as_bytes(policy=SMTP_POLICY))
    (raw,) = spooled(spool)
    head, _, rest = raw.partition(b"\nFrom: ")
    assert msg.as_bytes() == b"From: " + rest
    assert [
        b"Return-Path: <alice@example.test>",
        b"Delivered-To: issues+7@example.test",
    ] == head.split(b"\n")[:2]
    received = headers(raw, "Received")[0]
    assert (True, True) == (
        "by gw.example.test (mailtrack) with ESMTP" in received,
        "for <issues+7" in received,
    )
    assert b"\r" not in raw


def test_null_sender_is_accepted(start: StartListener, spool: Spool) -> None:
    """A bounce (MAIL FROM:<>) is accepted and recorded as Return-Path: <>."""
    listener = start()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.sendmail("<>", ["issues@example.test"], message().as_bytes(policy=SMTP_POLICY))
    assert ["<>"] == headers(spooled(spool)[0], "Return-Path")


def test_swaks_delivers(start: StartListener, spool: Spool) -> None:
    """swaks, an independent client, delivers a mail to a plus address."""
    listener = start()
    result = swaks(
        "--server", "127.0.0.1", "--port", str(listener.config.port), "--from", FROM,
        "--to", "issues+bug@example.test", "--header", "Subject: from swaks", "--body", "hi there",
    )  # fmt: skip
    assert 0 == result.returncode, result.stdout + result.stderr
    (raw,) = spooled(spool)
    assert (["issues+bug@example.test"], ["from swaks"]) == (
        headers(raw, "Delivered-To"),
        headers(raw, "Subject"),
    )


def test_relay_is_refused(start: StartListener, spool: Spool) -> None:
    """A recipient that is not ours gets 550 5.1.1 at RCPT, and nothing is spooled."""
    listener = start()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.send_message(message(), to_addrs=["other@example.com"])
    expected = {
        "other@example.com": (550, b"5.1.1 <other@example.com>: recipient not accepted here")
    }
    assert expected == info.value.recipients
    assert [] == spooled(spool)


def test_relay_is_refused_to_swaks(start: StartListener, spool: Spool) -> None:
    """swaks trying to relay (or to look-alike addresses) gets 550 5.1.1; nothing is spooled."""
    listener = start()
    for rcpt in ("other@example.com", "issues@example.test.evil.test", "issues-x@example.test"):
        result = swaks(
            "--server",
            "127.0.0.1",
            "--port",
            str(listener.config.port),
            "--from",
            FROM,
            "--to",
            rcpt,
        )
        assert (24, True) == (
            result.returncode,
            f"<** 550 5.1.1 <{rcpt}>: recipient not accepted here" in result.stdout,
        )
    assert [] == spooled(spool)


@pytest.mark.parametrize(
    ("address", "ours"),
    [
        ("issues@example.test", True), ("ISSUES@EXAMPLE.TEST", True),
        ("issues+x.y@example.test", True), ("<control@example.test>", True),
        ("control+x@example.test", False), ("issues@other.test", False),
        ("issuesx@example.test", False), ("issues", False), ("", False),
        ("issues@example.test@x.test", False),
    ],
)  # fmt: skip
def test_addresses(address: str, ours: bool) -> None:
    """Ours.delivers_here: main, main+anything and control, case-insensitive; nothing else."""
    assert ours == ADDRESSES.delivers_here(address)


def test_oversized_mail_is_refused_at_mail_from_with_size(
    start: StartListener, spool: Spool
) -> None:
    """A client announcing SIZE over the limit is refused 552 at MAIL FROM."""
    listener = start(max_message_size=2000)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.send_message(message(body=("x" * 70 + "\n") * 100))
    assert 552 == info.value.smtp_code
    assert [] == spooled(spool)


def test_oversized_mail_is_refused_after_data_without_size(
    start: StartListener, spool: Spool
) -> None:
    """A client that does not announce SIZE is refused 552 after DATA."""
    listener = start(max_message_size=2000)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        assert 250 == client.mail(FROM)[0]
        assert 250 == client.rcpt("issues@example.test")[0]
        code, _ = client.data(message(body=("x" * 70 + "\n") * 100).as_bytes(policy=SMTP_POLICY))
    assert (552, []) == (code, spooled(spool))


def test_250_comes_after_the_mail_is_fsynced_in_new(
    start: StartListener, spool: Spool, fsynced: list[str]
) -> None:
    """When the client has its 250, the mail is in incoming/new, file and directory fsynced."""
    listener = start()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        client.mail(FROM)
        client.rcpt("issues@example.test")
        code, reply = client.data(message().as_bytes(policy=SMTP_POLICY))
        new = sorted((spool.root / "incoming" / "new").iterdir())  # looked at before anything else
    spool_id = reply.decode().rsplit(" ", 1)[1]
    incoming = spool.root / "incoming"
    assert (250, [incoming / "new" / spool_id]) == (code, new)
    assert [str(incoming / "tmp" / spool_id), str(incoming / "new")] == fsynced


class BrokenSpool(Spool):
    """A spool whose disk has failed (fault injection: no real disk fails on demand)."""

    def accept(self, raw: bytes, *, source: str = "") -> str:
        raise OSError(28, "No space left on device")


def test_spool_failure_is_a_temporary_451(start: StartListener, tmp_path: Path) -> None:
    """When the spool cannot keep the mail the answer is 451 4.3.0 (try again), not 250 or 5xx."""
    listener = start(spool_=BrokenSpool(tmp_path / "broken"))
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.send_message(message())
    assert (451, b"4.3.0") == (info.value.smtp_code, info.value.smtp_error[:5])


class BrokenAddresses(Ours):
    def delivers_here(self, address: str) -> bool:
        raise RuntimeError("a bug of ours")


def test_an_internal_error_is_a_451_not_a_500(start: StartListener) -> None:
    """An exception in our code during a command is answered 451 4.3.0 (handle_exception)."""
    listener = start(addresses=BrokenAddresses())
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        client.mail(FROM)
        code, reply = client.rcpt("issues@example.test")
    assert (451, b"4.3.0") == (code, reply[:5])


def test_on_accept_gets_the_spool_id(start: StartListener, spool: Spool) -> None:
    """on_accept(spool_id) is called once per spooled mail, with the id the client was told."""
    seen: list[str] = []
    listener = start(on_accept=seen.append)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        client.mail(FROM)
        client.rcpt("issues@example.test")
        _code, reply = client.data(message().as_bytes(policy=SMTP_POLICY))
    assert [reply.decode().rsplit(" ", 1)[1]] == seen


def lmtp_send(
    client: smtplib.LMTP, rcpts: list[str], raw: bytes
) -> tuple[list[int], list[tuple[int, bytes]]]:
    """Drive LMTP by hand: smtplib.LMTP.sendmail reads only one DATA reply."""
    client.ehlo_or_helo_if_needed()
    assert 250 == client.mail(FROM)[0]
    rcpt_codes = [client.rcpt(r)[0] for r in rcpts]
    replies = [client.data(raw)]
    replies += [client.getreply() for _ in range(rcpt_codes.count(250) - 1)]
    return rcpt_codes, replies


def test_lmtp_replies_once_per_accepted_recipient(start: StartListener, spool: Spool) -> None:
    """LMTP: refused recipients get 550 at RCPT; each accepted one gets its own 250 after DATA."""
    listener = start(protocol="lmtp")
    rcpts = ["issues@example.test", "nobody@example.com", "control@example.test"]
    with smtplib.LMTP("127.0.0.1", listener.config.port) as client:
        rcpt_codes, replies = lmtp_send(client, rcpts, message().as_bytes(policy=SMTP_POLICY))
    (raw,) = spooled(spool)
    spool_id = next((spool.root / "incoming" / "new").iterdir()).name
    assert [250, 550, 250] == rcpt_codes
    expected = [
        (250, f"2.0.0 <issues@example.test> OK queued as {spool_id}".encode()),
        (250, f"2.0.0 <control@example.test> OK queued as {spool_id}".encode()),
    ]
    assert expected == replies
    assert (["issues@example.test", "control@example.test"], True) == (
        headers(raw, "Delivered-To"),
        "with LMTP" in headers(raw, "Received")[0],
    )


def lmtp_two_recipients(listener: SmtpListener, raw: bytes) -> tuple[list[int], int]:
    """DATA to two recipients over LMTP: (the code of each DATA reply, then NOOP's code).

    A reply missing fails by the client's timeout instead of hanging the test."""
    with smtplib.LMTP("127.0.0.1", listener.config.port, timeout=10) as client:
        rcpt_codes, replies = lmtp_send(client, ["issues@example.test", "control@example.test"], raw)
        assert [250, 250] == rcpt_codes
        return [code for code, _ in replies], client.noop()[0]


def test_lmtp_oversized_mail_gets_a_552_per_recipient(start: StartListener, spool: Spool) -> None:
    """LMTP, no SIZE given: a mail over the limit gets one 552 per accepted recipient, then the session goes on."""
    listener = start(protocol="lmtp", max_message_size=2000)
    raw = message(body=("x" * 70 + "\n") * 100).as_bytes(policy=SMTP_POLICY)
    assert ([552, 552], 250, []) == (*lmtp_two_recipients(listener, raw), spooled(spool))


def test_lmtp_a_long_line_is_taken_whole_for_each_recipient(start: StartListener, spool: Spool) -> None:
    """LMTP: a 70,000-byte body line (aiosmtpd alone: 500 Line too long) gets a 250 per recipient and is kept whole."""
    listener = start(protocol="lmtp")
    raw = message().as_bytes(policy=SMTP_POLICY).replace(b"Some text.", b"y" * 70000)
    assert ([250, 250], 250) == lmtp_two_recipients(listener, raw)
    assert [True] == [b"\n" + b"y" * 70000 + b"\n" in kept for kept in spooled(spool)]


def test_lmtp_error_inside_data_gets_a_451_per_recipient(
    start: StartListener, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LMTP: an exception of ours inside DATA (handle_exception's 451) is answered once per recipient."""
    listener = start(protocol="lmtp")

    def broken(*args: object) -> bytes:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(listener.handler, "_stamp", broken)  # fault injection
    raw = message().as_bytes(policy=SMTP_POLICY)
    assert ([451, 451], 250, []) == (*lmtp_two_recipients(listener, raw), spooled(spool))


def test_lmtp_on_a_unix_socket(start: StartListener, spool: Spool, socket_dir: Path) -> None:
    """LMTP over a Unix socket works with smtplib and with swaks; the socket goes away on stop."""
    path = socket_dir / "lmtp.sock"
    listener = start(protocol="lmtp", socket=str(path))
    with smtplib.LMTP(str(path)) as client:
        rcpt_codes, replies = lmtp_send(
            client, ["issues+1@example.test"], message().as_bytes(policy=SMTP_POLICY)
        )
    result = swaks(
        "--socket", str(path), "--protocol", "LMTP", "--from", FROM, "--to", "control@example.test"
    )
    listener.stop()
    assert ([250], [250], 0) == (rcpt_codes, [c for c, _ in replies], result.returncode)
    assert [["issues+1@example.test"], ["control@example.test"]] == [
        headers(r, "Delivered-To") for r in spooled(spool)
    ]
    assert [] == list(socket_dir.iterdir())


@pytest.mark.parametrize("mode", ["0660", "0600", "666"])
def test_unix_socket_gets_socket_mode(start: StartListener, socket_dir: Path, mode: str) -> None:
    """socket_mode is set on the Unix socket right after bind (whatever the umask), so the MTA can write."""
    path = socket_dir / "lmtp.sock"
    old_umask = os.umask(0o077)
    try:
        start(protocol="lmtp", socket=str(path), socket_mode=mode)
    finally:
        os.umask(old_umask)
    assert int(mode, 8) == stat.S_IMODE(path.stat().st_mode)


def test_a_mail_without_message_id_gets_one_from_its_own_bytes(start: StartListener, spool: Spool) -> None:
    """No Message-ID: the listener adds one hashed from the client's bytes, not our dated Received:
    line, so a retry of the same mail has the same id; a mail with a Message-ID is left as it is."""
    listener = start()
    body = b"From: alice@example.test\r\nTo: issues@example.test\r\nSubject: no id\r\n\r\nsame text\r\n"
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
            client.sendmail(FROM, ["issues@example.test"], body)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.send_message(message("with id"))
    first, second, third = spooled(spool)
    made = "<" + hashlib.sha1(body.replace(b"\r\n", b"\n")).hexdigest() + "@mailtrack.invalid>"
    assert ([made], [made]) == (headers(first, "Message-ID"), headers(second, "Message-ID"))
    assert [made, made] == [parse(first).message_id, parse(second).message_id]
    assert ["<with-id@example.test>"] == headers(third, "Message-ID")


def test_stop_accepting_refuses_new_work_and_lets_data_finish(start: StartListener, spool: Spool) -> None:
    """stop_accepting(): connecting is refused, MAIL in an open session is 421, a session in DATA gets 250."""
    listener = start()
    port = listener.config.port
    in_data, idle = smtplib.SMTP("127.0.0.1", port), smtplib.SMTP("127.0.0.1", port)
    try:
        in_data.ehlo()
        in_data.mail(FROM)
        in_data.rcpt("issues@example.test")
        assert 354 == in_data.docmd("DATA")[0]
        wait_for(lambda: listener.sessions_in_data == 1, what="the session in DATA")
        listener.stop_accepting()
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP("127.0.0.1", port, timeout=5)
        assert 421 == idle.docmd(f"MAIL FROM:<{FROM}>")[0]
        assert False is listener.drain(0)
        in_data.send(message("late").as_bytes(policy=SMTP_POLICY) + b".\r\n")
        assert 250 == in_data.getreply()[0]
        assert True is listener.drain(5)
    finally:
        in_data.close()
        idle.close()
    assert ["late"] == [headers(r, "Subject")[0] for r in spooled(spool)]


def client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_starttls(start: StartListener, spool: Spool, tls_cert: tuple[Path, Path]) -> None:
    """STARTTLS with a self-signed certificate the client trusts; Received says ESMTPS."""
    cert, key = tls_cert
    listener = start(tls_cert=str(cert), tls_key=str(key))
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.starttls(context=client_tls(cert))
        client.send_message(message())
    assert "with ESMTPS" in headers(spooled(spool)[0], "Received")[0]


def test_require_tls_refuses_mail_before_starttls(
    start: StartListener, spool: Spool, tls_cert: tuple[Path, Path]
) -> None:
    """With require_tls, MAIL before STARTTLS is refused 530; after STARTTLS the mail goes in."""
    cert, key = tls_cert
    listener = start(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        refused = client.mail(FROM)[0]
        client.starttls(context=client_tls(cert))
        client.send_message(message())
    assert (530, 1) == (refused, len(spooled(spool)))


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("# user:password\nrelay:s3cret:with-colon\n\nother:pw\n")
    return path


def test_require_auth_refuses_mail_without_auth(
    start: StartListener, spool: Spool, users_file: Path
) -> None:
    """With require_auth, MAIL without AUTH is refused 530 5.7.0, and a wrong password 535."""
    listener = start(auth_users_file=str(users_file), require_auth=True)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        code, reply = client.mail(FROM)
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("relay", "wrong")
    assert (530, b"5.7.0 Authentication required", 535) == (code, reply, info.value.smtp_code)
    assert [] == spooled(spool)


def test_auth_over_loopback_without_tls(
    start: StartListener, spool: Spool, users_file: Path
) -> None:
    """On loopback AUTH PLAIN/LOGIN works in clear (smtplib and swaks); Received says ESMTPA."""
    listener = start(auth_users_file=str(users_file), require_auth=True)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.login("relay", "s3cret:with-colon")
        client.send_message(message())
    result = swaks(
        "--server", "127.0.0.1", "--port", str(listener.config.port), "--from", FROM,
        "--to", "issues@example.test",
        "--auth", "LOGIN", "--auth-user", "other", "--auth-password", "pw",
    )  # fmt: skip
    assert 0 == result.returncode, result.stdout
    assert [True, True] == ["with ESMTPA" in headers(raw, "Received")[0] for raw in spooled(spool)]


def test_auth_after_starttls(
    start: StartListener, spool: Spool, users_file: Path, tls_cert: tuple[Path, Path]
) -> None:
    """require_tls and require_auth: STARTTLS, AUTH, then the mail; Received says ESMTPSA."""
    cert, key = tls_cert
    listener = start(
        auth_users_file=str(users_file),
        require_auth=True,
        tls_cert=str(cert),
        tls_key=str(key),
        require_tls=True,
    )
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.starttls(context=client_tls(cert))
        client.login("other", "pw")
        client.send_message(message())
    assert "with ESMTPSA" in headers(spooled(spool)[0], "Received")[0]


def test_no_auth_offered_without_users(start: StartListener) -> None:
    """Without a users file the listener does not advertise AUTH."""
    listener = start()
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.ehlo()
        assert False is client.has_extn("auth")


def test_session_limit(start: StartListener) -> None:
    """Over max_sessions a connection is greeted 421 4.7.0; once one closes there is room again."""
    listener = start(max_sessions=2)
    port = listener.config.port
    first, second = smtplib.SMTP("127.0.0.1", port), smtplib.SMTP("127.0.0.1", port)
    try:
        wait_for(lambda: listener.active_sessions == 2, what="two sessions")
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.SMTP("127.0.0.1", port)
        assert (421, b"4.7.0") == (info.value.smtp_code, info.value.smtp_error[:5])
    finally:
        first.quit()
    wait_for(lambda: listener.active_sessions == 1, what="the first session to end")
    with smtplib.SMTP("127.0.0.1", port) as third:
        assert 250 == third.noop()[0]
    second.quit()


def test_messages_per_session_limit(start: StartListener, spool: Spool) -> None:
    """After max_messages_per_session mails, the next MAIL is answered 452 4.5.3."""
    listener = start(max_messages_per_session=2)
    with smtplib.SMTP("127.0.0.1", listener.config.port) as client:
        client.send_message(message("one"))
        client.send_message(message("two"))
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.send_message(message("three"))
    assert (452, 2) == (info.value.smtp_code, len(spooled(spool)))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"protocol": "pop3"}, "protocol must be smtp or lmtp, not 'pop3'"),
        ({"require_tls": True}, "require_tls needs tls_cert and tls_key"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"require_auth": True}, "require_auth needs auth_users_file"),
        ({"socket_mode": "rw-rw----"}, 'socket_mode must be octal permissions like "0660", not \'rw-rw----\''),
        ({"socket_mode": "0668"}, 'socket_mode must be octal permissions like "0660", not \'0668\''),
        (
            {"host": "0.0.0.0", "auth_users_file": "users"},
            "AUTH on 0.0.0.0 needs TLS (tls_cert, tls_key): passwords in clear",
        ),
    ],
)
def test_config_is_checked(fields: dict[str, object], error: str) -> None:
    """ListenConfig refuses settings that cannot work, saying why."""
    with pytest.raises(ValueError) as info:
        ListenConfig(**fields)  # type: ignore[arg-type]
    assert error == str(info.value)
