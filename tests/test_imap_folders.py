"""The IMAP folders follow the spool's verdict, against a real Dovecot: a mail the spool failed (by
the worker, or by the recovery at start-up) is in Failed; one processed after a requeue is back in
Archive (action "flag": back in INBOX, flagged, and not fetched again). The poller's state is the
mailbox's, whatever the port or the security mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.dovecot import DovecotServer, poller_config, work_all
from helpers.repos import make_gateway
from mailtrack.inbound.imap import KEPT_KEYWORD, ImapPoller
from mailtrack.queue.spool import MAX_INTERRUPTED
from mailtrack.worker.pipeline import Gateway

FOLDERS = ("INBOX", "Archive", "Failed")


def mail(subject: str, sender: str = "stranger@example.test") -> bytes:
    return f"From: {sender}\nTo: issues@tracker.localhost\nSubject: {subject}\nMessage-ID: <{subject}@example.test>\n\nbody\n".encode()


def folders(dovecot: DovecotServer, user: str) -> tuple[list[str], ...]:
    return tuple(dovecot.subjects(user, f) for f in FOLDERS)


@pytest.fixture
def held(repo: Path) -> Iterator[Gateway]:
    """A gateway that holds mail from unknown senders (in failed, with the reason)."""
    g = make_gateway(repo, unknown_senders="hold")
    yield g
    g.close()
    g.store.close()


@pytest.fixture
def poller(dovecot: DovecotServer, imap_user: str, held: Gateway) -> Iterator[ImapPoller]:
    p = ImapPoller(poller_config(dovecot, imap_user), held.spool)
    yield p
    p.close()


def test_a_mail_failed_by_the_recovery_at_start_goes_to_failed(
    dovecot: DovecotServer, imap_user: str, held: Gateway, poller: ImapPoller
) -> None:
    """A mail whose processing was cut MAX_INTERRUPTED times (kill -9: its claim left in cur/) ends
    in failed at a start-up recovery; the poller's next poll moves it from Archive to Failed."""
    dovecot.append(imap_user, mail("crashes"))
    assert 1 == poller.poll_once()
    assert ([], ["crashes"], []) == folders(dovecot, imap_user)
    spool = held.spool
    for _ in range(MAX_INTERRUPTED):
        claim = spool.incoming.claim()
        assert claim is not None
        claim.release()  # the worker died holding it
        spool.recover()
    assert 1 == len(spool.incoming.failures())
    assert 0 == poller.poll_once()
    assert ([], [], ["crashes"]) == folders(dovecot, imap_user)
    assert 0 == poller.poll_once()  # done once: nothing moves again
    assert ([], [], ["crashes"]) == folders(dovecot, imap_user)


@pytest.mark.parametrize("action", ["move", "flag"])
def test_a_mail_processed_after_a_requeue_leaves_failed(
    dovecot: DovecotServer, imap_user: str, repo: Path, held: Gateway, action: str
) -> None:
    """Held (unknown sender): in Failed. Requeued after the sender is let in, and processed: back
    in Archive (action "flag": back in INBOX, flagged), and not fetched again."""
    poller = ImapPoller(poller_config(dovecot, imap_user, action=action), held.spool)
    try:
        dovecot.append(imap_user, mail("held"))
        assert 1 == poller.poll_once()
        assert 1 == work_all(held, [poller])
        assert ([], [], ["held"]) == folders(dovecot, imap_user)
        [(spool_id, _reason)] = held.spool.incoming.failures()
        held.spool.requeue(spool_id)
        assert 0 == poller.poll_once()  # requeued, not yet processed: it stays in Failed
        assert ([], [], ["held"]) == folders(dovecot, imap_user)
        accepting = make_gateway(repo)  # the sender is let in now
        try:
            assert 1 == work_all(accepting, [poller])
        finally:
            accepting.close()
            accepting.store.close()
        done = (["held"], [], []) if action == "flag" else ([], ["held"], [])
        assert done == folders(dovecot, imap_user)
        assert 0 == poller.poll_once()
        assert (done, 0) == (folders(dovecot, imap_user), len(list(held.spool.incoming.claims())))
        if action == "flag":
            ((_raw, flags),) = dovecot.messages(imap_user).values()
            assert {KEPT_KEYWORD.encode()} <= set(flags)
    finally:
        poller.close()


def test_a_failed_mail_missed_by_the_worker_is_moved_at_the_next_poll(
    dovecot: DovecotServer, imap_user: str, held: Gateway, poller: ImapPoller
) -> None:
    """Processed without the poller at hand (`mailtrack process` from cron, or the move failed):
    the poller itself puts the spool's failed mail of its own mailbox in Failed, and no other."""
    other = dovecot.add_user(f"{imap_user}-other")
    dovecot.append(other, mail("theirs"))
    theirs = ImapPoller(poller_config(dovecot, other), held.spool)
    try:
        assert 1 == theirs.poll_once()
    finally:
        theirs.close()
    dovecot.append(imap_user, mail("mine"))
    assert 1 == poller.poll_once()
    assert 2 == work_all(held, [])
    assert 0 == poller.poll_once()
    assert (([], [], ["mine"]), ([], ["theirs"], [])) == (folders(dovecot, imap_user), folders(dovecot, other))


@pytest.mark.parametrize("change", [{"security": "starttls"}, {"security": "tls"}])
def test_the_state_is_the_mailboxs_whatever_the_port_or_security(
    dovecot: DovecotServer, imap_user: str, held: Gateway, tls_cert: tuple[Path, Path], change: dict[str, str]
) -> None:
    """Moving to STARTTLS, or to IMAPS on another port, keeps the UID state: nothing is fetched
    again (the poller that moves it would not see a mail left in INBOX by hand: action "flag")."""
    dovecot.append(imap_user, mail("once"))
    before = ImapPoller(poller_config(dovecot, imap_user, action="flag"), held.spool)
    try:
        assert 1 == before.poll_once()
    finally:
        before.close()
    with dovecot.client(imap_user) as client:  # undo the flag: only the UID state can tell now
        client.select_folder("INBOX")
        client.remove_flags(client.search(["ALL"]), [KEPT_KEYWORD])
    port = dovecot.imaps_port if change["security"] == "tls" else dovecot.imap_port
    after = ImapPoller(
        poller_config(dovecot, imap_user, action="flag", port=port, tls_ca_file=str(tls_cert[0]), **change), held.spool
    )
    try:
        assert (before.state_path, before.source) == (after.state_path, after.source)
        assert 0 == after.poll_once()
        state = json.loads(after.state_path.read_text())
        assert (f"{imap_user}@127.0.0.1/INBOX", 1) == (state["mailbox"], state["last_uid"])
    finally:
        after.close()


def test_the_state_under_its_old_name_is_taken_over(
    dovecot: DovecotServer, imap_user: str, held: Gateway
) -> None:
    """A state file named by the old label (`imap-<user>@<host>_<port>_<folder>.json`) is renamed,
    not lost: the mail already done is not fetched again."""
    config = poller_config(dovecot, imap_user, action="flag")
    dovecot.append(imap_user, mail("old"))
    first = ImapPoller(config, held.spool)
    try:
        assert 1 == first.poll_once()
    finally:
        first.close()
    old = first.state_path.with_name(f"imap-{imap_user}@127.0.0.1_{dovecot.imap_port}_INBOX.json")
    first.state_path.rename(old)
    with dovecot.client(imap_user) as client:
        client.select_folder("INBOX")
        client.remove_flags(client.search(["ALL"]), [KEPT_KEYWORD])
    second = ImapPoller(config, held.spool)
    try:
        assert (False, True, 0) == (old.exists(), second.state_path.exists(), second.poll_once())
    finally:
        second.close()
