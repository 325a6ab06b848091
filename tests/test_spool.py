"""The durable queues: accept, claim, done, retry, fail, requeue, recover, prune, outbox."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from helpers.mail import held_mail
from mailtrack.mail.ids import header_message_id as message_id
from mailtrack.queue.spool import ID_RE, MAX_ATTEMPTS, MAX_INTERRUPTED, Claim, Envelope, Spool

RAW = b"From: a@example.test\r\nSubject: s\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n"


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_creates_the_directories(spool: Spool) -> None:
    """A new Spool makes every queue directory, private to its owner and group."""
    expected = [
        "failed", "incoming", "incoming/cur", "incoming/new", "incoming/tmp", "outbox",
        "outbox-failed", "outbox/cur", "outbox/env", "outbox/new", "outbox/tmp", "processed",
    ]  # fmt: skip
    actual = sorted(str(p.relative_to(spool.root)) for p in spool.root.rglob("*") if p.is_dir())
    assert expected == actual
    assert 0o750 == (spool.root / "incoming" / "new").stat().st_mode & 0o777


def test_accept_keeps_the_exact_bytes_in_new(spool: Spool) -> None:
    """accept() puts exactly the given bytes (CRLF kept) in incoming/new and leaves tmp/ empty."""
    spool_id = spool.accept(RAW, source="test")
    assert ID_RE.match(spool_id)
    assert [spool_id] == names(spool.root / "incoming" / "new")
    assert RAW == (spool.root / "incoming" / "new" / spool_id).read_bytes()
    assert [] == names(spool.root / "incoming" / "tmp")


def test_accept_fsyncs_the_file_and_the_directory_before_returning(
    spool: Spool, fsynced: list[str]
) -> None:
    """accept() fsyncs the mail in tmp/, renames it into new/, then fsyncs new/."""
    spool_id = spool.accept(RAW)
    incoming = spool.root / "incoming"
    assert [str(incoming / "tmp" / spool_id), str(incoming / "new")] == fsynced


def test_accept_raises_and_leaves_nothing_when_the_disk_fails(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync error (injected) makes accept() raise OSError and leaves no file behind."""

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        spool.accept(RAW)
    monkeypatch.undo()
    expected = {"incoming/new": 0, "incoming/tmp": 0}
    actual = {q: len(names(spool.root / q)) for q in expected}
    assert expected == actual


def test_ids_are_unique_and_sort_by_arrival(spool: Spool) -> None:
    """Ids of mail accepted one after another sort in arrival order; claim() takes the oldest."""
    ids = [spool.accept(b"Subject: %d\n\n" % i) for i in range(30)]
    assert sorted(ids) == ids
    assert 30 == len(set(ids))
    claimed = []
    for claim in spool.incoming.claims():
        claimed.append(claim.id)
        spool.done(claim)
    assert ids == claimed


def test_claim_moves_to_cur_and_done_to_processed(spool: Spool) -> None:
    """claim() renames new/X to cur/X; done() moves it to processed/; nothing left to claim."""
    spool_id = spool.accept(RAW)
    claim = spool.incoming.claim()
    assert Claim(id=spool_id, path=spool.root / "incoming" / "cur" / spool_id, attempts=0) == claim
    assert claim is not None and RAW == claim.read()
    spool.done(claim)
    assert [spool_id] == names(spool.root / "processed")
    assert None is spool.incoming.claim()
    expected = {
        "incoming/new": 0, "incoming/cur": 0, "failed": 0, "processed": 1,
        "outbox/new": 0, "outbox/cur": 0, "outbox-failed": 0,
    }  # fmt: skip
    assert expected == spool.counts()


def test_concurrent_workers_never_claim_the_same_mail(tmp_path: Path) -> None:
    """Four threads with their own Spool objects claim 200 mails: each exactly once."""
    ids = {Spool(tmp_path).accept(b"Subject: %d\n\n" % i) for i in range(200)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        spool = Spool(tmp_path)
        for claim in spool.incoming.claims():
            with lock:
                claimed.append(claim.id)
            spool.done(claim)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ids) == sorted(claimed)


def test_retry_later_counts_attempts_then_fails_with_the_error(spool: Spool) -> None:
    """Each retry_later() adds an attempt; the third moves the mail to failed/ with the error."""
    spool_id = spool.accept(RAW)
    attempts = []
    for n in range(MAX_ATTEMPTS):
        claim = spool.incoming.claim()
        assert claim is not None
        attempts.append(claim.attempts)
        spool.retry_later(claim, f"Traceback (most recent call last):\nValueError: bad {n}")
    assert [0, 1, 2] == attempts
    assert None is spool.incoming.claim()
    assert [(spool_id, "failed 3 times, last error: ValueError: bad 2")] == spool.incoming.failures()
    reason = (spool.root / "failed" / f"{spool_id}.reason").read_text()
    assert "Traceback (most recent call last):\nValueError: bad 2" == reason.split("\n\n", 1)[1]
    assert RAW == (spool.root / "failed" / spool_id).read_bytes()


def test_retry_later_with_a_delay_holds_the_mail_back(spool: Spool) -> None:
    """A mail put back with a delay is not claimable until the delay has passed."""
    spool.accept(RAW)
    claim = spool.incoming.claim()
    assert claim is not None
    spool.retry_later(claim, "busy", delay=timedelta(hours=1))
    assert None is spool.incoming.claim()
    path = next((spool.root / "incoming" / "new").iterdir())
    os.utime(path, (0, 0))  # the hour has passed
    again = spool.incoming.claim()
    assert (claim.id, 1) == (again.id if again else None, again.attempts if again else None)


def test_fail_quarantines_with_the_reason(spool: Spool) -> None:
    """fail() moves the mail straight to failed/ with its reason beside it."""
    spool_id = spool.accept(RAW)
    claim = spool.incoming.claim()
    assert claim is not None
    spool.fail(claim, "unknown sender held for moderation\ndetails")
    assert [(spool_id, "unknown sender held for moderation")] == spool.incoming.failures()
    assert [spool_id, f"{spool_id}.reason"] == names(spool.root / "failed")


def test_requeue_puts_a_failed_mail_back_with_attempts_reset(spool: Spool) -> None:
    """requeue() moves a failed mail back to incoming/new, attempts 0, reason removed."""
    spool_id = spool.accept(RAW)
    for _ in range(MAX_ATTEMPTS):
        claim = spool.incoming.claim()
        assert claim is not None
        spool.retry_later(claim, "boom")
    spool.requeue(spool_id)
    assert [] == names(spool.root / "failed")
    claim = spool.incoming.claim()
    assert (spool_id, 0) == (claim.id if claim else None, claim.attempts if claim else None)


@pytest.mark.parametrize("bad", ["00000000000000000001.P1Q1.nohost", "../processed/x", ""])
def test_requeue_of_an_unknown_id_is_a_key_error(spool: Spool, bad: str) -> None:
    """requeue() of an id that is not in failed/ (or not an id at all) raises KeyError."""
    with pytest.raises(KeyError) as info:
        spool.requeue(bad)
    assert f"no failed mail with id {bad!r}" == info.value.args[0]


def test_recover_puts_claimed_mail_back_and_counts_an_interruption(tmp_path: Path) -> None:
    """After a crash (claims never finished) recover() puts them back in new/, one interruption more,
    no failed attempt more (the mail did not fail)."""
    first = Spool(tmp_path)
    ids = [first.accept(RAW), first.accept(RAW)]
    assert first.incoming.claim() is not None and first.incoming.claim() is not None
    restarted = Spool(tmp_path)
    assert 2 == restarted.recover()
    claims = list(restarted.incoming.claims())
    assert [(i, 0, 1) for i in ids] == [(c.id, c.attempts, c.interrupted) for c in claims]


HOLDER = """
import sys
from mailtrack.queue.spool import Spool
spool = Spool(sys.argv[1])
claim = spool.incoming.claim_id(spool.accept(b"Subject: held\\n\\nbody\\n", source="deliver"))
print("claimed" if claim else "missed", flush=True)
sys.stdin.read()  # hold the claim until the test closes our stdin, then exit without done()
"""


def test_recover_leaves_a_claim_held_by_a_live_process_alone(tmp_path: Path) -> None:
    """recover() in one process skips the mail another live process has claimed; after it exits, recovers it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and "claimed\n" == holder.stdout.readline()
        (held,) = names(tmp_path / "incoming" / "cur")
        assert (0, [held]) == (Spool(tmp_path).recover(), names(tmp_path / "incoming" / "cur"))
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert 0 == holder.returncode
    assert (1, [f"{held}:1,0,1"]) == (Spool(tmp_path).recover(), names(tmp_path / "incoming" / "new"))


def test_finished_claims_release_their_lock(spool: Spool) -> None:
    """done(), retry_later() and fail() drop the claim's lock: the mail can be claimed again at once."""
    spool.accept(RAW)
    claim = spool.incoming.claim()
    assert claim is not None and None is spool.incoming.claim()
    spool.retry_later(claim, "boom")
    again = spool.incoming.claim()
    assert again is not None and (claim.id, 1) == (again.id, again.attempts)
    spool.done(again)
    assert None is spool.incoming.claim()


def test_a_mail_that_keeps_crashing_the_worker_ends_in_failed(tmp_path: Path) -> None:
    """A mail interrupted MAX_INTERRUPTED times (a crash each try) goes to failed/, not round again;
    one fewer leaves it waiting."""
    spool_id = Spool(tmp_path).accept(RAW)
    for _ in range(MAX_INTERRUPTED):
        spool = Spool(tmp_path)
        spool.recover()
        assert [] == spool.incoming.failures()
        assert spool.incoming.claim() is not None  # ...and the process dies
    Spool(tmp_path).recover()
    ((failed, reason),) = Spool(tmp_path).incoming.failures()
    assert (spool_id, f"interrupted {MAX_INTERRUPTED} times") == (failed, reason[: len(f"interrupted {MAX_INTERRUPTED} times")])


def test_failures_and_interruptions_are_counted_apart(spool: Spool) -> None:
    """A failed attempt after interruptions keeps both counts in the file name, and the failures alone
    reach MAX_ATTEMPTS."""
    spool.accept(RAW)
    claim = spool.incoming.claim()
    assert claim is not None
    spool.incoming.interrupted(claim, "the repository was locked")
    claim = spool.incoming.claim()
    assert claim is not None and (0, 1) == (claim.attempts, claim.interrupted)
    spool.retry_later(claim, "boom")
    claim = spool.incoming.claim()
    assert claim is not None and (1, 1) == (claim.attempts, claim.interrupted)
    assert claim.path.name.endswith(":1,1,1")


def test_recover_removes_a_reason_without_its_mail(spool: Spool) -> None:
    """A .reason file left by a crash between writing it and moving the mail is tidied away."""
    (spool.root / "failed" / "00000000000000000001.P1Q1.h.reason").write_text("x")
    assert 0 == spool.recover()
    assert [] == names(spool.root / "failed")


def test_prune_deletes_only_old_processed_mail(spool: Spool) -> None:
    """prune() deletes processed mail finished longer ago than the retention, keeps the rest."""
    old, new = spool.accept(RAW), spool.accept(RAW)
    for claim in spool.incoming.claims():
        spool.done(claim)
    os.utime(spool.root / "processed" / old, (1, 1))
    assert 1 == spool.prune(timedelta(days=7))
    assert [new] == names(spool.root / "processed")


def test_outbox_keeps_the_envelope_until_sent(spool: Spool) -> None:
    """queue_out() keeps mail and envelope; outbox.claim(), envelope() give them; done() drops both."""
    spool_id = spool.queue_out(RAW, sender="issues@tracker.localhost", recipients=["a@x.test", "b@x.test"])
    claim = spool.outbox.claim()
    assert claim is not None and spool_id == claim.id
    assert Envelope("issues@tracker.localhost", ["a@x.test", "b@x.test"]) == spool.envelope(claim)
    assert None is spool.incoming.claim()  # the incoming queue is another queue
    spool.done(claim)
    expected: dict[str, list[str]] = {
        "outbox/new": [],
        "outbox/cur": [],
        "outbox/env": [],
        "processed": [],
    }
    assert expected == {q: names(spool.root / q) for q in expected}


def test_outbox_failure_and_requeue(spool: Spool) -> None:
    """An outgoing mail that fails MAX_ATTEMPTS times goes to outbox-failed and can be requeued."""
    spool_id = spool.queue_out(RAW, sender="", recipients=["a@x.test"])
    for claim in spool.outbox.claims():
        spool.retry_later(claim, "421 try later")
    assert [(spool_id, "failed 3 times, last error: 421 try later")] == spool.outbox.failures()
    spool.requeue(spool_id)
    again = spool.outbox.claim()
    assert again is not None
    assert (spool_id, ["a@x.test"]) == (again.id, spool.envelope(again).recipients)


def test_message_id_reads_a_folded_header() -> None:
    """message_id() finds the Message-ID, case-insensitively, unfolded; "" when there is none."""
    raw = b"Subject: x\nMESSAGE-ID:\n <abc@example.test>\n\nMessage-ID: <body@x>\n"
    assert ("<abc@example.test>", "") == (message_id(raw), message_id(b"Subject: x\n\nbody"))


def test_the_source_outlives_failure_and_goes_with_pruning(tmp_path: Path) -> None:
    """Spool.source() reads back the source accept() was told to keep while the mail is kept (also in failed, also
    after a requeue); prune() removes it with the mail."""
    spool = Spool(tmp_path / "spool")
    assert "" == spool.source(spool.accept(held_mail("t"), source="smtp:[127.0.0.1]"))  # not asked to
    spool_id = spool.accept(held_mail("s"), source="imap:u@h:1/INBOX", keep_source=True)
    claim = spool.incoming.claim_id(spool_id)
    assert claim is not None
    spool.fail(claim, "held")
    assert "imap:u@h:1/INBOX" == spool.source(spool_id)
    spool.requeue(spool_id)
    claim = spool.incoming.claim_id(spool_id)
    assert claim is not None
    spool.done(claim)
    assert ("imap:u@h:1/INBOX", "") == (spool.source(spool_id), spool.source("nonsense"))
    assert 1 == spool.prune(timedelta(seconds=-1))
    assert ("", []) == (spool.source(spool_id), list((spool.root / "sources").iterdir()))


def test_recover_removes_only_stale_orphaned_sources(tmp_path: Path) -> None:
    """recover() deletes an old source whose mail is gone (deleted by hand), keeps a kept mail's."""
    spool = Spool(tmp_path / "spool")
    kept = spool.accept(held_mail("kept"), source="imap:kept", keep_source=True)
    gone = spool.accept(held_mail("gone"), source="imap:gone", keep_source=True)
    (spool.root / "incoming" / "new" / gone).unlink()
    for spool_id in (kept, gone):
        os.utime(spool.root / "sources" / spool_id, (0, 0))
    spool.recover()
    assert ("imap:kept", "", [kept]) == (
        spool.source(kept), spool.source(gone), [p.name for p in (spool.root / "sources").iterdir()]
    )
