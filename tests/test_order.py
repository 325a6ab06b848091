"""Mail that arrives out of order: a reply that overtakes its parent (two MX hosts, a slow relay)
waits for it, durably and for a bounded time, and is threaded when the parent comes; after
gateway.reply_wait, or past the bounds on how many wait, it is a new issue as before."""

from __future__ import annotations

import mailbox
import os
import smtplib
import time
from pathlib import Path

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, replies, spool_path
from helpers.ports import wait_for
from helpers.repos import make_gateway, read_comments, read_issue, read_names, titles
from helpers.servers import Server
from mailtrack.queue.layout import Layout
from mailtrack.queue.waiting import Note, Waiting
from mailtrack.worker import runner
from mailtrack.worker.pipeline import Gateway

PARENT = "<parent@example.org>"


def parent() -> bytes:
    return make_mail(subject="Printer on fire", message_id=PARENT, body="It is on fire.\n")


def reply(n: int = 1, frm: str = "Bob <bob@example.org>", to: str = PARENT, subject: str = "Re: Printer on fire") -> bytes:
    """Reply `n` from `frm` to the mail `to`: Message-ID `<reply<n>.<address>>`."""
    return make_mail(subject=subject, frm=frm, message_id=f"<reply{n}.{frm.split('<')[-1].rstrip('>')}>",
                     body=f"Mine too ({n}).\n", In_Reply_To=to, References=to)


def waiting(repo: Path) -> int:
    return Waiting(Layout(spool_path(repo))).count()


def status_waiting(repo: Path) -> str:
    lines = mailtrack("status", repo=repo, text=True, check=True).stdout.splitlines()
    return next(ln.split()[1] for ln in lines if ln.split()[:1] == ["waiting"])


def smtp_send(port: int, raw: bytes, sender: str) -> None:
    """Send `raw` to issues@tracker.localhost over SMTP, CRLF line ends as on the wire."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(sender, ["issues@tracker.localhost"], raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_a_reply_that_overtakes_its_parent_over_smtp_waits_and_is_threaded(server: Server) -> None:
    """`mailtrack serve`: the reply comes first over SMTP and waits (no issue, status says 1); its
    parent comes, and the reply is a comment on the parent's issue, not an issue of its own."""
    repo = server.repo
    smtp_send(server.port, reply(), "bob@example.org")
    wait_for(lambda: waiting(repo) == 1, timeout=30, what="the reply waiting")
    assert ([], "1") == (read_names(repo), status_waiting(repo))
    smtp_send(server.port, parent(), "alice@example.org")
    wait_for(lambda: len(read_names(repo)) == 1 and read_comments(repo, read_names(repo)[0]), timeout=30, what="the reply threaded")
    [name] = read_names(repo)
    [comment] = read_comments(repo, name)
    assert ("Printer on fire", "Mine too (1).", "bob@example.org", 0) == (
        read_issue(repo, name).title, comment.text.strip(), comment.author.email, waiting(repo))
    assert 0 == server.stop()
    assert any("waiting" in line and "<reply1.bob@example.org>" in line for line in server.log), server.log


def test_deliver_threads_the_waiting_reply_when_its_parent_is_delivered(repo: Path) -> None:
    """The MTA pipe: `deliver` keeps the early reply waiting (exit 0), and the `deliver` of its parent
    threads it at once."""
    r = deliver(repo, reply())
    assert (0, [], 1) == (r.returncode, read_names(repo), waiting(repo))
    assert 0 == deliver(repo, parent()).returncode
    [name] = read_names(repo)
    assert (["Mine too (1)."], 0) == ([c.text.strip() for c in read_comments(repo, name)], waiting(repo))


def test_process_threads_a_reply_whose_parent_came_another_way(repo: Path, tmp_path: Path) -> None:
    """A parent that lands without waking the waiting reply (here: `mailtrack import`) is found by
    `mailtrack process`, which threads the reply; a chain of two early replies is threaded whole."""
    assert 0 == deliver(repo, reply(1)).returncode
    second = make_mail(subject="Re: Printer on fire", frm="Carol <carol@example.org>", message_id="<second@x>",
                       body="And mine.\n", In_Reply_To="<reply1.bob@example.org>")  # answers the reply only
    assert 0 == deliver(repo, second).returncode
    assert 2 == waiting(repo)
    box = mailbox.mbox(str(tmp_path / "p.mbox"))
    box.add(parent())
    box.close()
    assert "created 1\n" == mailtrack("import", str(tmp_path / "p.mbox"), repo=repo, text=True).stdout
    assert 2 == waiting(repo)
    assert 0 == mailtrack("process", repo=repo).returncode
    [name] = read_names(repo)
    assert (["Mine too (1).", "And mine."], 0) == ([c.text.strip() for c in read_comments(repo, name)], waiting(repo))


def test_a_reply_whose_parent_never_comes_is_a_new_issue_after_reply_wait(repo: Path, tmp_path: Path) -> None:
    """reply_wait = 1: the reply waits, and the first `process` after its second is up makes it a new
    issue, acknowledged as a new issue always is."""
    config = tmp_path / "c.toml"
    config.write_text("[gateway]\nreply_wait = 1\n")
    assert 0 == mailtrack("deliver", repo=repo, config=config, input=reply()).returncode
    assert 1 == waiting(repo)

    def processed() -> bool:
        assert 0 == mailtrack("process", repo=repo, config=config).returncode
        return bool(read_names(repo))

    wait_for(processed, timeout=30, what="the reply taken as a new issue")
    assert (["Printer on fire"], 0) == (titles(repo), waiting(repo))
    [ack] = replies(repo)
    assert ("bob@example.org", True) == (str(ack["To"]), f"#{read_names(repo)[0][:7]}]" in str(ack["Subject"]))


def test_reply_wait_zero_never_waits(repo: Path, tmp_path: Path) -> None:
    """reply_wait = 0 is today's behaviour: the early reply is a new issue at once."""
    config = tmp_path / "c.toml"
    config.write_text("[gateway]\nreply_wait = 0\n")
    assert 0 == mailtrack("deliver", repo=repo, config=config, input=reply()).returncode
    assert (["Printer on fire"], 0) == (titles(repo), waiting(repo))


def handled(g: Gateway, raw: bytes) -> str:
    """Keep `raw` in the gateway's spool and work it as the runner does; what became of it."""
    claim = g.spool.incoming.claim_id(g.spool.accept(raw))
    assert claim is not None
    out = runner.work(g, claim)
    assert out is not None
    return str(out.action)


def test_what_never_waits(repo: Path) -> None:
    """A first mail, a new subject in an old thread, a reply naming its issue by address or subject
    tag, and a control mail are never kept waiting: only a reply to a mail we have not seen."""
    g = make_gateway(repo)
    try:
        assert "created" == handled(g, make_mail(subject="First", message_id="<first@x>"))
        short = read_names(repo)[0][:7]
        fresh = make_mail(subject="The scanner too", message_id="<fresh@x>", In_Reply_To="<list-mail@lists.example>")
        assert "created" == handled(g, fresh)
        by_address = make_mail(subject="Re: x", message_id="<a@x>", to=f"issues+{short}@tracker.localhost", In_Reply_To="<never@x>")
        by_tag = make_mail(subject=f"Re: [proj #{short}] x", message_id="<t@x>", In_Reply_To="<never@x>")
        assert ["commented", "commented"] == [handled(g, by_address), handled(g, by_tag)]
        control = make_mail(subject="Re: x", message_id="<c@x>", to="control@tracker.localhost", In_Reply_To="<never@x>", body="help\n")
        assert "nothing" == handled(g, control)
        assert ("waiting", 1) == (handled(g, reply(frm="Dora <dora@example.org>", subject="AW: [dev] Printer on fire")), waiting(repo))
    finally:
        g.close()
        g.store.close()


def test_the_number_waiting_is_bounded_per_sender_and_in_all(repo: Path) -> None:
    """A stranger's flood of replies to nothing: past reply_wait_per_sender (2) each is taken at once,
    and past reply_wait_max (3) everyone's is; nothing is lost, all of it is on the branch or waits."""
    g = make_gateway(repo)
    g.config = type(g.config)(gateway=type(g.config.gateway)(project="proj", reply_wait_per_sender=2, reply_wait_max=3),
                              access=g.config.access)
    try:
        flood = [handled(g, reply(n, frm="Mallory <mallory@example.net>", to=f"<nothing{n}@x>")) for n in range(4)]
        assert ["waiting", "waiting", "created", "created"] == flood
        others = [handled(g, reply(n, frm=f"P{n} <p{n}@example.org>", to=f"<else{n}@x>")) for n in range(2)]
        assert (["waiting", "created"], 3) == (others, waiting(repo))
        assert 3 == len(read_names(repo))
    finally:
        g.close()
        g.store.close()


def test_a_crash_while_parking_loses_nothing(repo: Path) -> None:
    """After a kill -9 in the middle of parking or releasing, the next process finds a waiting mail
    without its note (due at once: taken again, it waits again with a note), and forgets an old note
    whose mail is gone."""
    g = make_gateway(repo)
    try:
        assert "waiting" == handled(g, reply())
        [spool_id] = g.waiting.notes()
    finally:
        g.close()
        g.store.close()
    folder = Layout(spool_path(repo)).waiting
    (folder / f"{spool_id}.json").unlink()
    orphan = folder / "00000000000000000001.P1Q1.host.json"
    orphan.write_text("{}")
    os.utime(orphan, (1, 1))
    g = make_gateway(repo)  # the next process
    try:
        assert ([spool_id], False) == (g.due(), orphan.exists())
        runner.housekeeping(g)  # taken again: its time is not up, so it waits again, with a note
        assert ([spool_id], [], True) == (list(g.waiting.notes()), read_names(repo), (folder / f"{spool_id}.json").exists())
    finally:
        g.close()
        g.store.close()


def test_deliver_dry_run_says_the_reply_would_wait(repo: Path) -> None:
    """`deliver --dry-run` of an early reply says it would wait, decided by the route, and keeps nothing."""
    r = mailtrack("deliver", "--dry-run", repo=repo, input=reply(), text=True)
    assert (0, True, True, 0) == (r.returncode, "Would:      waiting (a reply to <parent@example.org>" in r.stdout,
                                  "Decided in: route" in r.stdout, waiting(repo))


def test_import_threads_replies_that_come_before_their_parent_in_the_archive(repo: Path, tmp_path: Path) -> None:
    """`mailtrack import` of an archive whose replies (a chain of two) come before their parent: both
    are comments on the parent's issue; a reply whose parent is not in the archive is a new issue."""
    box = mailbox.mbox(str(tmp_path / "a.mbox"))
    box.add(make_mail(subject="Re: Printer on fire", frm="Carol <carol@example.org>", message_id="<second@x>",
                      body="And mine.\n", In_Reply_To="<reply1.bob@example.org>", Date="Tue, 02 Jan 2018 12:00:00 +0000"))
    box.add(reply(to=PARENT).replace(b"Subject:", b"Date: Tue, 02 Jan 2018 11:00:00 +0000\nSubject:", 1))
    box.add(reply(2, to="<not-in-the-archive@x>", subject="Re: Scanner jammed"))
    box.add(parent().replace(b"Subject:", b"Date: Mon, 01 Jan 2018 10:00:00 +0000\nSubject:", 1))
    box.close()
    r = mailtrack("import", str(tmp_path / "a.mbox"), repo=repo, text=True)
    assert (0, "commented 2, created 2\n") == (r.returncode, r.stdout)
    assert ["Printer on fire", "Scanner jammed"] == titles(repo)
    [name] = [n for n in read_names(repo) if read_issue(repo, n).title == "Printer on fire"]
    assert ["Mine too (1).", "And mine."] == [c.text.strip() for c in read_comments(repo, name)]
    assert 0 == waiting(repo)


def test_what_a_waiting_reply_keeps_is_bounded(repo: Path) -> None:
    """A reply naming 5,000 References and a 100,000-character In-Reply-To waits for at most 20
    Message-IDs of sane length: its note stays small."""
    g = make_gateway(repo)
    try:
        refs = " ".join(f"<r{n}@x>" for n in range(5000))
        raw = make_mail(subject="Re: spam", message_id="<big@x>", In_Reply_To=f"<{'a' * 100_000}@x>", References=refs)
        assert "waiting" == handled(g, raw)
        [note] = g.waiting.notes().values()
        assert note is not None
        assert (20, "<r4999@x>") == (len(note.awaits), note.awaits[0])
        assert max(p.stat().st_size for p in g.spool.layout.waiting.glob("*.json")) < 2000
    finally:
        g.close()
        g.store.close()


def test_a_reply_parked_just_after_its_parent_landed_is_threaded_by_the_next_round(repo: Path) -> None:
    """The race of two processes: the parent lands (and wakes nothing), the serve loop's round looks
    at the waiting mails, and only then another process parks the reply it routed before the parent
    landed. The next round threads it, though the branch has not moved since."""
    serve, other = make_gateway(repo), make_gateway(repo)
    try:
        assert "created" == handled(serve, parent())
        runner.housekeeping(serve)
        claim = other.spool.incoming.claim_id(other.spool.accept(reply()))
        assert claim is not None
        other.waiting.park(claim, Note((PARENT,), "bob@example.org", time.time() + 900))
        runner.housekeeping(serve)
        [name] = read_names(repo)
        assert (["Mine too (1)."], 0) == ([c.text.strip() for c in read_comments(repo, name)], waiting(repo))
    finally:
        for g in (serve, other):
            g.close()
            g.store.close()
