"""Mail to feed the gateway, and what it queues in its outbox (replies and notifications)."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

from helpers.repos import read_names
from mailtrack.worker.pipeline import Gateway

OUTBOX = Path(".git") / "mailtrack" / "spool" / "outbox" / "new"  # in a gateway repository


def make_mail(
    subject: str = "Printer on fire",
    body: str = "It is on fire.\n",
    frm: str = "Alice <alice@example.org>",
    to: str = "issues@tracker.localhost",
    message_id: str | None = "<m1@example.org>",
    **headers: str,
) -> bytes:
    """A plain-text mail from Alice to the gateway; `**headers` add fields (`In_Reply_To` is In-Reply-To)."""
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg.as_bytes()


def spool_path(repo: Path) -> Path:
    """The default spool of a gateway on `repo`."""
    return repo / ".git" / "mailtrack" / "spool"


def outbox(repo: Path) -> list[EmailMessage]:
    """The mails waiting in the outbox of a gateway on `repo`, oldest first; they stay there."""
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
            for p in sorted((repo / OUTBOX).iterdir())]


def replies(repo: Path) -> list[EmailMessage]:
    """The mails waiting in the outbox, oldest first; the outbox is emptied."""
    out = outbox(repo)
    for p in (repo / OUTBOX).iterdir():
        p.unlink()
    return out


def text_of(msg: EmailMessage) -> str:
    """The plain-text body of a mail."""
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def filed(gw: Gateway, repo: Path) -> str:
    """One issue filed by alice, the replies cleared; its full name."""
    gw.handle(make_mail(message_id="<filed@x>"))
    replies(repo)
    return read_names(repo)[0]


def two_issues(gw: Gateway, repo: Path) -> tuple[str, str]:
    """Issues A ("Printer on fire") and B ("Second"), both reported by alice; the replies cleared."""
    a = filed(gw, repo)
    gw.handle(make_mail(subject="Second", message_id="<two@x>"))
    replies(repo)
    b = [n for n in read_names(repo) if n != a][0]
    return a, b


def held_mail(subject: str, message_id: str = "<same@example.test>") -> bytes:
    """A mail the gateway holds (it has no From), so it ends in the spool's failed queue."""
    return f"To: issues@tracker.localhost\nSubject: {subject}\nMessage-ID: {message_id}\n\nbody\n".encode()


def patch_mail(diff: bytes, subject: str = "[PATCH] a patch", frm: str = "Mallory <mallory@example.org>",
               mid: str = "<patch@example.org>", extra: str = "") -> bytes:
    """A patch mail as `git format-patch` writes one: `diff` under its `---`; `extra` adds header lines."""
    head = (f"From {'0' * 40} Mon Sep 17 00:00:00 2001\nFrom: {frm}\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"
            f"Subject: {subject}\nMessage-ID: {mid}\nTo: issues@tracker.localhost\n{extra}"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n---\n")
    return head.encode() + diff + b"-- \n2.39.5\n"
