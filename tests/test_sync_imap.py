"""Two pollers on one real Dovecot mailbox (issue 15): each mail is claimed by one of them (IMAP MOVE to
the poller's own folder) and spooled once; what a poller that died left in its folder is taken over
after claim_timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.dovecot import DovecotServer, poller_config
from mailtrack.inbound.imap import ImapPoller
from mailtrack.mail.ids import header_message_id
from mailtrack.queue.spool import Spool


def mail(n: int) -> bytes:
    return f"From: a@example.test\nTo: issues@tracker.localhost\nSubject: m{n}\nMessage-ID: <m{n}@example.test>\n\nbody\n".encode()


def spooled(spool: Spool) -> list[str]:
    return sorted(header_message_id(c.read()) for c in spool.incoming.claims())


@pytest.fixture
def spools(tmp_path: Path) -> Iterator[list[Spool]]:
    yield [Spool(tmp_path / f"spool{i}") for i in range(2)]


@pytest.mark.slow  # 40 mails through two pollers
def test_two_pollers_on_one_mailbox_take_each_mail_once(dovecot: DovecotServer, imap_user: str, spools: list[Spool]) -> None:
    """40 mails, two pollers polling at once: the two spools hold every Message-ID once between them."""
    for n in range(40):
        dovecot.append(imap_user, mail(n))
    pollers = [ImapPoller(poller_config(dovecot, imap_user, claim_folder=f"Claimed/gw{i}", state_dir=str(spools[i].root / "imap")), spools[i])
               for i in range(2)]
    try:
        threads = [threading.Thread(target=p.poll_once) for p in pollers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for p in pollers:
            p.poll_once()
        a, b = spooled(spools[0]), spooled(spools[1])
        assert [] == sorted(set(a) & set(b))  # none twice
        assert sorted(f"<m{n}@example.test>" for n in range(40)) == sorted(a + b)
        assert [] == dovecot.subjects(imap_user, "INBOX")
    finally:
        for p in pollers:
            p.close()


@pytest.mark.slow  # waits out claim_timeout
def test_what_a_dead_poller_claimed_is_taken_over_after_the_timeout(dovecot: DovecotServer, imap_user: str, spools: list[Spool]) -> None:
    """Mail left in Claimed/dead stays there until claim_timeout has passed since it was first seen, then is spooled here."""
    for n in range(3):
        dovecot.append(imap_user, mail(n), folder="Claimed/dead")
    p = ImapPoller(poller_config(dovecot, imap_user, claim_folder="Claimed/gw0", claim_timeout=1.0), spools[0])
    try:
        assert 0 == p.poll_once()  # seen, not yet taken
        assert ["m0", "m1", "m2"] == dovecot.subjects(imap_user, "Claimed/dead")
        time.sleep(1.1)
        assert 3 == p.poll_once()
        assert [] == dovecot.subjects(imap_user, "Claimed/dead")
        assert [f"<m{n}@example.test>" for n in range(3)] == spooled(spools[0])
    finally:
        p.close()
