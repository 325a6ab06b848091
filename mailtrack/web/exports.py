"""The pages that are not HTML: an issue as an mbox, Atom feeds, the JSON read API.

The mbox is the thread as mail: the issue's first mail and one per comment, each with its own
Message-ID (the one it came with, else the one our notification of it had), In-Reply-To the mail
it answered and Reply-To the issue's address, so a reply from a mail reader comes back to the issue.
"""

from __future__ import annotations

import io
import json
import mimetypes
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import format_datetime

from mailtrack.mail.addresses import Ours
from mailtrack.mail.compose import build_mail
from mailtrack.mail.ids import ISSUE_HEADER, our_message_id
from mailtrack.tracker.model import format_time
from mailtrack.tracker.store import Snapshot
from mailtrack.web.views import IssueView, fragment

ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class Thread:
    """What the mails of an issue's thread are addressed with."""

    project: str
    ours: Ours

    @property
    def domain(self) -> str:
        return self.ours.main.rpartition("@")[2] or "localhost"


def thread_mails(snap: Snapshot, view: IssueView, thread: Thread) -> list[EmailMessage]:
    """The issue's first mail and one per readable comment, oldest first."""
    issue, address = view.issue, thread.ours.issue_address(view.short)
    subject = f"[{thread.project} #{view.short}] {issue.title}"
    first = issue.message_id or our_message_id(view.name, "issue", thread.domain)
    mails = [_mail(issue.author.name, issue.author.email, address, subject, issue.description, first, "", issue.created,
                   view.short, [])]
    for c in view.comments:
        if c.comment is None:
            continue
        files = [(f.name, snap.attachment(view.name, f.name)) for f in c.files if f.size is not None]
        mid = c.comment.message_id or our_message_id(view.name, f"c.{c.comment.name}", thread.domain)
        mails.append(_mail(c.comment.author.name, c.comment.author.email, address, f"Re: {subject}", c.comment.text, mid,
                           c.comment.in_reply_to or first, c.comment.created, view.short,
                           [(name, data) for name, data in files if data is not None], references=first))
    return mails


def _mail(name: str, email: str, to: str, subject: str, text: str, message_id: str, in_reply_to: str, when: datetime,
          short: str, files: list[tuple[str, bytes]], references: str = "") -> EmailMessage:
    attachments = [(data, mimetypes.guess_type(fn)[0] or "application/octet-stream", fn) for fn, data in files]
    refs = " ".join(dict.fromkeys(r for r in (references, in_reply_to) if r))
    msg = build_mail((name, email or "unknown@invalid"), [to], subject, text.strip("\n") + "\n",
                     headers={"In-Reply-To": in_reply_to, "References": refs, "Reply-To": to, ISSUE_HEADER: short},
                     message_id=message_id, attachments=attachments)
    msg.replace_header("Date", format_datetime(when.astimezone(UTC)))
    return msg


def mbox(mails: Iterable[EmailMessage]) -> bytes:
    """The mails as one mbox (mboxo, as Python's mailbox module and mutt read it: `From ` lines in bodies quoted)."""
    out = io.BytesIO()
    for msg in mails:
        sender = (msg.get("From") or "").rpartition("<")[2].rstrip(">").strip() or "MAILER-DAEMON"
        when = datetime.now(UTC)
        try:
            when = datetime.strptime(str(msg["Date"]), "%a, %d %b %Y %H:%M:%S %z")
        except ValueError:
            pass
        out.write(f"From {''.join(sender.split())} {when.strftime('%a %b %d %H:%M:%S %Y')}\n".encode())
        BytesGenerator(out, mangle_from_=True, policy=msg.policy.clone(linesep="\n")).flatten(msg)
        out.write(b"\n")
    return out.getvalue()


# --- feeds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    link: str
    updated: datetime
    author: str
    text: str


def atom(feed_id: str, title: str, link: str, entries: list[Entry]) -> bytes:
    """An Atom feed (RFC 4287); the text is escaped by ElementTree."""
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")
    ET.SubElement(feed, f"{{{ATOM}}}id").text = feed_id
    ET.SubElement(feed, f"{{{ATOM}}}title").text = title
    ET.SubElement(feed, f"{{{ATOM}}}link", href=link)
    ET.SubElement(feed, f"{{{ATOM}}}link", rel="self", href=feed_id)
    updated = max((e.updated for e in entries), default=datetime(1970, 1, 1, tzinfo=UTC))
    ET.SubElement(feed, f"{{{ATOM}}}updated").text = _stamp(updated)
    for e in entries:
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        ET.SubElement(entry, f"{{{ATOM}}}id").text = e.id
        ET.SubElement(entry, f"{{{ATOM}}}title").text = e.title
        ET.SubElement(entry, f"{{{ATOM}}}link", href=e.link)
        ET.SubElement(entry, f"{{{ATOM}}}updated").text = _stamp(e.updated)
        author = ET.SubElement(entry, f"{{{ATOM}}}author")
        ET.SubElement(author, f"{{{ATOM}}}name").text = e.author or "unknown"
        ET.SubElement(entry, f"{{{ATOM}}}content", type="text").text = e.text
    body: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + body


def _stamp(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_entries(view: IssueView, url: str) -> list[Entry]:
    """An issue's feed: its opening and each comment, newest first."""
    issue = view.issue
    out = [Entry(url, f"#{view.short} opened: {issue.title}", url, issue.created, issue.author.mailbox, issue.description)]
    for c in view.comments:
        if c.comment is not None:
            link = f"{url}#{fragment(c.anchor)}"
            out.append(Entry(link, f"Comment on #{view.short}: {issue.title}", link, c.comment.created,
                             c.comment.author.mailbox, c.comment.text))
    return sorted(out, key=lambda e: e.updated, reverse=True)


# --- JSON -------------------------------------------------------------------------------------


def issue_json(view: IssueView, url: str) -> bytes:
    issue = view.issue
    data = {
        "id": view.name, "short": view.short, "url": url, "open": view.is_open, **issue.record(),
        "comments": [
            {"name": c.comment.name, "author": c.comment.author.mailbox, "created": format_time(c.comment.created),
             "text": c.comment.text, "message_id": c.comment.message_id, "in_reply_to": c.comment.in_reply_to,
             "attachments": [{"name": f.name, "size": f.size} for f in c.files]}
            if c.comment is not None else {"file": c.filename, "error": c.error}
            for c in view.comments
        ],
        "files": [{"name": f.name, "size": f.size} for f in view.other_files],
    }  # fmt: skip
    return dumps(data)


def dumps(data: object) -> bytes:
    return json.dumps(data, indent=1, ensure_ascii=False).encode() + b"\n"
