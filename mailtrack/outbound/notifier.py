"""Notifications: what changed on the branch since the last notified tip, who must hear of it, and
the mails that tell them, queued durably in the spool's outbox.

The branch is the only source. However a change arrived (a mail, the CLI in the gateway's
repository, a patch mail, a merge from another clone), the notifier sees it as the difference
between the tip it last notified and the tip now, so each change is told exactly once:

- `derive_notices` diffs the two tips' trees (`tree_changes`: only the paths that changed, never
  the whole tree), then gives each of those paths to the commits of old..new that wrote it (each
  commit diffed against its parents), so every change is told by the person who made it; what
  one commit did to one issue (a new issue, comments and attachments, field changes, close,
  reopen) is one `Notice`, and each notice is one mail to each person who must hear of it;
- the last notified tip lives in `<spool>/notify-state.json` (write, fsync, rename). Before the
  mails of a range are queued, the state names the range and then each mail queued, so a crash
  in the middle resumes where it stopped instead of sending everything twice;
- a first run (no state) records the tip and notifies nothing: installing the gateway on an old
  repository does not mail everyone about every issue it ever had. `begin` records it before the
  first mail is processed, so that mail's change is notified;
- one address causes at most `notify.rate_limit` notices per issue within `notify.rate_window`
  (`RateLimiter.allow_once` in `<spool>/notify-rate.sqlite`, keyed by the notice, so a resumed
  range asks again and gets the same answer): two auto-responders that send no auto-reply headers
  and answer each other's notifications through an issue stop there. Later changes are on the
  branch all the same; only their mail is not sent;
- who sent `unsubscribe ID` hears no more of that issue, whatever their role, until they send
  `subscribe ID`: the gateway records it in `<spool>/optouts.json` (`mailtrack.queue.optouts`), outside the
  branch, and the recipients of every notice are computed without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formataddr
from pathlib import Path
from typing import Any

from dulwich.diff_tree import tree_changes
from dulwich.errors import NotTreeError
from dulwich.object_store import tree_lookup_path
from dulwich.objects import Commit, ObjectID
from dulwich.repo import Repo

from mailtrack.config import Config
from mailtrack.mail.addresses import Ours, bare
from mailtrack.mail.compose import Renderer, build_mail, one_line
from mailtrack.mail.ids import (
    COMPONENTS_HEADER,
    EVENT_HEADER,
    ISSUE_HEADER,
    LOOP_HEADER,
    REASON_HEADER,
    STATUS_HEADER,
    gateway_of,
    is_imported,
    our_message_id,
)
from mailtrack.queue.optouts import OptOuts
from mailtrack.queue.ratelimit import RateLimiter
from mailtrack.queue.spool import Spool, write_durably
from mailtrack.tracker.changes import changed_fields
from mailtrack.tracker.model import Comment, Issue, Person, Project, is_comment_filename
from mailtrack.tracker.store import Snapshot, Store, split_issue_path
from mailtrack.tracker.xmlformat import FormatError

log = logging.getLogger(__name__)


# Why a person gets a mail, in the order a person with several roles is told the first one.
ROLES = (("reporters", "reporter"), ("owners", "owner"), ("assigned", "assignee"), ("carbons", "cc"))
REASONS = ("reporter", "owner", "assignee", "cc", "component-owner", "watcher")
REASON_TEXT = {
    "reporter": "you reported this issue",
    "owner": "you own this issue",
    "assignee": "this issue is assigned to you",
    "cc": "you are on the Cc list of this issue",
    "component-owner": "you own a component of this issue",
    "watcher": "you watch every issue of this project",
}
TEMPLATES = {
    "new": "notify-new.txt",
    "comment": "notify-comment.txt",
    "attachment": "notify-comment.txt",
    "changed": "notify-changed.txt",
    "closed": "notify-closed.txt",
    "reopened": "notify-reopened.txt",
}
# Local parts of addresses that are machines, never people: they get no notification.
MACHINE_LOCAL_RE = re.compile(
    r"^(mailer-daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?)([+._-].*)?$", re.IGNORECASE
)


# --- events -----------------------------------------------------------------------------------


@dataclass
class Notice:
    """What one commit did to one issue."""

    issue: str  # the issue's full name
    commit: bytes
    order: int  # position of the commit in the range, oldest first
    author: Person  # the commit's author
    created: bool = False  # the commit added issue.xml
    before: list[ObjectID] = field(default_factory=list)  # issue.xml blobs of the parents, when it changed it
    comments: list[Comment] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # other files added (attachments)

    @property
    def modified(self) -> bool:
        return bool(self.before)

    @property
    def actor(self) -> Person:
        """Who made the change: a comment's own author, else the commit's."""
        return self.comments[0].author if self.comments else self.author


def _lookup(repo: Repo, tree: ObjectID | None, path: bytes) -> ObjectID | None:
    if tree is None:
        return None
    try:
        return tree_lookup_path(repo.object_store.__getitem__, tree, path)[1]
    except (KeyError, NotTreeError):
        return None


def _tree_of(repo: Repo, commit: bytes) -> ObjectID | None:
    try:
        obj = repo[ObjectID(commit)]
    except KeyError:
        return None
    return obj.tree if isinstance(obj, Commit) else None


def derive_notices(repo: Repo, old: bytes | None, new: bytes, skip: Callable[[Commit], bool] | None = None) -> list[Notice]:
    """What each commit of old..new did to each issue, oldest first (`old` None: from the root).

    Only the paths that differ between the two tips count (a change made and undone in the
    range is no news); each is given to the commits of the range that wrote it, found by
    diffing each commit against its parents. A merge tells only what it made itself (a field
    merged from both sides), not what it brought from a side whose own commits tell it. `skip`:
    commits another gateway tells (`Notifier.not_ours`).
    """
    store = repo.object_store
    new_tree = _tree_of(repo, new)
    old_tree = _tree_of(repo, old) if old else None
    targets = {
        c.new.path
        for c in tree_changes(store, old_tree, new_tree)
        if c.new is not None and c.new.path is not None and split_issue_path(c.new.path) is not None
    }
    if not targets:
        return []
    commits = [e.commit for e in repo.get_walker(include=[ObjectID(new)], exclude=[ObjectID(old)] if old else None)]
    commits.reverse()  # parents before children
    notices: dict[tuple[bytes, str], Notice] = {}
    for order, commit in enumerate(commits):
        if is_imported(commit.message):
            continue  # old mail brought in by `mailtrack import`: nobody is told
        if skip is not None and skip(commit):
            continue
        parent_trees = [_tree_of(repo, p) for p in commit.parents]
        first = parent_trees[0] if parent_trees else None
        for change in tree_changes(store, first, commit.tree):
            if change.new is None or change.new.path not in targets or change.new.sha is None:
                continue
            path, sha = change.new.path, change.new.sha
            others = [_lookup(repo, t, path) for t in parent_trees[1:]]
            if sha in others:
                continue  # a merge taking one side's content: that side's commit tells it
            befores = [b for b in [change.old.sha if change.old is not None else None, *others] if b is not None]
            where = split_issue_path(path)
            assert where is not None  # every target is inside an issue directory
            name, filename = where
            key = (commit.id, name)
            if key not in notices:
                author = Person.parse(commit.author.decode("utf-8", "replace"))
                notices[key] = Notice(name, commit.id, order, author)
            n = notices[key]
            if filename == "issue.xml":
                n.created, n.before = not befores, befores
            elif is_comment_filename(filename):
                if befores:
                    continue  # comment files are never rewritten; an edit is no news
                try:
                    n.comments.append(Comment.from_bytes(store[sha].as_raw_string(), filename))
                except FormatError as e:
                    log.warning("%s: unreadable comment, not notified: %s", path.decode("utf-8", "replace"), e)
            elif not befores:
                n.files.append(filename)
    result = [n for n in notices.values() if n.created or n.modified or n.comments or n.files]
    for n in result:
        n.comments.sort(key=lambda c: (c.created, c.name))
    return sorted(result, key=lambda n: (n.order, n.issue))


# --- recipients -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    person: Person
    reason: str  # one of REASONS


def is_machine_address(address: str, ours: Ours) -> bool:
    """Our own addresses (and their plus forms) and machine mailboxes (mailer-daemon, noreply...)."""
    local, at, _ = bare(address).rpartition("@")
    if not at or not local:
        return True  # a bare name is nobody we can mail
    return bool(MACHINE_LOCAL_RE.match(local)) or ours.is_ours(address)


def recipients(
    issue: Issue,
    before: Issue | None,
    project: Project,
    watchers: list[str],
    ours: Ours,
    actor: Person | None,
    optouts: set[str] | frozenset[str] = frozenset(),
) -> list[Recipient]:
    """Who hears of a change to `issue`: its people (and those a change just removed), the owners
    of its components, the watchers; never a machine, never `actor`, never one who unsubscribed
    from the issue (`optouts`, lower-case addresses), nobody twice."""
    candidates: list[tuple[str, str]] = []
    for issue_ in (issue, before):
        if issue_ is None:
            continue
        for fieldname, reason in ROLES:
            candidates += [(v, reason) for v in getattr(issue_, fieldname)]
    for issue_ in (issue, before):
        if issue_ is not None:
            candidates += [(v, "component-owner") for v in project.component_owners(issue_.components)]
    candidates += [(v, "watcher") for v in watchers]
    # A person with several roles is told the first in REASONS order.
    candidates.sort(key=lambda c: REASONS.index(c[1]))
    skip = {a.lower() for a in optouts}
    if actor is not None and actor.email:
        skip.add(actor.email.lower())
    out = []
    for value, reason in candidates:
        person = Person.parse(value)
        key = person.email.lower()
        if not key or key in skip or is_machine_address(key, ours):
            continue
        skip.add(key)
        out.append(Recipient(person, reason))
    return out


# --- mails ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One notification for one recipient, ready for the outbox."""

    key: str  # "<Message-ID> <recipient>": what the state file remembers as queued
    message_id: str
    recipient: str
    reason: str
    raw: bytes


def human_size(n: int) -> str:
    """A size as people read it: `512 bytes`, `2.0 KB`, `1.5 MB`."""
    if n < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    size = float(n)
    for unit in ("KB", "MB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GB"


def _show(value: str | list[str]) -> str:
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    return value.strip() or "(none)"


def _slug(project: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", project.lower()).strip("-") or "issues"


def _list_id(project: str, domain: str) -> str:
    phrase = project if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ .-]*", project) else json.dumps(project)
    return f"{phrase} <{_slug(project)}.{domain}>"


def event_kind(notice: Notice, before: Issue | None, after: Issue, project: Project) -> str:
    """new | closed | reopened | comment | attachment | changed."""
    if notice.created:
        return "new"
    if before is not None and notice.modified and before.status != after.status:
        closed = project.closed
        if after.status in closed and before.status not in closed:
            return "closed"
        if before.status in closed and after.status not in closed:
            return "reopened"
    if notice.comments:
        return "comment"
    if notice.files:
        return "attachment"
    return "changed"


class Notifier:
    """Turns new commits on the issues branch into notification mails in the outbox."""

    def __init__(self, config: Config, spool: Spool, *, project: str = "", renderer: Renderer | None = None) -> None:
        self.config = config
        self.spool = spool
        self.project = project
        self._renderer = renderer
        self.optouts = OptOuts(spool.layout)
        self._limiter: RateLimiter | None = None  # open during one notify()

    @property
    def state_path(self) -> Path:
        return self.spool.layout.notify_state

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.config.gateway.templates)
        return self._renderer

    # --- the durable state ------------------------------------------------------------------

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crashed run that had our pid
        write_durably(self.state_path, json.dumps(state, indent=1).encode(), tmp=tmp)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One notifier at a time per spool (serve, process and deliver may overlap)."""
        fd = os.open(self.spool.layout.notify_lock, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- the work ---------------------------------------------------------------------------

    def begin(self, store: Store) -> bool:
        """Record the current tip as the start of notifications when there is no state yet (a
        fresh installation); True when it did. Call it before the first mail is processed, so the
        change that mail makes is notified like every later one."""
        with self._locked():
            return self._begin(store)

    def _begin(self, store: Store) -> bool:
        ref = store.ref.decode()
        state = self.read_state()
        if state is not None and state.get("ref") == ref:
            return False
        tip = store.tip()
        self._write_state({"ref": ref, "tip": tip.decode() if tip else None})
        start = tip.decode()[:10] if tip else "(no branch yet)"
        log.info("notifications start at %s: earlier changes are not notified", start)
        return True

    def notify(self, store: Store) -> int:
        """Queue the notifications for every change since the last notified tip; return how many."""
        with self._locked():
            try:
                return self._notify(store)
            finally:
                if self._limiter is not None:
                    self._limiter.close()
                    self._limiter = None

    def _notify(self, store: Store) -> int:
        if self._begin(store):
            return 0
        ref = store.ref.decode()
        tip = self.upto(store)
        state = self.read_state() or {}
        queued = 0
        pending = state.get("pending")
        if pending:  # a range interrupted by a crash: finish it first
            queued += self._notify_range(store, ref, state.get("tip"), pending, set(state.get("queued", [])))
            state = {"ref": ref, "tip": pending}
        last = state.get("tip")
        if tip is None or (last and tip.decode() == last):
            return queued
        if last and tip != store.tip() and self._behind(store, last, tip):
            return queued  # [sync]: the remote does not hold what we notified last yet

        return queued + self._notify_range(store, ref, last, tip.decode(), set())

    def _notify_range(self, store: Store, ref: str, old: str | None, new: str, done: set[str]) -> int:
        repo = store.repo
        if old and ObjectID(old.encode()) not in repo.object_store:
            log.warning("the last notified commit %s is gone (rewritten branch?): skipping to %s", old[:10], new[:10])
            self._write_state({"ref": ref, "tip": new})
            return 0
        if self.config.notify.enabled:
            mails = [m for m in self.mails(store, old.encode() if old else None, new.encode()) if m.key not in done]
        else:
            mails = []
        queued = sorted(done)
        if mails:
            self._write_state({"ref": ref, "tip": old, "pending": new, "queued": queued})
        gw = self.config.gateway
        for mail in mails:
            self.spool.queue_out(mail.raw, sender=gw.address, recipients=[mail.recipient])
            queued.append(mail.key)
            self._write_state({"ref": ref, "tip": old, "pending": new, "queued": queued})
        self._write_state({"ref": ref, "tip": new})
        if mails:
            log.info("queued %d notification(s) for %s..%s", len(mails), (old or "(root)")[:10], new[:10])
        return len(mails)

    # --- several gateways, one remote ([sync]) ------------------------------------------------

    def upto(self, store: Store) -> ObjectID | None:
        """How far to notify: the tip; with [sync], only what the remote holds (`SyncState.level`),
        where a duplicate of a change that reached two gateways has been dropped or kept."""
        tip = store.tip()
        if not self.config.sync.remote or tip is None:
            return tip
        from mailtrack.tracker.sync import SyncState  # here: only [sync] needs it (dulwich's client); deliver starts lean

        level = SyncState.read(store).level
        return ObjectID(level.encode()) if level and ObjectID(level.encode()) in store.repo.object_store else None

    def _behind(self, store: Store, last: str, upto: bytes) -> bool:
        """Whether the last notified commit is not in `upto`'s history (it waits to reach the remote)."""
        old = ObjectID(last.encode())
        if old not in store.repo.object_store:
            return False
        return any(True for _ in store.repo.get_walker(include=[old], exclude=[ObjectID(upto)]))

    def not_ours(self, store: Store, old: bytes | None, new: bytes) -> Callable[[Commit], bool] | None:
        """With [sync], the commits another gateway tells: those it marked (Gateway-Id), and the
        unmarked ones that came from the remote (a CLI push there), unless this gateway is the one
        `sync.notify_unmarked` names to tell those."""
        if not self.config.sync.remote:
            return None
        me, tells_unmarked = self.config.sync.gateway_id, self.config.sync.notify_unmarked
        from mailtrack.tracker.sync import SyncState  # here: only [sync] needs it (dulwich's client); deliver starts lean

        fetched = SyncState.read(store).fetched
        foreign: set[bytes] = set()
        if fetched and ObjectID(fetched.encode()) in store.repo.object_store:
            walk = store.repo.get_walker(include=[ObjectID(fetched.encode())], exclude=[ObjectID(old)] if old else None)
            foreign = {e.commit.id for e in walk}

        def skip(commit: Commit) -> bool:
            marked = gateway_of(commit.message)
            return marked != me if marked is not None else commit.id in foreign and not tells_unmarked

        return skip

    def mails(self, store: Store, old: bytes | None, new: bytes) -> list[Outgoing]:
        """The notifications for the change from `old` to `new`, rendered, in commit order."""
        tip_snap = store.snapshot(new)
        project = tip_snap.project()
        out: list[Outgoing] = []
        for notice in derive_notices(store.repo, old, new, self.not_ours(store, old, new)):
            snap = store.snapshot(notice.commit)
            try:
                after = snap.issue(notice.issue)
                objects = store.repo.object_store
                befores = [Issue.from_bytes(objects[b].as_raw_string(), notice.issue) for b in notice.before]
            except (FormatError, KeyError) as e:
                where = f"{notice.issue[:7]} at {notice.commit.decode()[:10]}"
                log.warning("issue %s: unreadable, not notified: %s", where, e)
                continue
            out += self._render(notice, tip_snap, snap, project, befores, after, store)
        return out

    def _render(self, notice: Notice, tip_snap: Snapshot, snap: Snapshot, project: Project, befores: list[Issue],
                after: Issue, store: Store) -> list[Outgoing]:
        """One mail per recipient of one notice; `snap` is the branch as of the notice's commit."""
        gw, cfg = self.config.gateway, self.config.notify
        before = befores[0] if befores else None
        # A field counts when it differs from every parent's (a merge: only what the merge decided).
        changes = [] if before is None else [
            f for f in changed_fields(before, after) if all(getattr(b, f) != getattr(after, f) for b in befores)
        ]
        kind = event_kind(notice, before, after, project)
        if kind == "changed" and not changes:
            return []  # only bookkeeping changed (modified time, extensions)
        actor = notice.actor
        people = recipients(after, before, project, cfg.watchers, Ours.of(gw), None if cfg.notify_actor else actor,
                            self.optouts.of(notice.issue))
        if not people or not self._within_rate(notice):
            return []
        project_name = self._project_name(store)
        short = tip_snap.short(notice.issue)
        local, _, domain = gw.address.rpartition("@")
        domain = domain or "localhost"
        issue_address = f"{local}+{short}@{domain}"
        first_mail = our_message_id(notice.issue, "issue", domain)
        if kind == "new":
            message_id = first_mail
            in_reply_to = after.message_id
            references = [after.message_id] if after.message_id else []
        else:
            what = f"c.{notice.comments[0].name}" if notice.comments else f"e.{notice.commit.decode()[:12]}"
            message_id = our_message_id(notice.issue, what, domain)
            in_reply_to = first_mail
            references = ([after.message_id] if after.message_id else []) + [first_mail]
        context = self._context(notice, snap, kind, before, after, changes, project_name, short, issue_address)

        # Names come from the branch, which anyone can push to: one line each (build_mail folds the
        # whole header again, but a name folded first is quoted right by formataddr).
        actor_name = one_line(actor.name) or actor.email.partition("@")[0] or "someone"
        sender_name = f"{actor_name} via {gw.name or project_name}"
        out = []
        for r in people:
            headers, body = self.renderer.render(TEMPLATES[kind], **context, reason=r.reason,
                                                 reason_text=REASON_TEXT[r.reason], recipient=r.person.mailbox)
            # A template sets the Subject and nothing else; every other header is ours.
            subject = headers.get("Subject", f"[{project_name} #{short}] {after.title}")
            msg = build_mail(
                (sender_name, gw.address), [formataddr((one_line(r.person.name), r.person.email))], subject, body,
                headers={
                    "In-Reply-To": in_reply_to, "References": " ".join(references), "Reply-To": issue_address,
                    "List-Id": _list_id(project_name, domain),
                    "List-Unsubscribe": f"<mailto:{gw.control_address}?subject=unsubscribe%20{short}>",
                    "Auto-Submitted": "auto-generated", "Precedence": "bulk", "X-Auto-Response-Suppress": "All",
                    LOOP_HEADER: gw.address, ISSUE_HEADER: short, EVENT_HEADER: kind,
                    STATUS_HEADER: after.status, COMPONENTS_HEADER: ", ".join(after.components),
                    REASON_HEADER: r.reason,
                },  # fmt: skip
                domain=domain,
                message_id=message_id,
            )
            if not body.isascii():  # 7-bit on the wire, whatever the relay offers
                msg.set_content(body, cte="quoted-printable")
            out.append(Outgoing(f"{message_id} {r.person.email}", message_id, r.person.email, r.reason, bytes(msg)))
        return out

    def _within_rate(self, notice: Notice) -> bool:
        """Whether the notice's actor is within notify.rate_limit notices on its issue (0: no bound)."""
        cfg = self.config.notify
        if cfg.rate_limit <= 0:
            return True
        actor = notice.actor.email.lower()
        if self._limiter is None:  # one connection for the whole range, closed when notify() ends
            self._limiter = RateLimiter(self.spool.layout.notify_rate_db)
        ok = self._limiter.allow_once(f"{notice.issue} {actor}", f"{notice.commit.decode()} {notice.issue}", cfg.rate_limit,
                                      cfg.rate_window)
        if not ok:
            log.warning("issue %s: %s caused %d notices in %ds already: the change of %s is not mailed", notice.issue[:7],
                        actor or "(unknown)", cfg.rate_limit, cfg.rate_window, notice.commit.decode()[:10])
        return ok

    def _project_name(self, store: Store) -> str:
        if not self.project:
            self.project = store.project_name(self.config.gateway.project)
        return self.project

    def _context(self, notice: Notice, snap: Snapshot, kind: str, before: Issue | None, after: Issue,
                 changes: list[str], project: str, short: str, issue_address: str) -> dict[str, Any]:
        gw, cfg = self.config.gateway, self.config.notify

        def size(filename: str) -> str:
            data = snap.attachment(notice.issue, filename)
            return human_size(len(data)) if data is not None else "(missing)"

        comments = [
            {"author": c.author.mailbox, "author_name": c.author.name or c.author.email, "text": c.text.strip("\n"),
             "created": c.created.strftime("%Y-%m-%d %H:%M UTC"),
             "attachments": [{"name": a, "size": size(a)} for a in c.attachments]}
            for c in notice.comments
        ]  # fmt: skip
        listed = {a for c in notice.comments for a in c.attachments}
        attachments = [a for c in comments for a in c["attachments"]]
        attachments += [{"name": f, "size": size(f)} for f in notice.files if f not in listed]
        change_list = []
        for f in changes:
            old, new = getattr(before, f), getattr(after, f)
            if f == "description":
                line = "description: (changed, the new text is below)"
            else:
                line = f"{f}: {_show(old)} -> {_show(new)}"
            change_list.append({"field": f, "old": _show(old), "new": _show(new), "line": line})
        fields = {f: _show(after.get(f)) for f in (
            "status", "resolution", "type", "severity", "priority", "components", "version", "milestone",
            "reporters", "owners", "assigned", "carbons", "tags")}  # fmt: skip
        actor = notice.actor
        return {
            "project": project, "short": short, "issue_name": notice.issue, "title": after.title, "kind": kind,
            "actor": actor.mailbox, "actor_name": actor.name or actor.email, "fields": fields,
            "description": after.description.strip("\n"), "description_changed": "description" in changes,
            "changes": change_list, "comments": comments, "attachments": attachments,
            "issue_address": issue_address, "control_address": gw.control_address, "address": gw.address,
            "width": cfg.wrap, "status": after.status, "resolution": after.resolution,
            "link": self.config.web.issue_url(short),  # the issue's web page; "" without [web] base_url
        }  # fmt: skip
