"""Replies kept until their parent arrives: `<spool>/waiting/<id>`, and `<id>.json` beside it.

A reply whose In-Reply-To and References name no mail we know may only have overtaken its
parent (two MX hosts, a slow relay). The worker parks it here, out of the incoming queue, with the
Message-IDs it waits for, its sender and the time it stops waiting; it goes back to `incoming/new`
(`release`) when one of those Message-IDs is committed or when its time is up, and is then
processed as any mail. The worker decides (worker.route, worker.runner); this module only keeps.

Durable as the queues are: the note is written (write-fsync-rename) before the mail is renamed in
from `incoming/cur` (the claim's flock held until then), and the mail is renamed back before its
note is deleted. A crash leaves a note without its mail (deleted when next read) or a mail without
its note (due at once): never a lost mail. The caller keeps the numbers bounded (`count`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mailtrack.queue.layout import ID_RE, NOTE, Layout
from mailtrack.queue.spool import Claim, fsync_dir, put_back, write_durably

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Note:
    """What a parked mail waits for."""

    awaits: tuple[str, ...]  # Message-IDs, as the caller compares them
    sender: str  # lowercase address, for the per-sender bound
    until: float  # seconds since the epoch: then it stops waiting


class Waiting:
    """The parked replies of one spool. Reading is cheap: each note is read once per process."""

    def __init__(self, layout: Layout) -> None:
        self.dir = layout.waiting
        self.new = layout.incoming / "new"
        self._notes: dict[str, Note | None] = {}  # id -> its note (None: none could be read)
        self._listed: dict[str, Note | None] | None = None  # the last listing, and the folder's mtime then
        self._mtime = 0

    def park(self, claim: Claim, note: Note) -> None:
        """Move a claimed incoming mail here with its note; the claim is finished."""
        self.dir.mkdir(mode=0o750, exist_ok=True)
        data = json.dumps({"awaits": list(note.awaits), "sender": note.sender, "until": note.until}).encode()
        write_durably(self.dir / f"{claim.id}{NOTE}", data)
        os.rename(claim.path, self.dir / claim.id)  # the flock moves with the inode: still ours
        fsync_dir(self.dir)
        claim.release()
        self._notes[claim.id] = note
        self._listed = None

    def release(self, spool_id: str) -> bool:
        """Back to the incoming queue, claimable now; False when it is not here (released already)."""
        if ID_RE.match(spool_id) is None:
            return False
        released = put_back(self.dir / spool_id, self.new, self.dir / f"{spool_id}{NOTE}")
        self._notes.pop(spool_id, None)
        self._listed = None
        return released

    def notes(self) -> dict[str, Note | None]:
        """Every parked mail and its note, oldest first (None: its note is missing or unreadable).

        The folder is listed again only when its mtime moved, or is less than a second old (a change
        within the clock's tick would not move it: git's "racy" rule)."""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._listed is not None and mtime == self._mtime and time.time_ns() - mtime > 1_000_000_000:
            return self._listed
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return {}
        here = {n for n in names if ID_RE.match(n)}
        for name in names:  # a note whose mail is gone: released by a crashed process, or a crash in park()
            if name.endswith(NOTE) and name[: -len(NOTE)] not in here and _older_than(self.dir / name, 60):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
        for gone in set(self._notes) - here:
            del self._notes[gone]
        for spool_id in sorted(here - set(self._notes)):
            self._notes[spool_id] = _read(self.dir / f"{spool_id}{NOTE}")
        self._listed, self._mtime = {i: self._notes[i] for i in sorted(here)}, mtime
        return self._listed

    def count(self, sender: str = "") -> int:
        """How many mails wait, in all or from `sender`."""
        notes = self.notes()
        if not sender:
            return len(notes)
        return Counter(n.sender for n in notes.values() if n is not None)[sender]

    def awaiting(self, message_id: str) -> list[str]:
        """The parked mails that wait for this Message-ID."""
        return [i for i, n in self.notes().items() if n is not None and message_id in n.awaits]


def _read(path: Path) -> Note | None:
    try:
        data = json.loads(path.read_bytes())
        return Note(tuple(str(m) for m in data["awaits"]), str(data["sender"]), float(data["until"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return path.stat().st_mtime < time.time() - seconds
    except FileNotFoundError:
        return False


