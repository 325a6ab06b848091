"""Who unsubscribed from which issue: per-issue opt-outs, kept outside the branch.

An `unsubscribe ID` (by command or List-Unsubscribe) stops notifications about that issue to
that address whatever its role (reporter, assignee, owner, component owner, watcher, Cc), until
`subscribe ID`. It is this gateway's state, not the tracker's (FORMAT.md: what the gateway needs
beyond the branch is kept outside it), in `<spool>/optouts.json`.
"""

from __future__ import annotations

import fcntl
import json
import os

from mailtrack.mail.addresses import bare
from mailtrack.queue.layout import Layout
from mailtrack.queue.spool import write_durably


class OptOuts:
    """`{issue name: [address, ...]}` in `<spool>/optouts.json`, written with write-fsync-rename
    under a lock, as serve, process and deliver may record at the same time."""

    def __init__(self, layout: Layout) -> None:
        """`layout`: the spool's (Spool.layout)."""
        self.path = layout.optouts
        self.lock = layout.optouts_lock

    def read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        return {k: list(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def of(self, issue: str) -> set[str]:
        """The lower-case addresses that unsubscribed from `issue`."""
        return {a.lower() for a in self.read().get(issue, [])}

    def record(self, issue: str, address: str, subscribed: bool) -> bool:
        """`unsubscribe` (subscribed False) or `subscribe` again; True when that changed anything."""
        address = bare(address)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            have = data.get(issue, [])
            if subscribed == (address not in have):
                return False
            have = [a for a in have if a != address] if subscribed else sorted([*have, address])
            if have:
                data[issue] = have
            else:
                data.pop(issue, None)
            write_durably(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
            return True
        finally:
            os.close(fd)
