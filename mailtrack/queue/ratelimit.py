"""How many replies one address got lately, and how many notifications one address caused on one
issue: a flood of bad mail gets a bounded number of answers, and two auto-responders that answer
each other through an issue stop."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class RateLimiter:
    """A sliding window per address, kept in SQLite beside the spool (shared by every process)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # A commit survives a kill -9 of any process in WAL mode without an fsync of its own; only an
        # OS crash may lose the last ones (then a reply or a notice may be counted once too few).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sent (address TEXT NOT NULL, at REAL NOT NULL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS sent_address ON sent (address, at)")
        self.db.execute("CREATE TABLE IF NOT EXISTS caused (key TEXT NOT NULL, token TEXT PRIMARY KEY, at REAL NOT NULL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS caused_key ON caused (key, at)")

    def allow(self, address: str, limit: int, window: float, now: float | None = None) -> bool:
        """Record a reply to `address` and say yes, unless it had `limit` replies within `window` seconds."""
        now = time.time() if now is None else now
        address = address.lower()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM sent WHERE at < ?", (now - window,))
            (count,) = self.db.execute("SELECT COUNT(*) FROM sent WHERE address = ?", (address,)).fetchone()
            ok = count < limit
            if ok:
                self.db.execute("INSERT INTO sent VALUES (?, ?)", (address, now))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return bool(ok)

    def allow_once(self, key: str, token: str, limit: int, window: float, now: float | None = None) -> bool:
        """Like allow(), for the event `token` counted under `key`, and the same answer when asked
        again about a `token` it allowed (within `window`): a run that crashed after asking and
        asks again is not counted twice."""
        now = time.time() if now is None else now
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM caused WHERE at < ?", (now - window,))
            ok = self.db.execute("SELECT 1 FROM caused WHERE token = ?", (token,)).fetchone() is not None
            if not ok:
                (count,) = self.db.execute("SELECT COUNT(*) FROM caused WHERE key = ?", (key,)).fetchone()
                ok = count < limit
                if ok:
                    self.db.execute("INSERT INTO caused VALUES (?, ?, ?)", (key, token, now))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return bool(ok)

    def close(self) -> None:
        self.db.close()
