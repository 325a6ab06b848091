"""The durable queues between the network edges and the worker: Maildir-style directories.

A mail is *accepted* once it has been written to `tmp/`, fsynced, renamed into `new/` and the
directory fsynced (Mailman's switchboard, public-inbox-mda's emergency copy). A worker claims a
mail by renaming `new/X` to `cur/X`: the rename is atomic, so a lost race simply means someone
else has it. The mail leaves the queue only after its effect is committed (`done`).

Each queue is a `Queue`: a Maildir (tmp/new/cur), its failed directory and maybe a directory for
finished mail; the `Spool` holds the two of them, the incoming queue and the outbox, and what is
particular to their mail (where an incoming mail came from, an outgoing mail's envelope). Where
every file lives, and how mail files are named, is `mailtrack.queue.layout`'s business.

A claim holds an exclusive flock on its file for as long as it lives (the renames keep the
inode, so the lock moves with the mail): `recover()` puts back only the mail in `cur/` that no
live process holds, so a `mailtrack deliver` run by the MTA and a `mailtrack process` run by cron
(which recovers at start) can share a spool. The kernel drops the lock when its holder dies.

Only failures the mail causes count against it (`retry_later`, MAX_ATTEMPTS). An attempt cut
short by something else (the process killed or crashed while it held the mail, the repository
locked) is counted apart (`interrupted`), against a larger bound (MAX_INTERRUPTED): a mail that
kills the worker each time still ends in failed/, but unrelated kills never put a good mail there.

An outgoing mail may be held (`Spool.queue_out(after=commit)`): written and fsynced in the
outbox's tmp/, its envelope naming the commit it depends on, and moved into new/ (`publish`)
only once the branch points at that commit, or deleted (`discard`). `Spool.settle` decides for
the ones a crash left (or [sync] keeps until the remote holds their commit), by a verdict on their
commit: a reply is then sent exactly when its commit landed. Age never deletes a held mail.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal, NamedTuple

from mailtrack.queue.durable import deliver as deliver_into
from mailtrack.queue.durable import fsync_dir, open_locked, write_durably, write_synced
from mailtrack.queue.layout import (
    ENVELOPE,
    ID_RE,
    REASON,
    SOURCE,
    Layout,
    format_name,
    new_id,
    parse_counts,
    parse_name,
    reason_name,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_INTERRUPTED = 10  # attempts cut short (kill, crash, lock) before a mail is given up on
DIR_MODE = 0o750
STALE_TMP = timedelta(hours=36)  # the Maildir rule for files left in tmp/ by a crashed writer

__all__ = ["ID_RE", "MAX_ATTEMPTS", "MAX_INTERRUPTED", "Claim", "Entry", "Envelope", "Queue", "Spool", "Where", "fsync_dir", "put_back",
           "write_durably"]


class _Lock:
    """An exclusive flock on one open file; released by release(), or when garbage-collected."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, path: Path) -> _Lock | None:
        """Lock `path` without waiting; None when another claim holds it (or it is gone)."""
        try:
            fd = open_locked(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return cls(fd) if fd is not None else None

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.release()


@dataclass(frozen=True)
class Claim:
    """A mail this process holds (it sits in a `cur/` directory) until done/retry_later/fail.

    It holds a flock on the file until then (see the module docstring).
    """

    id: str
    path: Path
    attempts: int  # failed attempts: failures the mail caused
    lock: _Lock | None = field(default=None, compare=False, repr=False)
    interrupted: int = 0  # attempts cut short by something the mail did not cause

    def read(self) -> bytes:
        return self.path.read_bytes()

    def release(self) -> None:
        """Drop the lock (done by done/retry_later/fail once the mail has moved on)."""
        if self.lock is not None:
            self.lock.release()


@dataclass(frozen=True)
class Envelope:
    """Who an outgoing mail is from and to, as the SMTP relay will be told."""

    sender: str
    recipients: list[str]


def _message_id(raw: bytes) -> str:
    """The Message-ID of a mail, for a log line ("" when it has none)."""
    # imported here, not at the top: `mailtrack deliver` handing its mail to serve keeps it without
    # a log line, and without hashlib and uuid (queue/handoff.py; tests/test_handoff.py)
    from mailtrack.mail.ids import header_message_id

    return header_message_id(raw)


def _claimed_id(claim: Claim) -> str:
    """The Message-ID of a claimed mail, for a log line ("none", or "?" when it cannot be read)."""
    try:
        with open(claim.path, "rb") as f:
            return _message_id(f.read(65536)) or "none"
    except OSError:
        return "?"


def put_back(path: Path, new: Path, beside: Path) -> bool:
    """Rename the mail `path` into the queue directory `new` durably, then delete the file kept
    `beside` it (its reason or note); False when it is not there (moved already)."""
    try:
        os.rename(path, new / path.name)
    except FileNotFoundError:
        return False
    fsync_dir(new)
    with contextlib.suppress(FileNotFoundError):
        beside.unlink()
    return True


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


Where = Literal["new", "cur", "failed"]  # waiting (or delayed), claimed, given up


class Entry(NamedTuple):
    """One mail file of a queue directory."""

    id: str
    attempts: int
    path: Path


@dataclass(frozen=True)
class Queue:
    """One Maildir (tmp/new/cur) with its failed directory and, maybe, its finished directory.

    A mail may have one file beside it, `<attached>/<id><suffix>` (an incoming mail's source, an
    outgoing mail's envelope): written before the mail, deleted with it (done() without a
    finished directory, prune()), and tidied by recover() once no mail of that id is left.
    """

    dir: Path
    failed: Path
    finished: Path | None = None  # None: done() deletes the mail
    attached: Path | None = None  # made when first needed
    suffix: str = ""

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    @property
    def new(self) -> Path:
        return self.dir / "new"

    @property
    def cur(self) -> Path:
        return self.dir / "cur"

    def dirs(self) -> list[Path]:
        return [self.dir, self.tmp, *self._mail_dirs()]

    def attachment(self, spool_id: str) -> Path:
        """The file beside the mail `spool_id` (it need not exist)."""
        if self.attached is None:
            raise ValueError(f"{self.dir} keeps nothing beside its mail")
        return self.attached / f"{spool_id}{self.suffix}"

    # --- in -----------------------------------------------------------------------------------

    def deliver(self, spool_id: str, raw: bytes, *, attachment: bytes | None = None, hold: bool = False) -> None:
        """Keep `raw` durably in new/ as `spool_id`, and first `attachment` beside it. OSError:
        not kept (and no attachment left behind). `hold`: kept in tmp/ until publish()."""
        if attachment is not None:
            path = self.attachment(spool_id)
            try:
                path.parent.mkdir(mode=DIR_MODE)
            except FileExistsError:
                pass
            else:
                fsync_dir(path.parent.parent)
            write_durably(path, attachment)
        try:
            if hold:
                write_synced(self.tmp / spool_id, raw)
                fsync_dir(self.tmp)
            else:
                deliver_into(self.dir, spool_id, raw)
        except BaseException:
            if attachment is not None:
                with contextlib.suppress(OSError):
                    self.attachment(spool_id).unlink()
            raise

    def publish(self, spool_id: str) -> None:
        """A mail deliver(hold=True) kept in tmp/: into new/, claimable."""
        os.rename(self.tmp / spool_id, self.new / spool_id)
        fsync_dir(self.new)

    def discard(self, spool_id: str) -> None:
        """A mail deliver(hold=True) kept in tmp/: deleted, with what is beside it."""
        with contextlib.suppress(FileNotFoundError):
            (self.tmp / spool_id).unlink()
        self._forget(spool_id)

    def held(self) -> list[str]:
        """The ids of the mails deliver(hold=True) kept in tmp/ (and of mails being written)."""
        return sorted(name for name in os.listdir(self.tmp) if ID_RE.match(name))

    def hold(self, spool_id: str, raw: bytes, reason: str) -> None:
        """Keep `raw` durably straight in failed/ with `reason`."""
        write_durably(self.failed / reason_name(spool_id), reason.encode("utf-8", "replace"))
        write_durably(self.failed / spool_id, raw, tmp=self.tmp / spool_id)

    # --- claims -------------------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Take the oldest mail that is due (not one delayed by retry_later or defer), or None."""
        now = time.time()
        for spool_id, attempts, source in self.entries("new"):
            try:
                if os.stat(source).st_mtime > now:  # delayed
                    continue
            except FileNotFoundError:  # someone else claimed it first
                continue
            claim = _take(source, self.cur / source.name, spool_id, attempts)
            if claim is not None:
                return claim
        return None

    def claims(self) -> Iterator[Claim]:
        """Claim mail after mail until none is due; finish each before asking for the next."""
        while (claim := self.claim()) is not None:
            yield claim

    def claim_id(self, spool_id: str) -> Claim | None:
        """Take this mail (never retried yet), or None if someone has it."""
        if ID_RE.match(spool_id) is None:
            return None
        return _take(self.new / spool_id, self.cur / spool_id, spool_id, 0)

    def owns(self, claim: Claim) -> bool:
        return claim.path.parent == self.cur

    # --- what becomes of a claim --------------------------------------------------------------

    def done(self, claim: Claim) -> None:
        """The mail's effect is committed: to the finished directory, or deleted with what is
        beside it when there is none."""
        if self.finished is None:
            claim.path.unlink()
            claim.release()
            self._forget(claim.id)
            return
        target = self.finished / claim.id
        os.rename(claim.path, target)
        claim.release()
        os.utime(target)  # prune() counts the retention from now, not from arrival

    def retry_later(self, claim: Claim, error: str, *, delay: timedelta = timedelta(0)) -> None:
        """Count a failed attempt; back to new/ (claimable after `delay`), or to failed/ at MAX."""
        self._again(claim, error, delay, failure=True)

    def interrupted(self, claim: Claim, why: str, *, delay: timedelta = timedelta(0)) -> None:
        """An attempt cut short by something the mail did not cause: counted apart from the
        failures; back to new/ (claimable after `delay`), or to failed/ at MAX_INTERRUPTED."""
        self._again(claim, why, delay, failure=False)

    def _again(self, claim: Claim, error: str, delay: timedelta, *, failure: bool) -> None:
        attempts, interrupted = claim.attempts + int(failure), claim.interrupted + int(not failure)
        n, most = (attempts, MAX_ATTEMPTS) if failure else (interrupted, MAX_INTERRUPTED)
        if n >= most:
            summary = (f"failed {n} times, last error: {_last_line(error)}" if failure else
                       f"interrupted {n} times while being processed (does it crash the worker?), last: {_last_line(error)}")
            self._to_failed(claim, f"{summary}\n\n{error}")
            return
        what = "failed (attempt %d of %d)" if failure else "interrupted (%d of %d, not counted as a failure)"
        log.warning("%s (Message-ID %s) " + what + ": %s", claim.id, _claimed_id(claim), n, most, _last_line(error))
        not_before = time.time() + delay.total_seconds() if delay > timedelta(0) else None
        self._put_back(claim, attempts, not_before, interrupted)

    def defer(self, claim: Claim, not_before: float | None) -> None:
        """Put the mail back without counting an attempt, claimable from `not_before` (None: now,
        or whenever its file's time says)."""
        self._put_back(claim, claim.attempts, not_before)

    def fail(self, claim: Claim, reason: str, *, level: int = logging.ERROR) -> None:
        """Straight to failed/ with `reason`; logged at `level`: ERROR for a failure (a mail that
        cannot be delivered), WARNING for a decision (a mail held by policy)."""
        self._to_failed(claim, reason, level)

    # --- delayed mail -------------------------------------------------------------------------

    def release(self, until: float) -> int:
        """Make the delayed mails whose not-before time is at most `until` claimable now."""
        real = time.time()
        released = 0
        for _, _, path in self.entries("new"):
            with contextlib.suppress(FileNotFoundError):
                mtime = path.stat().st_mtime
                if real < mtime <= until:
                    os.utime(path, (real - 1, real - 1))
                    released += 1
        return released

    def next_due(self) -> float | None:
        """The earliest not-before time of the mails in new/ (None: none waits)."""
        times = []
        for _, _, path in self.entries("new"):
            with contextlib.suppress(FileNotFoundError):
                times.append(path.stat().st_mtime)
        return min(times) if times else None

    # --- looking ------------------------------------------------------------------------------

    def entries(self, where: Where = "new") -> list[Entry]:
        """The mails in new/, cur/ or failed/, oldest first."""
        directory = {"new": self.new, "cur": self.cur, "failed": self.failed}[where]
        return _entries(directory)

    def has_failed(self, spool_id: str) -> bool:
        """Whether the mail `spool_id` is in failed/ (retries exhausted, or held)."""
        return ID_RE.match(spool_id) is not None and (self.failed / spool_id).exists()

    def ids(self) -> set[str]:
        """The ids of every mail this queue holds, in any of its directories."""
        return {entry.id for directory in self._mail_dirs() for entry in _entries(directory)}

    def failures(self) -> list[tuple[str, str]]:
        """(id, first line of the reason) of every mail in failed/, oldest first."""
        result = []
        for name in sorted(os.listdir(self.failed)):
            if ID_RE.match(name) is None:
                continue
            try:
                reason = (self.failed / reason_name(name)).read_text("utf-8", "replace")
            except FileNotFoundError:
                reason = "(no reason recorded)"
            result.append((name, _first_line(reason)))
        return result

    def counts(self) -> dict[Path, int]:
        """How many mails sit in new/, cur/, failed/ and the finished directory."""
        return {directory: len(_entries(directory)) for directory in self._mail_dirs()}

    # --- upkeep -------------------------------------------------------------------------------

    def requeue(self, spool_id: str) -> bool:
        """Move a failed mail back to new/, attempts reset; False when failed/ has no such mail."""
        if ID_RE.match(spool_id) is None or not put_back(self.failed / spool_id, self.new, self.failed / reason_name(spool_id)):
            return False
        log.info("requeued %s", spool_id)
        return True

    def recover(self) -> int:
        """Put claimed-but-unfinished mail back, counted as interrupted; return how many came back.

        Mail in `cur/` whose claim is still held (its flock: a live `deliver`, another worker) is
        left alone. Also deletes what a crash left: old files in tmp/, a reason without its
        mail, an old attached file without its mail.
        """
        recovered = 0
        stale = time.time() - STALE_TMP.total_seconds()
        for spool_id, attempts, path in self.entries("cur"):
            lock = _Lock.take(path)
            if lock is None:  # held by a live process, or finished meanwhile
                continue
            if not path.exists():  # finished between our listing and our lock
                lock.release()
                continue
            counts = parse_counts(path.name)
            claim = Claim(id=spool_id, path=path, attempts=attempts, lock=lock, interrupted=counts[2] if counts else 0)
            try:
                self.interrupted(claim, "interrupted while being processed (crash or kill?)")
            finally:
                claim.release()
            recovered += 1
        for path in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < stale and not self._held_beside(path.name):
                    path.unlink()
        for path in self.failed.glob(f"*{REASON}"):  # a crash between reason and mail
            if not path.with_name(path.name[: -len(REASON)]).exists():
                path.unlink()
        if self.attached is not None and self.attached.is_dir():  # mail deleted by hand, or
            held = self.ids() | set(self.held())  # an interrupted deliver()
            for path in self.attached.glob(f"*{self.suffix}"):
                spool_id = path.name[: len(path.name) - len(self.suffix)]
                if spool_id not in held and path.stat().st_mtime < stale:
                    path.unlink()
        return recovered

    def _held_beside(self, name: str) -> bool:
        """Whether a file in tmp/ is a held mail with its attachment (the outbox's replies that wait
        for the remote, maybe for long): Spool.settle decides about those, age does not."""
        return self.attached is not None and ID_RE.match(name) is not None and self.attachment(name).exists()

    def prune(self, older_than: timedelta) -> int:
        """Delete finished mail finished more than `older_than` ago; return how many."""
        if self.finished is None:
            return 0
        limit = time.time() - older_than.total_seconds()
        pruned = 0
        for path in self.finished.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    pruned += 1
                    self._forget(path.name)
        return pruned

    # --- internals ----------------------------------------------------------------------------

    def _mail_dirs(self) -> list[Path]:
        return [self.new, self.cur, self.failed] + ([self.finished] if self.finished else [])

    def _put_back(self, claim: Claim, attempts: int, not_before: float | None, interrupted: int | None = None) -> None:
        target = self.new / format_name(claim.id, attempts, claim.interrupted if interrupted is None else interrupted)
        os.rename(claim.path, target)
        claim.release()
        if not_before is not None:
            os.utime(target, (not_before, not_before))

    def _to_failed(self, claim: Claim, reason: str, level: int = logging.ERROR) -> None:
        write_durably(self.failed / reason_name(claim.id), reason.encode("utf-8", "replace"))
        mid = _claimed_id(claim)
        os.rename(claim.path, self.failed / claim.id)
        claim.release()
        fsync_dir(self.failed)
        log.log(level, "%s (Message-ID %s) moved to %s: %s", claim.id, mid, self.failed.name, _first_line(reason))

    def _forget(self, spool_id: str) -> None:
        """Delete what is beside a mail that is gone."""
        if self.attached is not None:
            with contextlib.suppress(FileNotFoundError):
                self.attachment(spool_id).unlink()


def _entries(directory: Path) -> list[Entry]:
    out = []
    for name in sorted(os.listdir(directory)):
        parsed = parse_name(name)
        if parsed is not None:
            out.append(Entry(parsed[0], parsed[1], directory / name))
    return out


def _take(source: Path, target: Path, spool_id: str, attempts: int) -> Claim | None:
    """Lock `source`, then rename it to `target`: the lock is held before the mail is in
    cur/, so recover() never sees it there unlocked. None if someone else has it."""
    lock = _Lock.take(source)
    if lock is None:
        return None
    counts = parse_counts(source.name)
    try:
        os.rename(source, target)
    except FileNotFoundError:  # claimed (and maybe finished) by someone else meanwhile
        lock.release()
        return None
    except BaseException:
        lock.release()
        raise
    return Claim(id=spool_id, path=target, attempts=attempts, lock=lock, interrupted=counts[2] if counts else 0)


class Spool:
    """The incoming queue and the outbox under `root`, and what is particular to their mail."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.layout = layout = Layout(self.root)
        self.incoming = Queue(
            layout.incoming, layout.failed, finished=layout.processed, attached=layout.sources, suffix=SOURCE
        )
        self.outbox = Queue(layout.outbox, layout.outbox_failed, attached=layout.envelopes, suffix=ENVELOPE)
        self._counter = itertools.count()
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for path in [*self.incoming.dirs(), *self.outbox.dirs(), layout.envelopes]:
            path.mkdir(mode=DIR_MODE, exist_ok=True)

    @property
    def queues(self) -> tuple[Queue, Queue]:
        return self.incoming, self.outbox

    # --- incoming -----------------------------------------------------------------------------

    def accept(self, raw: bytes, *, source: str = "", keep_source: bool = False) -> str:
        """Keep `raw` (exactly these bytes) durably; return its spool id. OSError: not kept.

        With `keep_source`, `source` is recorded durably before the mail (`source(spool_id)`
        reads it back), so the mail knows where it came from as long as it is kept: e.g. which
        IMAP mailbox to file it back in when it fails. It costs two fsyncs more."""
        spool_id = self._new_id()
        kept = source.encode("utf-8", "replace") if keep_source and source else None
        self.incoming.deliver(spool_id, raw, attachment=kept)
        if log.isEnabledFor(logging.INFO):  # deliver, quiet, spools without reading the headers
            log.info("accepted %s from %s, Message-ID %s", spool_id, source or "?", _message_id(raw))
        return spool_id

    def keep_for_postmaster(self, raw: bytes, *, source: str = "") -> str:
        """Keep mail to our postmaster durably in the postmaster Maildir, which the worker never
        reads (the admin's mail client does); return its id. OSError: not kept."""
        box = self.layout.postmaster
        for path in (box, box / "tmp", box / "new", box / "cur"):
            if not path.is_dir():
                path.mkdir(mode=DIR_MODE, exist_ok=True)
                fsync_dir(path.parent)
        spool_id = self._new_id()
        write_durably(box / "new" / spool_id, raw, tmp=box / "tmp" / spool_id)
        log.warning("kept %s for the postmaster in %s, from %s, Message-ID %s", spool_id, box, source or "?", _message_id(raw))
        return spool_id

    def postmaster_full(self, max_mails: int, max_bytes: int) -> bool:
        """Whether the postmaster Maildir holds `max_mails` unread mails or `max_bytes` of them: mail
        from anyone lands there and no worker empties it, so it is bounded (the count is read, and
        stops, at `max_mails`)."""
        try:
            with os.scandir(self.layout.postmaster / "new") as entries:
                count = size = 0
                for entry in entries:
                    count += 1
                    size += entry.stat().st_size
                    if count >= max_mails or size >= max_bytes:
                        return True
        except FileNotFoundError:
            pass
        return False

    def postmaster_mail(self) -> dict[str, int]:
        """How many mails the postmaster Maildir holds: {"new": unread, "cur": read}."""
        box = self.layout.postmaster
        return {where: sum(1 for _ in (box / where).iterdir()) if (box / where).is_dir() else 0 for where in ("new", "cur")}

    def source(self, spool_id: str) -> str:
        """The `source` accept() recorded for this mail (keep_source), or "" when none was."""
        if ID_RE.match(spool_id) is None:
            return ""
        try:
            return self.incoming.attachment(spool_id).read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def recent(self, n: int) -> list[tuple[str, str]]:
        """(id, Message-ID) of the last `n` mails processed, newest first."""
        assert self.incoming.finished is not None
        paths = sorted((p for p in self.incoming.finished.iterdir() if ID_RE.match(p.name)), key=lambda p: p.name, reverse=True)
        out = []
        for p in paths[:n]:
            with contextlib.suppress(OSError):
                out.append((p.name, _message_id(p.read_bytes()[:65536]) or "(no Message-ID)"))
        return out

    def failed_message_ids(self) -> set[str]:
        """The Message-IDs of the mail in failed/ (a mail without one: the id the parser gives it)."""
        return set(self.failed_by_key())

    def failed_by_key(self, source: str | None = None) -> dict[str, list[str]]:
        """The spool ids of the mail in failed/ by Message-ID (mail.ids.mail_key); `source`: only
        the mail accept() recorded as coming from there (keep_source)."""
        # imported here, not at the top: deliver's way to keep a mail stays lean (see _message_id)
        from mailtrack.mail.ids import mail_key

        found: dict[str, list[str]] = {}
        for spool_id, _, path in self.incoming.entries("failed"):
            if source is not None and self.source(spool_id) != source:
                continue
            with contextlib.suppress(OSError):
                found.setdefault(mail_key(path.read_bytes()), []).append(spool_id)
        return found

    def forget_failed(self, spool_id: str) -> None:
        """Delete a mail of failed/ (with its reason and source): it is on the branch after all."""
        if ID_RE.match(spool_id) is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.incoming.failed / spool_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.incoming.failed / reason_name(spool_id)).unlink()
        self.incoming._forget(spool_id)
        log.info("%s: deleted from %s: it is on the branch now", spool_id, self.incoming.failed.name)

    def hold(self, raw: bytes, reason: str) -> str:
        """Keep a mail straight in failed/ with `reason` (one taken out of another store, e.g. a
        patch series that never completed); return its spool id."""
        spool_id = self._new_id()
        self.incoming.hold(spool_id, raw, reason)
        log.warning("%s (Message-ID %s) kept in %s: %s",  # a decision
                    spool_id, _message_id(raw) or "none", self.incoming.failed.name, _first_line(reason))
        return spool_id

    def prune(self, older_than: timedelta) -> int:
        """Delete processed mail finished more than `older_than` ago (and its source); return how many."""
        return self.incoming.prune(older_than)

    # --- outbox -------------------------------------------------------------------------------

    def queue_out(self, raw: bytes, *, sender: str, recipients: list[str], after: bytes | None = None) -> str:
        """Keep an outgoing mail and its envelope durably; return its spool id. `after`: held
        until the branch points at this commit (publish_out, discard_out, settle)."""
        if not recipients:
            raise ValueError("an outgoing mail needs at least one recipient")
        spool_id = self._new_id()
        data: dict[str, object] = {"sender": sender, "recipients": list(recipients)}
        if after is not None:
            data["after"] = after.decode("ascii")
        import json  # here, as the other uses: deliver's way to keep a mail stays lean

        self.outbox.deliver(spool_id, raw, attachment=json.dumps(data).encode(), hold=after is not None)
        log.info("%s %s to %s, Message-ID %s", "held" if after else "queued", spool_id, ", ".join(recipients), _message_id(raw))
        return spool_id

    def publish_out(self, spool_id: str) -> None:
        """An outgoing mail held by queue_out(after=...): its commit landed, it is queued."""
        self.outbox.publish(spool_id)
        log.info("queued %s (its commit landed)", spool_id)

    def discard_out(self, spool_id: str) -> None:
        """An outgoing mail held by queue_out(after=...): its commit did not land, it is deleted."""
        self.outbox.discard(spool_id)

    def settle(self, landed: Callable[[bytes], bool | None]) -> int:
        """The outgoing mails held for a commit (a crash left them, or [sync] keeps them until the
        remote holds it): queued when `landed(commit)` is True, deleted when False, left held when
        None (not yet); returns how many were queued. Call it holding the lock the writers hold
        from holding to publishing (tracker.store.Store.writing), so that none is half-way."""
        import json  # here, as the other uses: deliver's way to keep a mail stays lean

        published = 0
        stale = time.time() - STALE_TMP.total_seconds()
        for spool_id in self.outbox.held():
            try:
                after = json.loads(self.outbox.attachment(spool_id).read_text()).get("after")
            except (OSError, ValueError, AttributeError):
                continue  # a mail being queued (its envelope has no commit), or not ours to judge
            if not isinstance(after, str):
                with contextlib.suppress(OSError):  # a crash while queueing a mail that held for nothing
                    if (self.outbox.tmp / spool_id).stat().st_mtime < stale:
                        self.discard_out(spool_id)
                continue
            verdict = landed(after.encode("ascii"))
            if verdict is None:
                continue
            if verdict:
                self.publish_out(spool_id)
                log.warning("%s: queued: its commit %s landed", spool_id, after[:10])
                published += 1
            else:
                self.discard_out(spool_id)
                log.warning("%s: deleted: its commit %s never landed, or its record was dropped", spool_id, after[:10])
        return published

    def envelope(self, claim: Claim) -> Envelope:
        """The envelope queue_out() kept for an outgoing mail."""
        import json  # here, as the other uses: deliver's way to keep a mail stays lean

        data = json.loads(self.outbox.attachment(claim.id).read_text())
        return Envelope(sender=str(data["sender"]), recipients=[str(r) for r in data["recipients"]])

    # --- a claim of either queue, finished by the queue that holds it ---------------------------

    def done(self, claim: Claim) -> None:
        """The mail's effect is committed: incoming -> processed/, outbox -> deleted."""
        self._queue_of(claim).done(claim)

    def retry_later(self, claim: Claim, error: str, *, delay: timedelta = timedelta(0)) -> None:
        """Count a failed attempt; back to its queue (claimable after `delay`), or failed at MAX."""
        self._queue_of(claim).retry_later(claim, error, delay=delay)

    def fail(self, claim: Claim, reason: str, *, level: int = logging.ERROR) -> None:
        """Straight to its queue's failed directory with `reason` (see Queue.fail)."""
        self._queue_of(claim).fail(claim, reason, level=level)

    def requeue(self, spool_id: str) -> None:
        """Move a failed mail (incoming or outgoing) back to its queue, attempts reset."""
        if not any(queue.requeue(spool_id) for queue in self.queues):
            raise KeyError(f"no failed mail with id {spool_id!r}")

    def recover(self) -> int:
        """On start: put claimed-but-unfinished mail back (counted as interrupted); tidy up.

        Counting the interrupted attempt means a mail that crashes the process ends in failed/
        after MAX_INTERRUPTED starts instead of crashing it forever, while kills that are not the
        mail's fault never reach MAX_ATTEMPTS. Returns how many came back.
        """
        recovered = sum(queue.recover() for queue in self.queues)
        if recovered:
            log.warning("recovered %d mail(s) left claimed by an earlier run", recovered)
        return recovered

    def counts(self) -> dict[str, int]:
        """How many mails sit in each queue directory, by its path under the root."""
        return {
            str(directory.relative_to(self.root)): n for queue in self.queues for directory, n in queue.counts().items()
        }

    # --- internals ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return new_id(next(self._counter))

    def _queue_of(self, claim: Claim) -> Queue:
        for queue in self.queues:
            if queue.owns(claim):
                return queue
        raise ValueError(f"{claim.path} is not a claimed mail of this spool")
