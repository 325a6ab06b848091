"""In: one patch mail read as `git am` would: its commit (author, date, message) and its file
patches (text hunks and `GIT binary patch` data, inflated within a size limit), and the hunks
applied to a file."""

from __future__ import annotations

import email
import email.utils
import io
import re
import time
import zlib
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header

from dulwich.patch import _parse_git_diff_header_paths, git_am_patch_split, git_base85_decode

from mailtrack.patches.detect import SUBJECT_TAG, patch_numbers
from mailtrack.tracker.model import Person

HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")  # a hunk header of a unified diff


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
        elif (m := HUNK.match(text)) is not None:
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
    title = SUBJECT_TAG.sub("", subject, count=1).strip()
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
