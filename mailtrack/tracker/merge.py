"""The field-wise three-way merge of docs/FORMAT.md.

Two clones or two gateways that wrote to the branch independently are merged file by file: new
issues, comments and attachments are a union; an issue.xml changed on both sides is merged field
by field against the merge base (lists as sets; a field changed differently on both sides takes
the value with the later `modified` time); project.xml likewise, element by element.

A mail recorded on both sides (two gateways got it) would be there twice after the union: the
record `theirs` holds (the remote's, which every gateway merges into its own: the same choice on
every gateway, and the one whose gateway may have notified it already) stays, and the merge drops
ours (`_duplicates`); a dropped issue's comments and attachments move to the one kept.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from dulwich.diff_tree import TreeChange, tree_changes
from dulwich.errors import NotTreeError
from dulwich.graph import find_merge_base
from dulwich.object_store import BaseObjectStore, tree_lookup_path
from dulwich.objects import ObjectID

from mailtrack.fields import ISSUE_FIELDS, LIST_FIELDS
from mailtrack.tracker.model import Comment, Component, Issue, Person, Project, is_comment_filename
from mailtrack.tracker.store import Store, issue_dir, split_issue_path
from mailtrack.tracker.xmlformat import FormatError

_NOT_MERGED = {"created", "author", "modified", "extensions", "name"}


def _merge_list(base: list[str], ours: list[str], theirs: list[str]) -> list[str]:
    """Lists as sets: both sides' adds and removes. The result does not depend on which side is
    ours (two gateways merging each other must write the same bytes): what both kept stays in
    our order, and the additions follow in sorted order."""
    removed = (set(base) - set(ours)) | (set(base) - set(theirs))
    kept = [v for v in ours if v in base and v not in removed]
    return kept + sorted((set(ours) | set(theirs)) - set(base) - removed)


def _merge_value(field: str, base: object, ours: object, theirs: object, ours_later: bool, notes: list[str]) -> object:
    if ours == theirs or theirs == base:
        return ours
    if ours == base:
        return theirs
    if field in LIST_FIELDS or isinstance(ours, list):
        return _merge_list(list(base or []), list(ours), list(theirs))  # type: ignore[call-overload]
    winner, loser = (ours, theirs) if ours_later else (theirs, ours)
    notes.append(f"{field}: '{winner}' over '{loser}'")
    return winner


def _later(ours_time: object, theirs_time: object, ours: object, theirs: object) -> bool:
    """Whether our side wins a conflict: the later time, and the same answer on both clones on a tie."""
    if ours_time != theirs_time:
        return bool(ours_time > theirs_time)  # type: ignore[operator]
    return repr(ours) >= repr(theirs)


def merge_issue(base: Issue | None, ours: Issue, theirs: Issue) -> tuple[Issue, list[str]]:
    """Three-way merge of one issue's fields; the notes name each field both sides set differently."""
    # field name -> value: the value's type depends on the field, so Any for dataclasses.replace
    blank: dict[str, Any] = {f: ([] if f in LIST_FIELDS else "") for f in ISSUE_FIELDS if f not in _NOT_MERGED}
    base = base or replace(ours, **blank)
    notes: list[str] = []
    ours_later = _later(ours.modified, theirs.modified, ours.to_bytes(), theirs.to_bytes())
    values: dict[str, Any] = {
        f: _merge_value(f, getattr(base, f), getattr(ours, f), getattr(theirs, f), ours_later, notes)
        for f in ISSUE_FIELDS
        if f not in _NOT_MERGED
    }
    values["modified"] = max(ours.modified or ours.created, theirs.modified or theirs.created)
    values["extensions"] = _merge_extensions(base.extensions, ours.extensions, theirs.extensions)
    return replace(ours, **values), notes


def _merge_extensions(base: list, ours: list, theirs: list) -> list:  # type: ignore[type-arg]
    tags = {n.tag for n in ours}
    base_tags = {n.tag for n in base}
    return ours + [n for n in theirs if n.tag not in tags and n.tag not in base_tags]


def merge_project(base: Project | None, ours: Project, theirs: Project) -> tuple[Project, list[str]]:
    """Three-way merge of project.xml, element by element, and each component's owners as a set.

    project.xml has no `modified` time: a conflict goes the same way on both clones (by content),
    and the notes name both values."""
    base = base or Project()
    notes: list[str] = []
    ours_wins = _later(None, None, ours.to_bytes(), theirs.to_bytes())
    values: dict[str, Any] = {}
    for f in fields(Project):
        b, o, t = getattr(base, f.name), getattr(ours, f.name), getattr(theirs, f.name)
        if f.name == "extensions":
            values[f.name] = _merge_extensions(b, o, t)
        elif f.name == "components":
            values[f.name] = _merge_components(b, o, t)
        else:
            values[f.name] = _merge_value(f.name, b, o, t, ours_wins, notes)
    return Project(**values), notes


def _merge_components(base: list[Component], ours: list[Component], theirs: list[Component]) -> list[Component]:
    by_base, by_ours, by_theirs = ({c.name: c for c in side} for side in (base, ours, theirs))
    names = _merge_list(list(by_base), list(by_ours), list(by_theirs))
    out = []
    for n in names:
        b, o, t = by_base.get(n), by_ours.get(n), by_theirs.get(n)
        if o is None or t is None:  # added on one side only
            out.append(o or t)
            continue
        owners = _merge_list(b.owners if b else [], o.owners, t.owners) if o.owners != t.owners else o.owners
        out.append(replace(o, owners=owners, extensions=_merge_extensions(b.extensions if b else [], o.extensions, t.extensions)))
    return out  # type: ignore[return-value]


def _blob(store: Store, sha: ObjectID | None) -> bytes | None:
    return store.repo.object_store[sha].as_raw_string() if sha else None


def _path(change: TreeChange) -> bytes:
    entry = change.new if change.new is not None else change.old
    assert entry is not None and entry.path is not None
    return entry.path


def merge_trees(store: Store, base: ObjectID | None, ours: ObjectID, theirs: ObjectID) -> tuple[dict[str, bytes | None], list[str]]:
    """The files to write over `ours` so that it also holds what `theirs` did since `base`."""
    objects = store.repo.object_store
    mine = {_path(c): c.new.sha if c.new else None for c in tree_changes(objects, base, ours)}
    files: dict[str, bytes | None] = {}
    notes: list[str] = []
    for c in tree_changes(objects, base, theirs):
        path_b = _path(c)
        path = path_b.decode("utf-8", "replace")
        their_sha = c.new.sha if c.new else None
        if path_b not in mine:
            files[path] = _blob(store, their_sha)
            continue
        our_sha = mine[path_b]
        if our_sha == their_sha:
            continue
        if our_sha is None or their_sha is None:  # deleted on one side, changed on the other: keep it
            files[path] = _blob(store, our_sha or their_sha)
            continue
        base_data = _blob(store, c.old.sha if c.old else None)
        where = split_issue_path(path)
        if where is not None and where[1] == "issue.xml":
            name = where[0]
            merged, n = merge_issue(
                Issue.from_bytes(base_data, name) if base_data else None,
                Issue.from_bytes(_blob(store, our_sha) or b"", name),
                Issue.from_bytes(_blob(store, their_sha) or b"", name),
            )
            files[path] = merged.to_bytes()
            notes += [f"{name[:7]} {x}" for x in n]
        elif path == "project.xml":
            merged_p, n = merge_project(
                Project.from_bytes(base_data) if base_data else None,
                Project.from_bytes(_blob(store, our_sha) or b""),
                Project.from_bytes(_blob(store, their_sha) or b""),
            )
            files[path] = merged_p.to_bytes()
            notes += [f"project {x}" for x in n]
        else:  # comments and attachments are never rewritten: a clash is not ours to settle
            notes.append(f"{path}: kept ours")
    _duplicates(store, ours, theirs, _added(objects, base, ours), _added(objects, base, theirs), files, notes)
    return files, notes


def _added(objects: BaseObjectStore, base: ObjectID | None, tree: ObjectID) -> dict[bytes, ObjectID]:
    """The files added since `base` (path -> blob)."""
    out: dict[bytes, ObjectID] = {}
    for c in tree_changes(objects, base, tree):
        if (c.old is None or c.old.sha is None) and c.new is not None and c.new.path is not None and c.new.sha is not None:
            out[c.new.path] = c.new.sha
    return out


def _records(store: Store, added: dict[bytes, ObjectID]) -> dict[str, str]:
    """The records (issue.xml, comments) among the added files: Message-ID -> path."""
    out: dict[str, str] = {}
    for path_b, sha in added.items():
        path = path_b.decode("utf-8", "replace")
        where = split_issue_path(path)
        if where is None or not (where[1] == "issue.xml" or is_comment_filename(where[1])):
            continue
        data = _blob(store, sha) or b""
        try:
            record = Issue.from_bytes(data, where[0]) if where[1] == "issue.xml" else Comment.from_bytes(data, where[1])
        except FormatError:
            continue  # it names no Message-ID we could read
        if record.message_id:
            out[record.message_id.strip().lower()] = path
    return out


def _duplicates(store: Store, ours: ObjectID, theirs: ObjectID, our_added: dict[bytes, ObjectID],
                their_added: dict[bytes, ObjectID], files: dict[str, bytes | None], notes: list[str]) -> None:
    """A Message-ID that both sides recorded since the base keeps the record of theirs; drop ours."""
    mine, yours = _records(store, our_added), _records(store, their_added)
    for mid in sorted(mine.keys() & yours.keys()):
        our_path, their_path = mine[mid], yours[mid]
        if our_path == their_path:
            continue  # one path: the field-wise merge made it one record
        kept, dropped = their_path, our_path
        notes.append(f"duplicate {mid}: kept {kept}, dropped {dropped}")
        moves = [dropped.encode()]
        where = split_issue_path(dropped)
        if where is not None and where[1] == "issue.xml":  # the whole issue goes; what it gathered moves over
            prefix = issue_dir(where[0]).encode() + b"/"
            kept_dir = kept.rsplit("/", 1)[0] + "/"
            objects = store.repo.object_store
            subtree = tree_lookup_path(objects.__getitem__, ours, prefix[:-1])[1]  # its directory only
            for entry in objects.iter_tree_contents(subtree):
                if entry.path is None or entry.path == b"issue.xml":
                    continue
                moves.append(prefix + entry.path)
                target = kept_dir + entry.path.decode("utf-8", "replace")
                if target not in files and not _exists(store, ours, target.encode()):
                    files[target] = _blob(store, entry.sha)
        for path_b in moves:
            files[path_b.decode("utf-8", "replace")] = None  # removed in the merge


def survived(store: Store, commit: bytes, tip: bytes) -> bool:
    """Whether the records `commit` added (a mail's issue or comment) are still its own in `tip`, a
    commit holding it: False when a merge found the same Message-ID recorded by another gateway and
    dropped ours (`_duplicates`), or, the same path on both sides (the same mail in the same second),
    made one record of the two, where theirs (the remote's) stands: that gateway answers the mail."""
    objects = store.repo.object_store
    c = objects[ObjectID(commit)]
    parent = objects[c.parents[0]].tree if c.parents else None  # type: ignore[attr-defined]
    ours = [p.encode() for p in _records(store, _added(objects, parent, c.tree)).values()]  # type: ignore[attr-defined]
    if not ours:
        return True
    kept = objects[ObjectID(tip)].tree  # type: ignore[attr-defined]

    def dropped(path: bytes) -> bool:
        if _exists(store, kept, path):
            return False
        where = split_issue_path(path.decode("utf-8", "replace"))  # a comment gone with its whole issue moved to the one kept
        return where is None or where[1] == "issue.xml" or _exists(store, kept, f"{issue_dir(where[0])}/issue.xml".encode())

    if any(dropped(path) for path in ours):
        return False
    for entry in store.repo.get_walker(include=[ObjectID(tip)], exclude=[ObjectID(commit)]):
        m = entry.commit
        if len(m.parents) != 2:
            continue
        mine, theirs = m.parents
        if store.is_committed(commit, at=mine) and not store.is_committed(commit, at=theirs):
            if any(_exists(store, objects[theirs].tree, path) for path in ours):  # type: ignore[attr-defined]
                return False  # theirs recorded it at the same path first
    return True


def _exists(store: Store, tree: ObjectID, path: bytes) -> bool:
    try:
        tree_lookup_path(store.repo.object_store.__getitem__, tree, path)
    except (KeyError, NotTreeError):
        return False
    return True


def is_ancestor(store: Store, ancestor: bytes, commit: bytes) -> bool:
    """Whether `ancestor` is `commit` or in its history (exact: no commit-time heuristics)."""
    objects = store.repo.object_store
    seen: set[ObjectID] = set()
    todo = [ObjectID(commit)]
    while todo:
        c = todo.pop()
        if c == ancestor:
            return True
        if c in seen or c not in objects:
            continue
        seen.add(c)
        todo.extend(objects[c].parents)  # type: ignore[attr-defined]
    return False


def merge_commits(store: Store, ours: bytes | None, theirs: bytes, author: Person, what: str) -> tuple[bytes, str]:
    """A commit holding both histories: `theirs` itself when ours is behind (fast-forward), `ours`
    when theirs is already in it, else a two-parent merge commit. Returns (commit, how).
    """
    if ours is None or ours == theirs:
        return theirs, "fast-forward" if ours is None else "up to date"
    if is_ancestor(store, theirs, ours):
        return ours, "up to date"
    if is_ancestor(store, ours, theirs):
        return theirs, "fast-forward"
    bases = find_merge_base(store.repo, [ObjectID(ours), ObjectID(theirs)])
    repo = store.repo
    base_tree = repo[bases[0]].tree if bases else None  # type: ignore[attr-defined]
    files, notes = merge_trees(store, base_tree, repo[ours].tree, repo[theirs].tree)  # type: ignore[attr-defined]
    message = f"merge {what}" + ("".join(f"\n\nconflict {n}" for n in notes[:1]) + "".join(f"\nconflict {n}" for n in notes[1:]))
    commit = store.write_commit([ours, theirs], repo[ours].tree, files, message, author)  # type: ignore[attr-defined]
    if repo[commit].tree == repo[theirs].tree:  # type: ignore[attr-defined]
        # all we did is in theirs already (our patch mails, applied there): be level with them,
        # so that the next `push --mail` does not send those commits again
        return theirs, "fast-forward (ours is in theirs)"
    return commit, "merge"
