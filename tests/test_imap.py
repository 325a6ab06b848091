"""The IMAP poller against a real Dovecot on loopback (session-scoped fixture `dovecot`)."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpers.dovecot import PASSWORD, DovecotServer, poller_config
from helpers.ports import free_port, wait_for
from helpers.repos import make_repo
from helpers.servers import Server
from mailtrack.inbound.imap import KEPT_KEYWORD, ImapConfig, ImapPoller, start_pollers
from mailtrack.mail.ids import header_message_id as message_id
from mailtrack.queue.spool import Spool

MakePoller = Callable[..., ImapPoller]


def mail(n: int | str) -> bytes:
    return (
        f"From: alice@example.test\nTo: issues@example.test\nSubject: mail {n}\n"
        f"Message-ID: <mail-{n}@example.test>\n\nbody {n}\n"
    ).encode()


def mid(n: int | str) -> str:
    return f"<mail-{n}@example.test>"


@pytest.fixture
def make_poller(dovecot: DovecotServer, imap_user: str, spool: Spool) -> Iterator[MakePoller]:
    """make_poller(**config fields) -> an ImapPoller for this test's user, closed afterwards."""
    pollers: list[ImapPoller] = []

    def make(**fields: Any) -> ImapPoller:
        on_accept = fields.pop("on_accept", None)
        poller = ImapPoller(poller_config(dovecot, imap_user, **fields), spool, on_accept=on_accept)
        pollers.append(poller)
        return poller

    yield make
    for poller in pollers:
        poller.close()


class Runner:
    """ImapPoller.run() in a thread, stopped (and checked to have stopped) at the end of a test."""

    def __init__(self, poller: ImapPoller) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=poller.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert False is self.thread.is_alive()


@pytest.fixture
def run() -> Iterator[Callable[[ImapPoller], Runner]]:
    runners: list[Runner] = []

    def start(poller: ImapPoller) -> Runner:
        runners.append(Runner(poller))
        return runners[-1]

    yield start
    for runner in runners:
        runner.finish()


def spooled(spool: Spool) -> Counter[str]:
    """How many times each Message-ID is in the spool's incoming/new."""
    new = spool.root / "incoming" / "new"
    return Counter(message_id(p.read_bytes()) for p in new.iterdir())


def test_new_mail_is_spooled_and_archived(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """poll_once() spools a mail APPENDed by another client, then moves it to Archive."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller()
    assert 1 == poller.poll_once()
    assert 0 == poller.poll_once()
    assert Counter({mid(1): 1}) == spooled(spool)
    assert ([], ["mail 1"]) == (dovecot.subjects(imap_user), dovecot.subjects(imap_user, "Archive"))
    (raw,) = [p.read_bytes() for p in (spool.root / "incoming" / "new").iterdir()]
    assert (mail(1), 1) == (raw, json.loads(poller.state_path.read_text())["last_uid"])


def test_idle_picks_up_new_mail(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    run: Callable[[ImapPoller], Runner],
) -> None:
    """run() waits in IDLE (polling only every 60 s) and still spools a new mail within seconds."""
    woken: list[str] = []
    poller = make_poller(on_accept=woken.append)
    runner = run(poller)
    wait_for(poller.state_path.exists, what="the first poll")  # from now on only IDLE wakes it
    dovecot.append(imap_user, mail("idle"))
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail idle"], what="the mail in Archive"
    )
    runner.finish()
    assert (Counter({mid("idle"): 1}), 1) == (spooled(spool), len(woken))


def test_polling_without_idle(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    run: Callable[[ImapPoller], Runner],
) -> None:
    """With idle off, run() polls every poll_interval and picks up new mail."""
    run(make_poller(idle=False, poll_interval=0.2))
    dovecot.append(imap_user, mail("poll"))
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail poll"], what="the mail in Archive"
    )
    assert Counter({mid("poll"): 1}) == spooled(spool)


def test_uidvalidity_change_resets_the_state(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """When the folder is recreated (new UIDVALIDITY), mail with reused UIDs is still spooled."""
    dovecot.append(imap_user, mail("a"), folder="Gateway")
    dovecot.append(imap_user, mail("b"), folder="Gateway")
    poller = make_poller(folder="Gateway")
    assert 2 == poller.poll_once()
    before = json.loads(poller.state_path.read_text())
    with dovecot.client(imap_user) as client:
        client.delete_folder("Gateway")
        client.create_folder("Gateway")
    dovecot.append(imap_user, mail("c"), folder="Gateway")  # UID 1 again
    dovecot.append(imap_user, mail("d"), folder="Gateway")
    assert 2 == poller.poll_once()
    after = json.loads(poller.state_path.read_text())
    assert (True, 2) == (after["uidvalidity"] != before["uidvalidity"], after["last_uid"])
    assert Counter({mid(n): 1 for n in "abcd"}) == spooled(spool)
    expected: tuple[list[str], list[str]] = ([], ["mail a", "mail b", "mail c", "mail d"])
    assert expected == (
        dovecot.subjects(imap_user, "Gateway"),
        dovecot.subjects(imap_user, "Archive"),
    )


def test_lost_state_refetches_only_what_is_still_there(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """Without its state file the poller starts over: mail already archived is not fetched again."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller()
    assert 1 == poller.poll_once()
    poller.close()
    poller.state_path.unlink()
    dovecot.append(imap_user, mail(2))
    assert 1 == poller.poll_once()
    assert Counter({mid(1): 1, mid(2): 1}) == spooled(spool)


def test_survives_a_dovecot_restart(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    run: Callable[[ImapPoller], Runner],
) -> None:
    """Dovecot restarted while run() goes on: the poller reconnects and new mail still arrives."""
    run(make_poller())
    dovecot.append(imap_user, mail("before"))
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail before"], what="the first mail"
    )
    dovecot.restart(fast=True)  # a graceful stop waits ~10 s for our IDLE session to notice
    dovecot.append(imap_user, mail("after"))
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail after", "mail before"],
        timeout=30,
        what="the second mail",
    )
    assert Counter({mid("before"): 1, mid("after"): 1}) == spooled(spool)


def test_connection_lost_between_spool_and_move(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """Server killed between spooling and moving: the next poll moves the mail, no second copy."""

    def kill_server(spool_id: str) -> None:
        dovecot.stop(fast=True)
        dovecot.start()

    dovecot.append(imap_user, mail(1))
    poller = make_poller(on_accept=kill_server)
    with pytest.raises(Exception):  # noqa: B017 - whatever the broken connection raises
        poller.poll_once()
    assert ["mail 1"] == dovecot.subjects(imap_user)
    assert 0 == poller.poll_once()
    assert Counter({mid(1): 1}) == spooled(spool)
    assert ([], ["mail 1"]) == (dovecot.subjects(imap_user), dovecot.subjects(imap_user, "Archive"))


def test_a_skipped_mail_is_never_filed_away(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """A mail skipped because it was \\Deleted, undeleted after a later one was kept, stays in INBOX
    unspooled: only mail marked $MailtrackKept is filed away by the leftover path."""
    dovecot.append(imap_user, mail("skipped"))
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"]), [b"\\Deleted"])
    dovecot.append(imap_user, mail("kept"))
    poller = make_poller()
    assert 1 == poller.poll_once()
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX")
        client.remove_flags(client.search(["ALL"]), [b"\\Deleted"])
    assert 0 == poller.poll_once()
    assert (["mail skipped"], ["mail kept"], Counter({mid("kept"): 1})) == (
        dovecot.subjects(imap_user), dovecot.subjects(imap_user, "Archive"), spooled(spool)
    )
    ((_raw, flags),) = dovecot.messages(imap_user, "Archive").values()
    assert KEPT_KEYWORD.encode() in flags


def test_stop_is_checked_between_the_mails_of_a_batch(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """poll_once(stop) with stop set while the first of three mails is spooled returns after it."""
    for n in range(3):
        dovecot.append(imap_user, mail(n))
    stop = threading.Event()
    poller = make_poller(on_accept=lambda _id: stop.set())
    assert 1 == poller.poll_once(stop)
    assert (["mail 1", "mail 2"], ["mail 0"]) == (dovecot.subjects(imap_user), dovecot.subjects(imap_user, "Archive"))
    assert 2 == poller.poll_once()
    assert Counter({mid(0): 1, mid(1): 1, mid(2): 1}) == spooled(spool)


def test_mail_appended_while_another_is_processed(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    run: Callable[[ImapPoller], Runner],
) -> None:
    """A mail APPENDed while the poller is busy with another is picked up too, each spooled once."""
    appended: list[str] = []

    def append_another(spool_id: str) -> None:
        if not appended:
            appended.append(spool_id)
            dovecot.append(imap_user, mail("second"))

    run(make_poller(on_accept=append_another))
    dovecot.append(imap_user, mail("first"))
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail first", "mail second"],
        what="both mails",
    )
    assert Counter({mid("first"): 1, mid("second"): 1}) == spooled(spool)


def test_copy_fallback_when_move_is_not_used(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """COPY + \\Deleted + UID EXPUNGE files the mail away; others' \\Deleted mail is left alone."""
    dovecot.append(imap_user, mail("theirs"))
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"]), [b"\\Deleted"])
    dovecot.append(imap_user, mail("ours"))
    poller = make_poller(use_move=False)
    assert 1 == poller.poll_once()
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX", readonly=True)
        left = client.search(["ALL"])
        deleted = client.search(["DELETED"])
    assert (1, left) == (len(left), deleted)
    assert (["mail ours"], Counter({mid("ours"): 1})) == (
        dovecot.subjects(imap_user, "Archive"),
        spooled(spool),
    )


def test_flag_mode_leaves_the_mail_flagged(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """action=flag: the mail stays, with $MailtrackKept, not fetched again even without state."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller(action="flag")
    assert 1 == poller.poll_once()
    assert 0 == poller.poll_once()
    poller.close()
    poller.state_path.unlink()
    assert 0 == poller.poll_once()
    ((raw, flags),) = dovecot.messages(imap_user).values()
    assert (mail(1), True) == (raw.replace(b"\r\n", b"\n"), KEPT_KEYWORD.encode() in flags)
    assert (Counter({mid(1): 1}), []) == (spooled(spool), dovecot.subjects(imap_user, "Archive"))


def test_move_to_failed_by_message_id(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller
) -> None:
    """move_to_failed() moves an archived mail, found by its Message-ID, to the failed folder."""
    dovecot.append(imap_user, mail(1))
    dovecot.append(imap_user, mail(2))
    poller = make_poller(failed_folder="Mailtrack/Failed")
    assert 2 == poller.poll_once()
    assert 1 == poller.move_to_failed(mid(2))
    expected = (["mail 1"], ["mail 2"])
    assert expected == (
        dovecot.subjects(imap_user, "Archive"),
        dovecot.subjects(imap_user, "Mailtrack/Failed"),
    )


def test_move_to_failed_takes_only_kept_mail(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """move_to_failed() leaves alone a mail not yet kept that shares the Message-ID (new in INBOX)."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller()
    assert 1 == poller.poll_once()
    dovecot.append(imap_user, mail(1).replace(b"Subject: mail 1", b"Subject: mail 1 again"))
    assert 1 == poller.move_to_failed(mid(1))
    expected = (["mail 1 again"], [], ["mail 1"])
    assert expected == tuple(dovecot.subjects(imap_user, f) for f in ("INBOX", "Archive", "Failed"))


def test_move_to_failed_finds_a_kept_mail_not_yet_filed_away(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller
) -> None:
    """A kept mail still in INBOX (the worker was quicker than the poller's MOVE) goes to Failed."""
    dovecot.append(imap_user, mail(1))
    dovecot.append(imap_user, mail(2))
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"]), [KEPT_KEYWORD])
    poller = make_poller()  # action "move": the mail would have gone to Archive
    assert 1 == poller.move_to_failed(mid(1))
    assert (["mail 2"], ["mail 1"]) == (dovecot.subjects(imap_user), dovecot.subjects(imap_user, "Failed"))


def test_spooled_mail_records_the_poller_as_its_source(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """Each mail the poller spools carries its source, `imap:<user>@<host>/<folder>` (no port), for
    the folders that follow the spool."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller()
    assert 1 == poller.poll_once()
    (path,) = (spool.root / "incoming" / "new").iterdir()
    assert f"imap:{imap_user}@127.0.0.1/INBOX" == spool.source(path.name) == poller.source


def test_wrong_password_is_retried_with_backoff(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    tmp_path: Path,
    run: Callable[[ImapPoller], Runner],
) -> None:
    """A login failure does not kill run(): once the password file is right, mail arrives."""
    password_file = tmp_path / "password"
    password_file.write_text("wrong\n")
    dovecot.append(imap_user, mail(1))
    run(make_poller(password="", password_file=str(password_file)))
    password_file.write_text("secret\n")
    wait_for(
        lambda: dovecot.subjects(imap_user, "Archive") == ["mail 1"],
        timeout=20,
        what="the mail in Archive",
    )
    assert Counter({mid(1): 1}) == spooled(spool)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"security": "plain", "host": "imap.example.test"},
            "security = plain sends the password in clear to imap.example.test: use tls or "
            "starttls, or set allow_plain = true",
        ),
        ({"security": "ssl"}, "security must be tls, starttls or plain, not 'ssl'"),
        ({"action": "delete"}, "action must be move or flag, not 'delete'"),
        ({"password": ""}, "give exactly one of password, password_file and password_command"),
        ({"password_command": "pass show imap"}, "give exactly one of password, password_file and password_command"),
        ({"auth": "cram-md5"}, "auth must be password, xoauth2 or oauthbearer, not 'cram-md5'"),
        ({"auth": "xoauth2"}, "auth = xoauth2 takes token_command, not a password"),
        ({"auth": "oauthbearer", "password": "", "password_file": "/x"}, "auth = oauthbearer takes token_command, not a password"),
        ({"token_command": "oauth2 --token"}, "token_command goes with auth = xoauth2 or oauthbearer"),
        ({"processed_folder": "INBOX"}, "processed_folder must name another folder than folder"),
        ({"failed_folder": "INBOX"}, "failed_folder must name another folder than folder"),
    ],
)  # fmt: skip
def test_config_is_checked(fields: dict[str, object], error: str) -> None:
    """ImapConfig refuses unsafe or impossible settings, saying why."""
    base: dict[str, object] = {"host": "127.0.0.1", "username": "u", "password": "p"}
    with pytest.raises(ValueError) as info:
        ImapConfig(**{**base, **fields})  # type: ignore[arg-type]
    assert error == str(info.value)


def test_plain_to_another_host_can_be_forced() -> None:
    """allow_plain = true permits security = plain to a non-loopback host."""
    config = ImapConfig(
        host="imap.example.test", username="u", password="p", security="plain", allow_plain=True
    )
    assert "plain" == config.security


def test_start_pollers_runs_one_thread_per_mailbox(
    dovecot: DovecotServer, imap_user: str, spool: Spool
) -> None:
    """start_pollers() polls each mailbox in its own thread; all stop when the event is set."""
    other = dovecot.add_user(f"{imap_user}-other")
    base = ImapConfig(
        host="127.0.0.1", port=dovecot.imap_port, security="plain", username=imap_user,
        password="secret", idle_timeout=0.2, backoff_initial=0.05,
    )  # fmt: skip
    configs = [base, replace(base, username=other)]
    dovecot.append(imap_user, mail("one"))
    dovecot.append(other, mail("two"))
    stop = threading.Event()
    threads = start_pollers(configs, spool, stop)
    try:
        wait_for(lambda: len(spooled(spool)) == 2, what="both mails")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert (Counter({mid("one"): 1, mid("two"): 1}), [False, False]) == (
        spooled(spool),
        [t.is_alive() for t in threads],
    )


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls(
    dovecot: DovecotServer,
    imap_user: str,
    make_poller: MakePoller,
    spool: Spool,
    tls_cert: tuple[Path, Path],
    security: str,
) -> None:
    """Implicit TLS (IMAPS) and STARTTLS, trusting the server's self-signed certificate."""
    port = dovecot.imaps_port if security == "tls" else dovecot.imap_port
    dovecot.append(imap_user, mail(security))
    poller = make_poller(security=security, port=port, tls_ca_file=str(tls_cert[0]))
    assert (1, Counter({mid(security): 1})) == (poller.poll_once(), spooled(spool))


def test_an_untrusted_certificate_is_refused(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """Without tls_ca_file the self-signed certificate fails verification: nothing is fetched."""
    dovecot.append(imap_user, mail(1))
    poller = make_poller(security="tls", port=dovecot.imaps_port)
    with pytest.raises(ssl.SSLCertVerificationError):
        poller.poll_once()
    assert (Counter(), ["mail 1"]) == (spooled(spool), dovecot.subjects(imap_user))


def session_ends(dovecot: DovecotServer, user: str) -> set[str]:
    """How Dovecot saw the IMAP sessions of `user` end ("Logged out", "Connection closed"...),
    once every session it logged in has ended."""

    def ends() -> list[str] | None:
        log = dovecot.log()
        found = re.findall(rf"imap\({re.escape(user)}\)\S*: Info: Disconnected: ([A-Za-z ]+?)(?: in=| \(|$)", log, re.M)
        return found if len(found) == log.count(f"Login: user=<{user}>") else None

    return set(wait_for(ends, what=f"every session of {user} to end"))


def test_stop_leaves_idle_at_once(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool
) -> None:
    """With an hour's idle_timeout and poll_interval, setting stop ends IDLE at once: run()
    returns (well within the join's 15 s) after a clean DONE and LOGOUT, not a cut connection."""
    poller = make_poller(idle_timeout=3600.0, poll_interval=3600.0)
    runner = Runner(poller)
    wait_for(lambda: dovecot.idling(imap_user), what="the poller in IDLE")
    runner.finish()
    assert {"Logged out"} == session_ends(dovecot, imap_user)


@pytest.mark.slow  # a `mailtrack serve` process
def test_sigterm_to_serve_leaves_idle_at_once(dovecot: DovecotServer, imap_user: str, tmp_path: Path) -> None:
    """`mailtrack serve` polling a mailbox in IDLE (an hour's idle_timeout) exits 0 on SIGTERM after
    logging out: before, the poller was cut after the 30 s join."""
    repo = make_repo(tmp_path / "gw")
    imap = (
        f'[[imap]]\nhost = "127.0.0.1"\nport = {dovecot.imap_port}\nsecurity = "plain"\nusername = "{imap_user}"\n'
        f'password = "{PASSWORD}"\nidle_timeout = 3600.0\npoll_interval = 3600.0\n'
    )
    server = Server(repo, free_port(), extra=imap)
    server.start()
    try:
        dovecot.append(imap_user, mail("serve"))
        wait_for(lambda: dovecot.subjects(imap_user, "Archive") == ["mail serve"], what="the mail in Archive")
        wait_for(lambda: dovecot.idling(imap_user), what="the poller in IDLE")
    finally:
        assert 0 == server.stop()
    assert {"Logged out"} == session_ends(dovecot, imap_user)


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_idle_over_tls(
    dovecot: DovecotServer, imap_user: str, make_poller: MakePoller, spool: Spool,
    tls_cert: tuple[Path, Path], run: Callable[[ImapPoller], Runner], security: str,
) -> None:  # fmt: skip
    """IDLE over IMAPS and STARTTLS picks up a new mail too (the wait looks at what TLS has decrypted)."""
    port = dovecot.imaps_port if security == "tls" else dovecot.imap_port
    run(make_poller(security=security, port=port, tls_ca_file=str(tls_cert[0]), idle_timeout=3600.0))
    wait_for(lambda: dovecot.idling(imap_user), what="the poller in IDLE")
    dovecot.append(imap_user, mail(security))
    wait_for(lambda: dovecot.subjects(imap_user, "Archive") == [f"mail {security}"], what="the mail in Archive")
    assert Counter({mid(security): 1}) == spooled(spool)
