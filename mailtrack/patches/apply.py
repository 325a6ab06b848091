"""In: gather a patch series from the spool, check every file it writes, apply it whole or not at all."""

from __future__ import annotations

import contextlib
import email
import email.utils
import hashlib
import io
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from pathlib import Path
from typing import TYPE_CHECKING

from dulwich.objects import Blob, ObjectID
from dulwich.patch import _parse_git_diff_header_paths, git_am_patch_split, git_base85_decode

from mailtrack.mail.parse import parse
from mailtrack.patches import (
    _HEX2,
    _HEX38,
    _HUNK,
    _SUBJECT,
    FILE_MODE,
    MAX_PATCHES,
    patch_numbers,
    thread_root,
)
from mailtrack.tracker.changes import changed_fields
from mailtrack.tracker.merge import merge_issue, merge_project
from mailtrack.tracker.model import Comment, Issue, Person, Project, is_comment_filename, is_reserved_filename
from mailtrack.tracker.store import Snapshot, Store, StoreError, issue_of
from mailtrack.tracker.xmlformat import FormatError
from mailtrack.worker import commands

if TYPE_CHECKING:
    from mailtrack.mail.parse import ParsedMail
    from mailtrack.worker.pipeline import Gateway, Outcome

log = logging.getLogger(__name__)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- in: parsing one patch -------------------------------------------------------------------


@dataclass
class Hunk:
    old_start: int
    old_len: int
    lines: list[bytes]


@dataclass
class FilePatch:
    path: str
    old_path: str
    new_file: bool = False
    deleted: bool = False
    modes: list[bytes] = field(default_factory=list)
    old_index: bytes = b""
    new_index: bytes = b""
    hunks: list[Hunk] = field(default_factory=list)
    binary: list[tuple[str, bytes]] = field(default_factory=list)  # (literal|delta, inflated data)
    problems: list[str] = field(default_factory=list)


@dataclass
class Patch:
    number: int
    total: int
    subject: str
    message: str
    author: Person
    when: tuple[int, int]
    files: list[FilePatch]
    sender: str
    problems: list[str] = field(default_factory=list)


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib data inflated to at most `limit` bytes; ValueError past that (a bomb or just too big)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValueError(f"over the size limit of {limit} bytes")
    return out


def _delta_target_size(delta: bytes) -> int:
    """The size a git delta makes: its second header varint (the first is the base's size)."""
    at, sizes = 0, []
    for _ in range(2):
        size = shift = 0
        while True:
            if at >= len(delta):
                raise ValueError("a truncated delta")
            byte = delta[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(size)
    return sizes[1]


def parse_diff(diff: bytes, max_file: int = 10 * 1024 * 1024) -> list[FilePatch]:
    """The file patches of a `git diff` (text hunks and `GIT binary patch` data, no file over `max_file`)."""
    lines = diff.replace(b"\r\n", b"\n").splitlines(keepends=True)
    files: list[FilePatch] = []
    i = 0
    cur: FilePatch | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith(b"diff --git "):
            try:
                old, new = _parse_git_diff_header_paths(line.rstrip(b"\n"))
            except ValueError:  # a malformed quoted path
                old = new = None
            if old is None or new is None:
                cur = FilePatch("?", "?", problems=[f"cannot read the paths of '{line.decode('utf-8', 'replace').strip()}'"
                                                     " (renames and copies are refused)"])
            else:
                cur = FilePatch(new.decode("utf-8", "replace").partition("/")[2], old.decode("utf-8", "replace").partition("/")[2])
            files.append(cur)
            i += 1
            continue
        if cur is None:
            i += 1
            continue
        text = line.rstrip(b"\n")
        if text.startswith(b"new file mode "):
            cur.new_file = True
            cur.modes.append(text.split()[-1])
        elif text.startswith(b"deleted file mode "):
            cur.deleted = True
            cur.modes.append(text.split()[-1])
        elif text.startswith((b"old mode ", b"new mode ")):
            cur.modes.append(text.split()[-1])
        elif text.startswith((b"rename ", b"copy ", b"similarity index", b"dissimilarity index")):
            cur.problems.append("renames and copies are refused")
        elif text.startswith(b"index "):
            words = text.split()
            cur.old_index, _, cur.new_index = words[1].partition(b"..")
            if len(words) > 2:
                cur.modes.append(words[2])
        elif text.startswith(b"Binary files "):
            cur.problems.append("a binary diff without its data (send it with --binary)")
        elif text == b"GIT binary patch":
            i += 1
            for _ in range(2):  # the forward hunk, then the optional reverse one
                if i >= len(lines) or not lines[i].startswith((b"literal ", b"delta ")):
                    break
                kind = lines[i].split()[0].decode()
                i += 1
                data_lines = []
                while i < len(lines) and lines[i].strip():
                    data_lines.append(lines[i].strip())
                    i += 1
                while i < len(lines) and not lines[i].strip():
                    i += 1
                try:
                    data = _inflate(git_base85_decode(b"\n".join(data_lines)), max_file)
                    if kind == "delta":
                        size = _delta_target_size(data)
                        if size > max_file:
                            raise ValueError(f"over the size limit of {max_file} bytes")
                    cur.binary.append((kind, data))
                except zlib.error:
                    cur.problems.append("a binary patch that does not decode")
                except ValueError as e:
                    cur.problems.append(f"a binary patch that does not decode or is too large ({e})")
            continue
        elif (m := _HUNK.match(text)) is not None:
            old_len = int(m.group(2)) if m.group(2) is not None else 1
            new_len = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(int(m.group(1)), old_len, [])
            i += 1
            seen_old = seen_new = 0
            while i < len(lines) and (seen_old < old_len or seen_new < new_len or lines[i].startswith(b"\\")):
                h = lines[i]
                if h.startswith(b"\\"):
                    if hunk.lines:
                        hunk.lines[-1] = hunk.lines[-1].removesuffix(b"\n")
                    i += 1
                    continue
                if h == b"\n":
                    h = b" \n"
                tag = h[:1]
                if tag == b" ":
                    seen_old, seen_new = seen_old + 1, seen_new + 1
                elif tag == b"-":
                    seen_old += 1
                elif tag == b"+":
                    seen_new += 1
                else:
                    break
                hunk.lines.append(h)
                i += 1
            cur.hunks.append(hunk)
            continue
        i += 1
    return files


def apply_hunks(old: bytes, hunks: list[Hunk]) -> bytes | None:
    """The post-image of `old`, each hunk placed where its context matches nearest; None when one does not."""
    src = old.splitlines(keepends=True)
    out: list[bytes] = []
    pos = offset = 0
    for h in hunks:
        pre = [ln[1:] for ln in h.lines if ln[:1] in (b" ", b"-")]
        post = [ln[1:] for ln in h.lines if ln[:1] in (b" ", b"+")]
        start = (h.old_start - 1 if h.old_len else h.old_start) + offset
        candidates = sorted(range(pos, len(src) - len(pre) + 1), key=lambda k: abs(k - start))
        found = next((k for k in candidates if src[k : k + len(pre)] == pre), None)
        if found is None:
            return None
        out += src[pos:found] + post
        pos = found + len(pre)
        offset = found - (h.old_start - 1 if h.old_len else h.old_start)
    return b"".join(out + src[pos:])


def _decode_header(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def parse_patch(raw: bytes, sender: str, max_file: int = 10 * 1024 * 1024) -> Patch:
    """One patch mail: its commit (as git am would make it) and its file patches."""
    raw = raw.replace(b"\r\n", b"\n")
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    commit, diff, _ = git_am_patch_split(io.BytesIO(raw), "utf-8")
    subject = re.sub(r"\s*\n\s*", " ", _decode_header(msg.get("Subject", ""))).strip()
    n, m = patch_numbers(subject) or (1, 1)
    title = _SUBJECT.sub("", subject, count=1).strip()
    body = commit.message.decode("utf-8", "replace").partition("\n")[2]
    message = title + ("\n" + body.rstrip("\n") if body.strip() else "")
    name, addr = email.utils.parseaddr(_decode_header(commit.author.decode("utf-8", "replace")))
    try:
        date = email.utils.parsedate_to_datetime(msg.get("Date", ""))
        offset = int(date.utcoffset().total_seconds()) if date.utcoffset() is not None else 0  # type: ignore[union-attr]
        when = (int(date.timestamp()), offset)
    except (TypeError, ValueError, IndexError):
        when = (int(time.time()), 0)
    patch = Patch(n, m, subject, message, Person(name, addr.lower()), when, parse_diff(diff, max_file), sender)
    if not patch.files:
        patch.problems.append("no diff in this mail")
    if not addr:
        patch.problems.append("no author (From)")
    return patch


# --- in: checking and applying a series -------------------------------------------------------


def path_problem(path: str, project_ok: bool) -> str:
    """Why `path` may not be written on the issues branch; "" when it may."""
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        return f"{path}: not a plain path inside the issues branch"
    if any(p.lower().startswith(".git") for p in parts):
        return f"{path}: touches .git"
    if path == "project.xml":
        return "" if project_ok else "project.xml: you may not change the project (its maintainers may)"
    if len(parts) != 3 or not _HEX2.match(parts[0]) or not _HEX38.match(parts[1]):
        return f"{path}: outside the layout of the issues branch (xx/38hex/issue.xml, comment_*.xml, attachments, project.xml)"
    leaf = parts[2]
    if leaf == "issue.xml" or is_comment_filename(leaf):
        return ""
    if leaf.startswith(".") or is_reserved_filename(leaf) or len(leaf) > 200:
        return f"{path}: not a legal attachment name"
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


@dataclass
class PatchResult:
    number: int
    subject: str
    status: str = ""  # applied | already applied | refused
    reasons: list[str] = field(default_factory=list)
    commit: str = ""


class _Series:
    """One series applied over a snapshot, in memory: the files it writes, patch by patch."""

    def __init__(self, gw: Gateway, snap: Snapshot) -> None:
        self.gw, self.snap = gw, snap
        self.overlay: dict[str, bytes | None] = {}
        self.created: set[str] = set()
        self.extra_blobs: list[bytes] = []

    def read(self, path: str) -> bytes | None:
        return self.overlay[path] if path in self.overlay else self.snap.read(path)

    def issue(self, name: str) -> Issue | None:
        data = self.read(f"{name[:2]}/{name[2:]}/issue.xml")
        try:
            return Issue.from_bytes(data, name) if data is not None else None
        except FormatError:
            return None

    def allowed(self, sender: str, rules: list[str], issue: Issue | None) -> bool:
        access = self.gw.config.access
        known = self.gw.index.known(self.snap, sender)
        return commands.allowed(sender, rules, issue, self.snap, access, known)

    def apply(self, patch: Patch) -> tuple[dict[str, bytes | None], list[str]]:
        """The files this patch writes over the series so far, and every reason to refuse it."""
        access = self.gw.config.access
        reasons = list(patch.problems)
        writes: dict[str, bytes | None] = {}
        project_ok = self.allowed(patch.sender, access.change_project, None)
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
        base = _lookup_blob(self.gw.store, fp.old_index)
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
        """Parse what would be written, check it against project.xml and the sender's rights."""
        access = self.gw.config.access
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
            fan, rest, leaf = path.split("/")
            name = fan + rest
            before = self.issue(name)
            try:
                if leaf == "issue.xml":
                    issue = Issue.from_bytes(data, name)
                    stale = set(project.validate(before, self.snap.tags())) if before is not None else set()
                    reasons += [f"{path}: {e}" for e in project.validate(issue, self.snap.tags()) if e not in stale]
                    if before is None or name in self.created:
                        if not self.allowed(patch.sender, access.open, issue):
                            reasons.append(f"{patch.sender} may not open issues")
                    else:  # each changed field by its own rule, as for commands by mail
                        for f in changed_fields(before, issue):
                            where, rules = access.rules_for(f)
                            if not self.allowed(patch.sender, rules, before):
                                reasons.append(f"{path}: {patch.sender} may not change the {f} of issue {name[:7]}"
                                               f" (allowed by {where}: {', '.join(rules)})")
                elif is_comment_filename(leaf):
                    Comment.from_bytes(data, leaf)
                    if before is None and f"{fan}/{rest}/issue.xml" not in writes:
                        reasons.append(f"{path}: a comment on no issue")
                    elif not self.allowed(patch.sender, access.comment, before):
                        reasons.append(f"{path}: {patch.sender} may not comment on issue {name[:7]}")
                elif before is None and f"{fan}/{rest}/issue.xml" not in writes:
                    reasons.append(f"{path}: an attachment of no issue")
                elif before is not None and name not in self.created and not self.allowed(patch.sender, access.comment, before):
                    reasons.append(f"{path}: {patch.sender} may not add to issue {name[:7]}")
            except (FormatError, ValueError, TypeError) as e:  # whatever a hostile file makes the parser raise
                reasons.append(f"{path}: does not parse: {e}")
        return reasons

    def commit(self, writes: dict[str, bytes | None]) -> None:
        for path, data in writes.items():
            if path.endswith("/issue.xml") and self.read(path) is None:
                self.created.add(issue_of(path))
            self.overlay[path] = data


def apply_series(gw: Gateway, raws: list[bytes]) -> tuple[list[PatchResult], bytes | None]:
    """Apply a complete series onto the tip: every patch or none. Returns the results and the new tip."""
    total = sum(len(r) for r in raws)
    limit = gw.config.gateway.max_patch_series_size
    if total > limit or len(raws) > MAX_PATCHES:  # before anything is decoded
        why = f"the series is too large ({len(raws)} patches, {total} bytes; at most {MAX_PATCHES} patches and {limit} bytes)"
        return [PatchResult(i, gw.parse(raw).subject, "refused", [why]) for i, raw in enumerate(raws, 1)], None
    max_file = gw.config.gateway.max_attachment_size
    parsed = sorted((parse_patch(raw, gw.parse(raw).from_addr, max_file) for raw in raws), key=lambda p: p.number)
    results = [PatchResult(p.number, p.subject) for p in parsed]
    store = gw.store
    for _attempt in range(20):
        snap = store.snapshot()
        if snap.commit is None:
            for r in results:
                r.status, r.reasons = "refused", ["the tracker has no issues branch yet"]
            return results, None
        series = _Series(gw, snap)
        refused = False
        per_patch: list[dict[str, bytes | None]] = []
        for p, r in zip(parsed, results, strict=True):
            r.reasons, r.status, r.commit = [], "", ""  # its sender was admitted when its mail came (_admit)
            writes, reasons = series.apply(p)
            if reasons:
                r.status, r.reasons = "refused", reasons
                refused = True
            else:
                r.status = "applied" if writes else "already applied"
            series.commit(writes)
            per_patch.append(writes)
        if refused:
            for r in results:
                if r.status != "refused":
                    r.status, r.reasons = "not applied", ["another patch of the series was refused"]
            return results, None
        tip, tree = snap.commit, snap.tree
        for blob_data in series.extra_blobs:
            store.repo.object_store.add_object(Blob.from_string(blob_data))
        for p, r, writes in zip(parsed, results, per_patch, strict=True):
            if not writes:
                continue
            commit = store.write_commit([tip] if tip else [], tree, writes, p.message, p.author, gw.identity, when=p.when)
            tip, tree = commit, store.repo[commit].tree  # type: ignore[attr-defined]
            r.commit = commit.decode()[:10]
        if tip == snap.commit:
            return results, None
        assert tip is not None
        if store.move(snap.commit, tip):
            return results, tip
    raise StoreError("the issues branch kept moving while a patch series was applied")


# --- in: the gateway's patch path -------------------------------------------------------------


def _series_base(gw: Gateway, mail: ParsedMail, total: int) -> Path:
    """Where the parts of one sender's series in one thread are gathered: one folder a generation."""
    key = f"{mail.from_addr.lower()} {thread_root(mail)} {total}"
    return gw.spool.root / "patches" / hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass
class _Generation:
    """One attempt at a series in a series folder: the parts it holds (or took, once done)."""

    folder: Path
    done: bool
    numbers: set[int]  # the parts it holds, while pending
    ids: set[str]  # the Message-IDs of its parts
    replied_to: set[str]  # what its parts answer (In-Reply-To): its cover letter, or patch 1


def _generations(gw: Gateway, base: Path) -> list[_Generation]:
    if not base.is_dir():
        return []
    out = []
    for folder in sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        if (folder / "done").exists():
            lines = (folder / "done").read_text("utf-8", "replace").splitlines()[1:]
            ids = {ln[5:] for ln in lines if ln.startswith("part ")}
            out.append(_Generation(folder, True, set(), ids, {ln[6:] for ln in lines if ln.startswith("reply ")}))
            continue
        parts = {int(p.stem): gw.parse(p.read_bytes()) for p in folder.glob("*.eml")}
        out.append(_Generation(folder, False, set(parts), {m.message_id for m in parts.values()},
                               {m.in_reply_to for m in parts.values() if m.in_reply_to}))
    return out


def _slot(gw: Gateway, base: Path, n: int, mail: ParsedMail) -> Path | None:
    """The generation folder this part goes to; None when it was received already.

    The thread decides: a part joins the generation holding the mail it answers, or whose parts
    answer it (a cover letter arriving after its patches), or whose parts answer the same mail as
    it does (shallow threading). A part that fits none, or whose number is taken there, opens a
    new generation: a second series of the same sender in the same thread (a v2 sent in reply to
    v1) never mixes with the first or replaces what is kept.
    """
    gens = _generations(gw, base)
    mid, answers = mail.message_id, mail.in_reply_to
    if any(mid in g.ids or (g.done and mid in g.replied_to) for g in gens):
        return None  # a redelivery, or the late cover letter of a series applied already
    best, best_score = None, 0.0
    for g in reversed([g for g in gens if not g.done and n not in g.numbers]):  # the newest first
        score = (3.0 if answers in g.ids else 2.0 if mid in g.replied_to else 1.0 if answers and answers in g.replied_to
                 else 0.5 if not answers and not g.replied_to else 0.0)  # no threading at all: by number
        if score > best_score:
            best, best_score = g, score
    if best is not None:
        return best.folder
    return base / str(int(gens[-1].folder.name) + 1 if gens else 0)


def _admit(gw: Gateway, mail: ParsedMail, out: Outcome) -> bool:
    """The gateway's admission for a patch mail: machine mail, no sender, unknown senders, and the
    DKIM/DMARC requirement for changes (a patch is a change). False with `out` filled when refused."""
    from mailtrack.worker.pipeline import verified_by

    access = gw.config.access
    if mail.machine:
        out.action, out.reason = "dropped", f"machine mail: {mail.machine}"
        return False
    if not mail.from_addr:
        out.action, out.reason = "held", "the mail has no sender address (From)"
        return False
    snap = gw.store.snapshot()
    known = gw.index.known(snap, mail.from_addr) or mail.from_addr.lower() in {a.lower() for a in access.maintainers}
    if not known and access.unknown_senders != "accept":
        out.action = "held" if access.unknown_senders == "hold" else "rejected"
        out.reason = f"{mail.from_addr} is not known to {gw.project}"
    elif access.require_auth_for_commands and not verified_by(mail, access.trusted_authserv_ids):
        out.action = "rejected"
        out.reason = "patch mails need a sender address the receiving server vouches for (DKIM or DMARC)"
    elif len(mail.raw) > gw.config.gateway.max_patch_series_size:
        out.action = "rejected"
        out.reason = f"the series is too large ({len(mail.raw)} bytes in one mail; at most {gw.config.gateway.max_patch_series_size})"
    else:
        return True
    return False


def handle(gw: Gateway, mail: ParsedMail, *, dry_run: bool = False) -> Outcome:
    """Keep one patch mail with its series; apply the series once it is complete."""
    from mailtrack.worker.pipeline import Outcome

    out = Outcome("nothing", message_id=mail.message_id)
    if not _admit(gw, mail, out):
        if out.action == "rejected":
            gw.reply(mail, "reply-patches.txt", out, dry_run, patches=[PatchResult(0, mail.subject, "refused", [out.reason])],
                      refused=True, total=1, error=out.reason, hint="")
        return out
    n, m = patch_numbers(mail.subject) or (1, 1)
    if not (0 <= n <= m <= MAX_PATCHES) or m == 0:
        out.action, out.reason = "rejected", f"[PATCH {n}/{m}] is no part of a series of 1 to {MAX_PATCHES} patches"
        gw.reply(mail, "reply-patches.txt", out, dry_run, patches=[PatchResult(n, mail.subject, "refused", [out.reason])],
                 refused=True, total=1, error=out.reason, hint="")
        return out
    if m == 1 and n == 1:
        return _apply(gw, mail, [mail.raw], dry_run, out)
    base = _series_base(gw, mail, m)
    folder = _slot(gw, base, n, mail)
    if folder is None:
        out.action, out.reason = "duplicate", f"patch {n}/{m} of that series was received already"
        return out
    if dry_run:
        out.action, out.reason = "pending", f"patch {n}/{m} of a series"
        return out
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{n:04d}.eml", mail.raw)
    _expire(gw, keep=folder)
    held = sum(p.stat().st_size for p in folder.glob("*.eml"))
    limit = gw.config.gateway.max_patch_series_size
    if m > MAX_PATCHES or held > limit:  # refuse now: a partial series may not fill the disk
        _refuse(gw, folder, mail, m, f"the series is too large ({m} patches, {held} bytes so far; "
                                     f"at most {MAX_PATCHES} patches and {limit} bytes)", out)
        return out
    have = {int(p.stem) for p in folder.glob("*.eml")}
    if not set(range(1, m + 1)) <= have:
        out.action, out.reason = "pending", f"patch {n}/{m}: waiting for {', '.join(str(i) for i in sorted(set(range(1, m + 1)) - have))}"
        return out
    raws = [(folder / f"{i:04d}.eml").read_bytes() for i in range(1, m + 1)]
    out = _apply(gw, _first(gw, folder, mail), raws, dry_run, out)
    _finish(folder, out)
    return out


def _first(gw: Gateway, folder: Path, fallback: ParsedMail) -> ParsedMail:
    """The mail a report answers: the cover letter, else patch 1, else the mail at hand."""
    for name in ("0000.eml", "0001.eml"):
        if (folder / name).exists():
            return gw.parse((folder / name).read_bytes())
    return fallback


def _finish(folder: Path, out: Outcome) -> None:
    """Mark a generation done with the Message-IDs it took, and let its mails go."""
    parts = sorted(folder.glob("*.eml"))
    mails = [parse(p.read_bytes()) for p in parts]
    lines = [f"part {m.message_id}" for m in mails] + [f"reply {m.in_reply_to}" for m in mails if m.in_reply_to]
    _write(folder / "done", "\n".join([out.line(), *lines]).encode() + b"\n")
    for p in parts:
        p.unlink()


def _refuse(gw: Gateway, folder: Path, mail: ParsedMail, total: int, reason: str, out: Outcome) -> None:
    """Refuse a partial series: tell its sender, keep its mails in the spool's failed queue."""
    out.action, out.reason = "rejected", reason
    first = _first(gw, folder, mail)
    gw.reply(first, "reply-patches.txt", out, False, patches=[PatchResult(0, first.subject, "refused", [reason])],
              refused=True, total=total, error=reason, hint="")
    for p in sorted(folder.glob("*.eml")):
        gw.spool.hold(p.read_bytes(), f"{reason}\nMessage-ID: {parse(p.read_bytes()).message_id}")
    _finish(folder, out)


def _apply(gw: Gateway, reply_to: ParsedMail, raws: list[bytes], dry_run: bool, out: Outcome) -> Outcome:
    if dry_run:
        out.action, out.reason = "pending", "a patch series (not applied in a dry run)"
        return out
    results, tip = apply_series(gw, raws)
    refused = any(r.status == "refused" for r in results)
    if refused:
        out.action, out.reason = "rejected", "patch series refused: " + "; ".join(x for r in results for x in r.reasons if r.status == "refused")[:300]
    elif tip is not None:
        out.action, out.reason, out.commit = "changed", f"patch series of {len(results)} applied", tip.decode()
        out.message = f"{len(results)} patch(es)"
    else:
        out.action, out.reason = "duplicate", "every patch of the series was applied already"
    gw.reply(reply_to, "reply-patches.txt", out, dry_run, patches=results, refused=refused, total=len(results),
              error=out.reason, hint="")
    return out


def _expire(gw: Gateway, keep: Path | None = None) -> None:
    """Report partial series that waited longer than gateway.patch_series_timeout, and keep their
    mails in failed; forget finished ones after the spool's retention."""
    now, timeout = time.time(), gw.config.gateway.patch_series_timeout
    retention = gw.config.gateway.processed_retention_days * 86400
    for folder in sorted((gw.spool.root / "patches").glob("*/*")):
        if folder == keep or not folder.is_dir():
            continue
        if (folder / "done").exists():
            if now - (folder / "done").stat().st_mtime > retention:
                (folder / "done").unlink()
                with contextlib.suppress(OSError):
                    folder.rmdir()
                    folder.parent.rmdir()
            continue
        parts = sorted(folder.glob("*.eml"))
        if not parts or now - max(p.stat().st_mtime for p in parts) < timeout:
            continue
        first = gw.parse(parts[0].read_bytes())
        from mailtrack.worker.pipeline import Outcome

        _, m = patch_numbers(first.subject) or (1, 1)
        have = sorted(int(p.stem) for p in parts)
        out = Outcome("rejected", message_id=first.message_id)
        _refuse(gw, folder, first, m, f"incomplete patch series: got {', '.join(map(str, have))} of {m} within {timeout} s", out)
        log.info("%s", out.line())


def expire_pending(gw: Gateway) -> None:
    """Report every partial series past its timeout (for a periodic caller)."""
    if (gw.spool.root / "patches").is_dir():
        _expire(gw)
