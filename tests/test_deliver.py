"""`mailtrack deliver`: one mail on stdin, as an MTA pipes it, kept and processed; its dry run; and
its exit codes (75 whenever the mail could not be kept, so the MTA retries instead of bouncing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, outbox, spool_path
from helpers.repos import git, read_issue, read_names
from helpers.tracker import ANYONES_CC


def test_deliver_new_issue_end_to_end(repo: Path) -> None:
    """`mailtrack deliver` turns a mail into one commit by the sender, queues a threaded acknowledgement
    to the sender and a notification to the Cc'd person (the first mail of a fresh gateway too)."""
    (repo / "mailtrack.toml").write_text(ANYONES_CC)  # a first mail: its sender is a stranger
    r = mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml",
                  input=make_mail(subject="Re: Fwd: Printer on fire", Cc="Bob <bob@example.org>"))
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    issue = read_issue(repo, name)
    assert ("Printer on fire", "It is on fire.", "<m1@example.org>") == (
        issue.title,
        issue.description,
        issue.message_id,
    )
    assert (["Alice <alice@example.org>"], ["Bob <bob@example.org>"]) == (
        issue.reporters,
        issue.carbons,
    )
    assert (
        f"Alice <alice@example.org>|repo <issues@tracker.localhost>|new {name[:7]}: Printer on fire"
        == git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", "issues").strip()
    )
    mails = {m["Auto-Submitted"]: m for m in outbox(repo)}
    assert (["auto-generated", "auto-replied"], "bob@example.org") == (sorted(mails), mails["auto-generated"]["To"].addresses[0].addr_spec)
    ack = mails["auto-replied"]
    assert (
        f"[repo #{name[:7]}] Printer on fire",
        "<m1@example.org>",
        "auto-replied",
        "alice@example.org",
    ) == (ack["Subject"], ack["In-Reply-To"], ack["Auto-Submitted"], ack["To"])
    assert f"issues+{name[:7]}@tracker.localhost" in ack.get_content()
    assert [] == list((spool_path(repo) / "incoming" / "new").iterdir())
    assert 1 == len(list((spool_path(repo) / "processed").iterdir()))
    git(repo, "fsck", "--strict", "--no-dangling")


def test_mail_without_message_id_delivered_twice_by_the_mta_is_one_issue(repo: Path) -> None:
    """No Message-ID: the hash that stands for one ignores the trace fields an MTA adds on top, so
    a second delivery of the same mail (new Received and Delivered-To lines) changes nothing."""
    body = b"From: Ann <ann@example.org>\nTo: issues@tracker.localhost\nSubject: No id\n\nNo Message-ID here.\n"
    first = b"Return-Path: <ann@example.org>\nReceived: from a by b; Mon, 1 Jan 2024 10:00:00 +0000\n" + body
    again = (b"Delivered-To: issues@tracker.localhost\nReceived: from a by b\n\tid 2; Mon, 1 Jan 2024 10:05:00 +0000\n"
             b"Received: from c by a; Mon, 1 Jan 2024 09:59:00 +0000\n" + body)
    assert [0, 0] == [deliver(repo, raw).returncode for raw in (first, again)]
    [name] = read_names(repo)
    assert (1, True) == (len(git(repo, "log", "--format=%s", "issues").splitlines()) - 1,
                         read_issue(repo, name).message_id.endswith("@mailtrack.invalid>"))


def test_dry_run_writes_nothing(repo: Path) -> None:
    """--dry-run prints the parse, the route, the commands, the fields and the planned commit and
    replies; not a byte changes under .git (no spool, no index, no object)."""
    def files() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted((repo / ".git").rglob("*")) if p.is_file()}

    assert 0 == deliver(repo, make_mail(message_id="<first@example.org>")).returncode  # the spool and index exist
    before = files()
    r = deliver(repo, make_mail(body="Severity: minor\n\nIt is on fire."), "--dry-run")
    out = r.stdout.decode()
    assert (0, before) == (r.returncode, files())
    assert "Route:      new (its name comes from the time of receipt; no issue named by address, thread or subject)\n" in out
    assert "  > Severity: minor\n    severity: major -> minor\n" in out
    assert "Would:      created: new " in out and "    severity: minor\n" in out and "    carbons: \n" not in out
    assert "reply reply-ack.txt to alice@example.org" in out


def test_dry_run_names_the_stage_that_decided(repo: Path) -> None:
    """--dry-run says which pipeline stage decided: a duplicate at route, a new issue at change."""
    assert 0 == deliver(repo, make_mail(message_id="<known@example.org>")).returncode
    again = deliver(repo, make_mail(message_id="<known@example.org>"), "--dry-run").stdout.decode()
    fresh = deliver(repo, make_mail(message_id="<fresh@example.org>"), "--dry-run").stdout.decode()
    assert ("Would:      duplicate", "Decided in: route\n") == (again.splitlines()[-2][:21], again.splitlines()[-1] + "\n")
    assert "Decided in: change\n" in fresh


def test_dry_run_says_the_name_is_not_final_and_shows_the_text(repo: Path) -> None:
    """--dry-run of a new issue: the Route line says its name comes from the time of receipt, and a
    Text block shows the first eight lines of the description, then how many more there are."""
    body = "Severity: minor\n\n" + "\n".join(f"line {i} of the report" for i in range(1, 11)) + "\n"
    out = deliver(repo, make_mail(body=body), "--dry-run").stdout.decode().splitlines()
    route = out.index("Route:      new (its name comes from the time of receipt; no issue named by address, thread or subject)")
    text = out.index("Text:")
    expected = ["Text:", *[f"  line {i} of the report" for i in range(1, 9)], "  (2 more line(s))"]
    assert (True, expected) == (route < text, out[text:text + 10])


def test_dry_run_of_a_reply_shows_the_comment_text(repo: Path) -> None:
    """--dry-run of a reply: the Text block is the comment's text, without the quote."""
    assert 0 == deliver(repo, make_mail(message_id="<first@example.org>")).returncode
    reply = make_mail(message_id="<r@example.org>", In_Reply_To="<first@example.org>",
                      body="Still burning.\nNow the desk too.\n\nOn Mon, Alice wrote:\n> It is on fire.\n")
    out = deliver(repo, reply, "--dry-run").stdout.decode()
    assert "\nText:\n  Still burning.\n  Now the desk too.\nWould:      commented: " in out, out


MAIL = b"From: a@example.org\nTo: issues@tracker.localhost\nSubject: s\nMessage-ID: <d1@example.org>\n\nbody\n"


def test_exit_75_when_the_mail_cannot_be_kept(repo: Path, tmp_path: Path) -> None:
    """When the spool cannot be written, deliver exits 75 so the MTA retries; nothing is committed."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nspool = "{blocker}/spool"\n')
    before = git(repo, "rev-parse", "issues")
    r = mailtrack("deliver", repo=repo, config=config, input=make_mail())
    assert (75, before) == (r.returncode, git(repo, "rev-parse", "issues"))
    assert b"cannot use the spool" in r.stderr


@pytest.mark.parametrize("problem", ["no repository", "bad toml", "bad value", "missing config"])
def test_a_config_or_repository_error_before_keeping_is_a_tempfail(tmp_path: Path, problem: str) -> None:
    """A broken repository or configuration exits 75 (the MTA retries, not bounces) with one line on stderr."""
    config = tmp_path / "mailtrack.toml"
    config.write_text({"bad toml": "[gateway\n", "bad value": "[[listen]]\nprotocol = \"x400\"\n"}.get(problem, ""))
    args = {
        "no repository": ["--repo", str(tmp_path / "nonexistent")],
        "bad toml": ["--repo", str(tmp_path), "--config", str(config)],
        "bad value": ["--repo", str(tmp_path), "--config", str(config)],
        "missing config": ["--repo", str(tmp_path), "--config", str(tmp_path / "missing.toml")],
    }[problem]
    r = mailtrack(*args, "deliver", input=MAIL, text=True, cwd=tmp_path)
    lines = r.stderr.splitlines()
    assert (75, 1) == (r.returncode, len(lines)), r.stderr
    assert lines[0].startswith("mailtrack: mail not kept: ")


def test_usage_errors_are_sysexits(repo: Path) -> None:
    """An empty stdin is EX_DATAERR, a bad option EX_USAGE; a repository deliver cannot use is
    EX_TEMPFAIL (the MTA keeps the mail and retries), while `process` calls it EX_CONFIG."""
    assert 65 == deliver(repo, b"").returncode
    assert 64 == mailtrack("deliver", "--bogus").returncode
    bad = mailtrack("deliver", repo=Path("/nonexistent"), input=b"x")
    assert (75, True) == (bad.returncode, b"/nonexistent" in bad.stderr)
    process = mailtrack("process", repo=Path("/nonexistent"))
    assert 78 == process.returncode


def test_usage_errors_stay_64() -> None:
    """A bad option is still EX_USAGE: a mistake in the MTA's command line, not in the mail."""
    assert 64 == mailtrack("deliver", "--bogus", input=MAIL, text=True).returncode
