"""Every path under the spool root, and the names of the mail files in it.

This module is the one place that knows the spool's layout; everything else asks it (`Layout`)
instead of joining strings to the root. The layout is on disk, so a change here is a migration:
an existing spool must keep working.

    <root>/incoming/{tmp,new,cur}   incoming      mail received, waiting for or being processed
    <root>/failed/                  failed        gave up or quarantined; `<id>.reason` beside
                                                  each mail
    <root>/processed/               processed     done, kept until `Spool.prune()`
    <root>/sources/<id>             sources       where a mail came from (`accept(keep_source=True)`),
                                                  made when first needed; deleted with the mail
    <root>/outbox/{tmp,new,cur}     outbox        mail we send
    <root>/outbox/env/<id>.json     envelopes     the envelope of an outgoing mail (sender,
                                                  recipients); deleted with the mail
    <root>/outbox-failed/           outbox_failed mail we could not send; `<id>.reason` beside each
    <root>/outbox-state/<id>.json   outbox_state  what the sender's attempts taught it (who has the
                                                  mail, who refused it, when to try again)
    <root>/waiting/<id>             waiting       replies kept until their parent comes (queue.waiting), and
                                                  `<id>.json` beside each: what it waits for, until when
    <root>/patches/<key>/<gen>/     patches       patch series being gathered: a folder for one
                                                  sender's series in a thread, one below it per
                                                  generation (`<n>.eml` each part, `done`)
    <root>/optouts.json             optouts       who unsubscribed from which issue
    <root>/optouts.lock             optouts_lock  flock held while optouts.json is rewritten
    <root>/replies.sqlite           replies_db    the rate limiter of our replies to senders (SQLite
                                                  in WAL mode: `-wal` and `-shm` files beside it)
    <root>/imap-state/              imap_state    the IMAP pollers' UID state, `imap-<mailbox>.json`,
                                                  and their mails in Failed, `imap-<mailbox>.failed.json`
                                                  (default of `[[imap]] state_dir`)
    <root>/postmaster/{tmp,new,cur} postmaster    mail to our postmaster@, for the admin (a Maildir a
                                                  mail client reads); never processed; made when first needed
    <root>/notify-rate.sqlite       notify_rate_db which notifications each address caused, per
                                                  issue (the notifier's rate bound; SQLite, WAL)
    <root>/notify-state.json        notify_state  the last notified tip of the issues branch
    <root>/notify.lock              notify_lock   flock: one notifier at a time per spool
    <root>/serve.lock               serve_lock    flock (shared) held by each `mailtrack serve` whose worker
                                                  runs on this spool, for its whole life (queue.handoff)
    <root>/wake.fifo                wake_fifo     a named pipe the serve worker reads: a byte written
                                                  wakes it (`mailtrack deliver` handing a mail over)

The root itself defaults to `<git dir>/mailtrack/spool` (`default_root`).

File names in a queue directory are `<id>` or `<id>:1,<attempts>` once a mail has been retried
(the Maildir "experimental" info suffix), so the attempt count moves with the mail in the same
rename and a crash can never lose it; `<id>:1,<attempts>,<interrupted>` once an attempt was cut
short by something the mail did not cause (a kill, a crash, a lock of the repository). Ids sort by arrival:
`<time-ns, 20 digits>.P<pid>Q<counter>.<host>`. The reason a mail failed is `<id>.reason`
beside it in the failed directory. Files are written with write-fsync-rename; a temporary file
is `.<name>.<random or pid>.tmp` beside its target (in a queue: `tmp/<id>`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

_ID = r"[0-9]{20}\.P[0-9]+Q[0-9]+\.[A-Za-z0-9_-]+"
ID_RE = re.compile(rf"^{_ID}$")  # a mail's id
NAME_RE = re.compile(rf"^(?P<id>{_ID})(?::1,(?P<n>[0-9]+)(?:,(?P<i>[0-9]+))?)?$")  # a mail's file name in a queue
REASON = ".reason"  # `<id>.reason` beside a failed mail
ENVELOPE = ".json"  # `<envelopes>/<id>.json`: the envelope of an outgoing mail
SOURCE = ""  # `<sources>/<id>`: where an incoming mail came from
NOTE = ".json"  # `<waiting>/<id>.json`: what a parked reply waits for
OUTBOX_STATE = ".json"  # `<outbox_state>/<id>.json`: what the sender learnt about a mail
_HOST_RE = re.compile(r"[^A-Za-z0-9_-]")


def format_id(time_ns: int, pid: int, counter: int, host: str) -> str:
    """A new mail's id: `<time-ns, 20 digits>.P<pid>Q<counter>.<host>` (`host` made safe)."""
    return f"{time_ns:020d}.P{pid}Q{counter}.{_HOST_RE.sub('_', host)[:64]}"


def new_id(counter: int) -> str:
    """The id of a mail entering the spool now, the `counter`-th of this process's spool."""
    return format_id(time.time_ns(), os.getpid(), counter, os.uname().nodename or "localhost")


def id_time(spool_id: str) -> float:
    """When the mail with this id entered the spool, in seconds since the epoch."""
    return int(spool_id[:20]) / 1e9


def format_name(spool_id: str, attempts: int, interrupted: int = 0) -> str:
    """The file name of a mail after `attempts` failed attempts and `interrupted` cut short."""
    if interrupted:
        return f"{spool_id}:1,{attempts},{interrupted}"
    return spool_id if attempts == 0 else f"{spool_id}:1,{attempts}"


def parse_name(name: str) -> tuple[str, int] | None:
    """(id, attempts) of a mail's file name; None for any other file."""
    counts = parse_counts(name)
    return None if counts is None else counts[:2]


def parse_counts(name: str) -> tuple[str, int, int] | None:
    """(id, attempts, interrupted attempts) of a mail's file name; None for any other file."""
    match = NAME_RE.match(name)
    if match is None:
        return None
    return match.group("id"), int(match.group("n") or 0), int(match.group("i") or 0)


def reason_name(spool_id: str) -> str:
    """The name of the file that says why a mail failed, beside it."""
    return f"{spool_id}{REASON}"


def default_root(git_dir: Path) -> Path:
    """The spool of the repository whose git directory is `git_dir`."""
    return Path(git_dir) / "mailtrack" / "spool"


class Layout:
    """The paths of one spool, under `root` (the table in the module docstring). A value, as a frozen
    dataclass would be, written out: `mailtrack deliver`'s handoff imports no dataclasses."""

    __slots__ = ("root",)
    root: Path

    def __init__(self, root: Path) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Layout is read-only: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Layout(root={self.root!r})"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def outbox_failed(self) -> Path:
        return self.root / "outbox-failed"

    @property
    def envelopes(self) -> Path:
        return self.outbox / "env"

    @property
    def outbox_state(self) -> Path:
        return self.root / "outbox-state"

    @property
    def waiting(self) -> Path:
        return self.root / "waiting"

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def optouts(self) -> Path:
        return self.root / "optouts.json"

    @property
    def optouts_lock(self) -> Path:
        return self.root / "optouts.lock"

    @property
    def replies_db(self) -> Path:
        return self.root / "replies.sqlite"

    @property
    def imap_state(self) -> Path:
        return self.root / "imap-state"

    @property
    def postmaster(self) -> Path:
        return self.root / "postmaster"

    @property
    def notify_rate_db(self) -> Path:
        return self.root / "notify-rate.sqlite"

    @property
    def notify_state(self) -> Path:
        return self.root / "notify-state.json"

    @property
    def notify_lock(self) -> Path:
        return self.root / "notify.lock"

    @property
    def serve_lock(self) -> Path:
        return self.root / "serve.lock"

    @property
    def wake_fifo(self) -> Path:
        return self.root / "wake.fifo"
