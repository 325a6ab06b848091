"""Handing a mail over to a running `mailtrack serve`: is its worker alive on this spool, and waking it.

A `mailtrack serve` whose worker runs holds an exclusive flock on `serve.lock` under the spool root
(`Layout.serve_lock`) for as long as the worker loop runs (`Advert`). The kernel drops the lock
when the process ends, however it ends (kill -9 too), so the sign is never stale: a file left
behind is only a file, and the next serve takes the lock again. `mailtrack deliver` asks
`worker_alive`: a non-blocking shared flock that would block means a live worker (delivers only
ever take it shared, for an instant, so they never mistake each other for a worker). Then deliver
only spools the mail (`keep`: into incoming/new, as `Spool.accept` does) and `wake`s the worker: a byte written, without blocking,
to the named pipe `wake.fifo` (`Layout.wake_fifo`) whose read end the worker holds open. With no
reader (the pipe a dead serve left) the open fails with ENXIO and nothing is written; the worker
looks at the incoming queue at each round anyway (at its next poll tick at the latest).

The race: serve may die, or stop, just after deliver saw it alive. The mail is then in the
incoming queue, durably, before anyone is told, so the next `mailtrack serve` or `mailtrack
process` takes it: nothing is lost, it waits. deliver narrows the window by asking again once the
mail is kept, and processes the mail itself when the worker has gone meanwhile (a claim is
exclusive, so whichever process claims it first processes it, exactly once).

Only the standard library's os, fcntl, select and stat, the layout and the durable write: no
logging, no dataclasses; deliver's way through here must stay lean (tests/test_handoff.py checks
what it imports).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat

from mailtrack.queue import durable
from mailtrack.queue.layout import Layout, new_id

FIFO_MODE = 0o600
LOCK_MODE = 0o640


def worker_alive(layout: Layout) -> bool:
    """Whether a `mailtrack serve` worker runs on this spool right now (it holds `serve.lock`)."""
    try:
        # O_NONBLOCK: should something else stand there (a named pipe), the open does not wait for a writer
        fd = durable.open_locked(layout.serve_lock, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW, shared=True)
    except OSError:  # none: no serve ever ran here (or we may not read it, or lock it: then deliver does the work)
        return False
    if fd is None:
        return True
    os.close(fd)  # and with it the shared lock we took
    return False


def keep(layout: Layout, raw: bytes) -> str:
    """Keep `raw` durably in the incoming queue (its new/), as `Spool.accept` does but without the
    rest of the spool; return its spool id. OSError: not kept (nothing left behind)."""
    spool_id = new_id(0)
    durable.deliver(layout.incoming, spool_id, raw)
    return spool_id


def wake(layout: Layout) -> bool:
    """Wake the worker reading `wake.fifo`, without waiting; False when no one reads it."""
    try:
        fd = os.open(layout.wake_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # ENXIO: no reader (its serve is gone); ENOENT: no serve ever ran here
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):  # a file in its place: never fill it up
            return False
        with contextlib.suppress(BlockingIOError):  # the pipe is full: wakes enough are pending
            os.write(fd, b"\n")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _open_fifo(path: os.PathLike[str]) -> int:
    """The read end of the named pipe at `path` (made if missing; another file there is replaced),
    opened read-write so that it never reads end-of-file and never blocks. OSError: cannot."""
    try:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            os.unlink(path)  # the layout reserves the name: not a mail, not the admin's
    except FileNotFoundError:
        pass
    try:
        os.mkfifo(path, FIFO_MODE)
    except FileExistsError:  # left by an earlier serve (or made by another one meanwhile)
        pass
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EEXIST, "not a named pipe", str(path))
    return fd


class Advert:
    """What a serve worker holds while it runs: the read end of `wake.fifo`, then the exclusive
    flock on `serve.lock` (`hold`; one serve a spool holds it, another takes it when that one
    ends). OSError from the constructor: no pipe, so no handoff (deliver then does the work)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._fifo = _open_fifo(layout.wake_fifo)  # first: whoever sees the lock held can wake us
        self._lock = -1

    @property
    def holding(self) -> bool:
        return self._lock >= 0

    def hold(self) -> bool:
        """Take `serve.lock` if no other serve holds it; True when this one holds it now. A deliver
        holds it shared for an instant only: this is tried again (`wait`'s caller, each tick)."""
        if self._lock >= 0:
            return True
        if self._fifo < 0:
            return False
        fd = durable.open_locked(self.layout.serve_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LOCK_MODE)
        if fd is None:
            return False
        self._lock = fd
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a wake; True when one came (every pending one is read)."""
        if self._fifo < 0:
            return False
        ready, _, _ = select.select([self._fifo], [], [], timeout)
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fifo, 4096):
                pass
        return True

    def poke(self) -> None:
        """Wake our own `wait` (to stop it): a byte into our own pipe."""
        if self._fifo >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self._fifo, b"\n")

    def close(self) -> None:
        """Stop advertising: the lock first (a deliver from now on does the work itself), then the pipe."""
        for name in ("_lock", "_fifo"):
            fd = getattr(self, name)
            setattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
