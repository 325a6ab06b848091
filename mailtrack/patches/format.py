"""Out: the commits of the issues branch as a `git format-patch` series, written or sent."""

from __future__ import annotations

import base64
import difflib
import email.utils
import hashlib
import os
import re
import smtplib
import ssl
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.header import Header
from typing import Any

from dulwich.diff_tree import tree_changes
from dulwich.objects import Blob, Commit, ObjectID
from dulwich.refs import Ref
from dulwich.walk import ORDER_TOPO

from mailtrack.mail.ids import SERIES_HEADER
from mailtrack.patches.detect import SUBJECT_TAG
from mailtrack.tracker.model import Person
from mailtrack.tracker.remote import remote_location
from mailtrack.tracker.store import Store, StoreError, split_issue_path
from mailtrack.tracker.xmlformat import FormatError


def series_commits(store: Store, since: bytes | None) -> list[Commit]:
    """The commits of the issues branch after `since`, oldest first, merges left out (as format-patch)."""
    store.require()  # or a one-line hint: init, or pull in a fresh clone
    tip = store.tip()
    assert tip is not None
    walker = store.repo.get_walker(include=[tip], exclude=[ObjectID(since)] if since else None, order=ORDER_TOPO, reverse=True)
    return [e.commit for e in walker if len(e.commit.parents) <= 1]


def resolve_rev(store: Store, rev: str) -> bytes:
    """The commit a revision names: a ref, a hex prefix, with `~N` and `^` suffixes (first parents)."""
    from dulwich.objectspec import parse_commit

    m = re.fullmatch(r"(.+?)((?:~\d*|\^)*)", rev)
    assert m is not None
    try:
        commit = parse_commit(store.repo, m.group(1).encode())
        for step in re.findall(r"~\d*|\^", m.group(2)):  # dulwich reads neither suffix: walk them here
            for _ in range(int(step[1:] or 1) if step.startswith("~") else 1):
                parent = store.repo[commit.parents[0]]
                if not isinstance(parent, Commit):  # a commit's parent always is one
                    raise ValueError(parent.id)
                commit = parent
    except (KeyError, ValueError, IndexError):
        raise StoreError(f"unknown revision {rev}") from None
    return commit.id


def last_pulled(store: Store, remote: str | None) -> bytes:
    """Where the remote's issues branch was at the last `git issues pull` from it."""
    name, _ = remote_location(store, remote)
    ref = Ref(f"refs/remotes/{name or remote or 'origin'}/{store.branch}".encode())
    if ref not in store.repo.refs:
        raise StoreError(f"no {ref.decode()}: run 'git issues pull' first, or give --since REV")
    return store.repo.refs[ref]


def _is_binary(data: bytes) -> bool:
    """Binary for mail: NUL, CR, not UTF-8, or a line too long for SMTP."""
    if b"\0" in data or b"\r" in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(len(line) > 900 for line in data.split(b"\n"))


def _b85_lines(data: bytes) -> bytes:
    """git's base85 lines: a length letter, then up to 52 bytes encoded."""
    out = []
    for i in range(0, len(data), 52):
        chunk = data[i : i + 52]
        n = len(chunk)
        letter = chr(ord("A") + n - 1) if n <= 26 else chr(ord("a") + n - 27)
        out.append(letter.encode() + base64.b85encode(chunk, pad=True) + b"\n")
    return b"".join(out)


def _binary_literal(data: bytes) -> bytes:
    return b"literal %d\n" % len(data) + _b85_lines(zlib.compress(data, 9)) + b"\n"


def _text_hunks(old: bytes, new: bytes) -> bytes:
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out = []
    for line in list(difflib.diff_bytes(difflib.unified_diff, a, b, n=3, lineterm=b""))[2:]:
        if line.startswith(b"@@"):
            out.append(line.rstrip(b"\n") + b"\n")
        elif line.endswith(b"\n"):
            out.append(line)
        else:
            out.append(line + b"\n\\ No newline at end of file\n")
    return b"".join(out)


def file_diff(path: str, old: bytes | None, new: bytes | None) -> bytes:
    """One file's `diff --git` section, with full index lines (binary as a git binary patch)."""
    p = path.encode()
    old_id = Blob.from_string(old).id if old is not None else b"0" * 40
    new_id = Blob.from_string(new).id if new is not None else b"0" * 40
    head = [b"diff --git a/" + p + b" b/" + p + b"\n"]
    if old is None:
        head.append(b"new file mode 100644\n")
    elif new is None:
        head.append(b"deleted file mode 100644\n")
    head.append(b"index " + old_id + b".." + new_id + (b" 100644" if old is not None and new is not None else b"") + b"\n")
    if _is_binary(old or b"") or _is_binary(new or b""):
        body = b"GIT binary patch\n" + _binary_literal(new or b"") + _binary_literal(old or b"")
        return b"".join(head) + body
    head.append(b"--- " + (b"a/" + p if old is not None else b"/dev/null") + b"\n")
    head.append(b"+++ " + (b"b/" + p if new is not None else b"/dev/null") + b"\n")
    return b"".join(head) + _text_hunks(old or b"", new or b"")


def commit_diff(store: Store, commit: Commit) -> bytes:
    objects = store.repo.object_store
    parent_tree = objects[commit.parents[0]].tree if commit.parents else None  # type: ignore[attr-defined]
    parts = []
    for c in tree_changes(objects, parent_tree, commit.tree):
        path = (c.new.path if c.new and c.new.path else c.old.path).decode("utf-8", "replace")  # type: ignore[union-attr]
        old = objects[c.old.sha].as_raw_string() if c.old and c.old.sha else None
        new = objects[c.new.sha].as_raw_string() if c.new and c.new.sha else None
        if c.old and c.new and c.old.path != c.new.path:  # tree_changes without renames never pairs paths
            parts += [file_diff(c.old.path.decode(), old, None), file_diff(path, None, new)]
        else:
            parts.append(file_diff(path, old, new))
    return b"".join(parts)


def _header(value: str) -> str:
    try:
        value.encode("ascii")
        return value
    except UnicodeEncodeError:
        return Header(value, "utf-8").encode()


def _ident_str(raw: bytes) -> tuple[str, str]:
    name, addr = email.utils.parseaddr(raw.decode("utf-8", "replace"))
    return name, addr


def _formataddr(name: str, addr: str) -> str:
    return email.utils.formataddr((str(Header(name, "utf-8").encode()) if name and not name.isascii() else name, addr))


def _date(stamp: int, offset: int) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(stamp, timezone(timedelta(seconds=offset))))


@dataclass
class PatchMail:
    number: int
    subject: str
    data: bytes  # the mail, LF line ends, with a leading `From <sha> ...` line
    message_id: str


def issues_touched(store: Store, commits: list[Commit]) -> list[str]:
    """`short  title` lines for the issues a series touches, in order of first appearance."""
    objects = store.repo.object_store
    names: list[str] = []
    paths: list[str] = []
    for c in commits:
        parent_tree = objects[c.parents[0]].tree if c.parents else None  # type: ignore[attr-defined]
        for ch in tree_changes(objects, parent_tree, c.tree):
            path = (ch.new.path if ch.new and ch.new.path else ch.old.path).decode("utf-8", "replace")  # type: ignore[union-attr]
            if path not in paths:
                paths.append(path)
            where = split_issue_path(path)
            if where is not None and where[0] not in names:
                names.append(where[0])
    snap = store.snapshot()
    lines = []
    for n in names:
        try:
            lines.append(f"{n[:7]}  {snap.issue(n).title}")
        except (StoreError, FormatError):
            lines.append(n[:7])
    return lines + ["", "Files:"] + [f" {p} |" for p in paths]


def format_series(store: Store, commits: list[Commit], sender: Person, domain: str = "localhost",
                  to: list[str] | None = None) -> list[PatchMail]:
    """The series as format-patch mails: a cover letter (when more than one commit), then one per
    commit; addressed `To:` the gateway when it is known (as `git format-patch --to`)."""
    m = len(commits)
    stamp = f"{int(time.time())}.{os.urandom(6).hex()}.{hashlib.sha1(b''.join(c.id for c in commits)).hexdigest()[:12]}"
    mails: list[PatchMail] = []
    root = ""
    me = _formataddr(sender.name, sender.email)
    to_line = f"To: {', '.join(to)}\n" if to else ""
    if m > 1:
        root = f"<cover.{stamp}@{domain}>"
        body = (f"{m} commits of the issues branch, for the issue tracker's gateway to apply.\n\n"
                "Issues touched:\n" + "".join(f"  {ln}\n" if ln else "\n" for ln in issues_touched(store, commits)))
        head = (f"From {'0' * 40} Mon Sep 17 00:00:00 2001\nFrom: {me}\n{to_line}Date: {email.utils.formatdate(usegmt=True)}\n"
                f"Subject: {_header(f'[PATCH 0/{m}] issues: {m} commits')}\nMessage-ID: {root}\n{SERIES_HEADER}: {m}\n"
                "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n")
        mails.append(PatchMail(0, f"[PATCH 0/{m}] issues: {m} commits", (head + body + "-- \nmailtrack\n").encode(), root))
    for i, c in enumerate(commits, 1):
        message = c.message.decode("utf-8", "replace")
        subject_line, _, rest = message.partition("\n")
        tag = f"[PATCH {i}/{m}]" if m > 1 else "[PATCH]"
        subject = f"{tag} {subject_line.strip()}"
        mid = f"<{stamp}.{i}@{domain}>"
        name, addr = _ident_str(c.author)
        lines = [f"From {c.id.decode()} Mon Sep 17 00:00:00 2001", f"From: {me}", *([to_line.rstrip()] if to_line else []),
                 f"Date: {_date(c.author_time, c.author_timezone)}", f"Subject: {_header(subject)}", f"Message-ID: {mid}"]
        if root:
            lines += [f"In-Reply-To: {root}", f"References: {root}"]
        lines += [f"{SERIES_HEADER}: {m}", "MIME-Version: 1.0", "Content-Type: text/plain; charset=UTF-8",
                  "Content-Transfer-Encoding: 8bit", ""]
        body = ""
        if addr.lower() != sender.email.lower() or name != sender.name:
            body += f"From: {email.utils.formataddr((name, addr))}\n\n"
        rest = rest.strip("\n")
        if rest:
            body += rest + "\n"
        data = ("\n".join(lines) + "\n" + body + "---\n\n").encode() + commit_diff(store, c) + b"-- \nmailtrack\n"
        mails.append(PatchMail(i, subject, data, mid))
    return mails


def patch_filename(p: PatchMail) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "-", SUBJECT_TAG.sub("", p.subject)).strip("-")[:52].rstrip("-")
    return f"{p.number:04d}-{words or 'patch'}.patch"


@dataclass(frozen=True)
class SmtpSettings:
    server: str = "localhost"
    port: int = 0
    encryption: str = ""  # "", ssl, tls (STARTTLS), as git send-email
    user: str = ""
    password: str = ""
    to: tuple[str, ...] = ()
    domain: str = ""


def smtp_settings(store: Store) -> SmtpSettings:
    """git send-email's SMTP settings from git config (sendemail.*)."""
    config = store.repo.get_config_stack()

    def get(key: str) -> str:
        try:
            return config.get((b"sendemail",), key.encode()).decode()
        except KeyError:
            return ""

    to: tuple[str, ...] = ()
    try:
        to = tuple(v.decode() for v in config.get_multivar((b"sendemail",), b"to"))
    except (KeyError, AttributeError, NotImplementedError):
        to = (get("to"),) if get("to") else ()
    port = get("smtpServerPort") or get("smtpserverport")
    return SmtpSettings(get("smtpServer") or "localhost", int(port) if port else 0, get("smtpEncryption").lower(),
                        get("smtpUser"), get("smtpPass"), to, get("smtpDomain"))


def send_series(mails: list[PatchMail], sender: Person, to: list[str], settings: SmtpSettings) -> None:
    """Send the series over SMTP, as git send-email would."""
    if not to:
        raise StoreError("no recipient: give --to ADDR or set git config sendemail.to")
    port = settings.port or (465 if settings.encryption == "ssl" else 25)
    kwargs: dict[str, Any] = {"timeout": 60}
    if settings.domain:
        kwargs["local_hostname"] = settings.domain
    try:
        if settings.encryption == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(settings.server, port, context=ssl.create_default_context(), **kwargs)
        else:
            smtp = smtplib.SMTP(settings.server, port, **kwargs)
        with smtp:
            if settings.encryption == "tls":
                smtp.starttls(context=ssl.create_default_context())
            if settings.user:
                smtp.login(settings.user, settings.password)
            for p in mails:
                data = p.data.split(b"\n", 1)[1]  # the mbox `From ` line is not part of the mail
                head, _, body = data.partition(b"\n\n")
                if not re.search(rb"^To:", head, re.M | re.I):
                    head += ("\nTo: " + ", ".join(to)).encode()
                smtp.sendmail(sender.email, to, (head + b"\n\n" + body).replace(b"\n", b"\r\n"))
    except (OSError, smtplib.SMTPException) as e:
        raise StoreError(f"cannot send to {settings.server}:{port}: {e}") from None
