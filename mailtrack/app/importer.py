"""`mailtrack import`: every mail of an mbox or a Maildir down the gateway's path.

Idempotent by Message-ID, so an interrupted import is resumed by running it again: what is on the
branch already is skipped, and what an earlier run kept in the failed queue is not kept again.
Issues, comments and the commits' author dates keep the mail's Date (Gateway.handle,
model.written_at: one in the future or before 1971 gives the time of the import). No reply (acknowledgement,
error, transcript) is queued to the archive's senders, and no notification either: each commit
carries IMPORTED_TRAILER, which the notifier skips, while live mail arriving meanwhile is
notified as usual. A mail that cannot be processed is kept in the spool's
failed queue with the traceback.
"""

from __future__ import annotations

import logging
import mailbox
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from mailtrack.worker.pipeline import Gateway


def messages(path: Path) -> tuple[int, Iterator[bytes]]:
    """(how many, the raw messages) of an mbox file or a Maildir directory."""
    if path.is_dir():
        box: mailbox.Mailbox = mailbox.Maildir(str(path), factory=None, create=False)
    elif path.is_file():
        box = mailbox.mbox(str(path), factory=None, create=False)
    else:
        raise FileNotFoundError(path)
    keys = sorted(box.keys()) if isinstance(box, mailbox.Maildir) else list(box.keys())
    return len(keys), (box.get_bytes(k) for k in keys)


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
    total, raws = messages(path)
    counts: Counter[str] = Counter()
    bar = Progress(progress, total)
    kept = gateway.spool.failed_message_ids()  # held by an earlier run: not kept twice
    done = 0
    for raw in raws:
        try:
            out = gateway.handle(raw, imported=True)  # old mail: nobody is mailed, and its Date is kept
            counts[out.action] += 1
            if out.action == "held":
                _keep_failed(gateway, raw, out.reason, kept, logging.WARNING)  # a decision, not a fault
        except Exception:
            counts["failed"] += 1
            _keep_failed(gateway, raw, traceback.format_exc(), kept, logging.ERROR)
        done += 1
        bar.show(done, counts)
    bar.show(done, counts, final=True)
    return counts


def _keep_failed(gateway: Gateway, raw: bytes, reason: str, kept: set[str], level: int) -> None:
    mid = gateway.parse(raw).message_id
    if mid in kept:
        return
    kept.add(mid)
    spool_id = gateway.spool.accept(raw, source="import")
    claim = gateway.spool.incoming.claim_id(spool_id)
    if claim is not None:
        gateway.spool.incoming.fail(claim, reason, level=level)
