"""In: a complete patch series checked file by file and applied onto the tip whole or not at all.

Every path is checked against the layout of FORMAT.md; every file it writes is parsed, checked
against project.xml and judged by mailtrack.tracker.rights as the same change by mail would be
(fields by their rules; comments and attachments as comments; what no mail can change, such as
`<author>` or a comment on the branch, for maintainers alone). A series made on an older tip is
merged into the current issue.xml field by field. Returns results, never a decision about a mail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from dulwich.objects import Blob, ObjectID

from mailtrack.config import AccessConfig
from mailtrack.mail.parse import ParsedMail
from mailtrack.patches.detect import FILE_MODE, MAX_PATCHES
from mailtrack.patches.diff import FilePatch, Patch, apply_hunks, parse_patch
from mailtrack.tracker import rights
from mailtrack.tracker.gitnames import tree_name_problem
from mailtrack.tracker.merge import merge_issue, merge_project
from mailtrack.tracker.model import (
    Comment,
    Issue,
    Person,
    Project,
    attachment_name_problem,
    is_comment_filename,
    now,
    written_at,
)
from mailtrack.tracker.rights import Sender
from mailtrack.tracker.store import Snapshot, Store, StoreError, issue_dir, issue_of, split_issue_path
from mailtrack.tracker.xmlformat import FormatError


def path_problem(path: str, project_ok: bool) -> str:
    """Why `path` may not be written on the issues branch; "" when it may."""
    parts = path.split("/")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):  # a quoted path may hold a newline: never a name of ours
        return f"{path!r}: a control character in the path"
    if any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        return f"{path}: not a plain path inside the issues branch"
    if any(p.lower().startswith(".git") for p in parts):
        return f"{path}: touches .git"
    for part in parts:
        problem = tree_name_problem(part)
        if problem:
            return f"{path}: a name git refuses in a tree ({problem})"
    if path == "project.xml":
        return "" if project_ok else "project.xml: you may not change the project (its maintainers may)"
    where = split_issue_path(path)
    if where is None:
        return f"{path}: outside the layout of the issues branch (xx/38hex/issue.xml, comment_*.xml, attachments, project.xml)"
    leaf = where[1]
    if leaf == "issue.xml" or is_comment_filename(leaf):
        return ""
    problem = attachment_name_problem(leaf)
    if problem:
        return f"{path}: not a legal attachment name ({problem})"
    return ""


def _lookup_blob(store: Store, prefix: bytes) -> bytes | None:
    if not prefix or set(prefix) == {ord("0")}:
        return None
    objects = store.repo.object_store
    try:
        if len(prefix) == 40:
            sha = ObjectID(prefix)
            return objects[sha].as_raw_string() if sha in objects else None
        for sha in objects.iter_prefix(prefix):
            obj = objects[sha]
            if isinstance(obj, Blob):
                return obj.as_raw_string()
    except (KeyError, ValueError):
        return None
    return None


class PatchStatus(StrEnum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"  # every file it writes is there already
    REFUSED = "refused"  # with its reasons
    NOT_APPLIED = "not applied"  # another patch of the series was refused


@dataclass
class PatchResult:
    number: int
    subject: str
    status: PatchStatus = PatchStatus.NOT_APPLIED
    reasons: list[str] = field(default_factory=list)
    commit: str = ""


@dataclass(frozen=True)
class Applier:
    """What applying a series needs of the gateway: the branch, the rules, and how to read a mail."""

    store: Store
    access: AccessConfig
    committer: Person
    parse: Callable[[bytes], ParsedMail]  # the gateway's parser, with its limits
    max_series: int  # bytes of one series
    max_file: int  # bytes of one file it writes


class _Series:
    """One series applied over a snapshot, in memory: the files it writes, patch by patch."""

    def __init__(self, ctx: Applier, snap: Snapshot, who: Sender) -> None:
        self.ctx, self.snap, self.who = ctx, snap, who
        self.overlay: dict[str, bytes | None] = {}
        self.created: set[str] = set()
        self.extra_blobs: list[bytes] = []

    def read(self, path: str) -> bytes | None:
        return self.overlay[path] if path in self.overlay else self.snap.read(path)

    def issue(self, name: str) -> Issue | None:
        data = self.read(f"{issue_dir(name)}/issue.xml")
        try:
            return Issue.from_bytes(data, name) if data is not None else None
        except FormatError:
            return None

    def apply(self, patch: Patch) -> tuple[dict[str, bytes | None], list[str]]:
        """The files this patch writes over the series so far, and every reason to refuse it."""
        access = self.ctx.access
        reasons = list(patch.problems)
        writes: dict[str, bytes | None] = {}
        project_ok = rights.may(self.who, access.change_project, None, self.snap, access)
        for fp in patch.files:
            reasons += [f"{fp.path}: {p}" if fp.path != "?" else p for p in fp.problems]
            if fp.path == "?":
                continue
            for path in {fp.path, fp.old_path}:
                problem = path_problem(path, project_ok)
                if problem:
                    reasons.append(problem)
            bad_modes = sorted({m.decode("ascii", "replace") for m in fp.modes if m != FILE_MODE})
            if bad_modes:
                kind = " (a symlink)" if "120000" in bad_modes else " (a submodule)" if "160000" in bad_modes else ""
                reasons.append(f"{fp.path}: mode {', '.join(bad_modes)}{kind}; only regular files (100644) are allowed")
            if fp.deleted:
                reasons.append(f"{fp.path}: deletes a file; nothing is ever deleted from the issues branch")
            if reasons:
                continue
            result, why = self._post_image(fp)
            if why:
                reasons.append(why)
            elif result is not None:
                writes[fp.path] = result
        if reasons:
            return {}, reasons
        reasons += self._check(patch, writes)
        return ({}, reasons) if reasons else (writes, [])

    def _post_image(self, fp: FilePatch) -> tuple[bytes | None, str]:
        """(what to write, or None when it is there already; a reason to refuse)."""
        cur = self.read(fp.path)
        if fp.new_file:
            post = self._patched(b"", fp)
            if post is None:
                return None, f"{fp.path}: the patch does not apply"
            if cur is None:
                return post, ""
            if cur == post or fp.path.endswith("/issue.xml") or is_comment_filename(fp.path.rpartition("/")[2]):
                return None, ""  # names come from content: the same issue or comment is there already
            return None, f"{fp.path}: an attachment of that name exists with other content"
        if cur is None:
            return None, f"{fp.path}: no such file on the issues branch"
        if fp.old_index and Blob.from_string(cur).id.startswith(fp.old_index):
            post = self._patched(cur, fp)
            if post is None:
                return None, f"{fp.path}: the patch does not apply"
            return (None if post == cur else post), ""
        base = _lookup_blob(self.ctx.store, fp.old_index)
        if base is None:  # a version we never had: try the hunks on the current file
            post = self._patched(cur, fp)
            if post is None:
                return None, f"{fp.path}: made on a version this tracker does not have, and it does not apply to the current one; pull and send again"
            return (None if post == cur else post), ""
        post = self._patched(base, fp)
        if post is None:
            return None, f"{fp.path}: the patch does not apply to the version it names"
        self.extra_blobs.append(post)  # a later series may name it as its base
        if post == cur:
            return None, ""
        try:
            if fp.path.endswith("/issue.xml"):
                name = issue_of(fp.path)
                merged, _ = merge_issue(Issue.from_bytes(base, name), Issue.from_bytes(cur, name), Issue.from_bytes(post, name))
                data = merged.to_bytes()
            elif fp.path == "project.xml":
                merged_p, _ = merge_project(Project.from_bytes(base), Project.from_bytes(cur), Project.from_bytes(post))
                data = merged_p.to_bytes()
            else:
                return None, f"{fp.path}: changed on the tracker meanwhile; comments and attachments are never rewritten"
        except (FormatError, ValueError, TypeError) as e:
            return None, f"{fp.path}: does not parse: {e}"
        return (None if data == cur else data), ""

    @staticmethod
    def _patched(old: bytes, fp: FilePatch) -> bytes | None:
        if fp.binary:
            kind, data = fp.binary[0]
            if kind == "literal":
                return data
            from dulwich.pack import apply_delta

            try:
                return b"".join(apply_delta(old, data))
            except Exception:  # a corrupt delta is a refusal, whatever dulwich raises
                return None
        return apply_hunks(old, fp.hunks)

    def _check(self, patch: Patch, writes: dict[str, bytes | None]) -> list[str]:
        """Parse what would be written, check it against project.xml, and ask the rights."""
        access = self.ctx.access
        sender = self.who
        reasons = []
        project = self.snap.project()
        if "project.xml" in writes:
            try:
                project = Project.from_bytes(writes["project.xml"] or b"")
            except (FormatError, ValueError, TypeError) as e:
                reasons.append(f"project.xml: does not parse: {e}")
        for path, data in sorted(writes.items()):
            if path == "project.xml" or data is None:
                continue
            fan, rest, leaf = path.split("/")  # path_problem let through only xx/38hex/leaf here
            name = issue_of(path)
            before = self.issue(name)
            new_here = before is None or name in self.created  # opened by this series
            try:
                if leaf == "issue.xml":
                    issue = Issue.from_bytes(data, name)
                    stale = set(project.validate(before, self.snap.tags())) if before is not None else set()
                    reasons += [f"{path}: {e}" for e in project.validate(issue, self.snap.tags()) if e not in stale]
                    reasons += rights.issue_refusals(sender, None if new_here else before, issue, self.snap, access)
                    continue
                comment = Comment.from_bytes(data, leaf) if is_comment_filename(leaf) else None
                if before is None and f"{fan}/{rest}/issue.xml" not in writes:
                    reasons.append(f"{path}: {'a comment on' if comment else 'an attachment of'} no issue")
                    continue
                reasons += rights.file_refusals(sender, path, None if new_here else before, self.snap.read(path), data,
                                                comment.author if comment else None, self.snap, access)
            except (FormatError, ValueError, TypeError) as e:  # whatever a hostile file makes the parser raise
                reasons.append(f"{path}: does not parse: {e}")
        return reasons

    def commit(self, writes: dict[str, bytes | None]) -> None:
        for path, data in writes.items():
            if path.endswith("/issue.xml") and self.read(path) is None:
                self.created.add(issue_of(path))
            self.overlay[path] = data


def apply_series(ctx: Applier, raws: list[bytes], who: Sender) -> tuple[list[PatchResult], bytes | None]:
    """Apply a complete series from `who` (its sender, admitted when each part came: a series is
    gathered per sender) onto the tip: every patch or none. Returns the results and the new tip."""
    total = sum(len(r) for r in raws)
    limit = ctx.max_series
    if total > limit or len(raws) > MAX_PATCHES:  # before anything is decoded
        why = f"the series is too large ({len(raws)} patches, {total} bytes; at most {MAX_PATCHES} patches and {limit} bytes)"
        return [PatchResult(i, ctx.parse(raw).subject, PatchStatus.REFUSED, [why]) for i, raw in enumerate(raws, 1)], None
    pairs = sorted(((parse_patch(raw, mail.from_addr, ctx.max_file), _sent_by_send_email(mail))
                    for raw, mail in ((raw, ctx.parse(raw)) for raw in raws)), key=lambda pair: pair[0].number)
    parsed = [p for p, _ in pairs]
    redated = [r for _, r in pairs]  # per patch: its mail's Date is not its author date
    results = [PatchResult(p.number, p.subject) for p in parsed]
    store = ctx.store
    for _attempt in range(20):
        snap = store.snapshot()
        if snap.commit is None:
            for r in results:
                r.status, r.reasons = PatchStatus.REFUSED, ["the tracker has no issues branch yet"]
            return results, None
        series = _Series(ctx, snap, who)
        refused = False
        per_patch: list[dict[str, bytes | None]] = []
        dates: list[tuple[int, int]] = []
        for p, r, resent in zip(parsed, results, redated, strict=True):
            r.reasons, r.status, r.commit = [], PatchStatus.NOT_APPLIED, ""  # its sender was admitted when its mail came
            writes, reasons = series.apply(p)
            if reasons:
                r.status, r.reasons = PatchStatus.REFUSED, reasons
                refused = True
            else:
                r.status = PatchStatus.APPLIED if writes else PatchStatus.ALREADY_APPLIED
            dates.append((_author_date(series, writes) if resent else None) or p.when)
            series.commit(writes)
            per_patch.append(writes)
        if refused:
            for r in results:
                if r.status != PatchStatus.REFUSED:
                    r.status, r.reasons = PatchStatus.NOT_APPLIED, ["another patch of the series was refused"]
            return results, None
        tip, tree = snap.commit, snap.tree
        for blob_data in series.extra_blobs:
            store.repo.object_store.add_object(Blob.from_string(blob_data))
        for p, r, writes, when in zip(parsed, results, per_patch, dates, strict=True):
            if not writes:
                continue
            commit = store.write_commit([tip] if tip else [], tree, writes, p.message, p.author, ctx.committer, when=when)
            tip, tree = commit, store.repo[commit].tree  # type: ignore[attr-defined]
            r.commit = commit.decode()[:10]
        if tip == snap.commit:
            return results, None
        assert tip is not None
        if store.move(snap.commit, tip):
            return results, tip
    raise StoreError("the issues branch kept moving while a patch series was applied")


def _sent_by_send_email(mail: ParsedMail) -> bool:
    """git send-email drops format-patch's Date (the author date) and dates each mail when it sends it."""
    return (mail.header("x-mailer") or "").lower().startswith("git-send-email")


def _author_date(series: _Series, writes: dict[str, bytes | None]) -> tuple[int, int] | None:
    """The author date of a patch whose mail was re-dated, from what its files record: a commit of
    `git issues` (or of a gateway) writes its own time as the new comments' `created` and as the
    `modified` of the issue.xml it changes. None when its files record no sane time (a hand edit)."""
    times: list[datetime] = []
    for path, data in writes.items():
        where = split_issue_path(path)
        if data is None or where is None:
            continue
        try:
            if where[1] == "issue.xml":
                issue = Issue.from_bytes(data, where[0])
                before = series.read(path)
                if issue.modified is not None and (before is None or Issue.from_bytes(before, where[0]).modified != issue.modified):
                    times.append(issue.modified)
            elif is_comment_filename(where[1]) and series.read(path) is None:
                times.append(Comment.from_bytes(data, where[1]).created)
        except (FormatError, ValueError, TypeError):  # checked (and refused) by _check already
            continue
    at = now()
    sane = [t for t in times if written_at(t, at) == t]
    return (int(max(sane).timestamp()), 0) if sane else None
