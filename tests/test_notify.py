"""Notifications: changes on the branch become mails to the right people, through a sink relay; every
kind carries the headers that mail clients and filters use; the first mail of a fresh installation,
imports, unsubscribing, and replies to our own mails."""

from __future__ import annotations

import email
import json
import mailbox
from dataclasses import replace
from email import policy
from email.message import EmailMessage
from pathlib import Path

import jinja2
import pytest

from helpers.cli import mailtrack, run_cli
from helpers.mail import make_mail, text_of, two_issues
from helpers.ports import free_port, wait_for
from helpers.repos import git, make_repo, read_comments, read_issue, read_names
from helpers.servers import Server
from helpers.sink import Sink
from helpers.tracker import ALICE, ANYONES_CC, BOB, CONFIG, DAN, EVERYONE, Tracker, body, by_rcpt, everyone_but, h, reasons
from mailtrack.config import Config, GatewayConfig, NotifyConfig
from mailtrack.mail.addresses import Ours
from mailtrack.outbound.notifier import Notifier, is_machine_address
from mailtrack.queue.spool import Spool
from mailtrack.tracker.changes import Edit, close_edits, comment_change, new_issue, reopen_edits
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot, Store, issue_dir
from mailtrack.worker.pipeline import Gateway


def test_first_run_records_the_tip_and_notifies_nothing(repo: Path, sink: Sink) -> None:
    """With no state, notify() records the current tip and queues nothing: an old repository is not spammed."""
    t = Tracker(repo, sink)
    t.new_issue(components=[])
    assert (0, 0) == (t.notify(), t.spool.counts()["outbox/new"])
    state = json.loads((t.spool.root / "notify-state.json").read_text())
    assert git(repo, "rev-parse", "issues").strip() == state["tip"]


def test_new_issue_reaches_its_people_not_the_reporter_nor_machines(tracker: Tracker) -> None:
    """A new issue goes to Cc, assignee, owner, component owner and watcher; never its reporter or a machine."""
    name = tracker.new_issue()
    assert 5 == tracker.notify()
    mails = tracker.caught()
    assert EVERYONE == reasons(mails)
    m = by_rcpt(mails)["bob@example.org"]
    short = name[:7]
    expected = {
        "From": "Alice Reporter via proj <issues@tracker.localhost>", "To": "Bob Cc <bob@example.org>",
        "Subject": f"[proj #{short}] Printer on fire", "Message-ID": f"<mailtrack.{name}.issue@tracker.localhost>",
        "In-Reply-To": "<report1@example.org>", "References": "<report1@example.org>",
        "Reply-To": f"issues+{short}@tracker.localhost", "List-Id": "proj <proj.tracker.localhost>",
        "List-Unsubscribe": f"<mailto:control@tracker.localhost?subject=unsubscribe%20{short}>",
        "Auto-Submitted": "auto-generated", "Precedence": "bulk", "X-Auto-Response-Suppress": "All",
        "X-Mailtrack-Loop": "issues@tracker.localhost", "X-Mailtrack-Issue": short, "X-Mailtrack-Event": "new",
        "X-Mailtrack-Status": "new", "X-Mailtrack-Components": "core", "X-Mailtrack-Reason": "cc",
    }  # fmt: skip
    assert expected == {k: str(m[k]).strip() for k in expected}
    text = body(m)
    assert text.startswith(f"Alice Reporter <alice@example.org> opened issue {short} of proj:\n\n    Printer on fire\n")
    assert "  Components: core\n" in text and "\nIt is on fire.\n" in text
    assert "You get this mail because you are on the Cc list of this issue." in text


def test_comment_is_quoted_lists_attachments_and_threads(tracker: Tracker) -> None:
    """A comment goes to everyone but its author, quoted, with its attachments, threaded under the issue."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(BOB, name, comment="Have you tried water?\nIt usually helps.", attachments=[("log.txt", b"x" * 2048)])
    assert 5 == tracker.notify()
    mails = tracker.caught()
    [comment] = read_comments(tracker.repo, name)
    assert everyone_but("bob@example.org") == reasons(mails)
    m = by_rcpt(mails)["alice@example.org"]
    first = f"<mailtrack.{name}.issue@tracker.localhost>"
    assert (f"<mailtrack.{name}.c.{comment.name}@tracker.localhost>", first, f"<report1@example.org> {first}", "comment") == (
        h(m, "Message-ID"), h(m, "In-Reply-To"), h(m, "References"), m["X-Mailtrack-Event"])
    assert "Bob Cc via proj <issues@tracker.localhost>" == m["From"]
    text = body(m)
    assert "wrote on " in text and "\n> Have you tried water?\n> It usually helps.\n" in text
    assert "Attachments:\n  log.txt (2.0 KB)\n" in text


def test_field_changes_show_old_and_new(tracker: Tracker) -> None:
    """A field change is one mail per person listing `field: old -> new`; its Message-ID names the commit."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    commit = tracker.edit(DAN, name, [Edit("severity", "=", "minor"), Edit("tags", "+", "urgent")])
    assert 5 == tracker.notify()
    mails = tracker.caught()
    assert everyone_but("dan@example.org") == reasons(mails)
    m = by_rcpt(mails)["alice@example.org"]
    expected_id = f"<mailtrack.{name}.e.{commit.decode()[:12]}@tracker.localhost>"
    assert (expected_id, "changed") == (h(m, "Message-ID"), m["X-Mailtrack-Event"])
    assert "Dan Assignee changed:\n\n  severity: major -> minor\n  tags: (none) -> urgent\n" in body(m)


def test_close_and_reopen(tracker: Tracker) -> None:
    """Closing (with a comment) and reopening are their own kinds of mail, to everyone but who did it."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(DAN, name, close_edits, comment="Fixed in 1.2.")
    tracker.notify()
    closed = by_rcpt(tracker.caught())
    tracker.edit(ALICE, name, reopen_edits)
    tracker.notify()
    reopened = by_rcpt(tracker.caught())
    told = ("dan@example.org" in closed, "alice@example.org" in reopened, "dan@example.org" in reopened)
    assert (False, False, True) == told
    c, r = closed["alice@example.org"], reopened["dan@example.org"]
    assert (("closed", "closed"), ("reopened", "new")) == ((c["X-Mailtrack-Event"], c["X-Mailtrack-Status"]),
                                                           (r["X-Mailtrack-Event"], r["X-Mailtrack-Status"]))
    assert f"Dan Assignee <dan@example.org> closed issue {name[:7]} as fixed.\n" in body(c)
    assert "\n> Fixed in 1.2.\n" in body(c) and "  status: new -> closed\n" in body(c)
    assert f"Alice Reporter <alice@example.org> reopened issue {name[:7]}.\n" in body(r)


def test_comment_and_changes_of_one_commit_are_one_mail(tracker: Tracker) -> None:
    """A comment with field changes (as a mail with commands makes) is one mail; a removed assignee hears too."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(BOB, name, [Edit("assigned", "=", "Eve <eve@example.org>")], comment="Eve knows printers.")
    assert 6 == tracker.notify()
    mails = tracker.caught()
    assert {**everyone_but("bob@example.org"), "eve@example.org": "assignee"} == reasons(mails)
    text = body(by_rcpt(mails)["eve@example.org"])
    assert "\n> Eve knows printers.\n" in text
    assert "  assigned: Dan Assignee <dan@example.org> -> Eve <eve@example.org>\n" in text


def test_actor_gets_a_copy_when_configured(tracker: Tracker) -> None:
    """notify_actor = true sends the person who made the change a copy too."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(DAN, name, comment="On it.")
    config = Config(gateway=CONFIG.gateway, notify=NotifyConfig(notify_actor=True))
    tracker.notify(config)
    assert {"alice@example.org", "bob@example.org", "dan@example.org", "oscar@example.org", "olga@example.org"} == set(
        reasons(tracker.caught()))


def test_each_commit_is_told_by_its_own_author(tracker: Tracker) -> None:
    """Two commits notified in one pass make two mails, each kept from its own author only."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(BOB, name, comment="Bob was here.")
    tracker.edit(DAN, name, [Edit("priority", "=", "low")])
    tracker.notify()
    mails = tracker.caught()
    events = sorted((m["To"].addresses[0].addr_spec, m["X-Mailtrack-Event"]) for m in mails)
    assert ("bob@example.org", "comment") not in events and ("dan@example.org", "changed") not in events
    actors = ("bob@example.org", "dan@example.org")
    assert [("bob@example.org", "changed"), ("dan@example.org", "comment")] == [e for e in events if e[0] in actors]
    assert 10 == len(mails)


def test_cli_change_is_notified_once_even_after_a_restart(repo: Path, sink: Sink) -> None:
    """A change made with `git issues` in the gateway's repository is notified once; a new Notifier does not repeat it."""
    t = Tracker(repo, sink, Config(gateway=CONFIG.gateway))  # no watchers
    assert 0 == t.notify()
    r = run_cli(repo, "new", "Made on the command line", "-m", "by hand", "--cc", "Bob <bob@example.org>")
    assert 0 == r.code, r.err
    assert (1, 0) == (t.notify(), t.notify())
    short = r.out.split()[2].rstrip(":")
    assert 0 == run_cli(repo, "comment", short, "-m", "more").code
    assert (1, 0) == (t.notify(), Tracker(repo, sink, t.config).notify())
    mails = t.caught()
    jane = "Jane Doe via proj <issues@tracker.localhost>"
    assert [("bob@example.org", "new", jane), ("bob@example.org", "comment", jane)] == [
        (m["To"].addresses[0].addr_spec, m["X-Mailtrack-Event"], str(m["From"])) for m in mails]


def test_merge_from_another_clone_is_notified_once(tracker: Tracker, tmp_path: Path) -> None:
    """`git issues pull` merges a clone's comment: only that comment is told, by its author, once."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    clone = make_repo(tmp_path / "clone")
    git(clone, "fetch", "-q", str(tracker.repo), "issues:issues")
    git(clone, "config", "user.name", "Carol Clone")
    git(clone, "config", "user.email", "carol@example.org")
    assert 0 == run_cli(clone, "comment", name[:7], "-m", "Seen from the clone.").code
    tracker.edit(DAN, name, [Edit("priority", "=", "low")])  # the branches diverge
    tracker.notify()
    tracker.caught()
    r = run_cli(tracker.repo, "pull", str(clone))
    assert 0 == r.code, r.err
    assert 2 == len(git(tracker.repo, "log", "-1", "--format=%P", "issues").split())  # a real merge
    tracker.notify()
    mails = tracker.caught()
    assert ({"comment"}, {"Carol Clone via proj <issues@tracker.localhost>"}) == (
        {m["X-Mailtrack-Event"] for m in mails}, {str(m["From"]) for m in mails})
    assert (6, 0) == (len(mails), tracker.notify())


def test_reply_to_a_notification_becomes_a_trimmed_comment(tracker: Tracker) -> None:
    """A reply to a caught notification, threaded by In-Reply-To alone, is a comment on its issue, quote trimmed."""
    name = tracker.new_issue()
    other = tracker.new_issue("Another issue")
    tracker.notify()
    note = by_rcpt([m for m in tracker.caught() if name[:7] in m["Subject"]])["bob@example.org"]
    reply = EmailMessage()
    reply["From"], reply["To"] = "Bob Cc <bob@example.org>", "issues@tracker.localhost"
    reply["Subject"], reply["Message-ID"] = f"Re: {note['Subject']}".replace(name[:7], other[:7]), "<reply1@example.org>"
    reply["In-Reply-To"], reply["References"] = h(note, "Message-ID"), f"{h(note, 'References')} {h(note, 'Message-ID')}"
    quoted = "\n".join("> " + line for line in body(note).splitlines())
    reply.set_content(f"Water did not help.\n\nOn Mon, 3 Jun 2024 at 10:00, {note['From']} wrote:\n{quoted}\n")
    out = tracker.handle(reply.as_bytes())
    assert ("commented", name) == (out.action, out.issue)
    assert ["Water did not help."] == [c.text for c in read_comments(tracker.repo, name)]
    tracker.notify()
    assert "alice@example.org" in reasons(tracker.caught())


def test_crash_while_queuing_resumes_without_duplicates(tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after some mails were queued: the next notify queues the rest, none twice."""
    tracker.new_issue()
    real = Spool.queue_out
    calls: list[int] = []

    def crash_on_third(self: Spool, raw: bytes, **kw: object) -> str:
        if len(calls) == 2:
            raise OSError("disk full")
        calls.append(1)
        return real(self, raw, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Spool, "queue_out", crash_on_third)
    with pytest.raises(OSError):
        tracker.notify()
    monkeypatch.setattr(Spool, "queue_out", real)
    assert (3, 0) == (tracker.notify(), tracker.notify())
    assert EVERYONE == reasons(tracker.caught())


def test_template_override_and_a_missing_variable_is_an_error(tracker: Tracker, tmp_path: Path) -> None:
    """A configured template directory overrides a built-in; a variable it lacks is an error, and nothing is lost."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    (tmp_path / "notify-changed.txt").write_text("Subject: changed {{ short }}\n\n{{ no_such_thing }}\n")
    broken = Config(gateway=replace(CONFIG.gateway, templates=str(tmp_path)), notify=CONFIG.notify)
    tracker.edit(DAN, name, [Edit("priority", "=", "low")])
    with pytest.raises(jinja2.UndefinedError):
        tracker.notify(broken)
    (tmp_path / "notify-changed.txt").write_text(
        "Subject: changed {{ short }}\n\n{% for c in changes %}{{ c.line }}\n{% endfor %}")
    assert 5 == tracker.notify(broken)
    m = by_rcpt(tracker.caught())["alice@example.org"]
    assert (f"changed {name[:7]}", "priority: med -> low\n") == (m["Subject"], body(m))


def test_long_comment_lines_are_wrapped(tracker: Tracker) -> None:
    """Comment text is wrapped at notify.wrap columns (plus the quote mark)."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    tracker.edit(BOB, name, comment="word " * 40)
    tracker.notify(Config(gateway=CONFIG.gateway, notify=NotifyConfig(wrap=40)))
    text = body(by_rcpt(tracker.caught())["alice@example.org"])
    quoted = [line for line in text.splitlines() if line.startswith("> word")]
    assert (5, True) == (len(quoted), all(len(line) <= 42 for line in quoted))


def test_disabled_notifications_move_the_tip_silently(tracker: Tracker) -> None:
    """notify.enabled = false queues nothing, and turning it on later does not replay the past."""
    tracker.new_issue()
    off = Config(gateway=CONFIG.gateway, notify=NotifyConfig(enabled=False))
    assert (0, 0) == (tracker.notify(off), tracker.notify())


@pytest.mark.parametrize("address,machine", [
    ("bob@example.org", False), ("issues@tracker.localhost", True), ("Issues+abc1234@TRACKER.LOCALHOST", True),
    ("control@tracker.localhost", True), ("robot@localhost", True), ("MAILER-DAEMON@example.org", True),
    ("no-reply@example.org", True), ("noreply+x@example.org", True), ("bounces-42@lists.example.org", True),
    ("replyguy@example.org", False), ("bob", True),
])  # fmt: skip
def test_machine_addresses(address: str, machine: bool) -> None:
    """Our own addresses (plus forms too) and machine mailboxes never get a notification."""
    assert machine == is_machine_address(address, Ours(extra=("robot@localhost",)))


def test_one_event_has_one_message_id_for_everyone(tracker: Tracker) -> None:
    """Every recipient's copy of one event carries the same Message-ID (one message, personal copies)."""
    tracker.new_issue()
    tracker.notify()
    ids = {h(m, "Message-ID") for m in tracker.caught()}
    assert 1 == len(ids)


def test_new_issue_by_mail_with_attachment(tracker: Tracker) -> None:
    """A new issue from a mail (reporter, Cc, attachment) is told to the Cc'd person with the attachment listed."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Cc"] = "Alice Reporter <alice@example.org>", "issues@tracker.localhost", "Bob Cc <bob@example.org>"
    msg["Subject"], msg["Message-ID"] = "Scanner smokes", "<scan1@example.org>"
    msg.set_content("See the log.\n")
    msg.add_attachment(b"smoke\n" * 100, maintype="text", subtype="plain", filename="scan.log")
    out = tracker.handle(msg.as_bytes())
    tracker.notify()
    mails = [m for m in tracker.caught() if m["X-Mailtrack-Event"] == "new"]
    assert {"bob@example.org": "cc", "walt@example.org": "watcher"} == reasons(mails)
    m = by_rcpt(mails)["bob@example.org"]
    assert ("<scan1@example.org>", f"<mailtrack.{out.issue}.issue@tracker.localhost>") == (h(m, "In-Reply-To"), h(m, "Message-ID"))
    assert "Attachments:\n  scan.log (600 bytes)\n" in body(m) and "\nSee the log.\n" in body(m)


# --- headers: values from the branch never make headers of their own ---------------------------

# What every notification carries, and nothing else.
HEADERS = sorted([
    "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Reply-To", "List-Id",
    "List-Unsubscribe", "Auto-Submitted", "Precedence", "X-Auto-Response-Suppress", "X-Mailtrack-Loop",
    "X-Mailtrack-Issue", "X-Mailtrack-Event", "X-Mailtrack-Status", "X-Mailtrack-Components", "X-Mailtrack-Reason",
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
])  # fmt: skip


def pushed_issue(tracker: Tracker, title: str) -> str:
    """A new issue whose issue.xml holds `title` as written by some other tool (anyone can push the branch)."""
    made = []

    def make(snap: Snapshot) -> Change:
        edits = [Edit("carbons", "=", "Bob Cc <bob@example.org>"), Edit("components", "=", "core")]
        issue, _ = new_issue(snap, ALICE, "placeholder", "It is on fire.\n", edits, message_id="<report1@example.org>")
        made.append(issue.name)
        raw = replace(issue, title=title)
        return Change(f"new {issue.name[:7]}: pushed", {f"{issue_dir(issue.name)}/issue.xml": raw.to_bytes()})

    tracker.change(ALICE, make)
    return made[0]


@pytest.mark.parametrize("title", ["Printer on fire\nReply-To: evil@example.org",
                                   "Printer on fire\n\nReply-To: evil@example.org"])
def test_title_with_a_line_break_makes_no_header(tracker: Tracker, title: str) -> None:
    """A title holding "\nReply-To: ..." stays in a one-line Subject: Reply-To is the issue's, no header is added."""
    name = pushed_issue(tracker, title)
    with Store.open(tracker.repo) as store:
        assert title == store.snapshot().issue(name).title  # the branch really holds the line break
    assert 3 == tracker.notify()
    short = name[:7]
    for m in tracker.caught():
        assert (HEADERS, f"issues+{short}@tracker.localhost") == (sorted(m.keys()), m["Reply-To"])
        assert f"[proj #{short}] Printer on fire Reply-To: evil@example.org" == h(m, "Subject")
        opened = f"Alice Reporter <alice@example.org> opened issue {short} of proj:\n\n    Printer on fire\n"
        assert body(m).startswith(opened)


def test_template_sets_only_the_subject(tracker: Tracker, tmp_path: Path) -> None:
    """Header lines other than Subject at the top of a template are ignored: the computed Reply-To and From win."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    (tmp_path / "notify-changed.txt").write_text(
        "Subject: changed {{ short }}\nReply-To: evil@example.org\nFrom: evil@example.org\nBcc: evil@example.org\n\n"
        "{% for c in changes %}{{ c.line }}\n{% endfor %}")
    custom = Config(gateway=replace(CONFIG.gateway, templates=str(tmp_path)), notify=CONFIG.notify)
    tracker.edit(DAN, name, [Edit("priority", "=", "low")])
    assert 5 == tracker.notify(custom)
    m = by_rcpt(tracker.caught())["alice@example.org"]
    short = name[:7]
    expected = (HEADERS, f"changed {short}", f"issues+{short}@tracker.localhost", "Dan Assignee via proj <issues@tracker.localhost>")
    assert expected == (sorted(m.keys()), m["Subject"], m["Reply-To"], m["From"])
    assert "priority: med -> low\n" == body(m)


def test_display_name_with_a_line_break_is_one_line(tracker: Tracker) -> None:
    """A comment author named "Eve\nBcc: ..." is told in From as one quoted display name, with no Bcc header."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    eve = Person("Eve Evil\nBcc: evil@example.org", "eve@example.org")
    tracker.change(ALICE, lambda snap: Change("comment", comment_change(snap, name, eve, "Hello.")[1]))
    assert 6 == tracker.notify()
    m = by_rcpt(tracker.caught())["alice@example.org"]
    [sender] = m["From"].addresses
    assert ("Eve Evil Bcc: evil@example.org via proj", "issues@tracker.localhost") == (sender.display_name, sender.addr_spec)
    assert HEADERS == sorted(m.keys())


def test_titles_are_written_on_one_line(tracker: Tracker) -> None:
    """A new title and a retitle have each whitespace run (CR, LF, tabs) made one space, as git shows the branch."""
    made = []

    def make(snap: Snapshot) -> Change:
        issue, ch = new_issue(snap, ALICE, " Printer\r\non \t fire\n")
        made.append(issue.name)
        return ch

    tracker.change(ALICE, make)
    [name] = made
    path = f"issues:{issue_dir(name)}/issue.xml"
    assert "<title>\nPrinter on fire\n</title>" in git(tracker.repo, "show", path)
    assert f"new {name[:7]}: Printer on fire" == git(tracker.repo, "log", "-1", "--format=%B", "issues").strip()
    tracker.edit(DAN, name, [Edit("title", "=", "Still\nburning\r\nReply-To: evil@example.org")])
    assert "<title>\nStill burning Reply-To: evil@example.org\n</title>" in git(tracker.repo, "show", path)


def test_notification_per_issue_quotes_only_that_issues_lines(gw: Gateway, repo: Path) -> None:
    """The notifications of a control mail over A and B: each quotes only the lines about its own issue."""
    a, b = two_issues(gw, repo)
    old = git(repo, "rev-parse", "issues").strip().encode()
    body = f"severity {a[:7]} minor\ntag {b[:7]} +ui\n"
    gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    new = git(repo, "rev-parse", "issues").strip().encode()
    notifier = Notifier(Config(gateway=GatewayConfig(project="proj")), gw.spool, project="proj")
    bodies = {}
    for m in notifier.mails(gw.store, old, new):
        msg = email.message_from_bytes(m.raw, policy=policy.default)
        bodies[msg["X-Mailtrack-Issue"]] = text_of(msg)  # type: ignore[arg-type]
    assert [a[:7], b[:7]] == sorted(bodies, key=lambda s: s != a[:7])
    assert (True, False) == (f"> severity {a[:7]} minor" in bodies[a[:7]], b[:7] in bodies[a[:7]]), bodies[a[:7]]
    assert (True, False) == (f"> tag {b[:7]} +ui" in bodies[b[:7]], a[:7] in bodies[b[:7]]), bodies[b[:7]]


def test_first_mail_delivered_on_a_fresh_installation_is_notified(repo: Path, sink: Sink) -> None:
    """With no notifier state yet, `mailtrack deliver` of a new issue with a Cc: the Cc'd person hears of it."""
    t = Tracker(repo, sink, Config(gateway=GatewayConfig(project="repo")))
    assert not (t.spool.root / "notify-state.json").exists()
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    r = mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=make_mail(Cc="Bob <bob@example.org>"))
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
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    r = mailtrack("process", repo=repo, config=repo / "mailtrack.toml")
    assert (0, "processed 1 mail(s), queued 1 notification(s)") == (r.returncode, r.stderr.decode().strip())
    assert {"alice@example.org": None, "bob@example.org": "cc"} == reasons(t.caught())


def test_mail_spooled_before_the_first_serve_is_notified(tmp_path: Path, sink: Sink) -> None:
    """`mailtrack serve` on a fresh repository with a mail already spooled: its Cc'd person hears of it."""
    repo = make_repo(tmp_path / "gw")
    t = Tracker(repo, sink, Config(gateway=GatewayConfig(project="proj")))
    t.spool.accept(make_mail(Cc="Bob <bob@example.org>"), source="test")
    server = Server(repo, free_port(), ANYONES_CC)
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
    r = mailtrack("import", str(tmp_path / "old.mbox"), repo=tracker.repo)
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
    assert f"<mailto:control@tracker.localhost?subject=unsubscribe%20{name[:7]}>" == link
    out = tracker.handle(make_mail(to="control@tracker.localhost", frm="Alice Reporter <alice@example.org>",
                                    message_id="<unsub@example.org>", subject=f"unsubscribe {name[:7]}", body=""))
    assert ["Processed: unsubscribe " + name[:7]] == [m["Subject"] for m in tracker.caught()]  # the transcript
    assert out.commands is not None and ["you get no more mail about this issue"] == [ln.status for ln in out.commands.lines]
    tracker.edit(DAN, name, comment="Try turning it off.")
    tracker.notify()
    heard = reasons(tracker.caught())
    assert (False, "cc") == ("alice@example.org" in heard, heard.get("bob@example.org"))
    tracker.handle(make_mail(to="control@tracker.localhost", frm="alice@example.org", message_id="<sub@example.org>",
                              subject="commands", body=f"subscribe {name[:7]}\n"))
    tracker.caught()  # the transcript
    tracker.edit(DAN, name, comment="Or on again.")
    tracker.notify()
    assert "reporter" == reasons(tracker.caught()).get("alice@example.org")


def test_reply_to_the_ack_by_in_reply_to_alone_is_a_comment(tracker: Tracker) -> None:
    """The ack's Message-ID names the issue: a reply with only In-Reply-To (no References, no tag) is a comment."""
    out = tracker.handle(make_mail(frm="Alice Reporter <alice@example.org>", message_id="<rep@example.org>"))
    [ack] = tracker.caught()
    assert (out.issue, "auto-replied") == (h(ack, "Message-ID").split(".")[1], ack["Auto-Submitted"])
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "Alice Reporter <alice@example.org>", "issues@tracker.localhost", "Re: Printer on fire"
    reply["Message-ID"], reply["In-Reply-To"] = "<rep2@example.org>", h(ack, "Message-ID")
    reply.set_content("It still smokes.\n")
    again = tracker.handle(reply.as_bytes())
    assert ("commented", out.issue) == (again.action, again.issue)
    assert ["It still smokes."] == [c.text for c in read_comments(tracker.repo, out.issue)]


def test_reply_to_a_transcript_by_in_reply_to_alone_is_a_comment(tracker: Tracker) -> None:
    """A control mail's transcript names its one issue: a reply to it alone goes to that issue."""
    name = tracker.new_issue()
    tracker.handle(make_mail(to="control@tracker.localhost", frm="alice@example.org", message_id="<ctl@example.org>",
                              subject="commands", body=f"severity {name[:7]} minor\n"))
    [transcript] = [m for m in tracker.caught() if m["Subject"].startswith("Processed")]
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "alice@example.org", "issues@tracker.localhost", "Re: Processed: commands"
    reply["Message-ID"], reply["In-Reply-To"] = "<ctl2@example.org>", h(transcript, "Message-ID")
    reply.set_content("Thanks, and it is minor indeed.\n")
    out = tracker.handle(reply.as_bytes())
    assert ("commented", name) == (out.action, out.issue)


CONSTANT = {"List-Id": "proj <proj.tracker.localhost>", "Auto-Submitted": "auto-generated", "Precedence": "bulk",
            "X-Auto-Response-Suppress": "All", "X-Mailtrack-Loop": "issues@tracker.localhost"}


def attach_only(t: Tracker, name: str) -> None:
    """A file added to the issue with no comment (as a merge or a patch mail can bring)."""
    t.change(BOB, lambda s: Change(f"attach {name[:7]}", {f"{issue_dir(name)}/trace.txt": b"t" * 3000}))


EVENTS = {
    "comment": lambda t, n: t.edit(BOB, n, comment="Any news?"),
    "changed": lambda t, n: t.edit(BOB, n, [Edit("severity", "=", "minor")]),
    "closed": lambda t, n: t.edit(BOB, n, close_edits),
    "reopened": lambda t, n: (t.edit(DAN, n, close_edits), t.notify(), t.caught(), t.edit(BOB, n, reopen_edits)),
    "attachment": attach_only,
}


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_event_has_the_headers_that_thread_and_filter(tracker: Tracker, event: str) -> None:
    """For each kind of change: threaded under the issue's first mail, Reply-To the issue, From
    "Name via project", List-Id and List-Unsubscribe, the auto-mail headers, our loop header and
    the X-Mailtrack-* headers; the actor (Bob) is not told."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    EVENTS[event](tracker, name)
    tracker.notify()
    mails = by_rcpt(tracker.caught())
    assert "bob@example.org" not in mails
    m = mails["alice@example.org"]
    short, first = name[:7], f"<mailtrack.{name}.issue@tracker.localhost>"
    expected = {
        **CONSTANT, "From": "Bob Cc via proj <issues@tracker.localhost>", "Subject": f"[proj #{short}] Printer on fire",
        "In-Reply-To": first, "References": f"<report1@example.org> {first}", "Reply-To": f"issues+{short}@tracker.localhost",
        "List-Unsubscribe": f"<mailto:control@tracker.localhost?subject=unsubscribe%20{short}>",
        "X-Mailtrack-Issue": short, "X-Mailtrack-Event": event, "X-Mailtrack-Components": "core",
        "X-Mailtrack-Reason": "reporter",
    }
    assert expected == {k: h(m, k) for k in expected}
    assert h(m, "Message-ID").startswith(f"<mailtrack.{name}.") and h(m, "Message-ID") != first
    if event == "attachment":
        assert "trace.txt (2.9 KB)" in body(m)
