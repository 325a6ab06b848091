"""`mailtrack import`: an mbox or a Maildir through the gateway, once however often it runs, with no
reply to anyone and no notification of what it imported; mail it holds is kept aside once."""

from __future__ import annotations

import mailbox
from pathlib import Path

from helpers.cli import mailtrack
from helpers.mail import OUTBOX, make_mail, replies
from helpers.repos import git, make_gateway, read_comments, read_issue, read_names
from helpers.tracker import Tracker
from mailtrack.worker.pipeline import Gateway


def test_import_mbox_is_idempotent(repo: Path, tmp_path: Path) -> None:
    """import runs every mail of an mbox; running it again changes nothing; a Maildir works too."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(make_mail(subject="First", message_id="<i1@x>"))
    box.add(
        make_mail(subject="Re: First", message_id="<i2@x>", In_Reply_To="<i1@x>", body="answer\n")
    )
    box.add(
        make_mail(subject="Second", message_id="<i3@x>", Date="Mon, 01 Jan 2018 10:00:00 +0000")
    )
    box.close()
    r = mailtrack("import", str(tmp_path / "archive.mbox"), repo=repo)
    assert (0, "commented 1, created 2\n") == (r.returncode, r.stdout.decode())
    assert b"import: 3/3 (100%)" in r.stderr
    tip = git(repo, "rev-parse", "issues")
    r = mailtrack("import", str(tmp_path / "archive.mbox"), repo=repo)
    assert ("duplicate 3\n", tip) == (r.stdout.decode(), git(repo, "rev-parse", "issues"))
    second = [
        read_issue(repo, n) for n in read_names(repo) if read_issue(repo, n).title == "Second"
    ][0]
    assert "20180101T100000Z" == second.get("created")
    maildir = mailbox.Maildir(str(tmp_path / "md"))
    maildir.add(make_mail(subject="From a Maildir", message_id="<md1@x>"))
    r = mailtrack("import", str(tmp_path / "md"), repo=repo)
    assert "created 1\n" == r.stdout.decode()


def test_a_held_mail_is_kept_once_however_often_the_import_runs(repo: Path, tmp_path: Path) -> None:
    """A mail held on import (no sender) goes to failed once: a second run counts it but keeps no second copy."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(make_mail(subject="Fine", message_id="<ok@x>"))
    box.add(b"To: issues@tracker.localhost\nSubject: nobody sent this\nMessage-ID: <nofrom@x>\n\ntext\n")
    box.add(b"To: issues@tracker.localhost\nSubject: no id and no sender\n\ntext\n")
    box.close()
    outputs = [mailtrack("import", str(tmp_path / "archive.mbox"), repo=repo, text=True).stdout for _ in range(2)]
    assert ["created 1, held 2\n", "duplicate 1, held 2\n"] == outputs
    failed = [ln for ln in mailtrack("status", repo=repo, text=True, check=True).stdout.splitlines()
              if "the mail has no sender address" in ln]
    assert 2 == len(failed)


def test_import_queues_no_replies(repo: Path, tmp_path: Path) -> None:
    """`mailtrack import` applies an archive (issues, comments, commands, errors) and queues no reply at all."""
    box = mailbox.mbox(str(tmp_path / "old.mbox"))
    box.add(make_mail(subject="Old bug", message_id="<o1@x>"))
    box.add(make_mail(subject="Re: Old bug", message_id="<o2@x>", In_Reply_To="<o1@x>", body="Priority: low\n\nstill there\n"))
    box.add(make_mail(subject="Re: Old bug", message_id="<o3@x>", In_Reply_To="<o1@x>", body="Priority: urgent\n\nbad value\n"))
    box.add(make_mail(subject="gone", message_id="<o4@x>", to="issues+deadbee@tracker.localhost"))
    box.close()
    r = mailtrack("import", str(tmp_path / "old.mbox"), repo=repo)
    assert (0, "changed 1, created 1, rejected 2\n") == (r.returncode, r.stdout.decode())
    [name] = read_names(repo)
    assert ("low", ["still there"]) == (read_issue(repo, name).priority, [c.text for c in read_comments(repo, name)])
    outbox = repo / OUTBOX
    assert [] == (sorted(outbox.iterdir()) if outbox.exists() else [])


def test_handle_without_replies_still_reports_nothing_queued(gw: Gateway, repo: Path) -> None:
    """Gateway.handle(imported=True) commits the mail as usual and queues (and reports) no reply."""
    out = gw.handle(make_mail(message_id="<q1@x>", body="Severity: minor\n\ntext\n"), imported=True)
    assert ("created", [], "minor") == (out.action, out.replies, read_issue(repo, out.issue).severity)
    assert [] == replies(repo)
    out = gw.handle(make_mail(message_id="<q2@x>"))  # the next mail is answered again
    assert [("reply-ack.txt", "alice@example.org")] == out.replies


def test_live_mail_during_an_import_is_notified_the_imported_is_not(tracker: Tracker) -> None:
    """An imported commit and a live change in the same range: the notifier tells the live one only."""
    g = make_gateway(tracker.repo)
    try:
        old = make_mail(subject="Old report", frm="Carol <carol@example.org>", message_id="<old@x>", Cc="Dave <dave@example.org>")
        assert "created" == g.handle(old, imported=True).action
        live = tracker.new_issue("Live one")  # Cc Bob, assignee Dan, ... as the tracker files it
        assert "created" == g.handle(make_mail(subject="Old 2", message_id="<old2@x>", Cc="Erin <erin@example.org>"),
                                     imported=True).action
    finally:
        g.close()
        g.store.close()
    tracker.notify()
    issues = {m["X-Mailtrack-Issue"] for m in tracker.caught()}
    assert {live[:7]} == issues
