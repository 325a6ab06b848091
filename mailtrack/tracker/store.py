"""The issues branch, on dulwich alone: read at one snapshot, write one commit per change.

A writer never touches the work tree, the index or HEAD: it builds blob, tree and commit objects
and moves the branch with a compare-and-swap against the tip it read. When another writer won the
race, the change is computed again on the new tip and retried.

Every writer of ours holds an flock on `<git dir>/mailtrack.lock` (LOCK_NAME) while it writes
objects and moves the ref, and while it moves the ref that file names it (pid, time, ref). The
kernel drops the flock when its holder dies, so a dulwich lock file that a writer meets while it
holds the flock may be stale: an object's (`objects/xx/<sha>.lock`) always is, as git itself
never makes one; a ref lock (`refs/heads/issues.lock`) is when the file still names a holder
that was moving that ref and the lock was made in the seconds after (MOVE_WINDOW). Such a lock
is removed with a WARNING. A ref lock we cannot prove ours (git may hold one, for milliseconds)
is waited for, and removed once older than STALE_LOCK; until then the error (`Locked`) names it.
"""

from __future__ import annotations

import binascii
import bisect
import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from dulwich.errors import NotGitRepository
from dulwich.file import FileLocked
from dulwich.object_store import BaseObjectStore, DiskObjectStore, tree_lookup_path
from dulwich.objects import ZERO_SHA, Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.pack import pack_object_header, write_pack_index
from dulwich.refs import Ref
from dulwich.repo import Repo

from mailtrack.tracker.model import NAME_RE, Comment, Issue, Person, Project, is_comment_filename
from mailtrack.tracker.xmlformat import FormatError

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "issues"
FILE_MODE = 0o100644
DIR_MODE = 0o040000
MIN_SHORT = 7
LOCK_NAME = "mailtrack.lock"  # <git dir>/mailtrack.lock: the flock every writer of ours holds
LOCK_WAIT = 30.0  # seconds a writer waits for another writer of ours to let go of the flock
STALE_LOCK = 60.0  # seconds after which a ref lock no writer of ours can be proved to own is stale
MOVE_WINDOW = 5.0  # a ref lock made this soon after a writer that died started moving the ref is its
TREES_KEPT = 30_000  # tree entries (and rows of the trees written) a Store keeps in memory (the root, fan-outs, issue directories): ~12 MB
WRITES_KEPT = 64  # commits' trees whose files a Store remembers writing, for the index (`Trees.written`)
WRITTEN_BYTES = 32 << 20  # and at most these many bytes of their files (attachments are big)
ISSUES_KEPT = 1024  # issue records a Store keeps parsed (Snapshot.issue)
BATCH_COMMITS = 32  # commits a batch keeps in memory before one pack, one fsync and one ref move (< WRITES_KEPT)
BATCH_BYTES = 16 << 20  # or these many bytes of new files, whichever comes first
PACKS_KEPT = 12  # packs before _consolidate() makes the small ones fewer (their mapped pages count in the RSS)
SMALL_PACK = 32 << 20  # bytes: a pack this large is left alone by _consolidate()
PACK_LEVEL = 1  # zlib level of the packs a batch writes: 3x faster than 6, ~10% larger; `git gc` repacks tighter


class StoreError(Exception):
    """Something the user asked of the store that cannot be done; the message says why."""


class UnknownIssue(StoreError):
    pass


class AmbiguousId(StoreError):
    pass


class NoBranch(StoreError):
    pass


class ValidationError(StoreError):
    """A change that would break project.xml's rules; nothing was written."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class ConcurrentUpdate(StoreError):
    pass


class Locked(StoreError):
    """A lock file stops the write and is not ours to remove (yet): the message names it."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class Held(Protocol):
    """What a writer prepares once its commit is written, and makes visible only once the ref
    points at it (`publish`), or drops when the commit lost the race (`discard`)."""

    def publish(self) -> None: ...

    def discard(self) -> None: ...


def issue_dir(name: str) -> str:
    return f"{name[:2]}/{name[2:]}"


def split_issue_path(path: str | bytes) -> tuple[str, str] | None:
    """(issue name, file name) of a path inside an issue directory (`ab/cdef.../issue.xml`), else None:
    the one answer to "which issue does this path belong to" (project.xml and stray files: none)."""
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    parts = text.split("/")
    if len(parts) != 3 or not NAME_RE.match(parts[0] + parts[1]):
        return None
    return parts[0] + parts[1], parts[2]


def issue_of(path: str) -> str:
    """The issue a path inside an issue directory belongs to; StoreError for any other path."""
    where = split_issue_path(path)
    if where is None:
        raise StoreError(f"{path}: not a file of an issue")
    return where[0]


@dataclass
class Change:
    """What one commit does: a message and the files it writes (None deletes)."""

    message: str
    files: dict[str, bytes | None] = field(default_factory=dict)


class Objects:
    """The object store as a Store reads and writes it: while a batch is open (Store.batch), the
    objects it writes are kept here in memory, read before the disk's, until it flushes them as
    one pack."""

    def __init__(self, disk: BaseObjectStore) -> None:
        self.disk = disk
        self.pending: dict[bytes, ShaFile] | None = None  # a batch's objects, None outside a batch
        self.collecting = False  # while a batch writes a commit: what is added is kept in `pending`
        self.pending_bytes = 0

    def __getitem__(self, sha: bytes) -> ShaFile:
        if self.pending:
            obj = self.pending.get(sha)
            if obj is not None:
                return obj
        return self.disk[ObjectID(sha)]

    def __contains__(self, sha: bytes) -> bool:
        if self.pending and sha in self.pending:
            return True
        return ObjectID(sha) in self.disk

    def add_object(self, obj: ShaFile) -> None:
        if self.pending is None or not self.collecting:  # a writer beside the batch (write_commit) writes to the disk
            self.disk.add_object(obj)
        elif obj.id not in self.pending:
            self.pending[obj.id] = obj
            self.pending_bytes += obj.raw_length()


class Trees:
    """Trees (and commits' trees) read once and kept, by id: an id always names the same object, so
    what is kept is never stale, whoever writes the branch. Also what this process wrote
    (`written`: a tree's base tree and the files written over it), so that the index learns a
    commit of ours from its files instead of diffing trees. A tree handed out must not be changed.
    Bounded: past TREES_KEPT entries in all, the trees kept longest are dropped; a tree written
    over drops its base (the branch has moved on from it)."""

    def __init__(self, objects: BaseObjectStore | Objects) -> None:
        self.objects = objects if isinstance(objects, Objects) else Objects(objects)
        self._kept: dict[bytes, Tree] = {}
        self._rows: dict[bytes, dict[bytes, bytes]] = {}  # of the trees written over: see write()
        self._order: dict[bytes, list[bytes]] = {}  # and their keys in order
        self._names: dict[bytes, tuple[str, list[str]]] = {}  # of the fan-out trees: see names()
        self.projects: dict[bytes, Project] = {}  # project.xml by blob id (Snapshot.project); read, never changed
        self.issues: dict[tuple[bytes, str], Issue] = {}  # issue.xml by blob id and issue (Snapshot.issue); frozen
        self._entries = 0  # of the trees kept
        self._commit_trees: dict[bytes, ObjectID] = {}
        self.written: dict[bytes, tuple[ObjectID | None, dict[str, bytes | None]]] = {}
        self._written_bytes = 0

    def __getitem__(self, sha: bytes) -> ShaFile:
        """The object `sha` (KeyError when there is none); a tree is read once."""
        kept = self._kept.get(sha)
        if kept is not None:
            return kept
        obj = self.objects[sha]
        if isinstance(obj, Tree):
            self.keep(obj)
        return obj

    def __contains__(self, sha: bytes) -> bool:
        return sha in self._kept or sha in self.objects

    def keep(self, tree: Tree) -> None:
        self.drop(tree.id)
        self._kept[tree.id] = tree
        self._entries += len(tree)
        while self._entries > TREES_KEPT and len(self._kept) > 1:
            self.drop(next(iter(self._kept)))

    def drop(self, sha: bytes) -> None:
        gone = self._kept.pop(sha, None)  # another thread may have dropped it first
        if gone is not None:
            self._entries -= len(gone)
        rows = self._rows.pop(sha, None)
        if rows is not None:
            self._entries -= len(rows)
        self._order.pop(sha, None)
        self._names.pop(sha, None)

    def commit_tree(self, commit: bytes) -> ObjectID:
        tree = self._commit_trees.get(commit)
        if tree is None:
            obj = self.objects[commit]
            if not isinstance(obj, Commit):
                raise StoreError(f"{commit.decode()}: not a commit")
            tree = obj.tree
            self.remember_commit(commit, tree)
        return tree

    def remember_commit(self, commit: bytes, tree: ObjectID) -> None:
        if len(self._commit_trees) >= WRITES_KEPT * 64:
            self._commit_trees.clear()
        self._commit_trees[commit] = tree

    def wrote(self, base: ObjectID | None, files: dict[str, bytes | None], tree: ObjectID) -> None:
        size = sum(len(c) for c in files.values() if c is not None)
        while self.written and (len(self.written) >= WRITES_KEPT or self._written_bytes + size > WRITTEN_BYTES):
            self._forget_written(next(iter(self.written)))
        if size <= WRITTEN_BYTES:  # else not remembered: the index diffs trees for that commit
            self._forget_written(tree)
            self.written[tree] = (base, dict(files))
            self._written_bytes += size

    def _forget_written(self, tree: bytes) -> None:
        gone = self.written.pop(tree, None)  # another thread may have dropped it first
        if gone is not None:
            self._written_bytes -= sum(len(c) for c in gone[1].values() if c is not None)

    def write(self, base: ObjectID | None, changes: list[tuple[bytes, int, ObjectID | None]], root: bool = True) -> ObjectID | None:
        """The tree `base` with `changes` (path, mode, blob id; None deletes) applied, its new trees
        added to the object store and kept. A directory left empty goes (None), the root stays.

        A tree is written from the serialized entries of its base (`_rows`: git's order by key),
        one entry replaced: at 100,000 issues the fan-out tree a mail changes has ~400 entries and
        the root 257, and dulwich's Tree.add and serializer cost a Python call or three per entry."""
        old = self[base] if base is not None else None
        assert old is None or isinstance(old, Tree)
        before = self._rows_of(old) if old is not None else {}
        rows = dict(before)
        nested: dict[bytes, list[tuple[bytes, int, ObjectID | None]]] = {}
        for path, mode, sha in changes:
            head, slash, rest = path.partition(b"/")
            if slash:
                nested.setdefault(head, []).append((rest, mode, sha))
            else:
                rows.pop(head, None)
                rows.pop(head + b"/", None)
                if sha is not None:
                    rows[_sort_key(head, mode)] = _row(head, mode, sha)
        for name, below in nested.items():
            was = old[name] if old is not None and name + b"/" in rows and name in old else None
            sub = self.write(was[1] if was is not None and was[0] == DIR_MODE else None, below, root=False)
            rows.pop(name, None)
            rows.pop(name + b"/", None)
            if sub is not None:
                rows[name + b"/"] = _row(name, DIR_MODE, sub)
        if not rows and not root:
            return None
        order = sorted(rows)
        tree = Tree.from_raw_string(Tree.type_num, b"".join([rows[k] for k in order]))
        assert isinstance(tree, Tree)
        self.objects.add_object(tree)  # always: one kept may have been pruned since (dulwich skips what it has loose)
        base_names = self._names.get(base) if base is not None else None
        if base is not None:
            self.drop(base)
        self.keep(tree)
        self._rows[tree.id] = rows
        self._order[tree.id] = order
        self._entries += len(rows)
        if base_names is not None:  # a fan-out tree: its names follow from its base's
            fan, names = base_names
            touched = [k + b"/" for k in {p.partition(b"/")[0] for p, _, _ in changes}]
            if any((k in before) != (k in rows) for k in touched):
                gone = {fan + k[:-1].decode("utf-8", "replace") for k in touched if k in before and k not in rows}
                new = {fan + k[:-1].decode("utf-8", "replace") for k in touched if k in rows and k not in before}
                names = sorted({n for n in names if n not in gone} | {n for n in new if NAME_RE.match(n)})
            self._names[tree.id] = (fan, names)
        return tree.id

    def _rows_of(self, tree: Tree) -> dict[bytes, bytes]:
        """A tree's entries serialized, by their key in git's order (a directory's name sorts with a '/')."""
        rows = self._rows.get(tree.id)
        if rows is None:
            rows = {_sort_key(e.path, e.mode): _row(e.path, e.mode, e.sha) for e in tree.iteritems()}
        return rows

    def names(self, fan: str, sha: bytes) -> list[str]:
        """The issue names of the fan-out tree `sha` (named `fan`), sorted; kept with the tree."""
        kept = self._names.get(sha)
        found = kept[1] if kept is not None else None
        if found is None:
            order = self._order.get(sha)  # a tree written here: its keys, sorted, directories with a '/'
            if order is not None:
                dirs: Iterable[str] = (fan + k[:-1].decode("utf-8", "replace") for k in order if k[-1:] == b"/")
            else:
                tree = self[sha]
                entries = tree.iteritems() if isinstance(tree, Tree) else ()
                dirs = (fan + e.path.decode("utf-8", "replace") for e in entries if e.mode == DIR_MODE)
            found = sorted(n for n in dirs if NAME_RE.match(n))
            if sha in self._kept:
                self._names[sha] = (fan, found)
        return found


def _sort_key(name: bytes, mode: int) -> bytes:
    return name + b"/" if stat.S_ISDIR(mode) else name


def _row(name: bytes, mode: int, sha: bytes) -> bytes:
    return b"%o %s\0%s" % (mode, name, binascii.unhexlify(sha))


class Snapshot:
    """The branch as of one commit. Reads only the trees on the paths it is asked for, each once
    (`trees`: those a Store keeps between snapshots, else this snapshot's own)."""

    def __init__(self, repo: Repo, commit: bytes | None, trees: Trees | None = None) -> None:
        self.repo = repo
        self.commit = commit
        self.trees = trees if trees is not None else Trees(repo.object_store)
        self.tree: ObjectID | None = self.trees.commit_tree(commit) if commit else None
        self._project: Project | None = None

    def _entry(self, path: str) -> tuple[int, ObjectID] | None:
        if self.tree is None:
            return None
        try:
            return tree_lookup_path(self.trees.__getitem__, self.tree, path.encode())
        except KeyError:
            return None

    def read(self, path: str) -> bytes | None:
        entry = self._entry(path)
        if entry is None or entry[0] == DIR_MODE:
            return None
        return self.trees.objects[entry[1]].as_raw_string()

    def listdir(self, path: str = "") -> list[tuple[str, int, bytes]]:
        """(name, mode, sha) of a directory's entries, sorted; [] when there is none."""
        if self.tree is None:
            return []
        sha = self.tree if not path else (self._entry(path) or (0, ObjectID(b"")))[1]
        if not sha:
            return []
        try:
            obj = self.trees[sha]
        except KeyError:
            return []
        if not isinstance(obj, Tree):
            return []
        return [(e.path.decode("utf-8", "replace"), e.mode, e.sha) for e in obj.iteritems()]

    def project(self) -> Project:
        """project.xml, parsed once per blob (kept with the trees: a mail's snapshot is new, its project.xml seldom is)."""
        if self._project is None:
            entry = self._entry("project.xml")
            if entry is None or entry[0] == DIR_MODE:
                self._project = Project()
            else:
                self._project = self.trees.projects.get(entry[1])
                if self._project is None:
                    self._project = Project.from_bytes(self.trees.objects[entry[1]].as_raw_string())
                    if len(self.trees.projects) >= 4:
                        self.trees.projects.clear()
                    self.trees.projects[entry[1]] = self._project
        return self._project

    def tags(self) -> set[str]:
        """The repository's tag names: a version must name one of them."""
        return {r.decode("utf-8", "replace") for r in self.repo.refs.keys(base=Ref(b"refs/tags/"))}

    def issue_names(self) -> Iterator[str]:
        for fan, mode, _ in self.listdir():
            if len(fan) == 2 and mode == DIR_MODE:
                for rest, mode2, _ in self.listdir(fan):
                    if mode2 == DIR_MODE and NAME_RE.match(fan + rest):
                        yield fan + rest

    def _siblings(self, name: str) -> list[str]:
        """The issue names that share `name`'s fan-out directory (its first two hex digits), sorted."""
        fan = name[:2]
        entry = self._entry(fan) if len(fan) == 2 else None
        return self.trees.names(fan, entry[1]) if entry is not None and entry[0] == DIR_MODE else []

    def resolve(self, ident: str) -> str:
        """The full name of the issue an ID names: a unique prefix of 4 or more hex digits."""
        prefix = ident.strip().lower()
        if prefix.startswith("#"):
            prefix = prefix[1:]
        if not (4 <= len(prefix) <= 40) or any(c not in "0123456789abcdef" for c in prefix):
            raise UnknownIssue(f"'{ident}' is not an issue ID (4 to 40 hex digits)")
        siblings = self._siblings(prefix)
        at = bisect.bisect_left(siblings, prefix)
        found = list(itertools.takewhile(lambda n: n.startswith(prefix), siblings[at:]))
        if not found:
            raise UnknownIssue(f"no issue {ident}")
        if len(found) > 1:
            listed = ", ".join(self.short(n) for n in found)
            raise AmbiguousId(f"issue ID {ident} is ambiguous: {listed}")
        return found[0]

    def exists(self, name: str) -> bool:
        return self._entry(issue_dir(name) + "/issue.xml") is not None

    def short(self, name: str) -> str:
        """The shortest prefix of at least 7 hex that names only this issue: one longer than the
        longest it shares with another, which is one of its two neighbours in sorted order."""
        siblings = self._siblings(name)
        at = bisect.bisect_left(siblings, name)
        after = at + 1 if at < len(siblings) and siblings[at] == name else at
        shared = max((len(os.path.commonprefix([name, siblings[i]])) for i in (at - 1, after) if 0 <= i < len(siblings)), default=0)
        return name[:max(MIN_SHORT, min(shared + 1, 40))]

    def issue(self, name: str) -> Issue:
        """The issue's record; parsed once per blob (kept with the trees: a mail reads its issue
        for the rights and again for the change, and the next reply to it reads it again)."""
        entry = self._entry(issue_dir(name) + "/issue.xml")
        if entry is None or entry[0] == DIR_MODE:
            raise UnknownIssue(f"no issue {name[:MIN_SHORT]}")
        kept = self.trees.issues.get((entry[1], name))
        if kept is not None:
            return kept
        try:
            issue = Issue.from_bytes(self.trees.objects[entry[1]].as_raw_string(), name)
        except FormatError as e:
            raise FormatError(f"{issue_dir(name)}/issue.xml: {e}") from None
        if len(self.trees.issues) >= ISSUES_KEPT:
            self.trees.issues.clear()
        self.trees.issues[(entry[1], name)] = issue
        return issue

    def issues(self) -> Iterator[Issue]:
        for name in self.issue_names():
            yield self.issue(name)

    def comment_files(self, name: str) -> list[str]:
        return [n for n, m, _ in self.listdir(issue_dir(name)) if m != DIR_MODE and is_comment_filename(n)]

    def comments(self, name: str) -> list[Comment]:
        out = []
        for fn in self.comment_files(name):
            data = self.read(f"{issue_dir(name)}/{fn}")
            if data is not None:
                try:
                    out.append(Comment.from_bytes(data, fn))
                except FormatError as e:
                    raise FormatError(f"{issue_dir(name)}/{fn}: {e}") from None
        return sorted(out, key=lambda c: (c.created, c.name))

    def attachment(self, name: str, filename: str) -> bytes | None:
        if "/" in filename:
            return None
        return self.read(f"{issue_dir(name)}/{filename}")

    def files(self, name: str) -> list[str]:
        return [n for n, m, _ in self.listdir(issue_dir(name)) if m != DIR_MODE]


def find_repo(path: str | os.PathLike[str] | None = None) -> Repo:
    """The repository at `path`, or found from the current directory upwards as git does."""
    try:
        if path is not None:
            return Repo(str(path))
        env = os.environ.get("GIT_DIR")
        return Repo(env) if env else Repo.discover(os.getcwd())
    except NotGitRepository:
        where = path if path is not None else os.getcwd()
        raise StoreError(f"not a git repository: {where}") from None


def branch_ref(repo: Repo) -> Ref:
    try:
        name = repo.get_config_stack().get((b"issues",), b"branch")
    except KeyError:
        name = DEFAULT_BRANCH.encode()
    return Ref(name if name.startswith(b"refs/") else b"refs/heads/" + name)


class Store:
    """Reads and writes the issues branch of one repository."""

    def __init__(self, repo: Repo, ref: bytes | None = None, durable: bool = False) -> None:
        self.repo = repo
        self.ref = Ref(ref) if ref else branch_ref(repo)
        self.lock_path = Path(repo.controldir()) / LOCK_NAME
        self._lock_fd = -1
        self._lock_depth = 0
        self._blocked = ""  # the ref lock that last stopped a move, for the error
        self.trailers: tuple[str, ...] = ()  # added to every commit this store writes (a gateway's Gateway-Id)
        self.trees = Trees(repo.object_store)  # kept between commits and snapshots
        self._batch: _Batch | None = None  # while batch() is open
        self._repacking: subprocess.Popen[bytes] | None = None  # the last `git repack` _consolidate() started
        self.durable = durable
        if durable:  # the gateway: a mail is acknowledged only once its commit is on disk
            self.repo.object_store.fsync_object_files = True

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, durable: bool = False) -> Store:
        return cls(find_repo(path), durable=durable)

    def close(self) -> None:
        if self._repacking is not None:  # a geometric repack of small packs: a second or so
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._repacking.wait(timeout=60)
        self.repo.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def branch(self) -> str:
        return self.ref.decode().removeprefix("refs/heads/")

    def project_name(self, configured: str = "") -> str:
        """The project's name in subject tags and List-Id: `configured`, else the repository's directory name."""
        if configured:
            return configured
        path = Path(self.repo.path).resolve()
        name = path.name
        if name == ".git":
            name = path.parent.name
        return name.removesuffix(".git") or "issues"

    def tip(self) -> ObjectID | None:
        """The commit the branch points at on disk (a batch's commits not yet flushed are not)."""
        try:
            return self.repo.refs[self.ref]
        except KeyError:
            return None

    def head(self) -> ObjectID | None:
        """The commit the next change goes onto: the tip, or the last commit of the open batch."""
        b = self._batch
        return b.tip if b is not None and b.commits else self.tip()

    def snapshot(self, commit: bytes | None = None) -> Snapshot:
        return Snapshot(self.repo, commit if commit is not None else self.head(), self.trees)

    def require(self) -> Snapshot:
        """The current snapshot of a branch that must exist."""
        snap = self.snapshot()
        if snap.commit is None:
            raise NoBranch(f"no {self.branch} branch here; run '{self.first_step()}' first")
        return snap

    def first_step(self) -> str:
        """`git issues pull [REMOTE]` where a remote-tracking ref of the branch exists (a fresh
        clone), else `git issues init`."""
        if not self.ref.startswith(b"refs/heads/"):
            return "git issues init"
        tail = b"/" + self.ref.removeprefix(b"refs/heads/")
        remotes = sorted(r[: -len(tail)].decode("utf-8", "replace")
                         for r in self.repo.refs.keys(base=Ref(b"refs/remotes/")) if r.endswith(tail))
        if not remotes:
            return "git issues init"
        return "git issues pull" if "origin" in remotes else f"git issues pull {remotes[0]}"

    def init(self, project: Project, author: Person) -> ObjectID:
        """Create the branch: a root commit holding project.xml. StoreError when it exists."""
        if self.tip() is not None:
            raise StoreError(f"the {self.branch} branch exists already")
        with self.writing():
            commit_id = self.write_commit([], None, {"project.xml": project.to_bytes()}, "init issues", author)
            if not self.move(None, commit_id):
                raise StoreError(f"the {self.branch} branch was created meanwhile")
        return commit_id

    def write_commit(
        self,
        parents: list[bytes],
        base_tree: bytes | None,
        files: dict[str, bytes | None],
        message: str,
        author: Person,
        committer: Person | None = None,
        when: tuple[int, int] | None = None,
    ) -> ObjectID:
        """Objects for a commit of `files` over `base_tree`; returns its id. Moves no ref.

        A lock file left on an object by a writer of ours that died is removed (see the module).
        An open batch is flushed first: a commit written here goes straight to the disk."""
        with self.writing():
            self.flush()
            for _ in range(1000):  # each round removes one stale lock file
                try:
                    return self._write_commit(parents, base_tree, files, message, author, committer, when)
                except FileLocked as e:
                    self._remove_stale(os.fsdecode(e.lockfilename), provably=True)
        raise StoreError("could not write the commit's objects: lock files keep coming back")

    def _write_commit(
        self,
        parents: list[bytes],
        base_tree: bytes | None,
        files: dict[str, bytes | None],
        message: str,
        author: Person,
        committer: Person | None,
        when: tuple[int, int] | None,
    ) -> ObjectID:
        store = self.trees.objects  # the batch's memory while one is open
        changes: list[tuple[bytes, int, ObjectID | None]] = []
        for path, content in sorted(files.items()):
            if content is None:
                changes.append((path.encode(), FILE_MODE, None))
            else:
                blob = Blob.from_string(content)
                store.add_object(blob)
                changes.append((path.encode(), FILE_MODE, blob.id))
        base = ObjectID(base_tree) if base_tree is not None else None
        tree = self.trees.write(base, changes)
        assert tree is not None  # the root is written even when empty
        self.trees.wrote(base, files, tree)
        c = Commit()
        c.tree = tree
        c.parents = [ObjectID(p) for p in parents]
        c.author = _ident(author)
        c.committer = _ident(committer or author)
        stamp, offset = when or (int(time.time()), 0)
        c.author_time, c.author_timezone = stamp, offset
        c.commit_time, c.commit_timezone = (int(time.time()), 0) if when else (stamp, offset)
        c.encoding = b"UTF-8"
        if self.trailers:  # into the trailer paragraph the message ends with, else one of their own
            last = message.rstrip("\n").rsplit("\n\n", 1)[-1]
            glue = "\n" if "\n\n" in message.strip() and all(": " in line for line in last.splitlines()) else "\n\n"
            message = message.rstrip("\n") + glue + "\n".join(self.trailers)
        c.message = message.rstrip("\n").encode("utf-8") + b"\n"
        store.add_object(c)
        self.trees.remember_commit(c.id, tree)
        return c.id

    def move(self, old: bytes | None, new: bytes) -> bool:
        """Compare-and-swap the branch from `old` (None: must not exist) to `new`.

        False when the branch is not at `old`, or when a ref lock we cannot remove yet holds it;
        a stale one (see the module) is removed and the move tried again. An open batch is flushed
        first (and its commits are then what `old` must be)."""
        with self.writing():
            self.flush()
            return self._move(old, new)

    def _move(self, old: bytes | None, new: bytes) -> bool:
        with self.writing():
            for _ in range(2):
                self._naming()
                try:
                    return bool(self.repo.refs.set_if_equals(self.ref, ObjectID(old) if old else ZERO_SHA, ObjectID(new)))
                except FileLocked as e:
                    if not self._remove_stale(os.fsdecode(e.lockfilename), provably=False):
                        return False
                finally:
                    self._named_no_more()
            return False

    def is_committed(self, commit: bytes, at: bytes | None = None) -> bool:
        """Whether `commit` is the tip of the branch (or `at`) or one of its ancestors. Only the commits
        made since a day before it are looked at (what came after it is not a day older, clocks
        willing), so the answer for a commit that never landed costs a day of history, not all."""
        tip = self.tip() if at is None else at
        if tip is None:
            return False
        try:
            wanted = self.repo[ObjectID(commit)]
        except KeyError:  # no such commit here
            return False
        if not isinstance(wanted, Commit):
            return False
        oldest = wanted.commit_time - 86400
        seen: set[bytes] = set()
        todo: list[bytes] = [tip]
        while todo:
            sha = todo.pop()
            if sha == commit:
                return True
            if sha in seen:
                continue
            seen.add(sha)
            obj = self.repo[ObjectID(sha)]
            if isinstance(obj, Commit) and obj.commit_time >= oldest:
                todo.extend(obj.parents)
        return False

    # --- the writers' lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writers' flock (re-entrant); Locked when a live writer keeps it past LOCK_WAIT.

        A holder that finds a previous holder still named in the file knows it died while moving
        the ref, and removes the ref lock it left."""
        self._hold()
        try:
            yield
        finally:
            self._let_go()

    def _hold(self) -> None:
        """Take the writers' flock, or one more hold of it (writing(); an open batch's first commit)."""
        if self._lock_depth:
            self._lock_depth += 1
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        holder = os.pread(fd, 100, 0).decode("ascii", "replace").split()
                        raise Locked(f"{self.lock_path} is held by a live mailtrack writer"
                                     f"{' (pid ' + holder[0] + ')' if holder else ''} for more than {LOCK_WAIT:.0f}s", str(self.lock_path)) from None
                    time.sleep(random.uniform(0.005, 0.05))
            left = os.pread(fd, 1000, 0).decode("utf-8", "replace").split()
            self._lock_fd, self._lock_depth = fd, 1
            if left:
                self._after_dead_writer(left)
                os.ftruncate(fd, 0)
        except BaseException:
            if self._lock_fd == fd:
                self._lock_fd, self._lock_depth = -1, 0
            os.close(fd)
            raise

    def _let_go(self) -> None:
        """One hold less; the flock is dropped with the last, in whatever order they are let go of."""
        self._lock_depth -= 1
        if self._lock_depth == 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # drops the flock

    def _naming(self) -> None:
        """Name us in the writers' lock file: we are moving the ref (until _named_no_more)."""
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()} {time.time():.3f} {os.fsdecode(self.ref)}\n".encode(), 0)

    def _named_no_more(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)

    def _after_dead_writer(self, left: list[str]) -> None:
        """The writer named in the lock file died while moving its ref: remove the ref lock it left."""
        pid, ref = left[0], left[2] if len(left) > 2 else os.fsdecode(self.ref)
        try:
            started = float(left[1]) if len(left) > 1 else 0.0
        except ValueError:
            started = 0.0
        ref_lock = Path(self.repo.controldir()) / (ref + ".lock")
        if not ref.startswith("refs/") or ".." in ref:
            return  # not a ref of ours: nothing to judge
        try:
            made = ref_lock.stat().st_mtime
        except FileNotFoundError:
            return  # it died before taking the ref lock, or after letting go of it
        if started - 1 <= made <= started + MOVE_WINDOW:
            with contextlib.suppress(FileNotFoundError):
                ref_lock.unlink()
            log.warning("removed %s, left by a writer of ours (pid %s) that died while moving %s", ref_lock, pid, ref)

    def _remove_stale(self, lock: str, *, provably: bool) -> bool:
        """Remove the lock file `lock` when it is stale (we hold the writers' flock); True when it
        is gone. An object lock (`provably`) is stale: no git makes one, and no writer of ours is
        at work. A ref lock is stale once older than STALE_LOCK: git may be updating the ref."""
        assert self._lock_depth > 0
        try:
            age = time.time() - os.stat(lock).st_mtime
        except FileNotFoundError:
            return True  # its owner finished meanwhile
        if not provably and age < STALE_LOCK:
            self._blocked = lock
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        log.warning("removed the stale lock %s (%.0fs old): no writer of ours holds %s", lock, age, self.lock_path)
        return True

    def update(
        self,
        change: Callable[[Snapshot], Change | None],
        author: Person,
        committer: Person | None = None,
        tries: int = 50,
        when: datetime | None = None,
        prepare: Callable[[bytes], Held] | None = None,
    ) -> tuple[bytes | None, Change | None]:
        """Apply `change` to the tip as one commit, redoing it on a lost race. `when`: the author
        date (an imported mail's own Date); the commit date is always now.

        `change` reads the snapshot it is given and returns the files to write, or None when there
        is nothing to do. It may raise (ValidationError, UnknownIssue ...): then nothing is written.
        `prepare(commit)` is called once the commit's objects are written, under the writers'
        flock: what it holds is published once the ref points at the commit, else discarded (a
        crash in between is settled by whoever holds the flock next: see `is_committed`).
        Returns (the new commit or None, the change applied). Locked names a lock file that
        stops the write and cannot be removed yet.
        """
        self._blocked = ""
        if self._batch is not None:
            return self._batched(change, author, committer, when, prepare)
        for attempt in range(tries):
            snap = self.snapshot()
            result = change(snap)
            if result is None or not result.files:
                return None, result
            with self.writing():
                commit = self.write_commit(_parents(snap), snap.tree, result.files, result.message, author, committer, when=_stamp(when))
                held = prepare(commit) if prepare is not None else None
                try:
                    moved = self.move(snap.commit, commit)
                except BaseException:
                    if held is not None:
                        held.discard()
                    raise
                if held is not None and moved:
                    held.publish()
                elif held is not None:
                    held.discard()
            if moved:
                log.debug("committed %s: %s", commit.decode()[:10], result.message)
                return commit, result
            log.debug("lost the race for %s (attempt %d), redoing", self.ref.decode(), attempt + 1)
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        if self._blocked:
            raise Locked(f"could not update {self.branch}: {self._blocked} exists; if no git process is"
                         f" updating the branch, remove that file", self._blocked)
        raise ConcurrentUpdate(f"could not update {self.branch}: too many concurrent writers")

    # --- batches: several commits, one pack, one fsync, one ref move ------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """While in it, update() writes its commits into memory, each on the one before, and every
        BATCH_COMMITS (or BATCH_BYTES) and at the end they reach the disk together (flush): one pack,
        fsynced once when durable, and then one compare-and-swap of the ref, so the ref never names
        an object that is not durable. Each change is still its own commit, with its own message and
        author. The writers' flock is held from a batch's first commit to its flush, so that no
        other writer of ours moves the ref meanwhile and no `settle` judges the replies it holds
        (and not longer: a `git issues` beside a long import waits for one batch at most). What
        `prepare` held is published once the ref names its commit. Leaving by an exception
        flushes nothing: those changes are not on the branch (their callers must not have
        acknowledged them: see worker.runner). Re-entrant."""
        if self._batch is not None:
            yield
            return
        self._batch = _Batch()
        self.trees.objects.pending = {}
        try:
            yield
            self.flush()
        except BaseException:
            self._drop_batch()
            raise
        finally:
            if self._batch is not None:
                self._batch_let_go(self._batch)
            self._batch = None
            self.trees.objects.pending, self.trees.objects.pending_bytes = None, 0

    def flush(self) -> None:
        """Write the open batch's commits to the disk as one pack and move the ref to the last (see
        batch()), then let go of the writers' flock; a no-op outside a batch or when it holds nothing.
        When the branch moved meanwhile (not by a writer of ours: we hold the flock; by git), the
        batch's changes are done again on the new tip, one commit each, as update() does outside a batch."""
        b = self._batch
        if b is None or not b.commits:
            return
        try:
            objects = self.trees.objects
            assert objects.pending is not None and b.tip is not None
            if objects.pending:  # else written by a flush that failed after (its ref move): on disk already
                write_pack(self.repo.object_store, list(objects.pending.values()), durable=self.durable)
            objects.pending, objects.pending_bytes = {}, 0
            moved = self._move(b.base, b.tip)
            self._batch = _Batch()
            if moved:
                log.debug("committed %d changes in one pack, %s..%s", len(b.redo), (b.base or b"root").decode()[:10], b.tip.decode()[:10])
                for held in b.helds:
                    held.publish()
            else:
                self._redo(b)
            for held in b.after:
                held.publish()
            if moved:
                self._consolidate()
        finally:
            self._batch_let_go(b)

    def _batch_let_go(self, b: _Batch) -> None:
        if b.holding:
            b.holding = False
            self._let_go()

    def _redo(self, b: _Batch) -> None:
        """The batch `b`'s changes, done again one commit each on a tip that git moved meanwhile."""
        for held in b.helds:
            held.discard()
        log.info("the %s branch moved while a batch was written: its %d changes are done again on the new tip", self.branch, len(b.redo))
        batch, self._batch = self._batch, None
        objects = self.trees.objects
        objects.pending = None
        try:
            for change, author, committer, when, prepare in b.redo:
                self.update(change, author, committer, when=when, prepare=prepare)
        except BaseException:  # each change done again is idempotent (Message-IDs): all are tried again
            for held in b.after:
                with contextlib.suppress(Exception):
                    held.discard()
            raise
        finally:
            self._batch, objects.pending = batch, {}

    def when_durable(self, held: Held) -> None:
        """Publish `held` once what was written so far is on the branch: now outside a batch, else
        when the batch is flushed; discarded when the batch is dropped (an exception leaves it)."""
        if self._batch is None or not self._batch.commits:
            held.publish()
        else:
            self._batch.after.append(held)

    def _batched(
        self,
        change: Callable[[Snapshot], Change | None],
        author: Person,
        committer: Person | None,
        when: datetime | None,
        prepare: Callable[[bytes], Held] | None,
    ) -> tuple[bytes | None, Change | None]:
        b = self._batch
        assert b is not None
        if not b.holding:  # a batch's first commit (or the first after a flush that failed): the flock until it is flushed
            self._hold()
            b.holding = True
            if not b.commits:  # else the batch still goes on the tip its first commit went on
                b.base = self.tip()
        snap = self.snapshot()
        try:
            result = change(snap)
        except BaseException:
            if not b.commits:
                self._batch_let_go(b)
            raise
        if result is None or not result.files:
            if not b.commits:
                self._batch_let_go(b)
            return None, result
        self.trees.objects.collecting = True
        try:
            commit = self._write_commit(_parents(snap), snap.tree, result.files, result.message, author, committer, _stamp(when))
        finally:
            self.trees.objects.collecting = False
        b.tip, b.commits = commit, b.commits + 1
        b.redo.append((change, author, committer, when, prepare))
        if prepare is not None:
            b.helds.append(prepare(commit))
        if b.commits >= BATCH_COMMITS or self.trees.objects.pending_bytes >= BATCH_BYTES:
            self.flush()
        return commit, result

    def _drop_batch(self) -> None:
        """Forget an open batch's commits: nothing of them reached the disk, its held replies go."""
        b = self._batch
        if b is None:
            return
        for held in (*b.helds, *b.after):
            with contextlib.suppress(Exception):
                held.discard()
        for sha in self.trees.objects.pending or {}:
            self.trees.drop(sha)
            self.trees._forget_written(sha)

    def _consolidate(self) -> None:
        """Once batches have left more than PACKS_KEPT small packs, make them fewer, so that a
        lookup does not ask hundreds of packs. Where git is installed, `git repack --geometric=2
        -d` in the background (git's own incremental repack: it rolls the small packs up with
        deltas, which a pack of whole trees needs, and leaves the large one alone; a concurrent
        writer or reader is safe, as with `git gc` beside a push; dulwich rereads its pack list).
        Without git, the small packs (below SMALL_PACK bytes) are copied into one here, one object
        at a time, so memory stays bounded whatever the repository's size."""
        store = self.repo.object_store
        packs = getattr(store, "packs", None)
        if packs is None or len(packs) <= PACKS_KEPT:
            return
        if self._repacking is not None and self._repacking.poll() is None:
            return  # the last one is still at work
        git = shutil.which("git")
        if git is not None:
            self._repacking = subprocess.Popen(
                [git, "--git-dir", self.repo.controldir(), "-c", "pack.threads=1", "-c", "core.deltaBaseCacheLimit=16m",
                 "repack", "-d", "-q", "--geometric=2", "--window-memory=16m"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            log.info("%d packs: git repack --geometric=2 started (pid %d)", len(packs), self._repacking.pid)
            return
        small = [p for p in packs if os.path.getsize(p._data_path) < SMALL_PACK]
        if len(small) <= PACKS_KEPT:
            return
        ids: set[bytes] = set()
        for pack in small:
            ids.update(pack.index)  # binary ids, from the .idx: nothing is inflated

        def each() -> Iterator[ShaFile]:
            seen: set[bytes] = set()
            for pack in small:
                for obj in pack.iterobjects():
                    if obj.id not in seen:
                        seen.add(obj.id)
                        yield obj

        merged = write_pack(store, each(), durable=self.durable, count=len(ids))
        for pack in small:
            if os.path.basename(pack._basename) != merged:
                store._remove_pack(pack)
        store._update_pack_cache()
        log.info("made %d small packs one (%d objects)", len(small), len(ids))


@dataclass
class _Batch:
    base: ObjectID | None = None  # the tip the batch's first commit went on: its ref move is compared against it
    holding: bool = False  # a hold of the writers' flock, from the first commit to the flush
    tip: ObjectID | None = None  # its last commit
    commits: int = 0
    redo: list[tuple[Callable[[Snapshot], Change | None], Person, Person | None, datetime | None,
                     Callable[[bytes], Held] | None]] = field(default_factory=list)
    helds: list[Held] = field(default_factory=list)  # what prepare() held for each commit
    after: list[Held] = field(default_factory=list)  # published once the batch is on the branch (when_durable)


def write_pack(store: BaseObjectStore, objects: Iterable[ShaFile], *, durable: bool, count: int | None = None) -> str:
    """Write `objects` (whole, no deltas; `count` of them when not a list) into one pack and its
    index in the store's pack directory, as git names them; returns the pack's name. The .idx is
    renamed into place last: until it is there, git and dulwich ignore the pack, so a kill -9
    leaves at most a tmp_pack_* file, which `git gc` removes. dulwich's add_objects does the same
    in pure Python per chunk and then reads the pack back to index it: three times slower."""
    assert isinstance(store, DiskObjectStore)
    if count is None:
        objects = list(objects)
        count = len(objects)
    pack_dir = Path(store.pack_dir)
    fd, tmp = tempfile.mkstemp(dir=pack_dir, prefix="tmp_pack_")
    entries: list[tuple[bytes, int, int | None]] = []
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha1()
            head = b"PACK" + struct.pack(">LL", 2, count)
            f.write(head)
            digest.update(head)
            offset = len(head)
            for obj in objects:
                raw = obj.as_raw_string()
                data = bytes(pack_object_header(obj.type_num, None, len(raw), store.object_format)) + zlib.compress(raw, PACK_LEVEL)
                entries.append((obj.sha().digest(), offset, zlib.crc32(data)))
                f.write(data)
                digest.update(data)
                offset += len(data)
            if len(entries) != count:
                raise StoreError(f"a pack of {count} objects was given {len(entries)}")
            checksum = digest.digest()
            f.write(checksum)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        entries.sort()
        name = f"pack-{checksum.hex()}"
        os.chmod(tmp, 0o444)
        os.replace(tmp, pack_dir / f"{name}.pack")
        tmp = str(pack_dir / f"tmp_idx_{name}")
        with open(tmp, "wb") as f:
            write_pack_index(f, entries, checksum, version=2)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, pack_dir / f"{name}.idx")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(pack_dir)
    store._update_pack_cache()
    return name


def _fsync_dir(path: Path) -> None:
    """queue.spool.fsync_dir, again: the tracker imports nothing of the queue above it, and the spool
    (so the network edges) nothing of the tracker."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parents(snap: Snapshot) -> list[bytes]:
    return [snap.commit] if snap.commit else []


def _stamp(when: datetime | None) -> tuple[int, int] | None:
    """A commit's (time, offset) from an aware datetime."""
    return (int(when.timestamp()), int((when.utcoffset() or timedelta(0)).total_seconds())) if when else None


def _ident(p: Person) -> bytes:
    return p.ident.encode()
