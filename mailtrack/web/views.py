"""What the pages show: the list from the index, one issue from its own directory, never a walk of the branch.

`Catalog` asks the index for a list page in SQL (filtered, sorted and cut there) and keeps the
counts per status of the branch's current tree and the last pages asked for; `issue_view` reads the one issue directory a page is about. Text from the
branch is kept as text here: the templates escape it (jinja2's autoescape), the feeds and the mbox
encode it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

from dulwich.objects import ObjectID

from mailtrack.tracker.lookup import Index, normalize_msgid
from mailtrack.tracker.model import Comment, Issue, is_comment_filename, is_reserved_filename
from mailtrack.tracker.query import listing
from mailtrack.tracker.store import DIR_MODE, Snapshot, issue_dir
from mailtrack.tracker.xmlformat import FormatError

CACHED_LISTS = 32  # list pages (filters, sort, page) kept per tree


@dataclass(frozen=True)
class Block:
    """A run of a comment's lines: the writer's own, or quoted (`>`), which a page folds."""

    quoted: bool
    text: str

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def blocks(text: str) -> list[Block]:
    """The text as runs of own and quoted lines, in order; nothing is dropped."""
    out: list[Block] = []
    current: list[str] = []
    quoted = False
    for line in text.strip("\n").splitlines():
        q = line.lstrip().startswith(">")
        if current and q != quoted:
            out.append(Block(quoted, "\n".join(current)))
            current = []
        quoted = q
        current.append(line)
    if current:
        out.append(Block(quoted, "\n".join(current)))
    return out


def anchor(message_id: str, fallback: str) -> str:
    """A record's fragment on its issue page: its Message-ID (normalized as the index keeps it,
    brackets off), or `fallback` when it has none."""
    mid = normalize_msgid(message_id).strip("<>")
    return "".join(mid.split()) or fallback


def fragment(anchor_: str) -> str:
    """An anchor as it goes after the `#` of a URL."""
    return quote(anchor_, safe="@!$&'()*+,;=:/?-._~")


@dataclass(frozen=True)
class File:
    name: str
    size: int | None  # None: named by a comment but not on the branch

    @property
    def url(self) -> str:
        return quote(self.name, safe="")


@dataclass(frozen=True)
class CommentView:
    name: str
    anchor: str
    filename: str
    comment: Comment | None  # None: the file does not parse (`error` says why)
    files: list[File] = field(default_factory=list)
    error: str = ""

    @property
    def blocks(self) -> list[Block]:
        return blocks(self.comment.text) if self.comment is not None else []


@dataclass(frozen=True)
class IssueView:
    name: str
    short: str
    issue: Issue
    is_open: bool
    comments: list[CommentView]
    other_files: list[File]  # files of the directory no comment names (attached with the CLI)

    @property
    def anchor(self) -> str:
        return anchor(self.issue.message_id, "issue")

    @property
    def description(self) -> list[Block]:
        return blocks(self.issue.description)

    @property
    def updated(self) -> datetime:
        stamps = [self.issue.modified or self.issue.created] + [c.comment.created for c in self.comments if c.comment]
        return max(stamps)


def issue_view(snap: Snapshot, name: str) -> IssueView:
    """One issue, its comments in order and its files; UnknownIssue, or FormatError when issue.xml does not parse.
    A comment file that does not parse is shown as such, in its place, and the rest of the page is there."""
    issue = snap.issue(name)
    folder = issue_dir(name)
    entries = {n: ObjectID(sha) for n, mode, sha in snap.listdir(folder) if mode != DIR_MODE}
    store = snap.repo.object_store

    def file(filename: str) -> File:
        sha = entries.get(filename)
        return File(filename, len(store[sha].as_raw_string()) if sha is not None else None)

    comments: list[tuple[tuple[datetime, str], CommentView]] = []
    named: set[str] = set()
    for filename in sorted(n for n in entries if is_comment_filename(n)):
        data = store[entries[filename]].as_raw_string()
        try:
            c = Comment.from_bytes(data, filename)
        except FormatError as e:
            comments.append(((datetime.max.replace(tzinfo=issue.created.tzinfo), filename),
                             CommentView(filename, f"file-{filename}", filename, None, error=str(e))))
            continue
        named.update(c.attachments)
        view = CommentView(c.name, anchor(c.message_id, f"c-{c.name[:12]}"), filename, c, [file(a) for a in c.attachments])
        comments.append(((c.created, c.name), view))
    comments.sort(key=lambda pair: pair[0])
    others = [file(n) for n in sorted(entries) if n not in named and not is_reserved_filename(n)]
    return IssueView(name, snap.short(name), issue, snap.project().is_open(issue), [v for _, v in comments], others)


@dataclass
class State:
    """What the list pages of one tree share: counts, unreadable files, and the pages last asked for."""

    tree: bytes | None
    counts: list[tuple[str, int]]  # (status, issues), in project.xml's order, then the others
    unreadable: list[tuple[str, str]]
    pages: OrderedDict[tuple[object, ...], tuple[int, list[dict[str, object]]]] = field(default_factory=OrderedDict)


class Catalog:
    """The list pages of the branch's current tree, asked of the index in SQL (`tracker.query.listing`):
    a page costs its own rows, never a load of every record; the last pages are kept per tree."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: State | None = None

    def state(self, snap: Snapshot, index: Index) -> State:
        with self._lock:
            if self._state is not None and self._state.tree == snap.tree:
                return self._state
        by_status = index.status_counts(snap)
        statuses = snap.project().statuses
        order = [s for s in statuses if s in by_status] + sorted(s for s in by_status if s not in statuses)
        state = State(snap.tree, [(s, by_status[s]) for s in order], index.unreadable(snap))
        with self._lock:
            self._state = state
        return state

    def page(self, snap: Snapshot, index: Index, state: State, filters: list[tuple[str, str]], sort: str,
             include_closed: bool, limit: int, offset: int = 0) -> tuple[int, list[dict[str, object]]]:
        """(how many rows the list has, `limit` of them from `offset`): `tracker.query.listing`, remembered."""
        key = (tuple(filters), sort, include_closed, limit, offset)
        with self._lock:
            found = state.pages.get(key)
            if found is not None:
                state.pages.move_to_end(key)
                return found
        totals = [t for (f, s, c, _, _), (t, _) in state.pages.items() if (f, s, c) == key[:3]]
        found = listing(index, snap, snap.project(), filters, sort, include_closed, limit=limit, offset=offset,
                        total=totals[0] if totals else None)
        with self._lock:
            state.pages[key] = found
            while len(state.pages) > CACHED_LISTS:
                state.pages.popitem(last=False)
        return found
