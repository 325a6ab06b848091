"""Who is sending, and may they do what their mail does: the gate every mail passes, patch mails too.

`sender(...)` makes the `rights.Sender` of a mail: its From address, whether the branch knows it,
and whether a trusted receiving server vouches for it (Authentication-Results on top of the mail).
`refusal(...)` is the admission of a mail by its route; `patch_refusal(...)` that of a patch mail.
The rights themselves are mailtrack.tracker.rights: this module only asks them.
"""

from __future__ import annotations

from dataclasses import replace

from mailtrack.config import AccessConfig
from mailtrack.mail.parse import ParsedMail
from mailtrack.tracker import rights
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import Issue
from mailtrack.tracker.rights import Sender
from mailtrack.tracker.store import Snapshot
from mailtrack.worker.outcome import Action
from mailtrack.worker.route import RouteKind

# The fields a mail is written with (RFC 5322 originator, destination, identification and MIME
# fields): the Authentication-Results we believe stand above the first of them, among the trace
# fields that receiving servers add (Received, Return-Path, X-Spam-*, ...).
_OWN_FIELDS = {"from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to",
               "references", "mime-version", "content-type", "content-transfer-encoding"}

Refusal = tuple[Action, str]  # (held or rejected, why)


def sender_problem(mail: ParsedMail) -> str | None:
    """Why a mail has no one sender the rights could judge (it is held), or None when it has one."""
    if mail.from_problem:
        return mail.from_problem
    return None if mail.from_addr else "the mail has no sender address (From)"


def topmost_auth_results(mail: ParsedMail) -> list[str]:
    """The Authentication-Results in the trace block on top of the mail, above its own fields.

    A receiving server adds its results above the fields the mail was written with (RFC 8601);
    one further down came with the mail and may be forged, so it is not read. One on top can be
    forged too, unless the trusted server removes incoming Authentication-Results that carry its
    authserv-id, as RFC 8601 section 5 asks of it: `access.trusted_authserv_ids` must name only
    servers that do.
    """
    if not mail.headers:
        return list(mail.auth_results[:1])
    found: list[str] = []
    for name, value in mail.headers:
        if name.lower() in _OWN_FIELDS:
            break
        if name.lower() == "authentication-results":
            found.append(value)
    return found


def verified_by(mail: ParsedMail, trusted: list[str]) -> str:
    """`authserv-id dkim=pass` when a trusted receiving server vouches for the sender, else ""."""
    domain = mail.from_addr.rpartition("@")[2]
    for value in topmost_auth_results(mail):
        authserv, _, rest = value.partition(";")
        authserv = authserv.strip().split()[0].lower() if authserv.strip() else ""
        if authserv not in {t.lower() for t in trusted}:
            continue
        for method in rest.split(";"):
            words = method.strip().lower().split()
            if not words:
                continue
            if words[0] == "dmarc=pass" and f"header.from={domain}" in words:
                return f"{authserv} dmarc=pass"
            if words[0] == "dkim=pass" and any(w in (f"header.d={domain}", f"header.i=@{domain}") for w in words):
                return f"{authserv} dkim=pass"
    return ""


def sender(mail: ParsedMail, vouched: str, snap: Snapshot, index: Index, access: AccessConfig) -> Sender:
    """The sender of a mail as the rights see it; `vouched`: what `verified_by` said of the mail."""
    verified = not access.require_auth_for_commands or bool(vouched)
    return Sender(mail.from_addr, known=index.known(snap, mail.from_addr), verified=verified)


def opener(who: Sender) -> Sender:
    """The sender as the opener of the issue their mail creates: its reporter, known to it (the
    commands of a new issue are checked against the issue, with its reporter's rights)."""
    return replace(who, known=True)


def _unknown(who: Sender, snap: Snapshot, access: AccessConfig, project: str) -> Refusal | None:
    if access.unknown_senders == "accept" or rights.may(who, ["known"], None, snap, access):
        return None
    return (Action.HELD if access.unknown_senders == "hold" else Action.REJECTED), f"{who.address} is not known to {project}"


_WHAT = {RouteKind.NEW: "open issues", RouteKind.COMMENT: "comment on issues", RouteKind.CONTROL: "send commands"}


def refusal(who: Sender, kind: RouteKind, issue: Issue | None, snap: Snapshot, access: AccessConfig, project: str) -> Refusal | None:
    """Why a mail of this route may not go on; None when it may."""
    unknown = _unknown(who, snap, access, project)
    if unknown is not None:
        return unknown
    rules = access.open if kind == RouteKind.NEW else access.comment
    if not rights.may(who, rules, issue, snap, access):
        return Action.REJECTED, f"{who.address} may not {_WHAT[kind]} in {project}"
    return None


def patch_refusal(who: Sender, size: int, limit: int, snap: Snapshot, access: AccessConfig, project: str) -> Refusal | None:
    """Why a patch mail may not go on (it is a change: commands' DKIM/DMARC rule holds); None when it may."""
    unknown = _unknown(who, snap, access, project)
    if unknown is not None:
        return unknown
    if not who.verified:
        return Action.REJECTED, "patch mails need a sender address the receiving server vouches for (DKIM or DMARC)"
    if size > limit:
        return Action.REJECTED, f"the series is too large ({size} bytes in one mail; at most {limit})"
    return None
