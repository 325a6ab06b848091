"""Mail in: from raw bytes to one commit on the branch, or a kept, explained rejection."""

from __future__ import annotations

import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.cli import mailtrack
from helpers.mail import make_mail, outbox, spool_path
from helpers.repos import DATA, default_spool, git, read_comments, read_issue, read_names
from mailtrack.config import Config, GatewayConfig
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store
from mailtrack.worker import runner
from mailtrack.worker.pipeline import Gateway


def test_reply_by_in_reply_to_becomes_trimmed_comment(gateway: Gateway, repo: Path) -> None:
    """A reply threaded under the issue's mail becomes a comment, quote trimmed, In-Reply-To kept."""
    gateway.handle(make_mail())
    reply = make_mail(
        subject="Re: Printer on fire",
        message_id="<m2@example.org>",
        In_Reply_To="<m1@example.org>",
        frm="Bob <bob@example.org>",
        body="Have you tried water?\n\nOn Mon, 1 Jan 2024, Alice <alice@example.org> wrote:\n> It is on fire.\n",
    )
    out = gateway.handle(reply)
    [name] = read_names(repo)
    [c] = read_comments(repo, name)
    assert ("commented", "Have you tried water?", "<m2@example.org>", "<m1@example.org>") == (
        out.action,
        c.text,
        c.message_id,
        c.in_reply_to,
    )
    assert (
        f"comment {name[:7]} by bob@example.org"
        == git(repo, "log", "-1", "--format=%s", "issues").strip()
    )


@pytest.mark.parametrize("how", ["plus-address", "our-message-id", "subject-tag", "references"])
def test_every_route_to_an_issue(gateway: Gateway, repo: Path, how: str) -> None:
    """The recipient address, our own Message-ID, the subject tag and References all find the issue."""
    gateway.handle(make_mail())
    [name] = read_names(repo)
    kw = {
        "plus-address": {"to": f"issues+{name[:7]}@tracker.localhost", "subject": "something else"},
        "our-message-id": {
            "In_Reply_To": f"<mailtrack.{name}.comment.abc@tracker.localhost>",
            "subject": "Re: hm",
        },
        "subject-tag": {"subject": f"AW: Re: [list] RE: [proj #{name[:7]}] Printer on fire"},
        "references": {
            "References": "<other@x.org> <m1@example.org> <more@y.org>",
            "subject": "Re: hm",
        },
    }[how]
    out = gateway.handle(make_mail(message_id="<m2@example.org>", body="more\n", **kw))  # type: ignore[arg-type]
    assert ("commented", name) == (out.action, out.issue)
    assert ["more"] == [c.text for c in read_comments(repo, name)]


@pytest.mark.parametrize(
    "kw",
    [
        {"subject": "Re: [proj #deadbeef] gone"},
        {"to": "issues+deadbee@tracker.localhost"},
        {"In_Reply_To": "<mailtrack." + "de" * 20 + ".issue@tracker.localhost>"},
    ],
)
def test_reply_to_unknown_issue_gets_error_not_new_issue(
    gateway: Gateway, repo: Path, kw: dict[str, str]
) -> None:
    """A mail naming an issue we do not have makes no issue; the sender gets an error with the mail attached."""
    before = git(repo, "rev-parse", "issues")
    out = gateway.handle(make_mail(**kw))  # type: ignore[arg-type]
    assert ("rejected", before) == (out.action, git(repo, "rev-parse", "issues"))
    [reply] = outbox(repo)
    assert reply["Subject"].startswith("Not processed: ")
    body = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "has no such issue" in body and "forged" in body
    [attached] = [p for p in reply.iter_attachments()]
    assert "message/rfc822" == attached.get_content_type()


def test_same_message_id_twice_changes_nothing(gateway: Gateway, repo: Path) -> None:
    """A mail whose Message-ID is on the branch already is a no-op (MTA retry, IMAP refetch)."""
    gateway.handle(make_mail())
    gateway.handle(
        make_mail(message_id="<m2@example.org>", In_Reply_To="<m1@example.org>", body="c\n")
    )
    tip = git(repo, "rev-parse", "issues")
    assert ["duplicate", "duplicate"] == [
        gateway.handle(make_mail()).action,
        gateway.handle(
            make_mail(message_id="<m2@example.org>", In_Reply_To="<m1@example.org>", body="c\n")
        ).action,
    ]
    assert tip == git(repo, "rev-parse", "issues")


def test_mail_without_message_id_gets_a_stable_one(gateway: Gateway, repo: Path) -> None:
    """Without a Message-ID the same bytes get the same made-up one, so a retry is still a no-op."""
    raw = make_mail(message_id=None)
    first, second = gateway.handle(raw), gateway.handle(raw)
    assert ("created", "duplicate") == (first.action, second.action)
    assert first.message_id.endswith("@mailtrack.invalid>")
    assert 1 == len(read_names(repo))


def test_bounce_and_auto_reply_make_nothing(gateway: Gateway, repo: Path) -> None:
    """Machine mail never creates an issue and never gets a reply."""
    before = git(repo, "rev-parse", "issues")
    outs = [
        gateway.handle(make_mail(frm="MAILER-DAEMON@example.org", message_id="<b1@x>")),
        gateway.handle(make_mail(Auto_Submitted="auto-replied", message_id="<b2@x>")),
        gateway.handle(make_mail(subject="Out of Office: back Monday", message_id="<b3@x>")),
        gateway.handle(make_mail(X_Mailtrack_Loop="issues@tracker.localhost", message_id="<b4@x>")),
    ]
    assert ["dropped"] * 4 == [o.action for o in outs]
    assert (before, []) == (git(repo, "rev-parse", "issues"), outbox(repo))


def test_machine_mail_kept_when_configured(repo: Path) -> None:
    """machine_mail = keep puts a bounce in failed with the reason."""
    with Store.open(repo) as store:
        spool = Spool(default_spool(store))
        gw = Gateway(Config(gateway=GatewayConfig(machine_mail="keep")), store, spool)
        spool.accept(make_mail(frm="MAILER-DAEMON@example.org"))
        runner.drain(gw)
        gw.close()
        [(spool_id, reason)] = spool.incoming.failures()
    assert reason.startswith("machine mail: ")


def test_attachments_and_html_only_mail(gateway: Gateway, repo: Path) -> None:
    """A new issue's attachments land in its directory, listed by a comment; hostile names are made safe."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = (
        "a@example.org",
        "issues@tracker.localhost",
        "Logs",
        "<att@x>",
    )
    msg.set_content("see attached\n")
    msg.add_attachment(
        b"\x00log", maintype="application", subtype="octet-stream", filename="../../etc/passwd"
    )
    msg.add_attachment(b"<issue/>", maintype="text", subtype="xml", filename="issue.xml")
    out = gateway.handle(msg.as_bytes())
    [c] = read_comments(repo, out.issue)
    assert 2 == len(c.attachments)
    assert all("/" not in a and a != "issue.xml" and ".." not in a for a in c.attachments)
    files = git(repo, "ls-tree", "--name-only", f"issues:{out.issue[:2]}/{out.issue[2:]}").split()
    assert set(c.attachments) < set(files)
    git(repo, "fsck", "--strict", "--no-dangling")


CRASH = """
import os, sys
from mailtrack.app import mailtrack as serve
from mailtrack.{module} import {cls}
real = {cls}.{method}
def crash(*a, **k):
    {before}
    os._exit(9)
{cls}.{method} = crash
sys.exit(serve.main(["--repo", sys.argv[1], "process"]))
"""


@pytest.mark.parametrize(
    "module,cls,method,before",
    [
        ("worker.pipeline", "Gateway", "handle", "pass"),  # after spooling, before anything else
        ("tracker.store", "Store", "_move", "pass"),  # mid-commit: objects written, ref not moved (the one ref move, batched or not)
        ("tracker.store", "Store", "_move", "real(*a, **k)"),  # committed, the mail not yet finished
        ("queue.spool", "Queue", "done", "pass"),  # before finishing
    ],
)
def test_crash_at_any_point_lands_exactly_once(
    repo: Path, module: str, cls: str, method: str, before: str
) -> None:
    """Kill the processing at several points; on restart every mail lands exactly once."""
    with Store.open(repo) as store:
        spool = Spool(default_spool(store))
        for i in range(3):
            spool.accept(make_mail(subject=f"Crash {i}", message_id=f"<crash{i}@x>"))
    code = CRASH.format(module=module, cls=cls, method=method, before=before)
    r = subprocess.run([sys.executable, "-c", code, str(repo)], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    assert 9 == r.returncode, r.stderr.decode()
    r = mailtrack("process", repo=repo)
    assert 0 == r.returncode, r.stderr.decode()
    titles = sorted(read_issue(repo, n).title for n in read_names(repo))
    assert ["Crash 0", "Crash 1", "Crash 2"] == titles
    counts = Spool(spool_path(repo)).counts()
    assert (0, 0, 0, 3) == (
        counts["incoming/new"],
        counts["incoming/cur"],
        counts["failed"],
        counts["processed"],
    )
    git(repo, "fsck", "--strict", "--no-dangling") if before != "pass" or method != "_move" else git(
        repo, "fsck", "--strict"
    )


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.sampled_from(sorted((DATA / "mail").glob("*.eml")) or [None]),
    flips=mutations,
    cut=st.integers(0, 4000),
    noise=st.binary(max_size=200),
)
def test_any_mail_lands_or_is_kept_with_a_reason(
    gateway: Gateway,
    repo: Path,
    seed: Path | None,
    flips: list[tuple[int, int]],
    cut: int,
    noise: bytes,
) -> None:
    """Generated and mutated mails: never a crash; each ends on the branch, dropped as machine mail, in failed, or waiting."""
    raw = bytearray(seed.read_bytes() if seed else make_mail())
    for pos, byte in flips:
        if raw:
            raw[pos % len(raw)] = byte
    raw = raw[: max(cut, 200)] + noise
    spool = gateway.spool
    spool_id = spool.accept(bytes(raw))
    claim = spool.incoming.claim_id(spool_id)
    assert claim is not None
    out = runner.work(gateway, claim)
    assert out is not None, spool.incoming.failures()
    if out.action in ("created", "commented", "duplicate"):
        with Store.open(repo) as store:
            assert gateway.index.lookup(store.snapshot(), out.message_id) is not None
    elif out.action == "held":
        assert spool_id in [i for i, _ in spool.incoming.failures()]
    elif out.action == "waiting":  # a reply to a mail we have not seen, kept until its parent comes
        assert spool_id in gateway.waiting.notes()
    else:
        assert out.action in ("dropped", "rejected")


def test_reply_to_a_short_address_that_became_ambiguous_goes_by_its_thread(gateway: Gateway, repo: Path) -> None:
    """issues+<7 hex>@ from an old notification, once a second issue shares those 7 hex: the
    reply's In-Reply-To settles which issue it is, instead of an error reply."""
    from datetime import UTC, datetime

    from mailtrack.tracker.model import Person, make_name

    when, bob = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), Person("Bob", "bob@example.org")
    seen: dict[str, str] = {}
    n = 0
    while (title := f"Crash {n}") and (prefix := make_name(when, bob, title)[:7]) not in seen:
        seen[prefix] = title
        n += 1
    names = []
    for i, subject in enumerate((seen[prefix], title)):
        raw = f"From: Bob <bob@example.org>\nTo: issues@tracker.localhost\nMessage-ID: <open{i}@example.org>\nSubject: {subject}\n\nIt crashes.\n"
        out = gateway.handle(raw.encode(), received=when)
        assert "created" == out.action
        names.append(out.issue)
    assert names[0][:7] == names[1][:7] == prefix
    reply = (f"From: Bob <bob@example.org>\nTo: issues+{prefix}@tracker.localhost\nMessage-ID: <reply@example.org>\n"
             f"In-Reply-To: <open1@example.org>\nSubject: Re: {title}\n\nStill crashing.\n")
    out = gateway.handle(reply.encode())
    assert ("commented", names[1]) == (out.action, out.issue)
    assert ["Still crashing."] == [c.text for c in read_comments(repo, names[1])]


def test_reply_to_our_mail_about_an_issue_we_lack_names_it_in_the_error(gateway: Gateway, repo: Path) -> None:
    """A reply to one of our notifications for an issue this branch does not have: no new issue, and
    the error reply names the issue the notification was about."""
    ghost = "f00d" + "e" * 36
    tip = git(repo, "rev-parse", "issues")
    out = gateway.handle(make_mail(subject="Re: [proj #f00deee] Gone", In_Reply_To=f"<mailtrack.{ghost}.issue@tracker.localhost>"))
    [reply] = outbox(repo)
    assert ("rejected", tip) == (out.action, git(repo, "rev-parse", "issues"))
    text = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Your mail names issue f00deee, and proj has no such issue" in " ".join(text.split())
