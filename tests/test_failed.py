"""Mail that ends in failed: `mailtrack status` lists it with its reason, `mailtrack requeue` puts it
back (by its spool ID or a unique prefix), and `mailtrack serve`'s worker (daemon.work), against a
real Dovecot, moves a failed IMAP mail back only to the mailbox it was fetched from, and only the
copy we kept."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.dovecot import DovecotServer, work_all
from helpers.mail import held_mail, spool_path
from helpers.ports import free_port
from mailtrack.config import ImapConfig, ListenConfig
from mailtrack.inbound.imap import ImapPoller
from mailtrack.inbound.smtp import SmtpListener
from mailtrack.mail.addresses import Ours
from mailtrack.queue.spool import Spool
from mailtrack.worker.pipeline import Gateway


def test_status_shows_failures_and_requeue_puts_them_back(repo: Path) -> None:
    """A mail held for a reason shows in `mailtrack status`; `mailtrack requeue ID` puts it back in the queue."""
    r = deliver(repo, b"Subject: no sender at all\nMessage-ID: <nofrom@x>\n\nbody\n")
    assert 0 == r.returncode
    status = mailtrack("status", repo=repo, text=True, check=True).stdout
    [line] = [ln for ln in status.splitlines() if "the mail has no sender address" in ln]
    spool_id = line.split()[0]
    assert "  failed         1" in status
    r2 = mailtrack("requeue", spool_id, repo=repo, text=True)
    assert (0, f"requeued {spool_id}\n") == (r2.returncode, r2.stdout)
    counts = Spool(spool_path(repo)).counts()
    assert (1, 0) == (counts["incoming/new"], counts["failed"])
    bad = mailtrack("requeue", "nonsense", repo=repo, text=True)
    assert (64, "mailtrack: no failed mail with id 'nonsense'\n") == (bad.returncode, bad.stderr)


def test_requeue_takes_a_unique_prefix_of_a_spool_id(repo: Path) -> None:
    """`requeue` by a unique prefix of a failed mail's ID; an ambiguous prefix names the candidates, an
    unknown one says there is none; neither moves anything."""
    for n in (1, 2):
        assert 0 == deliver(repo, f"Subject: no sender {n}\nMessage-ID: <nofrom{n}@x>\n\nbody\n".encode()).returncode
    status = mailtrack("status", repo=repo, text=True).stdout
    ids = sorted(ln.split()[0] for ln in status.splitlines() if "the mail has no sender address" in ln)
    assert 2 == len(ids), status
    common = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1], strict=True)) if x != y)  # the shared prefix
    ambiguous = mailtrack("requeue", ids[0][:common], repo=repo, text=True)
    assert (64, f"mailtrack: ambiguous spool ID '{ids[0][:common]}': 2 failed mails start with it: {ids[0]}, {ids[1]}\n") == (
        ambiguous.returncode, ambiguous.stderr)
    unknown = mailtrack("requeue", "19990101", repo=repo, text=True)
    assert (64, "mailtrack: no failed mail with id '19990101'\n") == (unknown.returncode, unknown.stderr)
    done = mailtrack("requeue", ids[1][:common + 1], repo=repo, text=True)
    assert (0, f"requeued {ids[1]}\n") == (done.returncode, done.stdout)
    assert [ids[0]] == [ln.split()[0] for ln in mailtrack("status", repo=repo, text=True).stdout.splitlines() if "no sender address" in ln]


FOLDERS = ("INBOX", "Archive", "Failed")


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
    assert 2 == len(gateway.spool.incoming.failures())


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
        assert {} == client.sendmail("a@example.test", ["issues@tracker.localhost"], raw)
    assert 1 == work_all(gateway, pollers)
    assert (["new"], ["kept"], []) == folders(dovecot, poller)
    assert 2 == len(gateway.spool.incoming.failures())
