"""Mail loops through real `mailtrack deliver`: our own notification passed back by a mailing list
that rewrites From and strips our headers, and two auto-responders (no auto-reply headers) that
answer each other's notifications through an issue."""

from __future__ import annotations

import email
import json
import subprocess
from email import policy
from email.message import EmailMessage
from pathlib import Path

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, spool_path, text_of
from helpers.repos import git, read_comments, read_names
from helpers.tracker import ANYONES_CC
from mailtrack.mail.ids import is_our_message_id, issue_of_ours, new_message_id, our_message_id, reply_message_id
from mailtrack.queue.ratelimit import RateLimiter


def deliver_with_cc(repo: Path, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    """`mailtrack deliver` of a stranger's first mail whose Cc the test is about: taken (access.cc_from)."""
    (repo / "mailtrack.toml").write_text(ANYONES_CC)
    return mailtrack("deliver", repo=repo, config=repo / "mailtrack.toml", input=raw)

LIST = "devs@lists.example.org"


def outgoing(repo: Path) -> list[tuple[str, EmailMessage]]:
    """(recipient, mail) of each mail in the outbox, oldest first."""
    out = []
    for path in sorted((spool_path(repo) / "outbox" / "new").iterdir()):
        envelope = json.loads((spool_path(repo) / "outbox" / "env" / f"{path.name}.json").read_text())
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        out += [(rcpt, msg) for rcpt in envelope["recipients"]]
    return out


def as_a_list_passes_it_on(msg: EmailMessage) -> bytes:
    """Our mail as a list sends it back: From rewritten, only the usual header fields and the text kept."""
    keep = ("To", "Subject", "Date", "Message-ID", "In-Reply-To", "References")
    head = "".join(f"{name}: {msg[name]}\n" for name in keep if msg[name] is not None)
    text = text_of(msg)
    return (f'From: "Alice via Devs" <{LIST}>\nReply-To: {LIST}\n{head}MIME-Version: 1.0\n'
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}").encode()


def test_our_message_ids_are_known_as_ours() -> None:
    """Every kind of Message-ID we make is ours; a stranger's, or one merely mentioning us, is not."""
    issue = "ab" * 20
    ours = [our_message_id(issue, "issue", "x.test"), reply_message_id(issue, "ack", "<m@y>", "x.test"),
            new_message_id("x.test")]
    theirs = ["<m1@example.org>", "<mailtrack@example.org>", "<x.mailtrack.y@z>", "mailtrack.a@b", ""]
    assert ([True] * 3, [False] * 5) == ([is_our_message_id(m) for m in ours], [is_our_message_id(m) for m in theirs])
    assert (issue, None) == (issue_of_ours(ours[0]), issue_of_ours(ours[2]))


def test_our_notification_passed_back_by_a_list_is_a_loop(repo: Path) -> None:
    """The list is on an issue's Cc; our notification to it comes back with From rewritten and our
    headers gone: it is dropped as a loop by its Message-ID (before: a comment, and a notification
    again), and nothing is queued for it."""
    assert 0 == deliver_with_cc(repo, make_mail(Cc=LIST)).returncode
    [name] = read_names(repo)
    [notification] = [m for rcpt, m in outgoing(repo) if rcpt == LIST]
    tip, queued = git(repo, "rev-parse", "issues"), len(outgoing(repo))
    back = deliver(repo, as_a_list_passes_it_on(notification), "--verbose")
    assert (0, tip, queued, []) == (back.returncode, git(repo, "rev-parse", "issues"), len(outgoing(repo)),
                                    read_comments(repo, name))
    assert f"loop: its Message-ID {str(notification['Message-ID']).strip()} is one we made" in back.stderr.decode()


def test_our_reply_about_no_issue_passed_back_is_a_loop(repo: Path) -> None:
    """A reply of ours that names no issue (a refusal to an unknown issue) has a Message-ID of ours
    too: passed back without our headers, it makes no new issue."""
    assert 0 == deliver(repo, make_mail(subject="[repo #deadbeef] about what?", to="issues+deadbeef@tracker.localhost")).returncode
    [(_, refusal)] = outgoing(repo)
    assert True is is_our_message_id(str(refusal["Message-ID"]))
    back = deliver(repo, as_a_list_passes_it_on(refusal), "--verbose")
    assert (0, [], 1) == (back.returncode, read_names(repo), len(outgoing(repo)))
    assert "is one we made" in back.stderr.decode()


def test_two_auto_responders_stop_answering_each_other(repo: Path) -> None:
    """Two auto-responders with no auto-reply headers, reporter and Cc of one issue, each answering
    every mail it gets from us (the README's Reply-To). With notify.rate_limit = 3 and
    reply_rate_limit = 2 the ping-pong ends by itself: every answer is on the branch, and each bot
    caused at most 3 notices and got at most 2 replies (before: no end; the test stops it at 60)."""
    config = repo / "mt.toml"
    config.write_text("[gateway]\nreply_rate_limit = 2\n[notify]\nrate_limit = 3\n")
    bots = ["bot-a@example.org", "bot-b@example.org"]
    assert 0 == deliver(repo, make_mail(frm=bots[0], Cc=bots[1], message_id="<start@example.org>"),
                        "--config", str(config)).returncode
    answered: set[str] = set()
    rounds = 0
    while rounds < 60:
        todo = [(rcpt, m) for rcpt, m in outgoing(repo) if f"{rcpt} {m['Message-ID']}" not in answered and rcpt in bots]
        if not todo:
            break
        for rcpt, msg in todo:
            answered.add(f"{rcpt} {msg['Message-ID']}")
            rounds += 1
            answer = make_mail(subject=f"Re: {msg['Subject']}", body="I am away; your mail matters to me.\n", frm=rcpt,
                               to=str(msg["Reply-To"] or "issues@tracker.localhost"), message_id=f"<away{rounds}@example.org>",
                               In_Reply_To=str(msg["Message-ID"]))
            assert 0 == deliver(repo, answer, "--config", str(config)).returncode
    [name] = read_names(repo)
    sent = outgoing(repo)
    notices = {bot: [m for rcpt, m in sent if rcpt != bot and m["Auto-Submitted"] == "auto-generated"
                     and m["From"].addresses[0].display_name.startswith(f"{bot.partition('@')[0]} via ")] for bot in bots}
    replies = {bot: [m for rcpt, m in sent if rcpt == bot and m["Auto-Submitted"] == "auto-replied"] for bot in bots}
    assert rounds < 60, "the auto-responders never stopped"
    assert (rounds, [True, True], [True, True]) == (
        len(read_comments(repo, name)), [len(notices[b]) <= 3 for b in bots], [len(replies[b]) <= 2 for b in bots])


def test_a_notice_asked_about_again_gets_the_same_answer(tmp_path: Path) -> None:
    """RateLimiter.allow_once: limit 2 per key; a token it allowed is allowed again (a range resumed
    after a crash), a third token is refused, and the window frees the key again."""
    limiter = RateLimiter(tmp_path / "rate.sqlite")
    try:
        answers = [limiter.allow_once("i a@x", token, 2, 3600, now=100.0) for token in ("c1", "c2", "c1", "c3")]
        other_key = limiter.allow_once("i b@x", "c4", 2, 3600, now=100.0)
        later = limiter.allow_once("i a@x", "c3", 2, 3600, now=4000.0)
    finally:
        limiter.close()
    assert ([True, True, True, False], True, True) == (answers, other_key, later)
