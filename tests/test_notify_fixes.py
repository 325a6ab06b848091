"""Notifications, the gaps: the first mail of a fresh installation, imports, unsubscribing, replies to our replies."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from conftest import git, make_repo, read_comments, read_issue, read_names, run_cli
from dovecot import free_port, wait_for
from mailtrack.config import Config, GatewayConfig
from mailtrack.tracker.store import Store
from mailtrack.worker.pipeline import Gateway, Outcome
from sink import Sink
from test_gateway import make_mail
from test_serve import Server
from tracker import DAN, Tracker, by_rcpt, h, reasons


def mailtrack(repo: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`mailtrack ARGS` on `repo` in a process of its own, as an MTA or a cron job runs it."""
    return subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), *args],
                          input=stdin, capture_output=True, check=False)


def handle(tracker: Tracker, raw: bytes) -> Outcome:
    with Store.open(tracker.repo, durable=True) as store:
        gateway = Gateway(tracker.config, store, tracker.spool)
        try:
            return gateway.handle(raw)
        finally:
            gateway.close()


def test_first_mail_delivered_on_a_fresh_installation_is_notified(repo: Path, sink: Sink) -> None:
    """With no notifier state yet, `mailtrack deliver` of a new issue with a Cc: the Cc'd person hears of it."""
    t = Tracker(repo, sink, Config(gateway=GatewayConfig(project="repo")))
    assert not (t.spool.root / "notify-state.json").exists()
    r = mailtrack(repo, "deliver", stdin=make_mail(Cc="Bob <bob@example.org>"))
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    mails = by_rcpt(t.caught())
    assert ["alice@example.org", "bob@example.org"] == sorted(mails)
    assert ("auto-replied", "new", "cc", name[:7]) == (
        mails["alice@example.org"]["Auto-Submitted"], mails["bob@example.org"]["X-Mailtrack-Event"],
        mails["bob@example.org"]["X-Mailtrack-Reason"], mails["bob@example.org"]["X-Mailtrack-Issue"])
    assert 0 == t.notify()  # told once


def test_first_mail_processed_on_a_fresh_installation_is_notified(repo: Path, sink: Sink) -> None:
    """With no notifier state yet, `mailtrack process` of a spooled mail notifies its change."""
    t = Tracker(repo, sink, Config(gateway=GatewayConfig(project="repo")))
    t.spool.accept(make_mail(Cc="Bob <bob@example.org>"), source="test")
    r = mailtrack(repo, "process")
    assert (0, "processed 1 mail(s), queued 1 notification(s)") == (r.returncode, r.stderr.decode().strip())
    assert {"alice@example.org": None, "bob@example.org": "cc"} == reasons(t.caught())


def test_mail_spooled_before_the_first_serve_is_notified(tmp_path: Path, sink: Sink) -> None:
    """`mailtrack serve` on a fresh repository with a mail already spooled: its Cc'd person hears of it."""
    repo = make_repo(tmp_path / "gw")
    t = Tracker(repo, sink, Config(gateway=GatewayConfig(project="proj")))
    t.spool.accept(make_mail(Cc="Bob <bob@example.org>"), source="test")
    server = Server(repo, free_port())
    server.start()
    try:
        wait_for(lambda: t.spool.counts()["processed"] == 1 and t.spool.counts()["outbox/new"] >= 2, timeout=30,
                 what="the mail processed, its ack and notification queued")
    finally:
        assert 0 == server.stop()
    assert {"alice@example.org": None, "bob@example.org": "cc"} == reasons(t.caught())


def test_import_notifies_what_was_pending_and_none_of_the_imported(tracker: Tracker, tmp_path: Path) -> None:
    """`mailtrack import` notifies what was pending, none of the archive (its commits carry the
    import trailer, which git log shows), and the next notify() is quiet."""
    r = run_cli(tracker.repo, "new", "Filed by hand", "-m", "x", "--cc", "Bob <bob@example.org>")
    assert 0 == r.code, r.err
    box = mailbox.mbox(str(tmp_path / "old.mbox"))
    box.add(make_mail(subject="Old report", frm="Carol <carol@example.org>", message_id="<old1@example.org>",
                      Cc="Dave <dave@example.org>", Date="Mon, 03 Jun 2019 10:00:00 +0000"))
    box.add(make_mail(subject="Re: Old report", frm="Dave <dave@example.org>", message_id="<old2@example.org>",
                      In_Reply_To="<old1@example.org>", body="Me too.\n", Date="Tue, 04 Jun 2019 10:00:00 +0000"))
    box.close()
    r = mailtrack(tracker.repo, "import", str(tmp_path / "old.mbox"))
    assert 0 == r.returncode, r.stderr
    assert "commented 1, created 1" == r.stdout.decode().strip()
    assert 2 == git(tracker.repo, "log", "--format=%B", "issues").count("Imported-By: mailtrack import")
    assert [("bob@example.org", "Filed by hand")] == [
        (m["To"].addresses[0].addr_spec, m["Subject"].split("] ", 1)[1]) for m in tracker.caught()]
    assert 0 == tracker.notify()
    imported = next(n for n in read_names(tracker.repo) if read_issue(tracker.repo, n).title == "Old report")
    tracker.edit(DAN, imported, comment="Still broken in 2024.")  # later changes to imported issues are told
    tracker.notify()
    assert {"carol@example.org", "dave@example.org"} <= set(reasons(tracker.caught()))


def test_unsubscribed_reporter_hears_no_more_until_subscribing_again(tracker: Tracker) -> None:
    """A reporter's `unsubscribe ID` (the List-Unsubscribe mailto) stops their mail; `subscribe ID` brings it back."""
    name = tracker.new_issue()
    tracker.notify()
    [link] = {h(m, "List-Unsubscribe") for m in tracker.caught()}
    assert f"<mailto:control@localhost?subject=unsubscribe%20{name[:7]}>" == link
    out = handle(tracker, make_mail(to="control@localhost", frm="Alice Reporter <alice@example.org>",
                                    message_id="<unsub@example.org>", subject=f"unsubscribe {name[:7]}", body=""))
    assert ["Processed: unsubscribe " + name[:7]] == [m["Subject"] for m in tracker.caught()]  # the transcript
    assert out.commands is not None and ["you get no more mail about this issue"] == [ln.status for ln in out.commands.lines]
    tracker.edit(DAN, name, comment="Try turning it off.")
    tracker.notify()
    heard = reasons(tracker.caught())
    assert (False, "cc") == ("alice@example.org" in heard, heard.get("bob@example.org"))
    handle(tracker, make_mail(to="control@localhost", frm="alice@example.org", message_id="<sub@example.org>",
                              subject="commands", body=f"subscribe {name[:7]}\n"))
    tracker.caught()  # the transcript
    tracker.edit(DAN, name, comment="Or on again.")
    tracker.notify()
    assert "reporter" == reasons(tracker.caught()).get("alice@example.org")


def test_reply_to_the_ack_by_in_reply_to_alone_is_a_comment(tracker: Tracker) -> None:
    """The ack's Message-ID names the issue: a reply with only In-Reply-To (no References, no tag) is a comment."""
    out = handle(tracker, make_mail(frm="Alice Reporter <alice@example.org>", message_id="<rep@example.org>"))
    [ack] = tracker.caught()
    assert (out.issue, "auto-replied") == (h(ack, "Message-ID").split(".")[1], ack["Auto-Submitted"])
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "Alice Reporter <alice@example.org>", "issues@localhost", "Re: Printer on fire"
    reply["Message-ID"], reply["In-Reply-To"] = "<rep2@example.org>", h(ack, "Message-ID")
    reply.set_content("It still smokes.\n")
    again = handle(tracker, reply.as_bytes())
    assert ("commented", out.issue) == (again.action, again.issue)
    assert ["It still smokes."] == [c.text for c in read_comments(tracker.repo, out.issue)]


def test_reply_to_a_transcript_by_in_reply_to_alone_is_a_comment(tracker: Tracker) -> None:
    """A control mail's transcript names its one issue: a reply to it alone goes to that issue."""
    name = tracker.new_issue()
    handle(tracker, make_mail(to="control@localhost", frm="alice@example.org", message_id="<ctl@example.org>",
                              subject="commands", body=f"severity {name[:7]} minor\n"))
    [transcript] = [m for m in tracker.caught() if m["Subject"].startswith("Processed")]
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "alice@example.org", "issues@localhost", "Re: Processed: commands"
    reply["Message-ID"], reply["In-Reply-To"] = "<ctl2@example.org>", h(transcript, "Message-ID")
    reply.set_content("Thanks, and it is minor indeed.\n")
    out = handle(tracker, reply.as_bytes())
    assert ("commented", name) == (out.action, out.issue)
