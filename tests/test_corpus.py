"""The mail corpus through the whole gateway: what each real client's mail leaves on the branch, read with the real git."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.corpus import EXPECTED, MAIL
from helpers.repos import git, git_bytes, make_gateway
from mailtrack.config import GatewayConfig
from mailtrack.mail.parse import parse, subject_tag
from mailtrack.tracker.model import Comment, Issue
from mailtrack.worker.pipeline import Gateway


@pytest.fixture
def gateway(repo: Path) -> Iterator[Gateway]:
    """The gateway of project "mailtrack" (the corpus mails' subject tag), otherwise as shipped."""
    gw = make_gateway(repo, project="mailtrack", reply_rate_limit=GatewayConfig().reply_rate_limit)
    yield gw
    gw.close()
    gw.store.close()


def seed(gw: Gateway, message_id: str) -> str:
    """An issue opened by the mail that a corpus reply answers; returns its name."""
    raw = (f"From: Bob Smith <bob@example.org>\nTo: issues@tracker.localhost\nMessage-ID: {message_id}\n"
           "Subject: Crash when the config file is empty\n\nIt crashes.\n").encode()
    out = gw.handle(raw)
    assert "created" == out.action, out.reason
    return out.issue


def branch_files(repo: Path, name: str) -> list[str]:
    return git(repo, "ls-tree", "-z", "--name-only", f"issues:{name[:2]}/{name[2:]}").split("\0")[:-1]


def show(repo: Path, name: str, filename: str) -> bytes:
    return git_bytes(repo, "show", f"issues:{name[:2]}/{name[2:]}/{filename}")


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_corpus_mail_on_the_branch(repo: Path, gateway: Gateway, filename: str) -> None:
    """Machine mail leaves the branch as it was; a reply is a comment with the sender's own words and
    its attachments on the issue it answers; any other mail opens an issue titled by its subject."""
    raw = (MAIL / filename).read_bytes()
    mail, expect = parse(raw), EXPECTED[filename]
    thread = [*mail.references, mail.in_reply_to]
    seeded = seed(gateway, next(m for m in thread if m)) if any(thread) and not expect.machine else ""
    tip = git(repo, "rev-parse", "issues").strip()
    out = gateway.handle(raw)
    if expect.machine or not expect.from_addr:
        assert (tip, out.action) == (git(repo, "rev-parse", "issues").strip(), "dropped" if expect.machine else "held")
        return
    if seeded:
        assert ("commented", seeded) == (out.action, out.issue), out.reason
        [comment] = [f for f in branch_files(repo, seeded) if f.startswith("comment_")]
        text = Comment.from_bytes(show(repo, seeded, comment), comment).text
        if filename == "pseudo_headers.eml":  # its top lines are commands, refused to a stranger: the text still lands
            issue = Issue.from_bytes(show(repo, seeded, "issue.xml"), seeded)
            assert ("new", []) == (issue.status, issue.tags)
            assert text.startswith("Fixed by falling back to the defaults")
        else:
            kept = tuple(f for f in expect.reply_has if f in text)
            assert (expect.reply_has, ()) == (kept, tuple(f for f in expect.reply_lacks if f in text))
        attachments = [f for f in branch_files(repo, seeded) if f not in ("issue.xml", comment)]
    elif subject_tag(mail.subject, "mailtrack"):  # names an issue this tracker does not have: an error reply, no new issue
        assert (tip, "rejected") == (git(repo, "rev-parse", "issues").strip(), out.action)
        return
    else:
        assert "created" == out.action, out.reason
        issue = Issue.from_bytes(show(repo, out.issue, "issue.xml"), out.issue)
        assert (True, mail.message_id) == (bool(issue.title) and issue.title in mail.subject, issue.message_id)
        attachments = [f for f in branch_files(repo, out.issue) if f != "issue.xml" and not f.startswith("comment_")]
    assert sorted(expect.attachments) == sorted(attachments)
    git(repo, "fsck", "--strict", "--no-dangling")
