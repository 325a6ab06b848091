"""An index derived from the issues branch: Message-IDs and issue summaries, in SQLite.

Never the truth, always rebuildable: it records which tree it describes and is brought up to
date by diffing that tree against the tree asked for, so a mail costs a look at the paths that
changed since the last one, never a walk over the whole branch. When the trees between were
written by this process (`store.Trees.written`), no diff at all: the files it wrote are learnt.
Delete the file and it is built again from the branch on next use.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dulwich.diff_tree import tree_changes
from dulwich.objects import ObjectID

from mailtrack.fields import LIST_FIELDS
from mailtrack.tracker.model import Comment, Issue, Person, is_comment_filename
from mailtrack.tracker.query import COLUMNS, column
from mailtrack.tracker.store import WRITES_KEPT, Snapshot, split_issue_path
from mailtrack.tracker.xmlformat import FormatError

SCHEMA_VERSION = "9"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS msgid (message_id TEXT NOT NULL, path TEXT NOT NULL, issue TEXT NOT NULL,
                                  PRIMARY KEY (message_id, path));
CREATE INDEX IF NOT EXISTS msgid_path ON msgid (path);
CREATE TABLE IF NOT EXISTS issues (name TEXT PRIMARY KEY, status TEXT NOT NULL, created TEXT NOT NULL,
                                   modified TEXT, type TEXT, severity TEXT, priority TEXT, resolution TEXT,
                                   milestone TEXT, version TEXT, title TEXT, author TEXT, lists TEXT NOT NULL,
                                   record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS issues_created ON issues (created);
CREATE INDEX IF NOT EXISTS issues_status ON issues (status);
CREATE INDEX IF NOT EXISTS issues_modified ON issues (modified, created);
CREATE TABLE IF NOT EXISTS people (email TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (email, path));
CREATE INDEX IF NOT EXISTS people_path ON people (path);
CREATE TABLE IF NOT EXISTS unreadable (path TEXT PRIMARY KEY, error TEXT NOT NULL);
"""
TABLES = ("msgid", "issues", "people", "unreadable", "search", "search_rows")  # what a rebuild empties (meta aside)


def default_path(snap: Snapshot) -> Path:
    return Path(snap.repo.controldir()) / "mailtrack" / "index.sqlite"


def normalize_msgid(message_id: str) -> str:
    """Message-IDs compare with their brackets, case-sensitive left part, case-insensitive domain."""
    mid = message_id.strip()
    if not mid:
        return ""
    if not mid.startswith("<"):
        mid = f"<{mid}>"
    left, at, right = mid.rpartition("@")
    return f"{left}@{right.lower()}" if at else mid


class Index:
    def __init__(self, path: Path | None, *, copy_of: Path | None = None) -> None:
        """The index kept in `path`; with None, one in memory that writes nothing to disk,
        starting from a copy of the index in `copy_of` when there is one (`mailtrack deliver
        --dry-run`)."""
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path if path is not None else ":memory:", timeout=60, isolation_level=None)
        if path is None and copy_of is not None and copy_of.exists():
            # immutable: no -wal/-shm files made beside it; what a live writer has not checkpointed
            # is only older, and sync() brings the copy up to the snapshot from its recorded tree
            try:
                with contextlib.closing(sqlite3.connect(f"{copy_of.as_uri()}?immutable=1", uri=True)) as source:
                    source.backup(self.db)
            except sqlite3.Error:  # caught mid-checkpoint: build the copy from the branch instead
                self.db.close()
                self.db = sqlite3.connect(":memory:", isolation_level=None)
        # Python's lower(), not SQLite's ASCII one: a list filters by the same case rules as tracker.query.matches
        self.db.create_function("py_lower", 1, _lower, deterministic=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # the branch is the truth: a lost index write is rebuilt
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        if self._meta("version") != SCHEMA_VERSION:  # made by another version: made again, from the branch
            self.db.executescript("".join(f"DROP TABLE IF EXISTS {t};" for t in (*TABLES, "meta")) + SCHEMA + SEARCH_SCHEMA)
            self.db.execute("INSERT INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
        else:
            self.db.executescript(SCHEMA + SEARCH_SCHEMA)

    @classmethod
    def for_snapshot(cls, snap: Snapshot, *, read_only: bool = False) -> Index:
        return cls(None, copy_of=default_path(snap)) if read_only else cls(default_path(snap))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def sync(self, snap: Snapshot) -> None:
        """Make the index describe the snapshot's tree."""
        target = (snap.tree or b"").decode()
        if self._meta("tree") == target:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current = self._meta("tree") or None
            if current != target:
                old = ObjectID(current.encode()) if current else None
                ours = _written_since(snap, old)
                if ours is not None:
                    for files in ours:
                        self._learn_files(files)
                else:
                    self._apply(snap, old, snap.tree)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tree', ?)", (target,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _apply(self, snap: Snapshot, old: ObjectID | None, new: ObjectID | None) -> None:
        store = snap.repo.object_store
        if old is not None and old not in store:
            old = None  # the tree we described is gone (a rewritten branch): start over
            self.db.executescript("".join(f"DELETE FROM {t};" for t in TABLES))
        for change in tree_changes(snap.trees, old, new):  # type: ignore[arg-type]  # reads trees by id only
            if change.old is not None and change.old.path is not None:
                self._forget(change.old.path.decode("utf-8", "replace"))
            if change.new is not None and change.new.path is not None and change.new.sha is not None:
                self._learn(change.new.path.decode("utf-8", "replace"), store[change.new.sha].as_raw_string())

    def _learn_files(self, files: dict[str, bytes | None]) -> None:
        """What a commit of `files` changes, as _apply would find it by a diff:
        each path forgotten (a path the index never knew costs a few lookups), then learnt again."""
        for path, content in files.items():
            self._forget(path)
            if content is not None:
                self._learn(path, content)

    def _forget(self, path: str) -> None:
        self.db.execute("DELETE FROM msgid WHERE path = ?", (path,))
        self.db.execute("DELETE FROM people WHERE path = ?", (path,))
        self.db.execute("DELETE FROM unreadable WHERE path = ?", (path,))
        self._unsearch(path)
        where = split_issue_path(path)
        if where is not None and where[1] == "issue.xml":
            self.db.execute("DELETE FROM issues WHERE name = ?", (where[0],))

    def _learn(self, path: str, data: bytes) -> None:
        where = split_issue_path(path)
        if where is None:
            return
        name, filename = where
        try:
            if filename == "issue.xml":
                issue = Issue.from_bytes(data, name)
                mid = issue.message_id
                record = issue.record()
                self.db.execute(f"INSERT OR REPLACE INTO issues (name, {', '.join(COLUMNS)}, lists, record)"
                                f" VALUES (?, {', '.join('?' * len(COLUMNS))}, ?, ?)",
                                (name, *(record[c] for c in COLUMNS), json.dumps({f: record[f] for f in LIST_FIELDS}),
                                 json.dumps(record)))
                people = [issue.author.email, *issue.reporters, *issue.owners, *issue.assigned, *issue.carbons]
                self._searchable(path, name, issue.title, f"{issue.summary}\n{issue.description}")
            elif is_comment_filename(filename):
                comment = Comment.from_bytes(data, filename)
                mid, people = comment.message_id, [comment.author.email]
                self._searchable(path, name, "", comment.text)
            else:
                return
        except FormatError as e:  # it names no Message-ID; `list` reports it
            self.db.execute("INSERT OR REPLACE INTO unreadable VALUES (?, ?)", (path, str(e)))
            return
        if mid:
            self.db.execute("INSERT OR REPLACE INTO msgid VALUES (?, ?, ?)", (normalize_msgid(mid), path, name))
        for email in {(Person.parse(p).email or p).lower() for p in people if p}:
            self.db.execute("INSERT OR IGNORE INTO people VALUES (?, ?)", (email, path))

    def lookup(self, snap: Snapshot, message_id: str) -> str | None:
        """The issue whose record carries this Message-ID, as of the snapshot; None when none does."""
        self.sync(snap)
        row = self.db.execute("SELECT issue FROM msgid WHERE message_id = ?", (normalize_msgid(message_id),)).fetchone()
        return row[0] if row else None

    def present(self, snap: Snapshot, message_ids: list[str]) -> set[str]:
        """Which of these Message-IDs (normalized) a record on the branch carries, as of the snapshot."""
        self.sync(snap)
        wanted = sorted({normalize_msgid(m) for m in message_ids})
        found: set[str] = set()
        for at in range(0, len(wanted), 500):  # SQLite's limit on the number of parameters
            batch = wanted[at : at + 500]
            rows = self.db.execute(f"SELECT message_id FROM msgid WHERE message_id IN ({','.join('?' * len(batch))})", batch)
            found.update(row[0] for row in rows)
        return found

    def where(self, snap: Snapshot, message_id: str) -> tuple[str, str] | None:
        """(issue, path of the issue.xml or comment file) whose record carries this Message-ID; None when none does."""
        self.sync(snap)
        row = self.db.execute("SELECT issue, path FROM msgid WHERE message_id = ? ORDER BY path LIMIT 1",
                              (normalize_msgid(message_id),)).fetchone()
        return (row[0], row[1]) if row else None

    def known(self, snap: Snapshot, email: str) -> bool:
        """Whether this address appears on the branch: a reporter, assignee, owner, Cc or commenter."""
        self.sync(snap)
        return self.db.execute("SELECT 1 FROM people WHERE email = ? LIMIT 1", (email.lower(),)).fetchone() is not None

    def records(self, snap: Snapshot, *, fields: Sequence[str] | None = None,
                closed: list[str] | None = None) -> list[tuple[str, dict[str, object]]]:
        """(name, summary fields) of every issue, as of the snapshot, in the order they were created.
        `fields`: only these fields of each record (SQLite picks them: the rest is never parsed);
        `closed`: not the issues with one of these statuses."""
        self.sync(snap)
        where = f" WHERE status NOT IN ({','.join('?' * len(closed))})" if closed else ""
        picked = "record"
        if fields is not None:
            picked = "json_object(" + ", ".join(f"'{f}', json_extract(record, '$.{f}')" for f in fields if f.isidentifier()) + ")"
        rows = self.db.execute(f"SELECT name, {picked} FROM issues{where} ORDER BY created, rowid", closed or [])
        return [(n, json.loads(r)) for n, r in rows]

    def issue_rows(self, snap: Snapshot, where: str = "", params: Sequence[object] = (), order: str = "created, rowid",
                   *, fields: Sequence[str] | None = None, limit: int = -1, offset: int = 0
                   ) -> list[tuple[str, str, dict[str, object]]]:
        """(name, status, record) of the issues matching the SQL condition `where` over the table `issues`
        (its COLUMNS, `record`), in the SQL `order` (`params`: of both, in that order), `limit` of them
        from `offset`. `fields`: only these fields of each record (the rest is never parsed)."""
        self.sync(snap)
        picked = ["record"] if fields is None else [column(f) for f in fields]
        where = f" WHERE {where}" if where else ""
        if limit < 0:
            rows = self.db.execute(f"SELECT name, status, {', '.join(picked)} FROM issues{where} ORDER BY {order}"
                                   " LIMIT -1 OFFSET ?", (*params, offset)).fetchall()
        else:  # a page: sorted by the keys alone, then the page's records read (a sort never carries them)
            ids = [r for (r,) in self.db.execute(f"SELECT rowid FROM issues{where} ORDER BY {order} LIMIT ? OFFSET ?",
                                                 (*params, limit, offset))]
            found: dict[int, tuple[str, ...]] = {}
            for at in range(0, len(ids), 500):  # SQLite's limit on the number of parameters
                batch = ids[at : at + 500]
                found.update((row[0], row[1:]) for row in self.db.execute(
                    f"SELECT rowid, name, status, {', '.join(picked)} FROM issues WHERE rowid IN ({','.join('?' * len(batch))})", batch))
            rows = [found[r] for r in ids]
        if fields is None:
            return [(n, s, json.loads(r)) for n, s, r in rows]
        lists = [f in LIST_FIELDS for f in fields]  # json_extract gives JSON text for a list, the value for text
        return [(n, s, {f: json.loads(v) if is_list and isinstance(v, str) else v
                        for f, v, is_list in zip(fields, values, lists, strict=True)}) for n, s, *values in rows]

    def issue_count(self, snap: Snapshot, where: str = "", params: Sequence[object] = ()) -> int:
        """How many issues match the SQL condition `where` (see issue_rows)."""
        self.sync(snap)
        return int(self.db.execute(f"SELECT count(*) FROM issues{' WHERE ' + where if where else ''}", params).fetchone()[0])

    def status_counts(self, snap: Snapshot) -> dict[str, int]:
        """How many issues have each status, as of the snapshot."""
        self.sync(snap)
        return dict(self.db.execute("SELECT status, count(*) FROM issues GROUP BY status"))

    def neighbours(self, snap: Snapshot, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Each name's issue names just before and just after it in sorted order ('' at either end)."""
        self.sync(snap)
        out = {}
        for name in names:
            before = self.db.execute("SELECT max(name) FROM issues WHERE name < ?", (name,)).fetchone()[0]
            after = self.db.execute("SELECT min(name) FROM issues WHERE name > ?", (name,)).fetchone()[0]
            out[name] = (before or "", after or "")
        return out

    def names(self, snap: Snapshot) -> list[str]:
        """Every issue's name, sorted, as of the snapshot."""
        self.sync(snap)
        return [n for (n,) in self.db.execute("SELECT name FROM issues ORDER BY name")]

    def unreadable(self, snap: Snapshot) -> list[tuple[str, str]]:
        """(path, why) of every issue or comment file on the branch that does not parse."""
        self.sync(snap)
        return list(self.db.execute("SELECT path, error FROM unreadable ORDER BY path"))

    # --- full-text search: the FTS5 table `search`, kept by _learn and _forget ---------------------

    def _searchable(self, path: str, issue: str, title: str, text: str) -> None:
        row = self.db.execute("INSERT INTO search (path, issue, title, body) VALUES (?, ?, ?, ?)", (path, issue, title, text)).lastrowid
        self.db.execute("INSERT OR REPLACE INTO search_rows VALUES (?, ?)", (path, row))

    def _unsearch(self, path: str) -> None:
        """Forget a file's words: by the row `search_rows` names (FTS5 would scan every row for a path)."""
        for (row,) in self.db.execute("SELECT row FROM search_rows WHERE path = ?", (path,)).fetchall():
            self.db.execute("DELETE FROM search WHERE rowid = ?", (row,))
        self.db.execute("DELETE FROM search_rows WHERE path = ?", (path,))

    def search(self, snap: Snapshot, query: str, limit: int = 50, offset: int = 0) -> list[Hit]:
        """The issue and comment files whose words match every word of `query`, best first (SQLite's
        bm25 rank). The query is words, never FTS5 syntax: each is quoted, so any text is a valid search."""
        self.sync(snap)
        match = fts_query(query)
        if not match:
            return []
        rows = self.db.execute(
            "SELECT issue, path, title, snippet(search, 3, char(1), char(2), ' ... ', 24) FROM search"
            " WHERE search MATCH ? ORDER BY rank LIMIT ? OFFSET ?", (match, limit, offset))
        return [Hit(*row) for row in rows]


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def _written_since(snap: Snapshot, tree: ObjectID | None) -> list[dict[str, bytes | None]] | None:
    """The files of each commit this process wrote from `tree` to the snapshot's, oldest first;
    None when some tree between was not written here (then the index diffs trees)."""
    written = snap.trees.written
    chain: list[dict[str, bytes | None]] = []
    at = snap.tree
    while at != tree:
        step = written.get(at) if at is not None else None
        if step is None or len(chain) >= WRITES_KEPT:  # a tree written twice: no loop
            return None
        at, files = step
        chain.append(files)
    return chain[::-1]


SEARCH_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(path UNINDEXED, issue UNINDEXED, title, body,
                                                     tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS search_rows (path TEXT PRIMARY KEY, row INTEGER NOT NULL);
"""
MAX_QUERY_WORDS = 16  # a longer query is cut: each word costs a posting list


@dataclass(frozen=True)
class Hit:
    """One search result: the issue, the file that matched, its title (issue.xml only) and a snippet in
    which char(1) ... char(2) mark the matched words (the caller escapes the text, then marks them)."""

    issue: str
    path: str
    title: str
    snippet: str


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression for words a person typed: each one a quoted string, all of them required.
    Control characters separate words (FTS5 would take a NUL for the end of the query)."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    words = [w for w in printable.split() if w.strip('"')][:MAX_QUERY_WORDS]
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)
