"""The durable queues between the network edges and the worker: Maildir-style directories.

A mail is *accepted* once it has been written to `tmp/`, fsynced, renamed into `new/` and the
directory fsynced (Mailman's switchboard, public-inbox-mda's emergency copy). A worker claims a
mail by renaming `new/X` to `cur/X`: the rename is atomic, so a lost race simply means someone
else has it. The mail leaves the queue only after its effect is committed (`done`).

    <root>/incoming/{tmp,new,cur}   mail received, waiting for or being processed
    <root>/failed/                  gave up or quarantined; `<name>.reason` beside each mail
    <root>/processed/               done, kept until `prune()`
    <root>/sources/<id>             where a mail came from (`accept(keep_source=True)`), made
                                    when first needed; deleted with the mail
    <root>/outbox/{tmp,new,cur}     mail we send; `outbox/env/<id>.json` holds its envelope
    <root>/outbox-failed/           mail we could not send; `<name>.reason` beside each mail

File names are `<id>` or `<id>:1,<attempts>` once a mail has been retried (the Maildir
"experimental" info suffix), so the attempt count moves with the mail in the same rename and a
crash can never lose it. Ids sort by arrival: `<time-ns, 20 digits>.P<pid>Q<counter>.<host>`.
A claim holds an exclusive flock on its file for as long as it lives (the renames keep the
inode, so the lock moves with the mail): `recover()` puts back only the mail in `cur/` that no
live process holds, so a `mailtrack deliver` run by the MTA and a `mailtrack process` run by cron
(which recovers at start) can share a spool. The kernel drops the lock when its holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from mailtrack.mail.ids import header_message_id, mail_key

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
DIR_MODE = 0o750
FILE_MODE = 0o640
STALE_TMP = timedelta(hours=36)  # the Maildir rule for files left in tmp/ by a crashed writer

ID_RE = re.compile(r"^[0-9]{20}\.P[0-9]+Q[0-9]+\.[A-Za-z0-9_-]+$")
_NAME_RE = re.compile(r"^(?P<id>[0-9]{20}\.P[0-9]+Q[0-9]+\.[A-Za-z0-9_-]+)(?::1,(?P<n>[0-9]+))?$")
_REASON = ".reason"


class _Lock:
    """An exclusive flock on one open file; released by release(), or when garbage-collected."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, path: Path) -> _Lock | None:
        """Lock `path` without waiting; None when another claim holds it (or it is gone)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

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
    attempts: int
    lock: _Lock | None = field(default=None, compare=False, repr=False)

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


def _claimed_id(claim: Claim) -> str:
    """The Message-ID of a claimed mail, for a log line ("none", or "?" when it cannot be read)."""
    try:
        with open(claim.path, "rb") as f:
            return header_message_id(f.read(65536)) or "none"
    except OSError:
        return "?"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist), write `data` and fsync it; no file is left on error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def write_durably(path: Path, data: bytes, *, tmp: Path | None = None) -> None:
    """Write `data` to `path` so that it survives a crash: tmp file, fsync, rename, fsync dir."""
    tmp = tmp or path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_synced(tmp, data)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _parse_name(name: str) -> tuple[str, int] | None:
    match = _NAME_RE.match(name)
    if match is None:
        return None
    return match.group("id"), int(match.group("n") or 0)


def _name(spool_id: str, attempts: int) -> str:
    return spool_id if attempts == 0 else f"{spool_id}:1,{attempts}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


@dataclass(frozen=True)
class _Queue:
    """One Maildir (tmp/new/cur) with its failed directory and, maybe, its done directory."""

    dir: Path
    failed: Path
    done: Path | None  # None: done() deletes the mail

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
        return [self.dir, self.tmp, self.new, self.cur, self.failed] + (
            [self.done] if self.done else []
        )


class Spool:
    """The incoming queue, the outbox, and their failed and processed directories under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._incoming = _Queue(
            self.root / "incoming", self.root / "failed", self.root / "processed"
        )
        self._outbox = _Queue(self.root / "outbox", self.root / "outbox-failed", None)
        self._envelopes = self._outbox.dir / "env"
        self._sources = self.root / "sources"
        self._counter = itertools.count()
        host = socket.gethostname() or "localhost"
        self._host = re.sub(r"[^A-Za-z0-9_-]", "_", host)[:64]
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for path in [*self._incoming.dirs(), *self._outbox.dirs(), self._envelopes]:
            path.mkdir(mode=DIR_MODE, exist_ok=True)

    # --- incoming -----------------------------------------------------------------------------

    def accept(self, raw: bytes, *, source: str = "", keep_source: bool = False) -> str:
        """Keep `raw` (exactly these bytes) durably; return its spool id. OSError: not kept.

        With `keep_source`, `source` is recorded durably before the mail (`source(spool_id)`
        reads it back), so the mail knows where it came from as long as it is kept: e.g. which
        IMAP mailbox to file it back in when it fails. It costs two fsyncs more."""
        spool_id = self._new_id()
        if keep_source and source:
            try:
                self._sources.mkdir(mode=DIR_MODE)
            except FileExistsError:
                pass
            else:
                _fsync_dir(self.root)
            write_durably(self._sources / spool_id, source.encode("utf-8", "replace"))
        try:
            self._deliver(self._incoming, raw, spool_id=spool_id)
        except BaseException:
            with contextlib.suppress(OSError):
                (self._sources / spool_id).unlink()
            raise
        log.info("accepted %s from %s, Message-ID %s", spool_id, source or "?", header_message_id(raw))
        return spool_id

    def source(self, spool_id: str) -> str:
        """The `source` accept() recorded for this mail (keep_source), or "" when none was."""
        if ID_RE.match(spool_id) is None:
            return ""
        try:
            return (self._sources / spool_id).read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def claim(self) -> Claim | None:
        """Take the oldest waiting mail (not one delayed by retry_later), or None."""
        return self._claim(self._incoming)

    def claims(self) -> Iterator[Claim]:
        """Claim mail after mail until none is waiting; finish each before asking for the next."""
        while (claim := self.claim()) is not None:
            yield claim

    def claim_id(self, spool_id: str) -> Claim | None:
        """Take this mail (`mailtrack deliver` processes the one it kept), or None if someone has it."""
        if ID_RE.match(spool_id) is None:
            return None
        queue = self._incoming
        return self._take(queue.new / spool_id, queue.cur / spool_id, spool_id, 0)

    def recent(self, n: int) -> list[tuple[str, str]]:
        """(id, Message-ID) of the last `n` mails processed, newest first."""
        assert self._incoming.done is not None
        paths = sorted((p for p in self._incoming.done.iterdir() if ID_RE.match(p.name)), key=lambda p: p.name, reverse=True)
        out = []
        for p in paths[:n]:
            with contextlib.suppress(OSError):
                out.append((p.name, header_message_id(p.read_bytes()[:65536]) or "(no Message-ID)"))
        return out

    def failures(self) -> list[tuple[str, str]]:
        """(id, first line of the reason) of every mail in failed/, oldest first."""
        return self._failures(self._incoming)

    def failed_message_ids(self) -> set[str]:
        """The Message-IDs of the mail in failed/ (a mail without one: the id the parser gives it)."""
        ids = set()
        for name in os.listdir(self._incoming.failed):
            if ID_RE.match(name):
                with contextlib.suppress(OSError):
                    raw = (self._incoming.failed / name).read_bytes()
                    ids.add(mail_key(raw))
        return ids

    def prune(self, older_than: timedelta) -> int:
        """Delete processed mail finished more than `older_than` ago; return how many."""
        assert self._incoming.done is not None
        limit = time.time() - older_than.total_seconds()
        pruned = 0
        for path in self._incoming.done.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    pruned += 1
                    with contextlib.suppress(FileNotFoundError):
                        (self._sources / path.name).unlink()
        return pruned

    # --- outbox -------------------------------------------------------------------------------

    def queue_out(self, raw: bytes, *, sender: str, recipients: list[str]) -> str:
        """Keep an outgoing mail and its envelope durably; return its spool id."""
        if not recipients:
            raise ValueError("an outgoing mail needs at least one recipient")
        spool_id = self._new_id()
        envelope = json.dumps({"sender": sender, "recipients": list(recipients)}).encode()
        write_durably(self._envelopes / f"{spool_id}.json", envelope)
        try:
            self._deliver(self._outbox, raw, spool_id=spool_id)
        except BaseException:
            with contextlib.suppress(OSError):
                (self._envelopes / f"{spool_id}.json").unlink()
            raise
        log.info("queued %s to %s, Message-ID %s", spool_id, ", ".join(recipients), header_message_id(raw))
        return spool_id

    def claim_out(self) -> Claim | None:
        """Take the oldest outgoing mail waiting to be sent, or None."""
        return self._claim(self._outbox)

    def claims_out(self) -> Iterator[Claim]:
        while (claim := self.claim_out()) is not None:
            yield claim

    def envelope(self, claim: Claim) -> Envelope:
        """The envelope queue_out() kept for an outgoing mail."""
        data = json.loads((self._envelopes / f"{claim.id}.json").read_text())
        return Envelope(sender=str(data["sender"]), recipients=[str(r) for r in data["recipients"]])

    def failures_out(self) -> list[tuple[str, str]]:
        return self._failures(self._outbox)

    # --- both queues --------------------------------------------------------------------------

    def done(self, claim: Claim) -> None:
        """The mail's effect is committed: incoming -> processed/, outbox -> deleted."""
        queue = self._queue_of(claim)
        if queue.done is None:
            claim.path.unlink()
            claim.release()
            with contextlib.suppress(FileNotFoundError):
                (self._envelopes / f"{claim.id}.json").unlink()
            return
        target = queue.done / claim.id
        os.rename(claim.path, target)
        claim.release()
        os.utime(target)  # prune() counts the retention from now, not from arrival

    def retry_later(self, claim: Claim, error: str, *, delay: timedelta = timedelta(0)) -> None:
        """Count a failed attempt; back to new/ (claimable after `delay`), or to failed/ at MAX."""
        queue = self._queue_of(claim)
        attempts = claim.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            summary = f"failed {attempts} times, last error: {_last_line(error)}"
            self._to_failed(queue, claim, f"{summary}\n\n{error}")
            return
        log.warning("%s (Message-ID %s) failed (attempt %d of %d): %s",
                    claim.id, _claimed_id(claim), attempts, MAX_ATTEMPTS, _last_line(error))
        target = queue.new / _name(claim.id, attempts)
        os.rename(claim.path, target)
        claim.release()
        if delay > timedelta(0):
            not_before = time.time() + delay.total_seconds()
            os.utime(target, (not_before, not_before))

    def fail(self, claim: Claim, reason: str, *, level: int = logging.ERROR) -> None:
        """Straight to the failed directory with `reason`; logged at `level`: ERROR for a failure
        (a mail that cannot be delivered), WARNING for a decision (a mail held by policy)."""
        self._to_failed(self._queue_of(claim), claim, reason, level)

    def hold(self, raw: bytes, reason: str) -> str:
        """Keep a mail straight in failed/ with `reason` (one taken out of another store, e.g. a
        patch series that never completed); return its spool id."""
        queue = self._incoming
        spool_id = self._new_id()
        write_durably(queue.failed / f"{spool_id}{_REASON}", reason.encode("utf-8", "replace"))
        write_durably(queue.failed / spool_id, raw, tmp=queue.tmp / spool_id)
        log.warning("%s (Message-ID %s) kept in %s: %s",  # a decision
                    spool_id, header_message_id(raw) or "none", queue.failed.name, _first_line(reason))
        return spool_id

    def requeue(self, spool_id: str) -> None:
        """Move a failed mail (incoming or outgoing) back to its queue, attempts reset."""
        if ID_RE.match(spool_id):
            for queue in (self._incoming, self._outbox):
                try:
                    os.rename(queue.failed / spool_id, queue.new / spool_id)
                except FileNotFoundError:
                    continue
                _fsync_dir(queue.new)
                with contextlib.suppress(FileNotFoundError):
                    (queue.failed / f"{spool_id}{_REASON}").unlink()
                log.info("requeued %s", spool_id)
                return
        raise KeyError(f"no failed mail with id {spool_id!r}")

    def recover(self) -> int:
        """On start: put claimed-but-unfinished mail back (counting an attempt); tidy up.

        Mail in `cur/` whose claim is still held (its flock: a live `deliver`, another worker) is
        left alone. Counting the interrupted attempt means a mail that crashes the process ends in failed/
        after MAX_ATTEMPTS starts instead of crashing it forever. Returns how many came back.
        """
        recovered = 0
        stale = time.time() - STALE_TMP.total_seconds()
        for queue in (self._incoming, self._outbox):
            for path in sorted(queue.cur.iterdir()):
                parsed = _parse_name(path.name)
                if parsed is None:
                    continue
                lock = _Lock.take(path)
                if lock is None:  # held by a live process, or finished meanwhile
                    continue
                if not path.exists():  # finished between our listing and our lock
                    lock.release()
                    continue
                claim = Claim(id=parsed[0], path=path, attempts=parsed[1], lock=lock)
                try:
                    self.retry_later(claim, "interrupted while being processed (crash or kill?)")
                finally:
                    claim.release()
                recovered += 1
            for path in queue.tmp.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < stale:
                        path.unlink()
            for path in queue.failed.glob(f"*{_REASON}"):  # a crash between reason and mail
                if not path.with_name(path.name[: -len(_REASON)]).exists():
                    path.unlink()
        kept = {
            parsed[0]
            for directory in (self._outbox.new, self._outbox.cur, self._outbox.failed)
            for name in os.listdir(directory)
            if (parsed := _parse_name(name)) is not None
        }
        for path in self._envelopes.glob("*.json"):  # mail sent, or queue_out() interrupted
            if path.name[: -len(".json")] not in kept and path.stat().st_mtime < stale:
                path.unlink()
        if self._sources.is_dir():  # sources of mail deleted by hand, or of an interrupted accept()
            incoming = self._incoming
            assert incoming.done is not None
            held = {
                parsed[0]
                for directory in (incoming.new, incoming.cur, incoming.failed, incoming.done)
                for name in os.listdir(directory)
                if (parsed := _parse_name(name)) is not None
            }
            for path in self._sources.iterdir():
                if path.name not in held and path.stat().st_mtime < stale:
                    path.unlink()
        if recovered:
            log.warning("recovered %d mail(s) left claimed by an earlier run", recovered)
        return recovered

    def counts(self) -> dict[str, int]:
        """How many mails sit in each queue directory."""

        def count(path: Path) -> int:
            return sum(1 for p in path.iterdir() if _parse_name(p.name) is not None)

        incoming, outbox = self._incoming, self._outbox
        assert incoming.done is not None
        return {
            "incoming/new": count(incoming.new),
            "incoming/cur": count(incoming.cur),
            "failed": count(incoming.failed),
            "processed": count(incoming.done),
            "outbox/new": count(outbox.new),
            "outbox/cur": count(outbox.cur),
            "outbox-failed": count(outbox.failed),
        }

    # --- internals ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{time.time_ns():020d}.P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def _deliver(self, queue: _Queue, raw: bytes, *, spool_id: str = "") -> str:
        spool_id = spool_id or self._new_id()
        write_durably(queue.new / spool_id, raw, tmp=queue.tmp / spool_id)
        return spool_id

    def _claim(self, queue: _Queue) -> Claim | None:
        now = time.time()
        for name in sorted(os.listdir(queue.new)):
            parsed = _parse_name(name)
            if parsed is None:
                continue
            source = queue.new / name
            try:
                if os.stat(source).st_mtime > now:  # delayed by retry_later
                    continue
            except FileNotFoundError:  # someone else claimed it first
                continue
            claim = self._take(source, queue.cur / name, parsed[0], parsed[1])
            if claim is not None:
                return claim
        return None

    @staticmethod
    def _take(source: Path, target: Path, spool_id: str, attempts: int) -> Claim | None:
        """Lock `source`, then rename it to `target`: the lock is held before the mail is in
        cur/, so recover() never sees it there unlocked. None if someone else has it."""
        lock = _Lock.take(source)
        if lock is None:
            return None
        try:
            os.rename(source, target)
        except FileNotFoundError:  # claimed (and maybe finished) by someone else meanwhile
            lock.release()
            return None
        except BaseException:
            lock.release()
            raise
        return Claim(id=spool_id, path=target, attempts=attempts, lock=lock)

    def _queue_of(self, claim: Claim) -> _Queue:
        for queue in (self._incoming, self._outbox):
            if claim.path.parent == queue.cur:
                return queue
        raise ValueError(f"{claim.path} is not a claimed mail of this spool")

    def _to_failed(self, queue: _Queue, claim: Claim, reason: str, level: int = logging.ERROR) -> None:
        write_durably(queue.failed / f"{claim.id}{_REASON}", reason.encode("utf-8", "replace"))
        mid = _claimed_id(claim)
        os.rename(claim.path, queue.failed / claim.id)
        claim.release()
        _fsync_dir(queue.failed)
        log.log(level, "%s (Message-ID %s) moved to %s: %s", claim.id, mid, queue.failed.name, _first_line(reason))

    def _failures(self, queue: _Queue) -> list[tuple[str, str]]:
        result = []
        for name in sorted(os.listdir(queue.failed)):
            if ID_RE.match(name) is None:
                continue
            try:
                reason = (queue.failed / f"{name}{_REASON}").read_text("utf-8", "replace")
            except FileNotFoundError:
                reason = "(no reason recorded)"
            result.append((name, _first_line(reason)))
        return result
