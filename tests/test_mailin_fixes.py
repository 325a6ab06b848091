"""Mail in and commands by mail: imports that mail nobody, control mail that is applied once,
subject-tag commands on threaded replies, pseudo-headers that are really text, stale values,
control@ in copy, forged Authentication-Results, and what a refused sender is told."""

from __future__ import annotations

import mailbox
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import git, make_gateway, read_comments, read_issue, read_names, run_cli
from mailtrack.mail.parse import parse
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot
from mailtrack.worker.pipeline import Gateway
from test_commands import OUTBOX, filed, replies, text_of
from test_gateway import make_mail

CTL = "control@localhost"


def comment_files(repo: Path, name: str) -> list[str]:
    listing = git(repo, "ls-tree", "--name-only", f"issues:{name[:2]}/{name[2:]}").split()
    return [f"{name[:2]}/{name[2:]}/{f}" for f in listing if f.startswith("comment_")]


# --- 1. import mails nobody -------------------------------------------------------------------


def test_import_queues_no_replies(repo: Path, tmp_path: Path) -> None:
    """`mailtrack import` applies an archive (issues, comments, commands, errors) and queues no reply at all."""
    box = mailbox.mbox(str(tmp_path / "old.mbox"))
    box.add(make_mail(subject="Old bug", message_id="<o1@x>"))
    box.add(make_mail(subject="Re: Old bug", message_id="<o2@x>", In_Reply_To="<o1@x>", body="Priority: low\n\nstill there\n"))
    box.add(make_mail(subject="Re: Old bug", message_id="<o3@x>", In_Reply_To="<o1@x>", body="Priority: urgent\n\nbad value\n"))
    box.add(make_mail(subject="gone", message_id="<o4@x>", to="issues+deadbee@localhost"))
    box.close()
    r = subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "import", str(tmp_path / "old.mbox")],
                       capture_output=True, check=False)
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


# --- 2. a control mail leaves its record ------------------------------------------------------


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


# --- 3. subject-tag commands whatever found the issue -----------------------------------------


@pytest.mark.parametrize("how", ["in-reply-to", "references", "plus-address"])
def test_subject_tag_commands_on_a_routed_reply(gw: Gateway, repo: Path, how: str) -> None:
    """[status=closed] after the tag applies when the mail is routed by its thread or its plus address."""
    name = filed(gw, repo)
    kw = {"in-reply-to": {"In_Reply_To": "<filed@x>"}, "references": {"References": "<filed@x>"},
          "plus-address": {"to": f"issues+{name[:7]}@localhost"}}[how]
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


# --- 4. pseudo-headers only from the sender's own text, and only known fields -----------------


def test_outlook_reply_that_is_all_quote_is_a_comment(gw: Gateway, repo: Path) -> None:
    """An all-quote Outlook reply (From:/Sent:/To:/Subject: without '>') is kept whole as a comment, not read as commands."""
    name = filed(gw, repo)
    body = ("From: Alice <alice@example.org>\nSent: Monday, June 3, 2024 10:00 AM\nTo: issues@localhost\n"
            "Subject: Printer on fire\n\nIt is on fire.\n")
    out = gw.handle(make_mail(subject="RE: Printer on fire", message_id="<ol@x>", In_Reply_To="<filed@x>",
                              frm="bob@example.org", body=body))
    assert ("commented", None) == (out.action, out.commands)
    assert [body.strip()] == [c.text for c in read_comments(repo, name)]
    assert ("Printer on fire", []) == (read_issue(repo, name).title, replies(repo))


@pytest.mark.parametrize("body,expected", [
    ("Thanks.\n\nOn Mon, Bob wrote:\n> Status: closed\n", False),
    ("On Mon, Bob wrote:\n> Status: closed\n> It broke.\n", True),
    ("From: Bob <bob@example.org>\nSent: Monday\nTo: issues@localhost\nSubject: x\n\nold\n", True),
    ("", False),
])
def test_parse_says_when_a_reply_is_all_quote(body: str, expected: bool) -> None:
    """ParsedMail.all_quote is set when nothing of the sender's own is left and reply_text is the whole body."""
    mail = parse(make_mail(body=body))
    assert (expected, body.strip() if expected else mail.reply_text) == (mail.all_quote, mail.reply_text)


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


# --- 5. a value project.xml no longer allows --------------------------------------------------


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
    assert "> Priority: low\npriority: high -> low\n" in text_of(t)
    out = gw.handle(make_mail(to=CTL, frm="boss@example.org", message_id="<st2@x>", body=f"priority {name[:7]} med\n"))
    assert ("changed", "med") == (out.action, read_issue(repo, name).priority)
    out = gw.handle(make_mail(message_id="<st3@x>", In_Reply_To="<filed@x>", body="Severity: minor\n\nagain\n"))
    assert (True, "minor", "again") == (out.commands.ok, read_issue(repo, name).severity, read_comments(repo, name)[-1].text)  # type: ignore[union-attr]
    git(repo, "fsck", "--strict", "--no-dangling")


# --- 6. control@ in copy -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Cc": CTL},
    {"Cc": CTL, "Delivered_To": CTL},
])
def test_mail_to_an_issue_with_control_in_cc_is_a_comment(gw: Gateway, repo: Path, headers: dict[str, str]) -> None:
    """issues+<id>@ with control@ in Cc is a comment on that issue, not a control mail."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(to=f"issues+{name[:7]}@localhost", message_id="<cc@x>", body="a comment\n", **headers))
    assert ("commented", name, ["a comment"]) == (out.action, out.issue, [c.text for c in read_comments(repo, name)])


def test_mail_only_to_control_is_still_control(gw: Gateway, repo: Path) -> None:
    """control@ with no other gateway address among the recipients (other people in Cc) is a control mail."""
    name = filed(gw, repo)
    out = gw.handle(make_mail(to=CTL, frm="boss@example.org", Cc="bob@example.org", message_id="<c@x>", body=f"close {name[:7]}\n"))
    assert ("changed", "closed") == (out.action, read_issue(repo, name).status)


# --- 7. only the topmost Authentication-Results --------------------------------------------


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
        assert ("", "commented", "high") == (out.verified, out.action, read_issue(repo, name).priority)
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


# --- 8. a refused command: the original and the forgery line --------------------------------


def test_refused_command_transcript_attaches_the_original(gw: Gateway, repo: Path) -> None:
    """A command refused to a stranger gets a transcript with the mail attached and the forged-address line."""
    name = filed(gw, repo)
    raw = make_mail(message_id="<s@x>", In_Reply_To="<filed@x>", frm="mallory@evil.example", body="Status: closed\n\nI think this is done.\n")
    out = gw.handle(raw)
    assert ("commented", "new") == (out.action, read_issue(repo, name).status)
    [t] = replies(repo)
    assert ("Processed (with 1 refusal): Printer on fire", "<s@x>") == (t["Subject"], t["In-Reply-To"])
    assert (
        "Your commands were processed:\n\n> Status: closed\n"
        f"refused: mallory@evil.example may not change issue {name[:7]} (allowed:\nreporter, assignee, owner, maintainer)\n\n"
        "Refused commands were not applied; the rest of your mail was.\n\n"
        "Your mail is attached as it arrived. If you did not send it, someone forged\n"
        "your address: you may ignore this message.\n"
    ) in text_of(t)
    [attached] = list(t.iter_attachments())
    assert "message/rfc822" == attached.get_content_type()
    assert raw.replace(b"\r\n", b"\n").strip() in bytes(attached.get_payload(0)).replace(b"\r\n", b"\n")  # type: ignore[index]


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
