"""Mail in: from raw bytes to one commit on the branch, or a kept, explained rejection."""

from __future__ import annotations

import email
import mailbox
import subprocess
import sys
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, git, read_comments, read_issue, read_names
from mailtrack.config import Config, GatewayConfig
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store
from mailtrack.worker import runner
from mailtrack.worker.pipeline import Gateway, default_spool


def make_mail(
    subject: str = "Printer on fire",
    body: str = "It is on fire.\n",
    frm: str = "Alice <alice@example.org>",
    to: str = "issues@localhost",
    message_id: str | None = "<m1@example.org>",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg.as_bytes()


def outbox(repo: Path) -> list[email.message.EmailMessage]:
    new = default_spool_path(repo) / "outbox" / "new"
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(new.iterdir())
    ]  # type: ignore[misc]


def default_spool_path(repo: Path) -> Path:
    return repo / ".git" / "mailtrack" / "spool"


def deliver(repo: Path, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "deliver", *args],
        input=raw,
        capture_output=True,
        check=False,
    )


def test_deliver_new_issue_end_to_end(repo: Path) -> None:
    """`mailtrack deliver` turns a mail into one commit by the sender, queues a threaded acknowledgement
    to the sender and a notification to the Cc'd person (the first mail of a fresh gateway too)."""
    r = deliver(repo, make_mail(subject="Re: Fwd: Printer on fire", Cc="Bob <bob@example.org>"))
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
        f"Alice <alice@example.org>|repo <issues@localhost>|new {name[:7]}: Printer on fire"
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
    assert f"issues+{name[:7]}@localhost" in ack.get_content()
    assert [] == list((default_spool_path(repo) / "incoming" / "new").iterdir())
    assert 1 == len(list((default_spool_path(repo) / "processed").iterdir()))
    git(repo, "fsck", "--strict", "--no-dangling")


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
        "plus-address": {"to": f"issues+{name[:7]}@localhost", "subject": "something else"},
        "our-message-id": {
            "In_Reply_To": f"<mailtrack.{name}.comment.abc@localhost>",
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
        {"to": "issues+deadbee@localhost"},
        {"In_Reply_To": "<mailtrack." + "de" * 20 + ".issue@localhost>"},
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
        gateway.handle(make_mail(X_Mailtrack_Loop="issues@localhost", message_id="<b4@x>")),
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
        [(spool_id, reason)] = spool.failures()
    assert reason.startswith("machine mail: ")


def test_attachments_and_html_only_mail(gateway: Gateway, repo: Path) -> None:
    """A new issue's attachments land in its directory, listed by a comment; hostile names are made safe."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = (
        "a@example.org",
        "issues@localhost",
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
    assert "  > Severity: minor\n    severity: blocker -> minor\n" in out
    assert "Would:      created: new " in out and "    severity: minor\n" in out and "    carbons: \n" not in out
    assert "reply reply-ack.txt to alice@example.org" in out


def test_exit_75_when_the_mail_cannot_be_kept(repo: Path, tmp_path: Path) -> None:
    """When the spool cannot be written, deliver exits 75 so the MTA retries; nothing is committed."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nspool = "{blocker}/spool"\n')
    before = git(repo, "rev-parse", "issues")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailtrack.app.mailtrack",
            "--repo",
            str(repo),
            "--config",
            str(config),
            "deliver",
        ],
        input=make_mail(),
        capture_output=True,
        check=False,
    )
    assert (75, before) == (r.returncode, git(repo, "rev-parse", "issues"))
    assert b"cannot use the spool" in r.stderr


def test_usage_errors_are_sysexits(repo: Path) -> None:
    """An empty stdin is EX_DATAERR, a bad option EX_USAGE; a repository deliver cannot use is
    EX_TEMPFAIL (the MTA keeps the mail and retries), while `process` calls it EX_CONFIG."""
    assert 65 == deliver(repo, b"").returncode
    assert (
        64
        == subprocess.run(
            [sys.executable, "-m", "mailtrack.app.mailtrack", "deliver", "--bogus"],
            capture_output=True,
            check=False,
        ).returncode
    )
    bad = subprocess.run(
        [sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", "/nonexistent", "deliver"],
        input=b"x",
        capture_output=True,
        check=False,
    )
    assert (75, True) == (bad.returncode, b"/nonexistent" in bad.stderr)
    process = subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", "/nonexistent", "process"],
                             capture_output=True, check=False)
    assert 78 == process.returncode


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
        ("tracker.store", "Store", "move", "pass"),  # mid-commit: objects written, ref not moved
        ("tracker.store", "Store", "move", "real(*a, **k)"),  # committed, the mail not yet finished
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
    r = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, check=False)
    assert 9 == r.returncode, r.stderr.decode()
    r = subprocess.run(
        [sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "process"],
        capture_output=True,
        check=False,
    )
    assert 0 == r.returncode, r.stderr.decode()
    titles = sorted(read_issue(repo, n).title for n in read_names(repo))
    assert ["Crash 0", "Crash 1", "Crash 2"] == titles
    counts = Spool(default_spool_path(repo)).counts()
    assert (0, 0, 0, 3) == (
        counts["incoming/new"],
        counts["incoming/cur"],
        counts["failed"],
        counts["processed"],
    )
    git(repo, "fsck", "--strict", "--no-dangling") if before != "pass" or method != "move" else git(
        repo, "fsck", "--strict"
    )


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
    run = [
        sys.executable,
        "-m",
        "mailtrack.app.mailtrack",
        "--repo",
        str(repo),
        "import",
        str(tmp_path / "archive.mbox"),
    ]
    r = subprocess.run(run, capture_output=True, check=False)
    assert (0, "commented 1, created 2\n") == (r.returncode, r.stdout.decode())
    assert b"import: 3/3 (100%)" in r.stderr
    tip = git(repo, "rev-parse", "issues")
    r = subprocess.run(run, capture_output=True, check=False)
    assert ("duplicate 3\n", tip) == (r.stdout.decode(), git(repo, "rev-parse", "issues"))
    second = [
        read_issue(repo, n) for n in read_names(repo) if read_issue(repo, n).title == "Second"
    ][0]
    assert "20180101T100000Z" == second.get("created")
    maildir = mailbox.Maildir(str(tmp_path / "md"))
    maildir.add(make_mail(subject="From a Maildir", message_id="<md1@x>"))
    r = subprocess.run(run[:-1] + [str(tmp_path / "md")], capture_output=True, check=False)
    assert "created 1\n" == r.stdout.decode()


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
    """Generated and mutated mails: never a crash; each ends on the branch, dropped as machine mail, or in failed."""
    raw = bytearray(seed.read_bytes() if seed else make_mail())
    for pos, byte in flips:
        if raw:
            raw[pos % len(raw)] = byte
    raw = raw[: max(cut, 200)] + noise
    spool = gateway.spool
    spool_id = spool.accept(bytes(raw))
    claim = spool.claim_id(spool_id)
    assert claim is not None
    out = runner.work(gateway, claim)
    assert out is not None, spool.failures()
    if out.action in ("created", "commented", "duplicate"):
        with Store.open(repo) as store:
            assert gateway.index.lookup(store.snapshot(), out.message_id) is not None
    elif out.action == "held":
        assert spool_id in [i for i, _ in spool.failures()]
    else:
        assert out.action in ("dropped", "rejected")


def test_status_shows_failures_and_requeue_puts_them_back(repo: Path) -> None:
    """A mail held for a reason shows in `mailtrack status`; `mailtrack requeue ID` puts it back in the queue."""
    r = deliver(repo, b"Subject: no sender at all\nMessage-ID: <nofrom@x>\n\nbody\n")
    assert 0 == r.returncode
    status = subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "status"], capture_output=True, text=True, check=True).stdout
    [line] = [ln for ln in status.splitlines() if "the mail has no sender address" in ln]
    spool_id = line.split()[0]
    assert "  failed         1" in status
    r2 = subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "requeue", spool_id],
                        capture_output=True, text=True, check=False)
    assert (0, f"requeued {spool_id}\n") == (r2.returncode, r2.stdout)
    counts = Spool(default_spool_path(repo)).counts()
    assert (1, 0) == (counts["incoming/new"], counts["failed"])
    bad = subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), "requeue", "nonsense"],
                         capture_output=True, text=True, check=False)
    assert (64, "mailtrack: no failed mail with id 'nonsense'\n") == (bad.returncode, bad.stderr)


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
        raw = f"From: Bob <bob@example.org>\nTo: issues@localhost\nMessage-ID: <open{i}@example.org>\nSubject: {subject}\n\nIt crashes.\n"
        out = gateway.handle(raw.encode(), received=when)
        assert "created" == out.action
        names.append(out.issue)
    assert names[0][:7] == names[1][:7] == prefix
    reply = (f"From: Bob <bob@example.org>\nTo: issues+{prefix}@localhost\nMessage-ID: <reply@example.org>\n"
             f"In-Reply-To: <open1@example.org>\nSubject: Re: {title}\n\nStill crashing.\n")
    out = gateway.handle(reply.encode())
    assert ("commented", names[1]) == (out.action, out.issue)
    assert ["Still crashing."] == [c.text for c in read_comments(repo, names[1])]


def test_mail_without_message_id_delivered_twice_by_the_mta_is_one_issue(repo: Path) -> None:
    """No Message-ID: the hash that stands for one ignores the trace fields an MTA adds on top, so
    a second delivery of the same mail (new Received and Delivered-To lines) changes nothing."""
    body = b"From: Ann <ann@example.org>\nTo: issues@localhost\nSubject: No id\n\nNo Message-ID here.\n"
    first = b"Return-Path: <ann@example.org>\nReceived: from a by b; Mon, 1 Jan 2024 10:00:00 +0000\n" + body
    again = (b"Delivered-To: issues@localhost\nReceived: from a by b\n\tid 2; Mon, 1 Jan 2024 10:05:00 +0000\n"
             b"Received: from c by a; Mon, 1 Jan 2024 09:59:00 +0000\n" + body)
    assert [0, 0] == [deliver(repo, raw).returncode for raw in (first, again)]
    [name] = read_names(repo)
    assert (1, True) == (len(git(repo, "log", "--format=%s", "issues").splitlines()) - 1,
                         read_issue(repo, name).message_id.endswith("@mailtrack.invalid>"))


def test_reply_to_our_mail_about_an_issue_we_lack_names_it_in_the_error(gateway: Gateway, repo: Path) -> None:
    """A reply to one of our notifications for an issue this branch does not have: no new issue, and
    the error reply names the issue the notification was about."""
    ghost = "f00d" + "e" * 36
    tip = git(repo, "rev-parse", "issues")
    out = gateway.handle(make_mail(subject="Re: [proj #f00deee] Gone", In_Reply_To=f"<mailtrack.{ghost}.issue@localhost>"))
    [reply] = outbox(repo)
    assert ("rejected", tip) == (out.action, git(repo, "rev-parse", "issues"))
    text = reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Your mail names issue f00deee, and proj has no such issue" in " ".join(text.split())
