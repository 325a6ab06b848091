"""Writing a file under the spool so that a crash never loses it: write to a temporary name, fsync,
rename into place, fsync the directory (Mailman's switchboard, public-inbox-mda's emergency copy).

The one way every file of the spool is written (queue.spool re-exports it). It imports nothing but
os and contextlib: `mailtrack deliver` handing its mail to a running `serve` keeps it through here
without the rest of the spool (queue/handoff.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

FILE_MODE = 0o640


def fsync_dir(path: Path) -> None:
    """Make the names in a directory durable (after a rename into it or out of it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
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
    if tmp is None:
        import secrets  # here: a queue's mail has its tmp/ name, and deliver starts lean without it

        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    write_synced(tmp, data)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def deliver(maildir: Path, name: str, data: bytes) -> None:
    """Keep `data` as `<maildir>/new/<name>`, written as `<maildir>/tmp/<name>` first (a Maildir
    delivery). OSError: not kept, and nothing left in tmp/."""
    write_durably(maildir / "new" / name, data, tmp=maildir / "tmp" / name)


def open_locked(path: Path, flags: int, mode: int = FILE_MODE, *, shared: bool = False) -> int | None:
    """Open `path` (os.open's `flags`, `mode`) and flock it without waiting: the descriptor, holding
    the lock until it is closed; None when another holds it (then nothing stays open). The open's
    own OSError (no such file) is the caller's. The spool's one non-blocking lock: a claim on a
    mail, serve's `serve.lock`, and deliver's look at it (queue/handoff.py)."""
    fd = os.open(path, flags, mode)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
