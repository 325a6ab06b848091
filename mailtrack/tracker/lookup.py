"""An index derived from the issues branch: Message-IDs and issue summaries, in SQLite.

Never the truth, always rebuildable: it records which tree it describes and is brought up to
date by diffing that tree against the tree asked for, so a mail costs a look at the paths that
changed since the last one, never a walk over the whole branch. When the trees between were
written by this process (`store.Trees.written`), no diff at all: the files it wrote are learnt.
Delete the file and it is built again from the branch on next use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailtrack.fields import LIST_FIELDS, PEOPLE_FIELDS

if TYPE_CHECKING:  # only for the types: a warm list and show read the index without loading dulwich or the store
    from mailtrack.tracker.store import Snapshot

SCHEMA_VERSION = "10"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS msgid (message_id TEXT NOT NULL, path TEXT NOT NULL, issue TEXT NOT NULL,
                                  PRIMARY KEY (message_id, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msgid_path ON msgid (path);
CREATE TABLE IF NOT EXISTS issues (name TEXT PRIMARY KEY, status TEXT NOT NULL, created TEXT NOT NULL,
                                   modified TEXT, type TEXT, severity TEXT, priority TEXT, resolution TEXT,
                                   milestone TEXT, version TEXT, title TEXT, author TEXT, lists TEXT NOT NULL,
                                   record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS issues_created ON issues (created, status, name);  -- covers a list of names
CREATE INDEX IF NOT EXISTS issues_status ON issues (status);
CREATE INDEX IF NOT EXISTS issues_modified ON issues (modified, created);
CREATE TABLE IF NOT EXISTS people (email TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (email, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS people_path ON people (path);
CREATE TABLE IF NOT EXISTS unreadable (path TEXT PRIMARY KEY, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS comments (path TEXT PRIMARY KEY, created TEXT NOT NULL, name TEXT NOT NULL,
                                     author TEXT NOT NULL, attachments TEXT NOT NULL) WITHOUT ROWID;
"""
# files: every file directly in an issue directory and its size; comments: what `show` prints of each
# comment file (its text is its `search` row's body), `created` in STAMP_FORMAT (sorts as the times do)
TABLES = ("msgid", "issues", "people", "unreadable", "search", "search_rows", "files", "comments")  # what a rebuild empties
SECONDARY = re.findall(r"CREATE INDEX IF NOT EXISTS (\w+) ON [^;]+;", SCHEMA)  # dropped while a rebuild writes, made after
GIT_DELTA_CACHE = "48m"  # git cat-file's delta base cache in a rebuild: its peak RSS ~80 MiB, at some cost in time
CACHE_KIB = 8 << 10  # SQLite's page cache during a rebuild: its B-trees stay in memory (the default 2 MiB spills them)
STEADY_CACHE_KIB = 4 << 10  # and otherwise: a mail looks up a few rows (a long import at 100k issues stays under 100 MiB)


def default_path(snap: Snapshot) -> Path:
    return index_file(Path(snap.repo.controldir()))


def index_file(git_dir: Path) -> Path:
    return git_dir / "mailtrack" / "index.sqlite"


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
        self.db.execute(f"PRAGMA cache_size=-{STEADY_CACHE_KIB}")
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
        """Make the index describe the snapshot's tree (and say which commit it was: `served` reads that)."""
        target = (snap.tree or b"").decode()
        commit = (snap.commit or b"").decode()
        if self._meta("tree") == target and self._meta("commit") == commit:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current = self._meta("tree") or None
            if current != target:
                old = current.encode() if current else None
                ours = _written_since(snap, old)
                if ours is not None:
                    for files in ours:
                        self._learn_files(files)
                elif old is None or old not in snap.trees:  # nothing to diff from: every file, once
                    self._rebuild(snap)
                else:
                    self._apply(snap, old, snap.tree)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('tree', ?)", (target,))
                self._project_meta(snap)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('commit', ?)", (commit,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _project_meta(self, snap: Snapshot) -> None:
        """project.xml's closed statuses, for `served` lists; none when it does not parse (they go the long way)."""
        from mailtrack.tracker.xmlformat import FormatError  # the store's errors: loaded where the branch is read

        self.db.execute("DELETE FROM meta WHERE key = 'closed'")
        with contextlib.suppress(FormatError):
            self.db.execute("INSERT INTO meta VALUES ('closed', ?)", (json.dumps(snap.project().closed),))

    def _apply(self, snap: Snapshot, old: bytes | None, new: bytes | None) -> None:
        from dulwich.diff_tree import tree_changes

        store = snap.repo.object_store
        if old is not None and old not in snap.trees:
            old = None  # the tree we described is gone (a rewritten branch): start over
            self._empty()
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
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        self.db.execute("DELETE FROM comments WHERE path = ?", (path,))
        self._unsearch(path)
        where = _split(path)
        if where is not None and where[1] == "issue.xml":
            self.db.execute("DELETE FROM issues WHERE name = ?", (where[0],))

    def _learn(self, path: str, data: bytes) -> None:
        rows = _Rows()
        rows.add(path, data)
        rows.write(self.db)

    def _empty(self) -> None:
        for t in TABLES:  # not executescript: it would commit the transaction this runs in
            self.db.execute(f"DELETE FROM {t}")

    def _rebuild(self, snap: Snapshot) -> None:
        """Every table made again from every file of the snapshot's tree, read once (by `git cat-file
        --batch` where git is installed, else by dulwich: the same rows) and written in batches."""
        self._empty()
        if snap.tree is None:
            return
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        try:
            self._rebuild_all(snap, snap.tree)
        finally:
            self.db.execute(f"PRAGMA cache_size=-{STEADY_CACHE_KIB}")
            self.db.execute("PRAGMA shrink_memory")
            _give_back_memory()

    def _rebuild_all(self, snap: Snapshot, tree: bytes) -> None:
        for name in SECONDARY:  # an index made once over all the rows costs less than kept up row by row
            self.db.execute(f"DROP INDEX IF EXISTS {name}")
        try:
            batches = _rebuild_by_git(snap, tree)
            if batches is not None:
                for rows in batches:
                    rows.write(self.db, bulk=True)
            else:
                self._rebuild_by_dulwich(snap, tree)
        except _GitFailed as e:  # started, then failed (a repository git cannot read?): dulwich reads it all again
            import logging

            logging.getLogger(__name__).warning("index rebuild by git failed, reading the branch with dulwich: %s", e)
            self._empty()
            self._rebuild_by_dulwich(snap, tree)
        for statement in re.findall(r"CREATE INDEX [^;]+;", SCHEMA):
            self.db.execute(statement)

    def _rebuild_by_dulwich(self, snap: Snapshot, tree: bytes) -> None:
        from dulwich.diff_tree import tree_changes

        rows = _Rows()
        store = snap.repo.object_store
        for change in tree_changes(snap.trees, None, tree):  # type: ignore[arg-type]  # reads trees by id only
            if change.new is not None and change.new.path is not None and change.new.sha is not None:
                path = change.new.path.decode("utf-8", "replace")
                if _split(path) is not None:
                    rows.add(path, store[change.new.sha].as_raw_string())
                    if rows.files >= BATCH:
                        rows.write(self.db, bulk=True)
                        rows = _Rows()
        rows.write(self.db, bulk=True)

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
        from mailtrack.tracker.query import column  # the columns' SQL is query's; query loads the store, so only here

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


# --- served as it is: a warm `git issues list` and `show` without the store (dulwich, the branch) ----
# Where the index already describes the tip of the issues branch, reading it needs no tree, no
# record parsed and no dulwich: the tip is read from the ref's file, as git keeps it, and compared
# with the commit the index last described. Whatever cannot be told so cheaply (a worktree, a
# configured branch, a symbolic or missing ref) is None: the caller opens the store and syncs.

_NOT_PLAIN = re.compile(rb"^\s*\[\s*(issues|include)|worktreeconfig", re.IGNORECASE | re.MULTILINE)


def plain_git_dir(repo: str | None) -> Path | None:
    """The git directory store.find_repo opens for `repo` (None: $GIT_DIR, else found upwards from the
    current directory), when it is plain: a `.git` directory or a bare repository, with no worktree's
    common directory and no configuration (any of git's files) that could name another issues branch."""
    env = os.environ.get("GIT_DIR")
    found: Path | None = None
    if repo is not None or env:
        found = _control_dir(Path(repo if repo is not None else str(env)))
    else:
        at = Path.cwd().resolve()
        while found is None:
            if (at / ".git").exists() and not (at / ".git" / "objects").is_dir():
                return None  # a .git file (a worktree, a submodule): the store reads it
            found = _control_dir(at)
            if at.parent == at:
                break
            at = at.parent
    if found is None or (found / "commondir").exists():
        return None
    home = Path(os.path.expanduser("~"))
    configs = [found / "config", Path(os.environ.get("GIT_CONFIG_GLOBAL", home / ".gitconfig"))]
    if "GIT_CONFIG_GLOBAL" not in os.environ:
        configs.append(Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "git" / "config")
    if "GIT_CONFIG_SYSTEM" in os.environ or "GIT_CONFIG_NOSYSTEM" not in os.environ:
        configs.append(Path(os.environ.get("GIT_CONFIG_SYSTEM", "/etc/gitconfig")))
    for config in configs:
        try:
            if _NOT_PLAIN.search(config.read_bytes()):
                return None
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return found


def _control_dir(root: Path) -> Path | None:
    if (root / ".git" / "objects").is_dir():
        return root / ".git"
    if not (root / ".git").exists() and (root / "objects").is_dir() and (root / "refs").is_dir():
        return root
    return None


def branch_tip(git_dir: Path, ref: str = "refs/heads/issues") -> str | None:
    """The commit `ref` names, read as git keeps it (its loose file, else packed-refs); None when it is
    neither (a symbolic ref, none at all, another ref store)."""
    try:
        loose = (git_dir / ref).read_bytes().strip()
    except FileNotFoundError:
        loose = b""
    except OSError:
        return None
    if loose:
        return loose.decode() if re.fullmatch(rb"[0-9a-f]{40}", loose) else None
    try:
        packed = (git_dir / "packed-refs").read_bytes()
    except OSError:
        return None
    m = re.search(rb"^([0-9a-f]{40}) " + re.escape(ref.encode()) + rb"$", packed, re.MULTILINE)
    return m.group(1).decode() if m else None


class Served:
    """The index of a repository read as it is, because it describes the tip of its issues branch
    (`served`): what `list` and `show` print, with no store open. Its SQL is Index's."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def closed(self) -> list[str] | None:
        """project.xml's closed statuses, as of the tip; None when project.xml does not parse."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'closed'").fetchone()
        return [str(s) for s in json.loads(row[0])] if row else None

    def rows(self, closed: list[str], fields: Sequence[str] | None) -> Iterator[tuple[str, str, dict[str, object]]]:
        """(name, status, record) of the issues whose status is not one of `closed`, in created order, as
        Index.issue_rows gives them (`fields`: only those, from the columns: no record parsed); streamed."""
        picked = ["record"] if fields is None else _sql_columns(fields)
        where = f" WHERE status NOT IN ({','.join('?' * len(closed))})" if closed else ""
        cursor = self.db.execute(f"SELECT {', '.join(['name', 'status', *picked])} FROM issues{where}"
                                 " ORDER BY created, rowid", closed)
        if fields is None:
            for n, st, r in cursor:
                yield n, st, json.loads(r)
            return
        lists = [f in LIST_FIELDS for f in fields]  # json_extract gives JSON text for a list, the value for text
        for n, st, *values in cursor:
            yield n, st, {f: json.loads(v) if is_list and isinstance(v, str) else v
                          for f, v, is_list in zip(fields, values, lists, strict=True)}

    def names(self) -> list[str]:
        return [n for (n,) in self.db.execute("SELECT name FROM issues ORDER BY name")]

    def listed(self, closed: list[str]) -> Iterator[list[str]]:
        """The names `rows` gives, in its order, a thousand at a time (from the index on `created` alone)."""
        where = f" WHERE status NOT IN ({','.join('?' * len(closed))})" if closed else ""
        cursor = self.db.execute(f"SELECT name FROM issues{where} ORDER BY created, rowid", closed)
        while batch := cursor.fetchmany(1000):
            yield [n for (n,) in batch]

    def unreadable(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT path, error FROM unreadable ORDER BY path"))

    def issue(self, ident: str) -> tuple[str, dict[str, object]] | None:
        """(name, record) of the one issue `ident` (4 to 40 hex digits) is a prefix of, with every file of
        its directory readable; None for anything else (no such issue, two, a file that does not parse:
        the store words the error)."""
        prefix = ident.strip().lower().removeprefix("#")
        if not 4 <= len(prefix) <= 40 or any(c not in "0123456789abcdef" for c in prefix):
            return None
        start = f"{prefix[:2]}/{prefix[2:]}"
        dirs = [d for (d,) in self.db.execute("SELECT DISTINCT substr(path, 1, 41) FROM files WHERE path >= ? AND path < ?"
                                               " LIMIT 2", (start, start + "\U0010ffff"))]
        if len(dirs) != 1:
            return None
        (folder,) = dirs
        if len(folder) != 41 or self.db.execute("SELECT 1 FROM unreadable WHERE path >= ? AND path < ? LIMIT 1",
                                                 (folder + "/", folder + "0")).fetchone():
            return None
        row = self.db.execute("SELECT name, record FROM issues WHERE name = ?", (folder[:2] + folder[3:],)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def comments(self, name: str) -> list[tuple[str, str, str, str, list[str]]]:
        """(created in STAMP_FORMAT, name, author, text, attachments) of each comment of the issue, in order."""
        folder = f"{name[:2]}/{name[2:]}/"
        rows = self.db.execute(
            "SELECT c.created, c.name, c.author, r.row, c.attachments FROM comments c JOIN search_rows r ON r.path = c.path"
            " WHERE c.path >= ? AND c.path < ? ORDER BY c.created, c.name", (folder, folder[:-1] + "0")).fetchall()
        # the text by its row id, one at a time: joined, SQLite would scan the whole FTS5 table for it
        body = "SELECT body FROM search WHERE rowid = ?"
        return [(created, n, author, self.db.execute(body, (row,)).fetchone()[0], json.loads(attached))
                for created, n, author, row, attached in rows]

    def size(self, name: str, filename: str) -> int | None:
        """The size of a file in the issue's directory; None when there is none."""
        if "/" in filename:
            return None
        row = self.db.execute("SELECT size FROM files WHERE path = ?", (f"{name[:2]}/{name[2:]}/{filename}",)).fetchone()
        return int(row[0]) if row else None


def _sql_columns(fields: Sequence[str]) -> list[str]:
    if not fields:
        return []
    from mailtrack.tracker.query import column  # the columns' SQL is query's; only for a list that shows fields

    return [column(f) for f in fields]


def served(repo: str | None) -> Served | None:
    """The index of the repository `repo` (as store.find_repo reads the argument), when it describes the
    tip of the issues branch and was made by this version; None otherwise (then: Store, Index.sync)."""
    git_dir = plain_git_dir(repo)
    if git_dir is None:
        return None
    tip = branch_tip(git_dir)
    path = index_file(git_dir)
    if tip is None or not path.exists():
        return None
    try:
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        db.create_function("py_lower", 1, _lower, deterministic=True)
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('version', 'commit')").fetchall())
    except sqlite3.Error:
        db.close()
        return None
    if meta.get("version") != SCHEMA_VERSION or meta.get("commit") != tip:
        db.close()
        return None
    return Served(db)


BATCH = 2000  # files whose rows a rebuild gathers before it writes them (executemany, one transaction in all)


def _split(path: str) -> tuple[str, str] | None:
    from mailtrack.tracker.store import split_issue_path  # the store's one answer; loaded where files are learnt

    return split_issue_path(path)


def _wanted(filename: str) -> bool:
    """Whether the index reads this file of an issue directory: its issue.xml or a comment file."""
    from mailtrack.tracker.model import is_comment_filename  # the records' module: loaded where files are learnt

    return filename == "issue.xml" or is_comment_filename(filename)


class _Rows:
    """The rows that files add to the tables, gathered to be written at once."""

    def __init__(self) -> None:
        self.files = 0
        self.issues: list[tuple[object, ...]] = []
        self.msgid: list[tuple[str, str, str]] = []
        self.people: list[tuple[str, str]] = []
        self.search: list[tuple[str, str, str, str]] = []
        self.unreadable: list[tuple[str, str]] = []
        self.sizes: list[tuple[str, int]] = []
        self.comments: list[tuple[str, str, str, str, str]] = []
        self._emails: dict[str, str] = {}  # a person's text -> the address `people` keeps: the same people recur

    def sized(self, path: str, size: int) -> None:
        """A file of an issue directory the index does not read (an attachment): its size only."""
        self.sizes.append((path, size))

    def add(self, path: str, data: bytes, where: tuple[str, str] | None = None) -> None:
        """A file of the branch: an issue's file is sized, and read when it is its issue.xml or a comment.
        `where`: its _split, when the caller has it."""
        # the records' parsers and their error: loaded where files are learnt, not by a served list
        from mailtrack.tracker.model import Comment, issue_record
        from mailtrack.tracker.xmlformat import FormatError

        where = where or _split(path)
        if where is None:
            return
        name, filename = where
        self.sizes.append((path, len(data)))
        if not _wanted(filename):
            return
        self.files += 1
        try:
            if filename == "issue.xml":
                record, author = issue_record(data, name)
                mid = str(record["message_id"])
                self.issues.append((name, *(record[c] for c in _columns()), json.dumps({f: record[f] for f in LIST_FIELDS}),
                                    json.dumps(record)))
                people = [author, *(p for f in PEOPLE_FIELDS for p in record[f])]  # type: ignore[attr-defined]  # lists
                self.search.append((path, name, str(record["title"]), f"{record['summary']}\n{record['description']}"))
            else:
                comment = Comment.from_bytes(data, filename)
                mid, people = comment.message_id, [comment.author.email]
                self.search.append((path, name, "", comment.text))
                self.comments.append((path, _stamp(comment.created), comment.name, comment.author.mailbox,
                                      json.dumps(comment.attachments)))
        except FormatError as e:  # it names no Message-ID; `list` reports it
            self.unreadable.append((path, str(e)))
            return
        if mid:
            self.msgid.append((normalize_msgid(mid), path, name))
        self.people += [(email, path) for email in {self._email(p) for p in people if p}]

    def _email(self, person: str) -> str:
        email = self._emails.get(person)
        if email is None:
            from mailtrack.tracker.model import Person  # the one reader of identities: loaded where files are learnt

            email = self._emails[person] = (Person.parse(person).email or person).lower()
        return email

    def write(self, db: sqlite3.Connection, *, bulk: bool = False) -> None:
        """Into the tables; `bulk`: tables that hold none of these paths yet (a rebuild), the search
        rows numbered here rather than one INSERT at a time for each row's id."""
        columns = _columns()
        db.executemany(f"INSERT OR REPLACE INTO issues (name, {', '.join(columns)}, lists, record)"
                       f" VALUES (?, {', '.join('?' * len(columns))}, ?, ?)", self.issues)
        db.executemany("INSERT OR REPLACE INTO unreadable VALUES (?, ?)", self.unreadable)
        db.executemany("INSERT OR REPLACE INTO msgid VALUES (?, ?, ?)", self.msgid)
        db.executemany("INSERT OR IGNORE INTO people VALUES (?, ?)", self.people)
        db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?)", self.sizes)
        db.executemany("INSERT OR REPLACE INTO comments VALUES (?, ?, ?, ?, ?)", self.comments)
        if bulk and self.search:
            start = int(db.execute("SELECT coalesce(max(row), 0) + 1 FROM search_rows").fetchone()[0])
            rows = range(start, start + len(self.search))
            db.executemany("INSERT INTO search (rowid, path, issue, title, body) VALUES (?, ?, ?, ?, ?)",
                           [(row, *found) for row, found in zip(rows, self.search, strict=True)])
            db.executemany("INSERT OR REPLACE INTO search_rows VALUES (?, ?)",
                           [(found[0], row) for row, found in zip(rows, self.search, strict=True)])
        else:
            for path, issue, title, text in self.search:
                row = db.execute("INSERT INTO search (path, issue, title, body) VALUES (?, ?, ?, ?)",
                                 (path, issue, title, text)).lastrowid
                db.execute("INSERT OR REPLACE INTO search_rows VALUES (?, ?)", (path, row))


@functools.cache
def _give_back_memory() -> None:
    """Hand what a rebuild freed back to the system (glibc keeps it otherwise: an import at 100,000
    issues that began with a rebuild would carry its peak to the end). Elsewhere, nothing."""
    import ctypes  # here: only after a rebuild

    with contextlib.suppress(OSError, AttributeError):  # not glibc: no malloc_trim, nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _columns() -> tuple[str, ...]:
    from mailtrack.tracker.query import COLUMNS  # what lists sort and filter on; query loads the store, so only here

    return COLUMNS


def _stamp(d: datetime) -> str:
    """A time in STAMP_FORMAT, in UTC, that sorts as the times do (strftime drops the zeros of a year < 1000)."""
    d = d.astimezone(UTC)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}{d.minute:02d}{d.second:02d}.{d.microsecond:06d}Z"


class _GitFailed(Exception):
    pass


def _rebuild_by_git(snap: Snapshot, tree: bytes) -> Iterator[_Rows] | None:
    """The rows of every file of the tree's issue directories, in batches, read by git itself: `git ls-tree -r
    -l` streamed (the attachments: their sizes alone), the ids and paths of the files the index reads into
    a file, then `git cat-file --batch` of them, its output streamed (each answer names its path): nothing
    held but a batch. None when there is no git binary (then dulwich reads them: the same rows, slower).
    _GitFailed, from the iterator, when git fails along the way."""
    import shutil

    git = shutil.which("git")
    if git is None:
        return None
    # git's delta base cache bounded (96 MiB by default: a cat-file of every issue would hold ~130 MiB)
    cmd = [git, "-c", f"core.deltaBaseCacheLimit={GIT_DELTA_CACHE}", "--git-dir", snap.repo.controldir()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"GIT_CONFIG_NOSYSTEM": "1"}
    return _git_rows(cmd, env, tree)


def _git_rows(cmd: list[str], env: dict[str, str], tree: bytes) -> Iterator[_Rows]:
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as wanted:  # cat-file's input from a file: no thread to feed it, no pipe to stall
        count = 0
        sized = _Rows()  # the attachments: their sizes from the listing, their bytes never read
        try:
            lister = subprocess.Popen([*cmd, "ls-tree", "-r", "-l", "-z", "--full-tree", tree.decode()], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise _GitFailed(str(e)) from None
        assert lister.stdout is not None
        listed = False
        try:
            left = b""
            while block := lister.stdout.read(1 << 16):
                *entries, left = (left + block).split(b"\0")
                for entry in entries:
                    head, tab, raw = entry.partition(b"\t")
                    fields = head.split()
                    if len(fields) != 4 or fields[1] != b"blob":
                        continue
                    path = raw.decode("utf-8", "replace")
                    where = _split(path)
                    if where is None:
                        continue
                    if not _wanted(where[1]):
                        sized.sized(path, int(fields[3]))
                        if len(sized.sizes) >= BATCH:
                            yield sized
                            sized = _Rows()
                        continue
                    if b"\n" in raw:  # cat-file reads a line per file
                        raise _GitFailed(f"a file name with a newline: {path!r}")
                    wanted.write(fields[2] + b" " + raw + b"\n")
                    count += 1
            listed = True
        finally:
            lister.stdout.close()
            if not listed:  # left early (an error here): git need not go on
                lister.kill()
                lister.wait()
        if lister.wait() != 0:
            raise _GitFailed(f"git ls-tree exited with {lister.returncode}")
        yield sized
        wanted.seek(0)
        proc = subprocess.Popen([*cmd, "cat-file", "--batch=%(objectname) %(objecttype) %(objectsize) %(rest)", "--buffer"],
                                env=env, stdin=wanted, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout
    try:
        rows = _Rows()
        for _ in range(count):
            header = out.readline()
            sha, kind, size, raw = (header[:-1].split(b" ", 3) + [b"", b"", b""])[:4]
            if kind != b"blob" or not size.isdigit():
                raise _GitFailed(f"git cat-file: {header.decode('utf-8', 'replace').strip() or 'no answer'}")
            data = out.read(int(size) + 1)
            path = raw.decode("utf-8", "replace")
            if len(data) != int(size) + 1 or data[-1:] != b"\n":
                raise _GitFailed(f"git cat-file: {path} cut short")
            first, second, filename = path.split("/")  # a path the listing took for an issue's file (_split)
            rows.add(path, data[:-1], (first + second, filename))
            if rows.files >= BATCH:
                yield rows
                rows = _Rows()
        yield rows
    finally:
        out.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def _written_since(snap: Snapshot, tree: bytes | None) -> list[dict[str, bytes | None]] | None:
    """The files of each commit this process wrote from `tree` to the snapshot's, oldest first;
    None when some tree between was not written here (then the index diffs trees)."""
    written = snap.trees.written
    chain: list[dict[str, bytes | None]] = []
    at = snap.tree
    while at != tree:
        step = written.get(at) if at is not None else None
        if step is None or len(chain) >= _writes_kept():  # a tree written twice: no loop
            return None
        at, files = step
        chain.append(files)
    return chain[::-1]


def _writes_kept() -> int:
    from mailtrack.tracker.store import WRITES_KEPT  # the store's bound; loaded where the index is brought up to date

    return WRITES_KEPT


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
