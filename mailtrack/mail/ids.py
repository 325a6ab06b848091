"""Every identifier scheme of ours: Message-IDs, our header fields and the trailers of our commits.

- A mail's key is its Message-ID (`header_message_id` reads it cheaply for log lines); a mail that
  has none is keyed by `hashed_message_id`, a hash of its bytes less the trace fields on top.
- Mail we send about an issue has a Message-ID that embeds the issue's name (`our_message_id`), so
  a reply routes by In-Reply-To alone, even when the thread's other mails are gone (`issue_of_ours`).
  Every other mail we make gets `new_message_id`; both start `<mailtrack.`, so a mail whose own
  Message-ID is one of ours (`is_our_message_id`) is our mail come back, whatever its other headers
  say (a list that rewrites From and strips our headers passes the Message-ID on).
- Our header fields: `LOOP_HEADER` on everything we send, `SERIES_HEADER` on `push --mail`.
- Commit trailers: `IMPORTED_TRAILER` (`mailtrack import`: the notifier skips it),
  `Verified-By:` (who vouched for the sender) and `Gateway-Id:` (`gateway_trailer`: which gateway
  made the commit, when gateways share a remote; `gateway_of` reads it back).
"""

from __future__ import annotations

import hashlib
import re
import uuid

LOOP_HEADER = "X-Mailtrack-Loop"  # on every mail we send: one that comes back is a loop
SERIES_HEADER = "X-Mailtrack-Series"  # on a series written by `git issues push --mail`
ISSUE_HEADER = "X-Mailtrack-Issue"  # the issue's short name, on notifications
EVENT_HEADER = "X-Mailtrack-Event"  # what happened, on notifications
STATUS_HEADER = "X-Mailtrack-Status"  # the issue's status, on notifications (for filters)
COMPONENTS_HEADER = "X-Mailtrack-Components"  # its components, on notifications
REASON_HEADER = "X-Mailtrack-Reason"  # why this recipient gets it (reporter, assignee, ...)

IMPORTED_TRAILER = "Imported-By: mailtrack import"
VERIFIED_TRAILER = "Verified-By"
GATEWAY_TRAILER = "Gateway-Id"

# Our own mails' Message-IDs: <mailtrack.<issue name>.<what>@<domain>>
OUR_MSGID = re.compile(r"^<mailtrack\.([0-9a-f]{40})\.[^@>]*@[^>]*>$")
ANY_OF_OURS = re.compile(r"^<mailtrack\.[^@<>\s]+@[^<>\s]+>$")  # every Message-ID we make
HASHED_DOMAIN = "mailtrack.invalid"

_MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
# Header fields that MTAs put on top of a mail on its way (and again on each new attempt)
_TRACE_RE = re.compile(rb"^(?:return-path|received|delivered-to|x-original-to|x-envelope-[a-z-]+|"
                       rb"authentication-results|received-spf|arc-[a-z-]+|x-mailtrack-[a-z-]+):", re.IGNORECASE)


def our_message_id(issue: str, what: str, domain: str) -> str:
    """The Message-ID of a mail we send about `issue`; `what` names the record or the event."""
    return f"<mailtrack.{issue}.{what}@{domain}>"


def new_message_id(domain: str) -> str:
    """A fresh Message-ID of ours for a mail about no issue in particular (it names none)."""
    return f"<mailtrack.r.{uuid.uuid4().hex}@{domain}>"


def is_our_message_id(message_id: str) -> bool:
    """Whether we made this Message-ID (`our_message_id`, `reply_message_id`, `new_message_id`)."""
    return ANY_OF_OURS.match(message_id.strip()) is not None


def issue_of_ours(message_id: str) -> str | None:
    """The issue named by one of our Message-IDs, or None when it is not ours."""
    m = OUR_MSGID.match(message_id.strip())
    return m.group(1) if m else None


def reply_message_id(issue: str, kind: str, of_message_id: str, domain: str) -> str:
    """The Message-ID of our `kind` of reply (ack, transcript) about `issue` to the mail `of_message_id`."""
    of_mail = hashlib.sha1(of_message_id.encode("utf-8", "replace")).hexdigest()[:12]
    return our_message_id(issue, f"{kind}.{of_mail}", domain)


def header_message_id(raw: bytes) -> str:
    """The Message-ID header of a raw mail (for log lines), or "" when it has none."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    match = _MESSAGE_ID_RE.search(head)
    if match is None:
        return ""
    return " ".join(match.group(1).decode("ascii", "replace").split())


def hashed_message_id(raw: bytes) -> str:
    """The Message-ID given to a mail that has none: a hash of its bytes less the trace fields
    on top of it, so the same mail delivered again (a retried session, a second MTA attempt
    with a new Received line) gets the same one."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    i = 1 if lines[0].startswith(b"From ") else 0  # an mbox separator is no part of the mail
    while i < len(lines) and _TRACE_RE.match(lines[i]):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):  # folded continuation lines
            i += 1
    return "<" + hashlib.sha1(b"\n".join(lines[i:])).hexdigest() + f"@{HASHED_DOMAIN}>"


def mail_key(raw: bytes) -> str:
    """The key a raw mail is known by: its Message-ID, or the hashed one when it has none."""
    return header_message_id(raw) or hashed_message_id(raw)


def commit_trailers(verified: str = "", imported: bool = False) -> list[str]:
    """The trailers of a commit made from a mail."""
    return ([f"{VERIFIED_TRAILER}: {verified}"] if verified else []) + ([IMPORTED_TRAILER] if imported else [])


def is_imported(commit_message: bytes) -> bool:
    """Whether a commit was made by `mailtrack import` (its people must not hear of it)."""
    return IMPORTED_TRAILER.encode() in commit_message.splitlines()


def gateway_trailer(gateway_id: str) -> str:
    """The trailer that names the gateway which made a commit (`[sync] gateway_id`)."""
    return f"{GATEWAY_TRAILER}: {gateway_id}"


def gateway_of(commit_message: bytes) -> str | None:
    """The gateway named in a commit's trailers, or None for a commit no gateway made (the CLI, git)."""
    prefix = f"{GATEWAY_TRAILER}: ".encode()
    for line in reversed(commit_message.splitlines()):
        if line.startswith(prefix):
            return line[len(prefix):].strip().decode("utf-8", "replace") or None
    return None
