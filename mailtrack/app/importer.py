"""`mailtrack import`: every mail of an mbox or a Maildir down the gateway's path.

Idempotent by Message-ID, so an interrupted import is resumed by running it again: what is on the
branch already is skipped, and what an earlier run kept in the failed queue is not kept again;
when it goes onto the branch this time, the copy an earlier import kept in failed is deleted, so
no mail is both on the branch and in failed. A repository locked by a lock file that cannot be
removed yet (tracker.store.Locked) stops the import with the file's path: resumed once it is gone.
The commits are written a batch at a time (tracker.store.Store.batch: one pack, one fsync, one ref
move): an import killed midway loses at most the last batch, which the next run imports again.
Issues, comments and the commits' author dates keep the mail's Date (Gateway.handle,
model.written_at: one in the future or before 1971 gives the time of the import). A reply that
comes before its parent in the archive waits for it (import_path). No reply (acknowledgement,
error, transcript) is queued to the archive's senders, and no notification either: each commit
carries IMPORTED_TRAILER, which the notifier skips, while live mail arriving meanwhile is
notified as usual. A mail that cannot be processed is kept in the spool's failed queue with the
traceback.
"""

from __future__ import annotations

import logging
import mailbox
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mailtrack.mail.ids import mail_key
from mailtrack.tracker.lookup import normalize_msgid
from mailtrack.tracker.store import Locked
from mailtrack.worker.outcome import Action
from mailtrack.worker.pipeline import Gateway

SOURCE = "import"  # the source recorded for the mail an import keeps in failed
ON_BRANCH = (Action.CREATED, Action.COMMENTED, Action.CHANGED, Action.DUPLICATE)


def messages(path: Path) -> tuple[int, Callable[[int], bytes]]:
    """How many messages an mbox file or a Maildir directory holds, and how to read the n-th (in order)."""
    if path.is_dir():
        box: mailbox.Mailbox = mailbox.Maildir(str(path), factory=None, create=False)
    elif path.is_file():
        box = mailbox.mbox(str(path), factory=None, create=False)
    else:
        raise FileNotFoundError(path)
    keys = sorted(box.keys()) if isinstance(box, mailbox.Maildir) else list(box.keys())
    return len(keys), lambda n: box.get_bytes(keys[n])


class Progress:
    """A one-line progress report on stderr: redrawn on a terminal, every 10% elsewhere."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream, self.total = stream, total
        self.tty = bool(stream and stream.isatty())
        self.start = time.monotonic()
        self.next_line = 0

    def show(self, done: int, counts: Counter[str], final: bool = False) -> None:
        if self.stream is None:
            return
        pct = 100 * done // self.total if self.total else 100
        if not (self.tty or final or pct >= self.next_line):
            return
        self.next_line = pct + 10
        rate = done / max(time.monotonic() - self.start, 1e-9)
        text = f"import: {done}/{self.total} ({pct}%), {rate:.0f} mails/s; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()


def import_path(gateway: Gateway, path: Path, progress: TextIO | None = None) -> Counter[str]:
    """Every mail of the archive, in its order; a reply met before its parent (a mail of the archive
    further on) waits for it, and is taken again once the parent is imported, or at the end (then
    it is what it would have been: a new issue). Only the positions of the waiting mails are kept."""
    total, read = messages(path)
    counts: Counter[str] = Counter()
    bar = Progress(progress, total)
    kept = gateway.spool.failed_message_ids()  # held by an earlier run: not kept twice
    ours = gateway.spool.failed_by_key(SOURCE)  # kept by an earlier import: deleted once on the branch
    waiting: dict[str, list[int]] = {}  # a Message-ID awaited -> the mails (by position) that wait for it
    early: dict[int, None] = {}  # the mails that wait, in archive order
    done = 0

    def take(key: int, wait: bool) -> None:
        todo = [(key, wait)]
        while todo:
            key, wait = todo.pop(0)
            raw = read(key)
            try:
                out = gateway.handle(raw, imported=True, hold_early=wait)  # old mail: nobody is mailed, its Date is kept
            except Locked:  # not the mail's fault: every mail after it would fail too
                bar.show(done, counts, final=True)
                raise
            except Exception:
                counts["failed"] += 1
                _keep_failed(gateway, raw, traceback.format_exc(), kept, logging.ERROR)
                continue
            if out.action == Action.WAITING and out.route is not None:
                early[key] = None
                for mid in out.route.awaits:
                    waiting.setdefault(normalize_msgid(mid), []).append(key)
                continue
            counts[out.action] += 1
            if out.action == Action.HELD:
                _keep_failed(gateway, raw, out.reason, kept, logging.WARNING)  # a decision, not a fault
            elif out.action in ON_BRANCH:
                for spool_id in ours.pop(mail_key(raw), []):  # once its commit is on the disk
                    gateway.store.when_durable(_Forget(gateway, spool_id))
            if out.commit:
                for woken in waiting.pop(normalize_msgid(out.message_id), []):
                    if woken in early:
                        del early[woken]
                        todo.append((woken, True))

    with gateway.store.batch():  # commits reach the disk a pack at a time (tracker.store.Store.batch)
        for key in range(total):
            take(key, True)
            done += 1
            bar.show(done, counts)
        while early:  # their parents are not in the archive: taken as they come, as if they had not waited
            key = next(iter(early))
            del early[key]
            take(key, False)
    bar.show(done, counts, final=True)
    return counts


@dataclass
class _Forget:
    """The copy an earlier import kept in failed, deleted once the mail's commit is durable (tracker.store.Held)."""

    gateway: Gateway
    spool_id: str

    def publish(self) -> None:
        self.gateway.spool.forget_failed(self.spool_id)

    def discard(self) -> None:
        pass  # kept: the mail is not on the branch


def _keep_failed(gateway: Gateway, raw: bytes, reason: str, kept: set[str], level: int) -> None:
    mid = gateway.parse(raw).message_id
    if mid in kept:
        return
    kept.add(mid)
    spool_id = gateway.spool.accept(raw, source=SOURCE, keep_source=True)
    claim = gateway.spool.incoming.claim_id(spool_id)
    if claim is not None:
        gateway.spool.incoming.fail(claim, reason, level=level)
