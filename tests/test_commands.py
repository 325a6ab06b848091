"""Commands by mail: pseudo-headers, the control address, rights, and what the sender is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.mail import OUTBOX, filed, make_mail, replies, text_of, two_issues
from helpers.repos import default_spool, git, make_gateway, read_comments, read_issue, read_names
from mailtrack.config import Config, GatewayConfig
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot, Store
from mailtrack.worker import runner
from mailtrack.worker.pipeline import Gateway


def test_pseudo_headers_on_a_new_issue(gw: Gateway, repo: Path) -> None:
    """Commands at the top of a new issue's mail set its fields and are not part of the description."""
    out = gw.handle(make_mail(body="Severity: minor\nTags: ui crash\nCc: +carol@example.org\n\nThe real text.\n"))
    issue = read_issue(repo, out.issue)
    assert ("minor", ["ui", "crash"], ["carol@example.org"], "The real text.") == (issue.severity, issue.tags, issue.carbons, issue.description)
    subjects = [m["Subject"] for m in replies(repo)]
    assert ["Processed: Printer on fire", f"[proj #{out.issue[:7]}] Printer on fire"] == subjects


def rich_project(repo: Path) -> None:
    """The branch again, with the golden project.xml (components, milestones) and a version v2.0 that is a tag."""
    git(repo, "tag", "v2.0")
    project = (Path(__file__).parent / "data" / "golden" / "project.xml").read_text().replace(
        "<versions>\n<list/>", "<versions>\n<list>\n<item>\nv2.0\n</item>\n</list>")
    (repo / "p.xml").write_text(project)
    git(repo, "update-ref", "-d", "refs/heads/issues")
    assert 0 == run_cli(repo, "init", "--project", str(repo / "p.xml")).code


@pytest.mark.parametrize("header,field,expected", [
    ("Status: open", "status", "open"),
    ("Resolution: wontfix", "resolution", "wontfix"),
    ("Type: feature", "type", "feature"),
    ("Severity: minor", "severity", "minor"),
    ("Priority: low", "priority", "low"),
    ("Milestone: 1.0", "milestone", "1.0"),
    ("Component: core", "components", ["core"]),
    ("Assigned: Bob <bob@example.org>", "assigned", ["Bob <bob@example.org>"]),
    ("Title: A better title", "title", "A better title"),
    ("Cc: +dan@example.org", "carbons", ["dan@example.org"]),
    ("Tags: +ui", "tags", ["ui"]),
    ("Version: v2.0", "version", "v2.0"),
])
def test_every_field_by_pseudo_header(repo: Path, header: str, field: str, expected: object) -> None:
    """Each field can be set by a pseudo-header in a reply from the reporter; the transcript says old -> new."""
    rich_project(repo)
    g = make_gateway(repo)
    try:
        name = filed(g, repo)
        out = g.handle(make_mail(message_id="<cmd@x>", In_Reply_To="<filed@x>", body=f"{header}\n\nmy comment\n"))
        assert ("changed", []) == (out.action, [ln.error for ln in out.commands.lines if ln.error]), out.commands  # type: ignore[union-attr]
        assert expected == getattr(read_issue(repo, name), field)
        assert ["my comment"] == [c.text for c in read_comments(repo, name)]
        [transcript] = replies(repo)
        assert f"> {header}\n{field}: " in text_of(transcript)
        assert 1 == int(git(repo, "rev-list", "--count", "issues", "^issues~1"))
    finally:
        g.close()
        g.store.close()


@pytest.mark.parametrize("command,field,expected", [
    ("status {id} open", "status", "open"),
    ("close {id} wontfix", "resolution", "wontfix"),
    ("severity {id} minor", "severity", "minor"),
    ("priority {id} low", "priority", "low"),
    ("assign {id} Bob <bob@example.org>", "assigned", ["Bob <bob@example.org>"]),
    ("retitle {id} A better title", "title", "A better title"),
    ("component {id} core", "components", ["core"]),
    ("milestone {id} 1.0", "milestone", "1.0"),
    ("version {id} v2.0", "version", "v2.0"),
    ("tag {id} +ui", "tags", ["ui"]),
    ("cc {id} +dan@example.org", "carbons", ["dan@example.org"]),
    ("subscribe {id}", "carbons", ["alice@example.org"]),
])
def test_every_control_command(repo: Path, command: str, field: str, expected: object) -> None:
    """Each control command, from the reporter to control@: one commit with the new value, a comment
    carrying the mail's Message-ID, and a transcript that echoes the line with its result."""
    rich_project(repo)
    g = make_gateway(repo)
    try:
        name = filed(g, repo)
        line = command.format(id=name[:7])
        before = int(git(repo, "rev-list", "--count", "issues"))
        out = g.handle(make_mail(to="control@tracker.localhost", message_id="<ctl@x>", body=f"{line}\nthanks\n"))
        assert ("changed", expected, before + 1) == (out.action, getattr(read_issue(repo, name), field),
                                                     int(git(repo, "rev-list", "--count", "issues")))
        assert "&lt;ctl@x&gt;" in git(repo, "show", "issues", "--", f"{name[:2]}/{name[2:]}")  # the record of this mail
        [transcript] = replies(repo)
        assert ("Processed: Printer on fire", True) == (transcript["Subject"], f"> {line}\n" in text_of(transcript))
    finally:
        g.close()
        g.store.close()


@pytest.mark.parametrize("line,error", [
    ("severity {id} huge", "huge"),
    ("milestone {id} 9.9", "9.9"),
    ("component {id} nowhere", "nowhere"),
    ("status deadbeef open", "no issue deadbeef"),
])
def test_control_errors_change_nothing_and_say_why(gw: Gateway, repo: Path, line: str, error: str) -> None:
    """An illegal value or an unknown issue in a control mail: nothing is written, the transcript marks the line."""
    name = filed(gw, repo)
    tip = git(repo, "rev-parse", "issues")
    text = line.format(id=name[:7])
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<bad@x>", body=f"tag {name[:7]} +ok\n{text}\n"))
    assert ("rejected", tip) == (out.action, git(repo, "rev-parse", "issues"))
    [t] = replies(repo)
    body = text_of(t)
    assert (True, True) == (f"> {text}\nerror: " in body, error in body.split(f"> {text}\n", 1)[1].split("\n", 1)[0]), body


def test_unauthorised_control_sender_is_refused(gw: Gateway, repo: Path) -> None:
    """A stranger's control mail changes nothing, and the transcript says which rule refused it."""
    name = filed(gw, repo)
    tip = git(repo, "rev-parse", "issues")
    gw.handle(make_mail(to="control@tracker.localhost", frm="mallory@example.net", message_id="<evil@x>", body=f"close {name[:7]}\n"))
    [t] = replies(repo)
    assert (tip, True) == (git(repo, "rev-parse", "issues"), f"> close {name[:7]}\nrefused: mallory@example.net may not change" in text_of(t))


def test_status_closed_alone_sets_the_default_resolution(gw: Gateway, repo: Path) -> None:
    """`Status: closed` closes with the project's first resolution; the commit says close."""
    name = filed(gw, repo)
    gw.handle(make_mail(message_id="<c@x>", In_Reply_To="<filed@x>", body="Status: closed\n\nFixed in 1.2\n"))
    issue = read_issue(repo, name)
    assert ("closed", "fixed") == (issue.status, issue.resolution)
    assert f"comment {name[:7]} by alice@example.org; close {name[:7]} (fixed)" == git(repo, "log", "-1", "--format=%s", "issues").strip()


def test_one_illegal_value_changes_nothing_and_marks_the_line(gw: Gateway, repo: Path) -> None:
    """A mail with one illegal value among several commands changes nothing; the transcript marks that line."""
    name = filed(gw, repo)
    tip = git(repo, "rev-parse", "issues")
    out = gw.handle(make_mail(message_id="<bad@x>", In_Reply_To="<filed@x>",
                              body="Severity: minor\nPriority: urgent\nTags: +ui\n\nplease\n"))
    assert ("rejected", tip) == (out.action, git(repo, "rev-parse", "issues"))
    [t] = replies(repo)
    assert "Processed (with 1 error): Printer on fire" == t["Subject"]
    body = text_of(t)
    assert "> Priority: urgent\nerror: illegal priority 'urgent'; legal values are: high, med, low\n" in body
    assert "> Severity: minor\nseverity: major -> minor\n" in body
    assert ["message/rfc822"] == [p.get_content_type() for p in t.iter_attachments()]
    assert [] == read_comments(repo, name)


def test_quoted_commands_are_ignored(gw: Gateway, repo: Path) -> None:
    """Command lines in quoted text are not commands."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(message_id="<q@x>", In_Reply_To="<filed@x>",
                              body="Thanks, will look.\n\nOn Mon, Bob wrote:\n> Status: closed\n> Severity: minor\n"))
    assert ("commented", "new") == (out.action, read_issue(repo, name).status)
    assert [] == [m for m in replies(repo) if m["Subject"].startswith("Processed")]


def test_unauthorised_command_refused_but_comment_lands(gw: Gateway, repo: Path) -> None:
    """A stranger may comment but not close: the command is refused and reported, the comment lands."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(message_id="<s@x>", In_Reply_To="<filed@x>", frm="mallory@evil.example",
                              body="Status: closed\n\nI think this is done.\n"))
    assert ("commented", "new") == (out.action, read_issue(repo, name).status)
    assert ["I think this is done."] == [c.text for c in read_comments(repo, name)]
    [t] = replies(repo)
    assert "refused: mallory@evil.example may not change issue" in text_of(t)


def test_maintainer_and_owner_may_change(gw: Gateway, repo: Path) -> None:
    """A configured maintainer may change any issue."""
    name = filed(gw, repo)
    gw.handle(make_mail(message_id="<m@x>", In_Reply_To="<filed@x>", frm="boss@example.org", body="Priority: low\n\nok\n"))
    assert "low" == read_issue(repo, name).priority


def test_control_mail_batch_is_one_commit(gw: Gateway, repo: Path) -> None:
    """Commands to control@ over several issues are applied as one commit, with a transcript."""
    a = filed(gw, repo)
    gw.handle(make_mail(subject="Second", message_id="<two@x>"))
    b = [n for n in read_names(repo) if n != a][0]
    replies(repo)
    before = int(git(repo, "rev-list", "--count", "issues"))
    body = (f"# a batch\nseverity {a[:7]} minor\ntag {b[:7]} +ui -x\nretitle {b[:7]} A new title\n"
            f"assign {a[:7]} bob@example.org\ncc {a[:7]} +carol@example.org\nsubscribe {b[:7]}\nclose {a[:7]} wontfix\n"
            f"thanks\nseverity {a[:7]} blocker\n")
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    assert "changed" == out.action
    assert before + 1 == int(git(repo, "rev-list", "--count", "issues"))
    ia, ib = read_issue(repo, a), read_issue(repo, b)
    assert ("minor", ["bob@example.org"], ["carol@example.org"], "closed", "wontfix") == (ia.severity, ia.assigned, ia.carbons, ia.status, ia.resolution)
    assert (["ui"], "A new title", ["boss@example.org"]) == (ib.tags, ib.title, ib.carbons)
    [t] = replies(repo)
    assert "Processed: Printer on fire" == t["Subject"]
    assert f"> severity {a[:7]} blocker" not in text_of(t)


def test_control_show_help_reopen_and_unknown(gw: Gateway, repo: Path) -> None:
    """show and help send their replies; reopen works; unknown issues are errors that stop everything."""
    a = filed(gw, repo)
    run_cli(repo, "close", a[:7])
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<c1@x>",
                              body=f"show {a[:7]}\nhelp\nreopen {a[:7]}\n"))
    assert ("changed", "new") == (out.action, read_issue(repo, a).status)
    subjects = sorted(m["Subject"] for m in replies(repo))
    assert ["Commands of proj", "Processed: Printer on fire", f"[proj #{a[:7]}] Printer on fire"] == subjects
    tip = git(repo, "rev-parse", "issues")
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<c2@x>",
                              body=f"close {a[:7]}\nseverity deadbeef minor\n"))
    assert ("rejected", tip) == (out.action, git(repo, "rev-parse", "issues"))
    [t] = replies(repo)
    assert "> severity deadbeef minor\nerror: no issue deadbeef\n" in text_of(t)


def test_five_unknown_lines_stop(gw: Gateway, repo: Path) -> None:
    """Processing stops after five unknown lines; what follows is not read."""
    a = filed(gw, repo)
    body = "Hello there,\nplease could you\nshut the thing\nthat I reported\nyesterday, it is\n" + f"close {a[:7]}\n"
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<c3@x>", body=body))
    assert ("nothing", "new", 6) == (out.action, read_issue(repo, a).status, len(out.commands.lines))  # type: ignore[union-attr]
    assert "(stopped after five unknown lines)" == out.commands.lines[-1].text  # type: ignore[union-attr]


def test_subject_tag_commands(gw: Gateway, repo: Path) -> None:
    """Roundup-style [status=closed] after the subject tag is a command."""
    name = filed(gw, repo)
    gw.handle(make_mail(subject=f"Re: [proj #{name[:7]}] Printer on fire [status=closed;priority=low]", message_id="<t@x>", body="done\n"))
    issue = read_issue(repo, name)
    assert ("closed", "low") == (issue.status, issue.priority)


def test_unknown_senders_policies(repo: Path) -> None:
    """unknown_senders = hold keeps a stranger's mail in failed; reject answers; known senders pass."""
    g = make_gateway(repo, unknown_senders="hold")
    try:
        out = g.handle(make_mail(frm="stranger@example.org", message_id="<u1@x>"))
        assert ("held", "stranger@example.org is not known to proj") == (out.action, out.reason)
    finally:
        g.close(); g.store.close()  # noqa: E702
    g = make_gateway(repo, unknown_senders="reject", open=["@example.org"])
    try:
        out = g.handle(make_mail(frm="stranger@elsewhere.example", message_id="<u2@x>"))
        assert "rejected" == out.action
        [r] = replies(repo)
        assert "stranger@elsewhere.example is not known to proj." in text_of(r)
    finally:
        g.close(); g.store.close()  # noqa: E702
    assert [] == read_names(repo)


def test_open_restricted_to_a_domain(repo: Path) -> None:
    """open = ["@example.org"] lets that domain open issues and refuses others with a reply."""
    g = make_gateway(repo, open=["@example.org"])
    try:
        assert "created" == g.handle(make_mail(message_id="<d1@x>")).action
        out = g.handle(make_mail(frm="x@other.example", message_id="<d2@x>"))
        assert ("rejected", "x@other.example may not open issues in proj") == (out.action, out.reason)
    finally:
        g.close(); g.store.close()  # noqa: E702


def test_commands_can_require_a_vouched_sender(repo: Path) -> None:
    """With require_auth_for_commands, commands need dkim=pass from a trusted server; it is recorded."""
    g = make_gateway(repo, require_auth_for_commands=True, trusted_authserv_ids=["mx.example.org"])
    try:
        name = filed(g, repo)
        g.handle(make_mail(message_id="<a1@x>", In_Reply_To="<filed@x>", body="Priority: low\n\nx\n"))
        assert "med" == read_issue(repo, name).priority
        ours = b"Authentication-Results: mx.example.org; dkim=pass header.d=example.org; spf=pass\r\n"  # on top, as our MTA adds it
        out = g.handle(ours + make_mail(message_id="<a2@x>", In_Reply_To="<filed@x>", body="Priority: low\n\ny\n"))
        assert ("low", "mx.example.org dkim=pass") == (read_issue(repo, name).priority, out.verified)
        assert "Verified-By: mx.example.org dkim=pass" in git(repo, "log", "-1", "--format=%B", "issues")
        forged = g.handle(b"Authentication-Results: evil.example; dkim=pass header.d=example.org\r\n"
                          + make_mail(message_id="<a3@x>", In_Reply_To="<filed@x>", body="Priority: med\n\nz\n"))
        assert ("", "low") == (forged.verified, read_issue(repo, name).priority)
    finally:
        g.close(); g.store.close()  # noqa: E702


def test_rate_limit_bounds_replies_and_keeps_every_mail(repo: Path) -> None:
    """A flood of bad mails from one address gets a bounded number of replies; every mail is kept."""
    store = Store.open(repo, durable=True)
    spool = Spool(default_spool(store))
    g = Gateway(Config(gateway=GatewayConfig(project="proj", reply_rate_limit=3)), store, spool)
    try:
        for i in range(12):
            spool.accept(make_mail(subject=f"Re: [proj #deadbeef] flood {i}", message_id=f"<f{i}@x>"))
        assert 12 == runner.drain(g)
        assert 3 == len(list((repo / OUTBOX).iterdir()))
        assert 12 == spool.counts()["processed"]
    finally:
        g.close()
        store.close()


def test_unsubscribe_by_the_list_unsubscribe_link(gw: Gateway, repo: Path) -> None:
    """A mail to control@ with `unsubscribe ID` as its subject and no body takes the sender off the Cc list."""
    name = filed(gw, repo)
    run_cli(repo, "cc", name[:7], "+carol@example.org")
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="carol@example.org", message_id="<un@x>",
                              subject=f"unsubscribe {name[:7]}", body=""))
    assert ("changed", []) == (out.action, read_issue(repo, name).carbons)


def test_control_reopen_of_an_issue_not_closed_changes_nothing(gw: Gateway, repo: Path) -> None:
    """`reopen ID` on an open issue keeps its status (open stays open, not new) and says it is not closed."""
    name = filed(gw, repo)
    assert 0 == run_cli(repo, "set", name[:7], "status=open").code
    tip = git(repo, "rev-parse", "issues")
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<ro@x>", body=f"reopen {name[:7]}\nthanks\n"))
    assert ("nothing", tip, "open") == (out.action, git(repo, "rev-parse", "issues"), read_issue(repo, name).status)
    [t] = replies(repo)
    assert "Processed: Printer on fire" == t["Subject"]
    assert f"Your commands were processed:\n\n> reopen {name[:7]}\nissue {name[:7]} is not closed (open): nothing to reopen\n\n" in text_of(t)


def test_control_close_then_reopen_in_one_mail(gw: Gateway, repo: Path) -> None:
    """A reopen after a close in the same control mail sees the issue closed, and reopens it."""
    name = filed(gw, repo)
    assert 0 == run_cli(repo, "set", name[:7], "status=open").code
    gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<cr@x>",
                        body=f"close {name[:7]}\nreopen {name[:7]}\nthanks\n"))
    issue = read_issue(repo, name)
    assert ("new", "") == (issue.status, issue.resolution)
    assert f"> reopen {name[:7]}\nstatus: closed -> new, resolution: fixed -> (none)\n" in text_of(replies(repo)[0])


def test_cli_reopen_of_an_issue_not_closed_changes_nothing(gw: Gateway, repo: Path) -> None:
    """`git issues reopen` on an open issue prints that there is nothing to change, and writes nothing, not even -m."""
    name = filed(gw, repo)
    assert 0 == run_cli(repo, "set", name[:7], "status=open").code
    tip = git(repo, "rev-parse", "issues")
    r = run_cli(repo, "reopen", name[:7], "-m", "again")
    assert (0, f"nothing to change: issue {name[:7]} is not closed (open)\n", "") == (r.code, r.out, r.err)
    assert (tip, "open", []) == (git(repo, "rev-parse", "issues"), read_issue(repo, name).status, read_comments(repo, name))
    assert 0 == run_cli(repo, "close", name[:7]).code
    r = run_cli(repo, "reopen", name[:7], "-m", "not fixed after all")
    issue = read_issue(repo, name)
    commit, subject = git(repo, "log", "-1", "--format=%h%n%s", "--abbrev=7", "issues").splitlines()
    assert (0, f"[issues {commit}] {subject}\n", True) == (r.code, r.out, subject.endswith(f"; reopen {name[:7]}"))
    assert ("new", "", ["not fixed after all"]) == (issue.status, issue.resolution, [c.text for c in read_comments(repo, name)])


def test_control_close_of_a_closed_issue_changes_nothing_unless_the_resolution_differs(gw: Gateway, repo: Path) -> None:
    """`close ID` on an issue closed already writes nothing and says so; `close ID dup` changes only the resolution."""
    a = filed(gw, repo)
    assert 0 == run_cli(repo, "close", a[:7], "--resolution", "wontfix").code
    tip = git(repo, "rev-parse", "issues")
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<cc1@x>", body=f"close {a[:7]}\n"))
    [t] = replies(repo)
    assert ("nothing", tip) == (out.action, git(repo, "rev-parse", "issues"))
    assert f"> close {a[:7]}\nissue {a[:7]} is already closed (wontfix): nothing to close\n" in text_of(t)
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<cc2@x>", body=f"close {a[:7]} dup\n"))
    assert ("changed", "closed", "dup") == (out.action, read_issue(repo, a).status, read_issue(repo, a).resolution)


def test_a_command_that_found_nothing_to_do_is_not_in_the_record(gw: Gateway, repo: Path) -> None:
    """A control mail that changes an issue and also reopens an open one: the record lists only the change."""
    a = filed(gw, repo)
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<rec@x>",
                              body=f"severity {a[:7]} minor\nreopen {a[:7]}\n"))
    [record] = read_comments(repo, a)
    assert ("changed", f"Commands by mail to the control address:\n\nseverity {a[:7]} minor") == (out.action, record.text)


CTL = "control@tracker.localhost"


def comment_files(repo: Path, name: str) -> list[str]:
    listing = git(repo, "ls-tree", "--name-only", f"issues:{name[:2]}/{name[2:]}").split()
    return [f"{name[:2]}/{name[2:]}/{f}" for f in listing if f.startswith("comment_")]


def test_control_mail_twice_is_a_duplicate(gw: Gateway, repo: Path) -> None:
    """A control mail leaves one comment carrying its Message-ID; the same mail again (after a CLI reopen) changes nothing."""
    a = filed(gw, repo)
    mail = make_mail(to=CTL, frm="boss@example.org", message_id="<ctl1@x>",
                     body=f"show {a[:7]}\nclose {a[:7]} wontfix\nfoo bar\nthanks\n")
    out = gw.handle(mail)
    assert ("changed", "closed") == (out.action, read_issue(repo, a).status)
    [record] = comment_files(repo, a)
    xml = git(repo, "show", f"issues:{record}")
    assert "<message-id>\n&lt;ctl1@x&gt;\n</message-id>" in xml
    [c] = read_comments(repo, a)
    assert (f"Commands by mail to the control address:\n\nclose {a[:7]} wontfix", "<ctl1@x>") == (c.text, c.message_id)
    assert f"comment {a[:7]} by boss@example.org; close {a[:7]} (wontfix)" == git(repo, "log", "-1", "--format=%s", "issues").strip()
    replies(repo)
    assert 0 == run_cli(repo, "reopen", a[:7]).code
    tip = git(repo, "rev-parse", "issues")
    again = gw.handle(mail)
    assert ("duplicate", a, tip, "new") == (again.action, again.issue, git(repo, "rev-parse", "issues"), read_issue(repo, a).status)
    assert [] == replies(repo)
    git(repo, "fsck", "--strict", "--no-dangling")


def test_control_mail_over_two_issues_leaves_one_record(gw: Gateway, repo: Path) -> None:
    """A batch over two issues leaves its record (the Message-ID) on the first issue it changes only;
    each issue's comment holds only the lines about that issue that did something (not the reopen of an open one)."""
    a = filed(gw, repo)
    gw.handle(make_mail(subject="Second", message_id="<two@x>"))
    b = next(n for n in read_names(repo) if n != a)
    out = gw.handle(make_mail(to=CTL, frm="boss@example.org", message_id="<ctl2@x>",
                              body=f"reopen {b[:7]}\nseverity {b[:7]} minor\npriority {a[:7]} low\n"))
    assert "changed" == out.action
    head = "Commands by mail to the control address:\n\n"
    assert ([head + f"priority {a[:7]} low"], [head + f"severity {b[:7]} minor"]) == (
        [c.text for c in read_comments(repo, a)], [c.text for c in read_comments(repo, b)])
    assert ("", "<ctl2@x>", "minor", "low") == (read_comments(repo, a)[0].message_id, read_comments(repo, b)[0].message_id,
                                                read_issue(repo, b).severity, read_issue(repo, a).priority)


@pytest.mark.parametrize("how", ["in-reply-to", "references", "plus-address"])
def test_subject_tag_commands_on_a_routed_reply(gw: Gateway, repo: Path, how: str) -> None:
    """[status=closed] after the tag applies when the mail is routed by its thread or its plus address."""
    name = filed(gw, repo)
    kw = {"in-reply-to": {"In_Reply_To": "<filed@x>"}, "references": {"References": "<filed@x>"},
          "plus-address": {"to": f"issues+{name[:7]}@tracker.localhost"}}[how]
    out = gw.handle(make_mail(subject=f"Re: [proj #{name[:7]}] Printer on fire [status=closed]", message_id="<t@x>",
                              body="done\n", **kw))  # type: ignore[arg-type]
    issue = read_issue(repo, name)
    assert ("changed", "closed", "fixed", ["done"]) == (out.action, issue.status, issue.resolution, [c.text for c in read_comments(repo, name)])
    [t] = replies(repo)
    assert "Processed: Re: [proj #" + name[:7] + "] Printer on fire [status=closed]" == t["Subject"]
    assert "> status: closed\nstatus: new -> closed, resolution: (none) -> fixed\n" in text_of(t)


def test_subject_tag_of_another_issue_gives_no_commands(gw: Gateway, repo: Path) -> None:
    """A threaded reply whose subject tags a different issue is a comment; that tag's commands are not applied."""
    a = filed(gw, repo)
    gw.handle(make_mail(subject="Second", message_id="<two@x>"))
    b = next(n for n in read_names(repo) if n != a)
    replies(repo)
    out = gw.handle(make_mail(subject=f"Re: [proj #{b[:7]}] Second [status=closed]", message_id="<t2@x>",
                              In_Reply_To="<filed@x>", body="see there\n"))
    assert ("commented", a, "new", "new") == (out.action, out.issue, read_issue(repo, a).status, read_issue(repo, b).status)
    assert [] == replies(repo)


def test_outlook_reply_that_is_all_quote_is_a_comment(gw: Gateway, repo: Path) -> None:
    """An all-quote Outlook reply (From:/Sent:/To:/Subject: without '>') is kept whole as a comment, not read as commands."""
    name = filed(gw, repo)
    body = ("From: Alice <alice@example.org>\nSent: Monday, June 3, 2024 10:00 AM\nTo: issues@tracker.localhost\n"
            "Subject: Printer on fire\n\nIt is on fire.\n")
    out = gw.handle(make_mail(subject="RE: Printer on fire", message_id="<ol@x>", In_Reply_To="<filed@x>",
                              frm="bob@example.org", body=body))
    assert ("commented", None) == (out.action, out.commands)
    assert [body.strip()] == [c.text for c in read_comments(repo, name)]
    assert ("Printer on fire", []) == (read_issue(repo, name).title, replies(repo))


def test_new_issue_starting_with_unknown_pseudo_headers_keeps_them_as_text(gw: Gateway, repo: Path) -> None:
    """"Version: 2.1.0 / OS: Debian 12" at the top of a bug report is text: created, description whole, only the ack."""
    body = "Version: 2.1.0\nOS: Debian 12\n\nIt crashes at start.\n"
    out = gw.handle(make_mail(message_id="<v@x>", body=body))
    issue = read_issue(repo, out.issue)
    assert ("created", body.strip(), "") == (out.action, issue.description, issue.version)
    assert [f"[proj #{out.issue[:7]}] Printer on fire"] == [m["Subject"] for m in replies(repo)]


def test_illegal_value_of_a_known_field_is_still_an_error(gw: Gateway, repo: Path) -> None:
    """A paragraph of known fields with an illegal value is still rejected with the legal values."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(message_id="<iv@x>", In_Reply_To="<filed@x>", body="Severity: huge\n\nplease\n"))
    assert ("rejected", []) == (out.action, read_comments(repo, name))
    [t] = replies(repo)
    assert "> Severity: huge\nerror: illegal severity 'huge'; legal values are: blocker, critical,\nmajor, minor, cosmetic\n" in text_of(t)


def drop_minor_severity(gw: Gateway, repo: Path) -> None:
    def change(snap: Snapshot) -> Change:
        xml = git(repo, "show", "issues:project.xml")
        assert "<item>\nminor\n</item>\n" in xml
        return Change("project: no minor severity", {"project.xml": xml.replace("<item>\nminor\n</item>\n", "").encode()})

    gw.store.update(change, Person("Jane Doe", "jane@example.org"))


def test_stale_value_does_not_block_other_changes(gw: Gateway, repo: Path) -> None:
    """An issue holding a severity project.xml no longer lists still takes a pseudo-header and a control command."""
    name = filed(gw, repo)
    assert 0 == run_cli(repo, "set", name[:7], "severity=minor").code
    drop_minor_severity(gw, repo)
    out = gw.handle(make_mail(message_id="<st1@x>", In_Reply_To="<filed@x>", body="Priority: low\n\nstill broken\n"))
    issue = read_issue(repo, name)
    assert ("changed", "low", "minor", ["still broken"]) == (out.action, issue.priority, issue.severity, [c.text for c in read_comments(repo, name)])
    [t] = replies(repo)
    assert "> Priority: low\npriority: med -> low\n" in text_of(t)
    out = gw.handle(make_mail(to=CTL, frm="boss@example.org", message_id="<st2@x>", body=f"priority {name[:7]} med\n"))
    assert ("changed", "med") == (out.action, read_issue(repo, name).priority)
    out = gw.handle(make_mail(message_id="<st3@x>", In_Reply_To="<filed@x>", body="Severity: minor\n\nagain\n"))
    assert (True, "minor", "again") == (out.commands.ok, read_issue(repo, name).severity, read_comments(repo, name)[-1].text)  # type: ignore[union-attr]
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.parametrize("headers", [
    {"Cc": CTL},
    {"Cc": CTL, "Delivered_To": CTL},
])
def test_mail_to_an_issue_with_control_in_cc_is_a_comment(gw: Gateway, repo: Path, headers: dict[str, str]) -> None:
    """issues+<id>@ with control@ in Cc is a comment on that issue, not a control mail."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(to=f"issues+{name[:7]}@tracker.localhost", message_id="<cc@x>", body="a comment\n", **headers))
    assert ("commented", name, ["a comment"]) == (out.action, out.issue, [c.text for c in read_comments(repo, name)])


def test_mail_only_to_control_is_still_control(gw: Gateway, repo: Path) -> None:
    """control@ with no other gateway address among the recipients (other people in Cc) is a control mail."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(to=CTL, frm="boss@example.org", Cc="bob@example.org", message_id="<c@x>", body=f"close {name[:7]}\n"))
    assert ("changed", "closed") == (out.action, read_issue(repo, name).status)


def test_forged_authentication_results_below_ours_are_not_trusted(repo: Path) -> None:
    """An Authentication-Results with our authserv-id further down (below our own) does not vouch for the sender."""
    g = make_gateway(repo, require_auth_for_commands=True, trusted_authserv_ids=["mx.example.org"])
    try:
        name = filed(g, repo)
        ours = (b"Authentication-Results: mx.example.org; dkim=fail header.d=example.org\r\n"
                b"Received: from a.example.org by mx.example.org; Mon, 3 Jun 2024 10:00:00 +0000\r\n")
        forged = make_mail(message_id="<f1@x>", In_Reply_To="<filed@x>", body="Priority: low\n\nx\n",
                           Authentication_Results="mx.example.org; dkim=pass header.d=example.org")
        out = g.handle(ours + forged)
        assert ("", "commented", "med") == (out.verified, out.action, read_issue(repo, name).priority)
        [t] = replies(repo)
        assert "> Priority: low\nrefused: commands need a sender address the receiving server vouches for\n(DKIM or DMARC)\n" in text_of(t)
        top = (b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.org\r\n"
               b"Authentication-Results: mx.example.org; dkim=pass header.d=example.org\r\n"
               b"Received: from a.example.org by mx.example.org; Mon, 3 Jun 2024 10:00:00 +0000\r\n")
        out = g.handle(top + make_mail(message_id="<f2@x>", In_Reply_To="<filed@x>", body="Priority: low\n\ny\n"))
        assert ("mx.example.org dkim=pass", "low") == (out.verified, read_issue(repo, name).priority)
    finally:
        g.close()
        g.store.close()


def test_forged_authentication_results_with_none_of_ours_are_not_trusted(repo: Path) -> None:
    """When our MTA added no Authentication-Results, one that came with the mail (below its own
    From/To/Subject fields) is not taken for ours; one under our Received lines only is."""
    g = make_gateway(repo, require_auth_for_commands=True, trusted_authserv_ids=["mx.example.org"])
    try:
        filed(g, repo)
        forged = make_mail(message_id="<f3@x>", In_Reply_To="<filed@x>", body="Priority: low\n\nx\n",
                           Authentication_Results="mx.example.org; dkim=pass header.d=example.org")
        assert "" == g.handle(forged).verified
        ours = (b"Received: from a.example.org by mx.example.org; Mon, 3 Jun 2024 10:00:00 +0000\r\n"
                b"Authentication-Results: mx.example.org; dkim=pass header.d=example.org\r\n")
        assert "mx.example.org dkim=pass" == g.handle(ours + make_mail(message_id="<f4@x>", In_Reply_To="<filed@x>")).verified
    finally:
        g.close()
        g.store.close()


def test_authentication_results_under_spam_filter_fields_are_ours(repo: Path) -> None:
    """Filters put their own fields (X-Spam-Status, X-Virus-Scanned) around the results: still on top, still ours;
    one among the mail's own fields (after From:) is not."""
    g = make_gateway(repo, require_auth_for_commands=True, trusted_authserv_ids=["mx.example.org"])
    try:
        filed(g, repo)
        top = (b"X-Spam-Status: No, score=-1.0\r\nX-Virus-Scanned: amavisd-new\r\n"
               b"Authentication-Results: mx.example.org; dkim=pass header.d=example.org\r\n")
        assert "mx.example.org dkim=pass" == g.handle(top + make_mail(message_id="<s1@x>", In_Reply_To="<filed@x>")).verified
        inside = make_mail(message_id="<s2@x>", In_Reply_To="<filed@x>").replace(
            b"\nTo:", b"\nAuthentication-Results: mx.example.org; dkim=pass header.d=example.org\nTo:", 1)
        assert "" == g.handle(inside).verified
    finally:
        g.close()
        g.store.close()


def test_control_record_on_each_issue_holds_only_its_own_lines(gw: Gateway, repo: Path) -> None:
    """A control mail over issues A and B: A's comment carries the Message-ID and only A's lines, B's
    comment only B's lines and no Message-ID; a repeat of the mail is a duplicate."""
    a, b = two_issues(gw, repo)
    body = f"severity {a[:7]} minor\ntag {b[:7]} +ui\nclose {a[:7]} wontfix\nretitle {b[:7]} A new title\n"
    out = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    assert "changed" == out.action
    [ca], [cb] = read_comments(repo, a), read_comments(repo, b)
    head = "Commands by mail to the control address:\n\n"
    assert (head + f"severity {a[:7]} minor\nclose {a[:7]} wontfix", "<ctl@x>") == (ca.text.strip("\n"), ca.message_id)
    assert (head + f"tag {b[:7]} +ui\nretitle {b[:7]} A new title", "") == (cb.text.strip("\n"), cb.message_id)
    replies(repo)
    again = gw.handle(make_mail(to="control@tracker.localhost", frm="boss@example.org", message_id="<ctl@x>", body=body))
    assert "duplicate" == again.action
