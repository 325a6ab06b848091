"""Commands by mail: pseudo-headers at the top of a mail, and batches sent to the control address.

Parsing gives `Line`s; `apply` checks each line against project.xml and the sender's rights on
a snapshot and returns the edits per issue plus a transcript. A mail's commands are applied all
or none: one illegal value or unknown issue and nothing changes; a command the sender may not
give is refused, and the rest of the mail (its comment) still lands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from mailtrack.config import AccessConfig
from mailtrack.fields import COMMAND_FIELDS, canonical
from mailtrack.tracker import rights
from mailtrack.tracker.changes import Edit, apply_edits, changed_fields, close_edits, reopen_edits
from mailtrack.tracker.model import Issue
from mailtrack.tracker.rights import Sender
from mailtrack.tracker.store import Snapshot, StoreError

ADD_REMOVE = {"carbons", "tags"}  # bare values add; +x adds, -x removes

# control command -> (issue field or action, how many words after the ID: 0, 1 or "rest")
CONTROL = {
    "close": ("close", "optional"), "reopen": ("reopen", 0), "status": ("status", 1),
    "severity": ("severity", 1), "priority": ("priority", 1), "assign": ("assigned", "rest"),
    "retitle": ("title", "rest"), "component": ("components", "rest"), "milestone": ("milestone", 1),
    "version": ("version", 1), "tag": ("tags", "rest"), "tags": ("tags", "rest"), "cc": ("carbons", "rest"),
    "subscribe": ("subscribe", 0), "unsubscribe": ("unsubscribe", 0), "show": ("show", 0),
    "type": ("type", 1), "resolution": ("resolution", 1),
}  # fmt: skip
STOP_WORDS = ("thanks", "thank you", "thankyou", "thx", "--", "quit", "stop")
MAX_UNKNOWN = 5
MAX_COMMANDS = 100  # command lines read from one mail; past them, one error line and nothing is applied
MAX_VALUES = 1000  # values all of a mail's commands add or remove (`Tags: +a -b` is two)
MAX_SHOWN = 300  # characters of a line, and of what became of it, that the transcript repeats


class LineAction(StrEnum):
    EDIT = "edit"  # set a field
    CLOSE = "close"
    REOPEN = "reopen"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SHOW = "show"  # send the issue to the sender
    HELP = "help"  # send the command reference
    NOTE = "note"  # not a command: an unknown word, a usage error (the transcript says which)


@dataclass
class Line:
    """One command as the sender wrote it, and what became of it."""

    text: str
    action: LineAction = LineAction.EDIT
    ident: str = ""  # the issue as written ("" = the mail's issue)
    field: str = ""
    value: str = ""
    issue: str = ""  # the full name, once resolved
    error: str = ""
    refused: str = ""  # not allowed to this sender
    result: str = ""
    noop: bool = False  # a command that found nothing to do (reopen an open issue, close a closed one)

    @property
    def status(self) -> str:
        if self.error:
            return f"error: {self.error}"
        if self.refused:
            return f"refused: {self.refused}"
        return self.result or "ok"

    @property
    def shown_text(self) -> str:
        """The line as the transcript quotes it: at most MAX_SHOWN characters."""
        return _cut(self.text)

    @property
    def shown_status(self) -> str:
        """What became of the line, as the transcript says it: at most MAX_SHOWN characters."""
        return _cut(self.status)


def _cut(text: str) -> str:
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN]}... ({len(text) - MAX_SHOWN} more characters)"


@dataclass
class Applied:
    """The outcome of a mail's commands."""

    lines: list[Line]
    edits: dict[str, list[Edit]] = field(default_factory=dict)  # issue -> edits, when all is well
    shows: list[str] = field(default_factory=list)  # issues to send to the sender
    help: bool = False

    @property
    def errors(self) -> list[Line]:
        return [ln for ln in self.lines if ln.error]

    @property
    def refused(self) -> list[Line]:
        return [ln for ln in self.lines if ln.refused]

    @property
    def ok(self) -> bool:
        return not self.errors


# --- parsing ----------------------------------------------------------------------------------


def pseudo_lines(pairs: list[tuple[str, str]]) -> list[Line]:
    """`Field: value` pairs from the top of a mail as command lines.

    Only when every key is a command field: a paragraph with any other key ("OS: Debian 12",
    Outlook's "From:" and "Sent:") is the sender's text, not commands, and gives [] (as Debian's
    BTS ignores pseudo-headers it does not know). A known field's value is checked later.
    """
    named = [canonical(key, COMMAND_FIELDS) for key, _ in pairs]
    if not pairs or None in named:
        return []
    return [Line(f"{key}: {value}", field=name or "", value=value.strip()) for (key, value), name in zip(pairs, named, strict=True)]


def subject_lines(commands: list[str]) -> list[Line]:
    """Roundup-style `[field=value]` commands from a subject tag or a recipient address."""
    lines = []
    for c in commands:
        key, _, value = c.partition("=")
        lines += pseudo_lines([(key, value)]) or [Line(f"[{c}]", error=f"unknown field '{key}'")]
    return lines


def control_lines(text: str) -> list[Line]:
    """The command lines of a mail to the control address, up to `thanks`, `--` or five unknown lines."""
    lines: list[Line] = []
    unknown = 0
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.lower().rstrip(".!,") in STOP_WORDS or stripped.startswith("-- ") or stripped == "--":
            break
        if stripped.startswith("#"):
            continue
        if stripped.startswith(">"):
            continue
        words = stripped.split()
        verb = words[0].lower()
        if verb == "help":
            lines.append(Line(stripped, action=LineAction.HELP))
            continue
        spec = CONTROL.get(verb)
        if spec is None:
            unknown += 1
            lines.append(Line(stripped, action=LineAction.NOTE, result=f"ignored: unknown command '{words[0]}'; send 'help' for the list"))
            if unknown >= MAX_UNKNOWN:
                lines.append(Line("(stopped after five unknown lines)", action=LineAction.NOTE))
                break
            continue
        target, arity = spec
        if len(words) < 2:
            lines.append(Line(stripped, action=LineAction.NOTE, error=f"'{verb}' needs an issue ID"))
            continue
        rest = stripped.split(None, 2)[2] if len(words) > 2 else ""
        if arity == 0 and rest or arity == 1 and len(words) != 3 or arity == "rest" and not rest:
            form = {0: f"{verb} ID", 1: f"{verb} ID VALUE", "rest": f"{verb} ID VALUE...", "optional": f"{verb} ID [RESOLUTION]"}[arity]
            lines.append(Line(stripped, action=LineAction.NOTE, error=f"usage: {form}"))
            continue
        action = LineAction(target) if target in ("close", "reopen", "subscribe", "unsubscribe", "show") else LineAction.EDIT
        lines.append(Line(stripped, action=action, ident=words[1], field="" if action != LineAction.EDIT else target, value=rest))
    return lines


def bounded(lines: list[Line]) -> list[Line]:
    """At most MAX_COMMANDS lines; the rest become one error line (so nothing of the mail is
    applied, all or none), and the cost of a mail's commands grows with the mail, not its square."""
    if len(lines) <= MAX_COMMANDS:
        return lines
    extra = len(lines) - MAX_COMMANDS
    return [*lines[:MAX_COMMANDS], Line(f"({extra} more command lines)", action=LineAction.NOTE,
                                        error=f"at most {MAX_COMMANDS} commands a mail; send the rest in another mail")]


# --- rights (asked of mailtrack.tracker.rights) ---------------------------------------------


def line_fields(line: Line) -> tuple[str, ...]:
    """The fields whose own rule in [access.fields] a line needs: close and reopen count as status
    (and as resolution too when `close` names one); subscribe and unsubscribe have none."""
    if line.action == LineAction.EDIT:
        return (line.field,)
    if line.action == LineAction.CLOSE:
        return ("status", "resolution") if line.value else ("status",)
    if line.action == LineAction.REOPEN:
        return ("status",)
    return ()


# --- applying ---------------------------------------------------------------------------------


def _edits_for(line: Line, snap: Snapshot, sender: str, issue: Issue) -> list[Edit]:
    if line.action == LineAction.CLOSE:
        return close_edits(snap, line.value, issue)
    if line.action == LineAction.REOPEN:
        return reopen_edits(snap, issue)
    if line.action == LineAction.SUBSCRIBE:
        return [Edit("carbons", "+", sender)]
    if line.action == LineAction.UNSUBSCRIBE:
        return [Edit("carbons", "-", sender)]
    if line.field in ADD_REMOVE or (line.field in ("components", "assigned") and re.match(r"^[+-]", line.value)):
        edits = []
        for token in line.value.replace(",", " ").split():
            op, value = (token[0], token[1:]) if token[0] in "+-" and len(token) > 1 else ("+", token)
            edits.append(Edit(line.field, op, value))
        return edits
    if line.field in ("components", "assigned"):
        return [Edit(line.field, "=", ",".join(line.value.replace(",", " ").split()) if line.field == "components" else line.value)]
    return [Edit(line.field, "=", line.value)]


def apply(lines: list[Line], snap: Snapshot, sender: Sender, default_issue: str, access: AccessConfig) -> Applied:
    """Check every line on the snapshot; fill in results, errors and refusals; collect the edits.

    At most MAX_COMMANDS lines are read (see `bounded`), with MAX_VALUES values in all, and at
    most `access.max_cc_per_mail` addresses go on Cc lists: a mail past a limit changes nothing.
    """
    lines = bounded(lines)
    result = Applied(lines)
    carbons = values = 0
    states: dict[str, Issue] = {}
    originals: dict[str, Issue] = {}
    project = snap.project()
    tags = None
    for line in lines:
        if line.error or line.action == LineAction.NOTE:
            continue
        if line.action == LineAction.HELP:
            result.help = True
            line.result = "the command reference is on its way"
            continue
        try:
            name = snap.resolve(line.ident) if line.ident else default_issue
        except StoreError as e:
            line.error = str(e)
            continue
        if not name:
            line.error = "no issue: name one (the command needs an ID)"
            continue
        line.issue = name
        if name not in states:
            originals[name] = states[name] = snap.issue(name)
        if line.action == LineAction.SHOW:
            if name not in result.shows:  # one mail per issue, however often the mail asks
                result.shows.append(name)
            line.result = "the issue is on its way"
            continue
        rules = access.comment if line.action in (LineAction.SUBSCRIBE, LineAction.UNSUBSCRIBE) else access.change
        if not sender.verified:
            line.refused = "commands need a sender address the receiving server vouches for (DKIM or DMARC)"
            continue
        refusal = rights.field_refusal(sender, line_fields(line), originals[name], snap, access, rules)
        if refusal:
            line.refused = refusal
            continue
        if line.action == LineAction.REOPEN and states[name].status not in project.closed:
            line.result = f"issue {snap.short(name)} is not closed ({states[name].status}): nothing to reopen"
            line.noop = True
            continue
        if line.action == LineAction.CLOSE and states[name].status in project.closed and line.value in ("", states[name].resolution):
            line.result = f"issue {snap.short(name)} is already closed ({states[name].resolution or states[name].status}): nothing to close"
            line.noop = True
            continue
        try:
            before = states[name]
            edits = _edits_for(line, snap, sender.address, before)
            values += len(edits)
            if values > MAX_VALUES:
                line.error = f"at most {MAX_VALUES} values a mail (each +x or -x counts); send the rest in another mail"
                continue
            after = apply_edits(before, edits)
            if after.status in project.closed and not after.resolution and before.status not in project.closed:
                edits.append(Edit("resolution", "=", project.default("resolution")))  # `Status: closed` alone
                after = apply_edits(before, edits)
            if after.version and tags is None:
                tags = snap.tags()
            stale = set(project.validate(before, tags))  # once: an issue may carry many stale errors
            new_errors = [e for e in project.validate(after, tags) if e not in stale]
        except StoreError as e:
            line.error = str(e)
            continue
        if new_errors:
            line.error = "; ".join(new_errors)
            continue
        carbons += len(set(after.carbons) - set(before.carbons))
        if carbons > access.max_cc_per_mail:
            line.error = f"at most {access.max_cc_per_mail} addresses a mail go on Cc lists (access.max_cc_per_mail)"
            continue
        changes = changed_fields(before, after)
        line.result = ", ".join(f"{f}: {_show(getattr(before, f))} -> {_show(getattr(after, f))}" for f in changes) or "no change"
        if line.action in (LineAction.SUBSCRIBE, LineAction.UNSUBSCRIBE):  # whatever the sender's role (the gateway records it)
            said = "you get no more mail about this issue" if line.action == LineAction.UNSUBSCRIBE else "you get mail about this issue"
            line.result = said + (f" ({line.result})" if changes else "")
        states[name] = after
        result.edits.setdefault(name, []).extend(edits)
    if result.errors:
        result.edits = {}
    return result


def _show(value: object) -> str:
    """A field's value for a transcript line: a long list gives its first items and a count."""
    if isinstance(value, list):
        shown = ", ".join(value[:10]) + (f" (and {len(value) - 10} more)" if len(value) > 10 else "")
        return _cut(shown) if value else "(none)"
    return _cut(str(value)) if value else "(none)"


HELP = f"""\
Commands go at the very top of a mail to an issue (before the first blank line), one per line:

    Status: closed            Resolution: fixed        Type: defect
    Severity: minor           Priority: high           Component: core
    Version: v1.2             Milestone: 1.0           Assigned: bob@example.org
    Title: A better title     Cc: +me@example.org -old@example.org
    Tags: +ui -crash

or in the subject after the issue's tag: [project #1234abc] [status=closed;severity=minor]

To the control address, one command a line (ID: the issue's short name):

    close ID [RESOLUTION]     reopen ID                 status ID STATUS
    severity ID SEVERITY      priority ID PRIORITY      assign ID WHO
    retitle ID TITLE          component ID COMPONENT    milestone ID MILESTONE
    version ID VERSION        tag ID +a -b              cc ID +addr -addr
    subscribe ID              unsubscribe ID            show ID
    help

'#' starts a comment; 'thanks' or '--' ends the commands; five unknown lines stop them too.
All the commands of a mail are applied together or not at all; a mail holds at most
{MAX_COMMANDS} commands and {MAX_VALUES:,} values (+a -b is two).
"""
