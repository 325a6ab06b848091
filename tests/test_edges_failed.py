"""The failed-folder move of `mailtrack serve`'s worker (daemon.work) against a real Dovecot: a mail
that ends in failed goes back only to the mailbox it was fetched from, and only the copy we kept."""

from __future__ import annotations

import os
import smtplib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from dovecot import DovecotServer, free_port
from mailtrack.app.daemon import work
from mailtrack.config import ImapConfig, ListenConfig
from mailtrack.inbound.imap import ImapPoller
from mailtrack.inbound.smtp import SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.queue.spool import Spool
from mailtrack.worker.pipeline import Gateway

FOLDERS = ("INBOX", "Archive", "Failed")


def held_mail(subject: str, message_id: str = "<same@example.test>") -> bytes:
    """A mail the gateway holds (it has no From), so it ends in the spool's failed queue."""
    return f"To: issues@localhost\nSubject: {subject}\nMessage-ID: {message_id}\n\nbody\n".encode()


@pytest.fixture
def pollers(dovecot: DovecotServer, gateway: Gateway) -> Iterator[list[ImapPoller]]:
    """Two pollers, for two fresh users of the same Dovecot, spooling into the gateway's spool."""
    made = []
    for n in (1, 2):
        user = dovecot.add_user(f"failed{n}-{free_port()}")
        config = ImapConfig(
            host="127.0.0.1", port=dovecot.imap_port, security="plain", username=user,
            password="secret", timeout=10.0,
        )  # fmt: skip
        made.append(ImapPoller(config, gateway.spool))
    yield made
    for poller in made:
        poller.close()


def folders(dovecot: DovecotServer, poller: ImapPoller) -> tuple[list[str], ...]:
    return tuple(dovecot.subjects(poller.config.username, f) for f in FOLDERS)


def work_all(gateway: Gateway, pollers: list[ImapPoller]) -> int:
    n = 0
    for claim in gateway.spool.claims():
        work(gateway, claim, pollers)
        n += 1
    return n


def test_a_held_imap_mail_goes_to_the_failed_folder_of_its_own_mailbox(
    dovecot: DovecotServer, gateway: Gateway, pollers: list[ImapPoller]
) -> None:
    """Held mail fetched by IMAP ends in that mailbox's Failed; another mailbox's kept mail with the
    same Message-ID stays in its Archive."""
    mine, other = pollers
    dovecot.append(other.config.username, held_mail("other's"))
    assert 1 == other.poll_once()
    assert 1 == work_all(gateway, [])  # processed without pollers: stays in the other's Archive
    dovecot.append(mine.config.username, held_mail("mine"))
    assert 1 == mine.poll_once()
    assert 1 == work_all(gateway, pollers)
    assert ([], [], ["mine"]) == folders(dovecot, mine)
    assert ([], ["other's"], []) == folders(dovecot, other)
    assert 2 == len(gateway.spool.failures())


def test_a_held_smtp_mail_leaves_imap_mail_with_its_message_id_alone(
    dovecot: DovecotServer, gateway: Gateway, pollers: list[ImapPoller]
) -> None:
    """A mail that came by SMTP and ends in failed moves nothing in any mailbox, not the kept copy in
    Archive nor the new one in INBOX that share its Message-ID."""
    poller = pollers[0]
    user = poller.config.username
    dovecot.append(user, held_mail("kept"))
    assert 1 == poller.poll_once()
    assert 1 == work_all(gateway, [])  # processed without pollers: stays in Archive
    dovecot.append(user, held_mail("new"))
    config = ListenConfig(port=free_port())
    raw = held_mail("smtp").replace(b"\n", b"\r\n")
    with (
        SmtpListener(config, gateway.spool, Ours()),
        smtplib.SMTP("127.0.0.1", config.port, timeout=10) as client,
    ):
        assert {} == client.sendmail("a@example.test", ["issues@localhost"], raw)
    assert 1 == work_all(gateway, pollers)
    assert (["new"], ["kept"], []) == folders(dovecot, poller)
    assert 2 == len(gateway.spool.failures())


def test_the_source_outlives_failure_and_goes_with_pruning(tmp_path: Path) -> None:
    """Spool.source() reads back the source accept() was told to keep while the mail is kept (also in failed, also
    after a requeue); prune() removes it with the mail."""
    spool = Spool(tmp_path / "spool")
    assert "" == spool.source(spool.accept(held_mail("t"), source="smtp:[127.0.0.1]"))  # not asked to
    spool_id = spool.accept(held_mail("s"), source="imap:u@h:1/INBOX", keep_source=True)
    claim = spool.claim_id(spool_id)
    assert claim is not None
    spool.fail(claim, "held")
    assert "imap:u@h:1/INBOX" == spool.source(spool_id)
    spool.requeue(spool_id)
    claim = spool.claim_id(spool_id)
    assert claim is not None
    spool.done(claim)
    assert ("imap:u@h:1/INBOX", "") == (spool.source(spool_id), spool.source("nonsense"))
    assert 1 == spool.prune(timedelta(seconds=-1))
    assert ("", []) == (spool.source(spool_id), list((spool.root / "sources").iterdir()))


def test_recover_removes_only_stale_orphaned_sources(tmp_path: Path) -> None:
    """recover() deletes an old source whose mail is gone (deleted by hand), keeps a kept mail's."""
    spool = Spool(tmp_path / "spool")
    kept = spool.accept(held_mail("kept"), source="imap:kept", keep_source=True)
    gone = spool.accept(held_mail("gone"), source="imap:gone", keep_source=True)
    (spool.root / "incoming" / "new" / gone).unlink()
    for spool_id in (kept, gone):
        os.utime(spool.root / "sources" / spool_id, (0, 0))
    spool.recover()
    assert ("imap:kept", "", [kept]) == (
        spool.source(kept), spool.source(gone), [p.name for p in (spool.root / "sources").iterdir()]
    )
