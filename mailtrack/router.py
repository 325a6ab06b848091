"""What is this mail? A parsed mail and the branch in, a `Route` out: a value, never an exception.

In order: a Message-ID already on the branch is a duplicate; machine mail is noise; the control
address takes commands; an issue named in the recipient address (`issues+<id>@`); In-Reply-To and
References matched against the Message-IDs on the branch and against our own Message-IDs (which
embed the issue's name); a subject tag `[<project> #<id>]`; otherwise a new issue. A mail that
names an issue we do not have is not turned into a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailtrack.index import Index
from mailtrack.message import ParsedMail, subject_tag
from mailtrack.store import Snapshot, StoreError

# Our own mails' Message-IDs: <mailtrack.<issue name>.<what>@<domain>>
OUR_MSGID = re.compile(r"^<mailtrack\.([0-9a-f]{40})\.[^@>]*@[^>]*>$")


def our_message_id(issue: str, what: str, domain: str) -> str:
    """The Message-ID of a mail we send about `issue`; `what` names the record or the event."""
    return f"<mailtrack.{issue}.{what}@{domain}>"


@dataclass(frozen=True)
class Route:
    kind: str  # new | comment | control | machine | duplicate | unknown-issue
    issue: str = ""  # the issue's full name, when there is one
    reason: str = ""  # why, in words a log line or a reply can quote
    ident: str = ""  # the ID as the sender wrote it (unknown-issue)
    commands: list[str] = field(default_factory=list)  # from a subject tag's [field=value] brackets


@dataclass(frozen=True)
class Addressing:
    """The addresses that mean "us"."""

    main: str
    control: str
    project: str  # the name in subject tags

    def detail(self, address: str) -> str | None:
        """The `<detail>` of `issues+<detail>@domain`, or None when the address is not a plus form of ours."""
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        main_local, _, main_domain = self.main.lower().rpartition("@")
        if domain == main_domain and local.startswith(main_local + "+"):
            return local[len(main_local) + 1:]
        return None

    def is_control(self, address: str) -> bool:
        return address.strip().strip("<>").lower() == self.control.lower()


def _resolve(snap: Snapshot, ident: str) -> str | None:
    try:
        return snap.resolve(ident)
    except StoreError:
        return None


def route(mail: ParsedMail, snap: Snapshot, index: Index, addressing: Addressing) -> Route:
    if index.lookup(snap, mail.message_id):
        return Route("duplicate", index.lookup(snap, mail.message_id) or "", f"{mail.message_id} is on the branch already")
    if mail.machine:
        return Route("machine", reason=mail.machine)

    recipients = list(mail.delivered_to) + [a for _, a in mail.to] + [a for _, a in mail.cc]
    if any(addressing.is_control(a) for a in mail.delivered_to) or (
        not mail.delivered_to and any(addressing.is_control(a) for a in recipients)
    ):
        return Route("control", reason=f"sent to {addressing.control}")
    for address in recipients:
        detail = addressing.detail(address)
        if detail is None:
            continue
        ident, _, rest = detail.partition("+")
        commands = [c for c in rest.split("+") if c]
        name = _resolve(snap, ident)
        if name is None:
            return Route("unknown-issue", reason=f"the address {address} names no issue of ours", ident=ident)
        return Route("comment", name, f"sent to {address}", commands=commands)

    refs = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    for ref in refs:
        m = OUR_MSGID.match(ref.strip())
        if m:
            if snap.exists(m.group(1)):
                return Route("comment", m.group(1), f"a reply to our mail {ref}")
            return Route("unknown-issue", reason=f"it replies to our mail {ref} about an issue we do not have", ident=m.group(1)[:7])
        name = index.lookup(snap, ref)
        if name:
            return Route("comment", name, f"a reply to {ref}")

    tag = subject_tag(mail.subject, addressing.project)
    if tag is not None:
        ident, commands = tag
        name = _resolve(snap, ident)
        if name is None:
            return Route("unknown-issue", reason=f"the subject names [{addressing.project} #{ident}], which is no issue of ours", ident=ident)
        return Route("comment", name, f"the subject tag [{addressing.project} #{ident}]", commands=list(commands))
    return Route("new", reason="no issue named by address, thread or subject")
