"""Who is sending, and may they do what their mail does: the gate every mail passes, patch mails too.

`sender(...)` makes the `rights.Sender` of a mail: its From address, whether the branch knows it,
and whether someone vouches for it: a trusted receiving server (its Authentication-Results, RFC 8601,
read with `authres`), or, where no trusted server stamped the mail and `access.verify_dkim` asks
for it, a DKIM signature of the From domain that we verify ourselves (worker.dkimcheck, handed in as
a `Verifier`: only a gateway that verifies DKIM loads dkimpy).
`refusal(...)` is the admission of a mail by its route; `patch_refusal(...)` that of a patch mail.
The rights themselves are mailtrack.tracker.rights: this module only asks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
_HARMLESS = {"pass", "none"}  # results that are no fail; any other (fail, permerror, temperror, policy...) is one

# Our own DKIM check: (mail, its From domain) -> `mailtrack dkim=pass` or "" (worker.dkimcheck.signed_by,
# given by app/ only where access.verify_dkim is on).
Verifier = Callable[[ParsedMail, str], str]

Refusal = tuple[Action, str]  # (held or rejected, why)


def sender_problem(mail: ParsedMail) -> str | None:
    """Why a mail has no one sender the rights could judge (it is held), or None when it has one."""
    if mail.from_problem:
        return mail.from_problem
    return None if mail.from_addr else "the mail has no sender address (From)"


def trace_fields(mail: ParsedMail) -> list[tuple[str, str]]:
    """The fields on top of the mail, above its own: those the receiving servers added.

    A receiving server adds its results above the fields the mail was written with (RFC 8601);
    one further down came with the mail and may be forged, so it is not read. One on top can be
    forged too: the sender may put it above its own fields. `verified_by` therefore believes a pass
    only as the topmost result of its method, in the trusted server's own group (before a Received
    line parts it from the rest), and takes any fail of a trusted authserv-id, wherever it stands on
    top, for a fail. A forged pass of a method the trusted server does not check at all would still
    be believed where nothing parts it from the server's own: name only servers that remove incoming
    results with their authserv-id (RFC 8601 section 5).
    """
    if not mail.headers:
        return [("Authentication-Results", value) for value in mail.auth_results[:1]]
    found: list[tuple[str, str]] = []
    for name, value in mail.headers:
        if name.lower() in _OWN_FIELDS:
            break
        found.append((name, value))
    return found


def _first_word(value: str) -> str:
    words = value.partition(";")[0].split()
    return words[0].lower() if words else ""


def _properties(result: Any) -> dict[str, str]:
    return {f"{p.type}.{p.name}".lower(): str(p.value).lower() for p in result.properties}


def _about(method: str, props: dict[str, str], domain: str) -> tuple[bool, bool]:
    """(whether a dkim or dmarc result concerns the From domain, whether it names that domain itself)."""
    if method == "dmarc":
        header_from = props.get("header.from")
        return header_from in (None, domain), header_from == domain
    if method == "dkim":
        d, i = props.get("header.d"), props.get("header.i")
        named = d == domain or (i is not None and i.endswith("@" + domain))
        return named or (d is None and i is None), named
    return False, False


def _stamped(mail: ParsedMail, trusted: set[str], domain: str) -> str | None:
    """What the trusted servers' Authentication-Results say of the From domain: `authserv-id method=pass`,
    "" (no pass, or a fail), or None when no trusted server stamped the mail at all."""
    stamped, own_group = False, True
    passes: list[str] = []
    decided: set[str] = set()  # the methods whose topmost trusted result was seen
    for name, value in trace_fields(mail):
        if name.lower() == "received" and stamped:
            own_group = False  # what stands below the trusted server's own Received came with the mail
        if name.lower() != "authentication-results":
            continue
        import authres  # here: only a mail with Authentication-Results needs the parser (deliver starts lean)

        try:
            header = authres.parse_value(value)
            authserv = str(header.authserv_id).lower()
        except Exception:  # authres raises on any malformed header (its own SyntaxError and others)
            header, authserv = None, _first_word(value)
        if authserv not in trusted:
            continue
        stamped = True
        if header is None:
            return ""  # results of a trusted server that cannot be read: nothing is believed
        for result in header.results:
            method, verdict = str(result.method).lower(), str(result.result).lower()
            concerns, named = _about(method, _properties(result), domain)
            if not concerns:
                continue
            if verdict not in _HARMLESS:
                return ""  # any fail among the trusted results is a fail, a pass elsewhere notwithstanding
            if verdict == "pass" and named and own_group and method not in decided:
                passes.append(f"{authserv} {method}=pass")
            decided.add(method)  # the topmost result of a method is the server's own: one further down is not
    return (passes[0] if passes else "") if stamped else None


def verified_by(mail: ParsedMail, access: AccessConfig, verifier: Verifier | None = None) -> str:
    """Who vouches for the sender: `authserv-id dkim=pass` (or dmarc=pass) from a trusted server's
    Authentication-Results, `mailtrack dkim=pass` from our own DKIM check (`access.verify_dkim`, only
    where no trusted server stamped the mail: `verifier` does it, which verify_dkim needs); "" when nobody does."""
    domain = mail.from_addr.rpartition("@")[2]
    if not domain:
        return ""
    stamped = _stamped(mail, {t.lower() for t in access.trusted_authserv_ids}, domain)
    if stamped is not None:
        return stamped
    if not access.verify_dkim:
        return ""
    if verifier is None:
        raise ValueError("access.verify_dkim is on, but no DKIM verifier was given")
    return verifier(mail, domain)


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
