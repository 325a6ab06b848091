"""What is this mail? A parsed mail and the branch in, a `Route` out: a value, never an exception.

In order: a Message-ID already on the branch is a duplicate; machine mail is noise, and so is a mail
whose own Message-ID is one we made (our mail come back, whatever its headers say); the control
address takes commands (when it is the only one of our addresses the mail went to); an issue
named in the recipient address (`issues+<id>@`); In-Reply-To and References matched against the
Message-IDs on the branch and against our own Message-IDs (which embed the issue's name); a
subject tag `[<project> #<id>]`; otherwise a new issue, unless the mail is a reply (a subject
with a reply prefix, and In-Reply-To or References) whose parent we have not seen: when the caller
lets it (`may_wait`: its gateway.reply_wait is not over; worker.pipeline keeps the bounds), that
one waits for its parent, which may be on its way still. A mail that names an issue we do not
have is not turned into a new one. Whatever found the issue, the subject tag's `[field=value]`
commands apply when the tag names that same issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mailtrack.mail.addresses import Ours, bare
from mailtrack.mail.ids import is_our_message_id, issue_of_ours
from mailtrack.mail.parse import LIST_PREFIX_RE, REPLY_PREFIX_RE, ParsedMail, subject_tag
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.store import Snapshot, StoreError


class RouteKind(StrEnum):
    NEW = "new"  # no issue named: a new one
    COMMENT = "comment"  # about an issue we have
    CONTROL = "control"  # commands to the control address
    MACHINE = "machine"  # a bounce, an auto-reply, a loop: never answered
    DUPLICATE = "duplicate"  # its Message-ID is on the branch already
    UNKNOWN_ISSUE = "unknown-issue"  # names an issue we do not have
    WAIT = "wait"  # a reply to a mail we have not seen: it waits for its parent (Route.awaits)


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    issue: str = ""  # the issue's full name, when there is one
    reason: str = ""  # why, in words a log line or a reply can quote
    ident: str = ""  # the ID as the sender wrote it (unknown-issue)
    commands: list[str] = field(default_factory=list)  # from a subject tag's [field=value] brackets
    awaits: tuple[str, ...] = ()  # wait: the Message-IDs it names, any of which would thread it


MAX_AWAITED = 20  # a waiting reply waits for its In-Reply-To and the newest References, no more
MAX_AWAITED_LENGTH = 250  # characters of a Message-ID it waits for (RFC 5322 lines are 998 at most)


def _resolve(snap: Snapshot, ident: str) -> str | None:
    try:
        return snap.resolve(ident)
    except StoreError:
        return None


def _tag_commands(mail: ParsedMail, snap: Snapshot, project: str, name: str) -> list[str]:
    """The `[field=value]` commands of the subject tag, when the tag names the issue `name`.

    A mail routed by its address or its thread still carries its subject's commands; a tag that
    names another issue (a reply whose subject was pasted from elsewhere) gives none.
    """
    tag = subject_tag(mail.subject, project)
    if tag is None or not tag[1]:
        return []
    return list(tag[1]) if _resolve(snap, tag[0]) == name else []


def _thread(mail: ParsedMail, snap: Snapshot, index: Index) -> tuple[str, str, str] | None:
    """(issue, why, the ID our mail named) for a reply: In-Reply-To, then References newest first,
    against the Message-IDs on the branch and our own (which embed the issue's name). The issue is
    "" when the mail answers our mail about an issue we do not have; None: in no thread we know."""
    refs = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    for ref in refs:
        ours = issue_of_ours(ref)
        if ours:
            if snap.exists(ours):
                return ours, f"a reply to our mail {ref}", ours[:7]
            return "", f"it replies to our mail {ref} about an issue we do not have", ours[:7]
        name = index.lookup(snap, ref)
        if name:
            return name, f"a reply to {ref}", name[:7]
    return None


def _awaited(mail: ParsedMail) -> tuple[str, ...]:
    """The Message-IDs a reply would be threaded by, when it names some and says it is a reply."""
    if REPLY_PREFIX_RE.match(LIST_PREFIX_RE.sub("", mail.subject, count=1)) is None:  # a new subject in an old thread: a fresh report
        return ()
    refs = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    return tuple(dict.fromkeys(r for r in refs if r and len(r) <= MAX_AWAITED_LENGTH))[:MAX_AWAITED]


def route(mail: ParsedMail, snap: Snapshot, index: Index, ours: Ours, project: str, *, may_wait: bool = False) -> Route:
    """`ours`: our addresses; `project`: the name in subject tags; `may_wait`: a reply to a mail we
    have not seen may wait for it (else it is a new issue)."""
    if index.lookup(snap, mail.message_id):
        return Route(RouteKind.DUPLICATE, index.lookup(snap, mail.message_id) or "", f"{mail.message_id} is on the branch already")
    if mail.machine:
        return Route(RouteKind.MACHINE, reason=mail.machine)
    if is_our_message_id(mail.message_id):  # ours come back, e.g. through a list that stripped our headers
        return Route(RouteKind.MACHINE, reason=f"loop: its Message-ID {mail.message_id} is one we made")

    recipients = list(mail.delivered_to) + [a for _, a in mail.to] + [a for _, a in mail.cc]
    to_us = {bare(a) for a in recipients if ours.delivers_here(a)}
    if to_us and all(ours.is_control(a) for a in to_us):
        # only to control@: a mail also to issues@ or issues+<id>@ is that mail, control@ in copy
        return Route(RouteKind.CONTROL, reason=f"sent to {ours.control}")
    for address in recipients:
        detail = ours.detail(address)
        if detail is None:
            continue
        ident, _, rest = detail.partition("+")
        commands = [c for c in rest.split("+") if c]
        name = _resolve(snap, ident)
        if name is None:
            threaded = _thread(mail, snap, index)
            if threaded is not None and threaded[0].startswith(ident.lower()):
                # a short name that has become ambiguous since we mailed it: the thread settles it
                name = threaded[0]
            else:
                return Route(RouteKind.UNKNOWN_ISSUE, reason=f"the address {address} names no issue of ours", ident=ident)
        return Route(RouteKind.COMMENT, name, f"sent to {address}", commands=commands + _tag_commands(mail, snap, project, name))

    threaded = _thread(mail, snap, index)
    if threaded is not None:
        name, why, ident = threaded
        if not name:
            return Route(RouteKind.UNKNOWN_ISSUE, reason=why, ident=ident)
        return Route(RouteKind.COMMENT, name, why, commands=_tag_commands(mail, snap, project, name))

    tag = subject_tag(mail.subject, project)
    if tag is not None:
        ident, commands = tag
        name = _resolve(snap, ident)
        if name is None:
            return Route(RouteKind.UNKNOWN_ISSUE, reason=f"the subject names [{project} #{ident}], which is no issue of ours", ident=ident)
        return Route(RouteKind.COMMENT, name, f"the subject tag [{project} #{ident}]", commands=list(commands))
    awaited = _awaited(mail) if may_wait else ()
    if awaited:
        return Route(RouteKind.WAIT, reason=f"a reply to {awaited[0]}, which we have not seen: waiting for it", awaits=awaited)
    return Route(RouteKind.NEW, reason="no issue named by address, thread or subject")
