"""Changes to issues, computed from a snapshot: new issues, comments, field edits.

Every front door (the CLI, a mail, a control mail) describes what it wants as values here and
gets back a `store.Change`: the files to write and the commit message. Everything is validated
against project.xml before anything is written; a change is all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from mailtrack.fields import EDITABLE_FIELDS, LIST_FIELDS, PEOPLE_FIELDS, canonical
from mailtrack.tracker.model import (
    Comment,
    Issue,
    Person,
    attachment_name_problem,
    dedupe_key,
    make_name,
    now,
    split_people,
)
from mailtrack.tracker.store import Change, Snapshot, StoreError, ValidationError, issue_dir
from mailtrack.tracker.xmlformat import Node, clean_text


def field_name(name: str) -> str:
    """issue.xml's name for a field a person named (mailtrack.fields); StoreError when there is none."""
    key = canonical(name)
    if key is None:
        raise StoreError(f"unknown field '{name}'; fields are: {', '.join(EDITABLE_FIELDS)}")
    return key


@dataclass(frozen=True)
class Edit:
    """One field edit: `op` is "=" (set), "+" (add to a list) or "-" (remove from a list)."""

    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}" if self.op != "=" else f"{self.field}={self.value}"


def parse_assignment(text: str) -> Edit:
    """`FIELD=VALUE`, `FIELD+=VALUE` or `FIELD-=VALUE`, as typed on a command line."""
    for op in ("+=", "-=", "="):
        if op in text:
            name, value = text.split(op, 1)
            return Edit(field_name(name), op[0], value.strip())
    raise StoreError(f"'{text}' is not FIELD=VALUE")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def clean_title(text: str) -> str:
    """A title as it is written: one line, every run of whitespace (CR, LF, tabs...) one space.

    A title becomes a mail's Subject and a commit message's first line; the branch never holds a
    title of several lines.
    """
    return " ".join(clean_text(text).split())


def _person(value: str) -> str:
    """A mailbox string for a person given as `Name <addr>`, `addr` or a bare name."""
    p = Person.parse(value)
    return p.mailbox if p.email else value.strip()


def _names(value: str) -> set[str]:
    """What a `-` edit may name a list value by: its address (or itself), or itself."""
    return {Person.parse(value).email.lower() or value, value}


class _Listing:
    """A list field under edit: first-seen order, each value once (model.dedupe's key), and every
    add or removal in constant time, so a mail of many edits costs what it holds, not its square.
    The index by name that removals need is built on the first removal."""

    def __init__(self, values: list[str]) -> None:
        self.items: dict[str, str] = {}  # dedupe key -> value, in order
        self.named: dict[str, set[str]] | None = None  # a name of a value (see _names) -> dedupe keys
        self.assign(values)

    def assign(self, values: list[str]) -> None:
        self.items.clear()
        self.named = None
        for v in values:
            self.add(v)

    def add(self, value: str) -> None:
        key = dedupe_key(value)
        if key in self.items:
            return
        self.items[key] = value
        if self.named is not None:
            for name in _names(value):
                self.named.setdefault(name, set()).add(key)

    def remove(self, gone: set[str]) -> None:
        """Drop every value one of whose names is in `gone`."""
        if self.named is None:
            self.named = {}
            for key, value in self.items.items():
                for name in _names(value):
                    self.named.setdefault(name, set()).add(key)
        for name in gone:
            for key in self.named.pop(name, set()):
                if key in self.items and name in _names(self.items[key]):
                    del self.items[key]

    def values(self) -> list[str]:
        return list(self.items.values())


def apply_edits(issue: Issue, edits: list[Edit]) -> Issue:
    """The issue with the edits applied, in order (not yet validated)."""
    values: dict[str, object] = {}
    lists: dict[str, _Listing] = {}
    for e in edits:
        if e.field in LIST_FIELDS:
            items = [_person(v) for v in split_people(e.value)] if e.field in PEOPLE_FIELDS else _split(e.value)
            gone = {Person.parse(i).email.lower() or i for i in items} if e.field in PEOPLE_FIELDS else set(items)
            if e.field not in lists:  # the first edit of the field acts on the list as the file holds it
                cur: list[str] = list(getattr(issue, e.field))
                new = items if e.op == "=" else cur + items if e.op == "+" else [v for v in cur if not _names(v) & gone]
                lists[e.field] = _Listing(new)
            elif e.op == "=":
                lists[e.field].assign(items)
            elif e.op == "+":
                for v in items:
                    lists[e.field].add(v)
            else:
                lists[e.field].remove(gone)
            continue
        if e.op != "=":
            raise StoreError(f"{e.field} holds one value: use {e.field}=VALUE")
        if e.field == "title":
            values[e.field] = clean_title(e.value)
        elif e.field == "description":
            values[e.field] = clean_text(e.value)
        else:
            values[e.field] = clean_text(e.value).strip()
    values.update({f: listing.values() for f, listing in lists.items()})
    return replace(issue, **values)  # type: ignore[arg-type]


def changed_fields(old: Issue, new: Issue) -> list[str]:
    return [f for f in EDITABLE_FIELDS if getattr(old, f) != getattr(new, f)]


def _validate(snap: Snapshot, issue: Issue) -> None:
    errors = snap.project().validate(issue, snap.tags() if issue.version else None)
    if errors:
        raise ValidationError(errors)


def new_issue(
    snap: Snapshot,
    author: Person,
    title: str,
    description: str = "",
    edits: list[Edit] | None = None,
    created: datetime | None = None,
    message_id: str = "",
) -> tuple[Issue, Change]:
    """A new issue with the project's defaults, then `edits`; validated."""
    project = snap.project()
    created = created or now()
    title = clean_title(title)
    issue = Issue(
        created=created,
        author=author,
        title=title,
        description=clean_text(description),
        reporters=[author.mailbox] if author.email else [],
        status=project.default("status"),
        type=project.default("type"),
        severity=project.default("severity"),
        priority=project.default("priority"),
        modified=created,
        name=make_name(created, author, title),
    )
    issue = apply_edits(issue, edits or [])
    if message_id:
        issue = issue.with_message_id(message_id)
    _validate(snap, issue)
    if snap.exists(issue.name):
        raise StoreError(f"issue {issue.name[:7]} exists already")
    return issue, Change(f"new {issue.name[:7]}: {issue.title}", {f"{issue_dir(issue.name)}/issue.xml": issue.to_bytes()})


def comment_change(
    snap: Snapshot,
    name: str,
    author: Person,
    text: str,
    attachments: list[tuple[str, bytes]] | None = None,
    created: datetime | None = None,
    message_id: str = "",
    in_reply_to: str = "",
) -> tuple[Comment, dict[str, bytes | None]]:
    """The files of a new comment and its attachments on issue `name` (which must exist)."""
    existing = set(snap.files(name))
    files: dict[str, bytes | None] = {}
    names = []
    for filename, data in attachments or []:
        problem = attachment_name_problem(filename)
        if problem:
            raise StoreError(f"'{filename}' cannot be an attachment's name: {problem}")
        unique, n = filename, 1
        while unique in existing or unique in files or attachment_name_problem(unique):
            stem, dot, ext = filename.rpartition(".")
            unique = f"{stem}-{n}.{ext}" if dot and stem else f"{filename}-{n}"
            n += 1
        files[f"{issue_dir(name)}/{unique}"] = data
        names.append(unique)
    extensions: list[Node] = []  # not `ext`: the loop above uses that name for a str
    if message_id:
        extensions.append(Node("message-id", message_id))
    if in_reply_to:
        extensions.append(Node("in-reply-to", in_reply_to))
    comment = Comment.new(author, text, created=created, attachments=names, extensions=extensions)
    files[f"{issue_dir(name)}/{comment.filename}"] = comment.to_bytes()
    return comment, files


def edit_issue(
    snap: Snapshot,
    name: str,
    author: Person,
    edits: list[Edit] | None = None,
    comment: str | None = None,
    attachments: list[tuple[str, bytes]] | None = None,
    when: datetime | None = None,
    message_id: str = "",
    in_reply_to: str = "",
) -> tuple[Issue, Change]:
    """Field edits and/or a comment on one issue, as one change; validated, all or nothing.

    The returned change has no files when nothing would change.
    """
    when = when or now()
    old = snap.issue(name)
    new = apply_edits(old, edits or [])
    short = snap.short(name)
    files: dict[str, bytes | None] = {}
    messages = []
    if changed_fields(old, new):
        # Only what this edit breaks: a value the project no longer allows, left on an issue by
        # an older project.xml, must not block every later change to that issue.
        errors = snap.project().validate(new, snap.tags() if new.version else None)
        errors = [e for e in errors if e not in snap.project().validate(old, snap.tags() if old.version else None)]
        if errors:
            raise ValidationError(errors)
        new = replace(new, modified=when)
        files[f"{issue_dir(name)}/issue.xml"] = new.to_bytes()
        messages.append(describe_edit(snap, old, new, short))
    if comment is not None or attachments:
        _, cfiles = comment_change(snap, name, author, comment or "", attachments, when, message_id, in_reply_to)
        files.update(cfiles)
        messages.insert(0, f"comment {short} by {author.email or author.name}")
    return new, Change("; ".join(messages), files)


def describe_edit(snap: Snapshot, old: Issue, new: Issue, short: str) -> str:
    """A short commit message for a field edit: `close d14142c (fixed)`, `set d14142c severity=minor`."""
    closed = snap.project().closed
    if new.status != old.status and new.status in closed and old.status not in closed:
        return f"close {short}" + (f" ({new.resolution})" if new.resolution else "")
    if new.status != old.status and old.status in closed and new.status not in closed:
        return f"reopen {short}"
    parts = []
    for f in changed_fields(old, new):
        v = getattr(new, f)
        parts.append(f if f == "description" else f"{f}={','.join(v) if isinstance(v, list) else v}")
    text = " ".join(parts)
    return f"set {short} {text}" if len(text) <= 60 else f"set {short} {', '.join(changed_fields(old, new))}"


def close_edits(snap: Snapshot, resolution: str = "", issue: Issue | None = None) -> list[Edit]:
    """The first closed status and `resolution` (default: the project's first).

    When `issue` is given and is closed already, its status stays: the edit is `resolution` alone,
    or none at all without one (closing a closed issue again must not reset its resolution).
    """
    project = snap.project()
    if issue is not None and issue.status in project.closed:
        return [Edit("resolution", "=", resolution)] if resolution else []
    return [Edit("status", "=", project.closed[0]), Edit("resolution", "=", resolution or project.default("resolution"))]


def reopen_edits(snap: Snapshot, issue: Issue | None = None) -> list[Edit]:
    """The first open status and no resolution; none at all when `issue` is given and is not closed."""
    project = snap.project()
    if issue is not None and issue.status not in project.closed:
        return []
    status = next((s for s in project.statuses if s not in project.closed), project.default("status"))
    return [Edit("status", "=", status), Edit("resolution", "=", "")]
