"""Who may change what: the one answer for every way in (mail, control@, patch mails, the web later).

`[access]` (config.AccessConfig) lists rules: `anyone`, `known` (the branch knows the address),
`reporter`, `assignee`, `owner` (of the issue or of one of its components), `maintainer`, a literal
address or an `@domain`. A `Sender` is judged against them on one snapshot:

- `may(sender, rules, issue, snap)`: one list of rules;
- `field_refusal(...)`: a change of fields, each field by its own rule in `[access.fields]` and the
  rest by the general rule (`access.change`): what a command by mail and a patch both ask;
- `issue_refusals(...)`: a whole issue.xml written over another (a patch), field by field as the
  same commands by mail would be, plus what no mail can change (`<author>`, `<created>`, unknown
  extension elements): that is for maintainers alone;
- `file_refusals(...)`: a comment or an attachment: adding one is commenting; rewriting one that
  is on the branch, or writing a comment in someone else's name, is for maintainers alone.

The command line (`git issues`) works in its user's own clone and asks no one, as git does.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailtrack.config import AccessConfig
from mailtrack.tracker.changes import changed_fields
from mailtrack.tracker.model import Issue, Person
from mailtrack.tracker.store import Snapshot, split_issue_path

# What mail never changes on an existing issue (besides `modified`, which every change sets).
FIXED_FIELDS = ("created", "author")


@dataclass(frozen=True)
class Sender:
    """Someone asking for a change: their address, whether the branch knows them, and whether a
    trusted receiving server vouched for them (or nobody asks that: `require_auth_for_commands`)."""

    address: str
    known: bool = False
    verified: bool = True

    @property
    def email(self) -> str:
        return self.address.lower()


def _people(values: list[str]) -> set[str]:
    return {Person.parse(v).email.lower() or v.lower() for v in values}


def is_maintainer(sender: Sender, access: AccessConfig) -> bool:
    return sender.email in _people(access.maintainers)


def matches(sender: Sender, rule: str, issue: Issue | None, snap: Snapshot, access: AccessConfig) -> bool:
    """Whether the sender fits one entry of an access list (about `issue`, when there is one)."""
    who = sender.email
    rule = rule.strip().lower()
    if rule == "anyone":
        return True
    if rule == "known":
        return sender.known or is_maintainer(sender, access)
    if rule == "maintainer":
        return is_maintainer(sender, access)
    if rule.startswith("@"):
        return who.endswith(rule)
    if "@" in rule:
        return who == rule
    if issue is None:
        return False
    if rule == "reporter":
        return who in _people(issue.reporters) or who == issue.author.email.lower()
    if rule == "assignee":
        return who in _people(issue.assigned)
    if rule == "owner":
        return who in _people(issue.owners) or who in _people(snap.project().component_owners(issue.components))
    return False


def may(sender: Sender, rules: list[str], issue: Issue | None, snap: Snapshot, access: AccessConfig) -> bool:
    """Whether the sender fits any of `rules`; a maintainer has every right."""
    return is_maintainer(sender, access) or any(matches(sender, r, issue, snap, access) for r in rules)


def field_refusal(sender: Sender, fields: tuple[str, ...], issue: Issue, snap: Snapshot, access: AccessConfig,
                  general: list[str] | None = None) -> str:
    """Why the sender may not change these fields of `issue`, or "": each field listed in
    [access.fields] by its own rule, the others (and a change of no field) by `general`."""
    rules = access.change if general is None else general
    checks = [(f, access.fields[f]) for f in fields if f in access.fields]
    if len(checks) < len(fields) or not fields:
        checks.append(("", rules))
    short = snap.short(issue.name) if issue.name and snap.exists(issue.name) else issue.name[:7]
    for fieldname, rule in checks:
        if may(sender, rule, issue, snap, access):
            continue
        if fieldname:
            return (f"{sender.address} may not change the {fieldname} of issue {short} "
                    f"(allowed by access.fields.{fieldname}: {', '.join(rule)})")
        return f"{sender.address} may not change issue {short} (allowed: {', '.join(rule)})"
    return ""


def differences(before: Issue, after: Issue) -> list[str]:
    """Every field of issue.xml that differs, bookkeeping (`modified`) aside; `extensions` for the
    unknown elements."""
    fixed = [f for f in FIXED_FIELDS if getattr(before, f) != getattr(after, f)]
    return fixed + changed_fields(before, after) + (["extensions"] if before.extensions != after.extensions else [])


def issue_refusals(sender: Sender, before: Issue | None, after: Issue, snap: Snapshot, access: AccessConfig) -> list[str]:
    """Why the sender may not write `after` over `before` (None: a new issue), as mail would be judged."""
    short = after.name[:7]
    if before is None:
        if not may(sender, access.open, after, snap, access):
            return [f"{sender.address} may not open issues"]
        if after.author.email.lower() != sender.email and not is_maintainer(sender, access):
            return [f"issue {short}: {sender.address} may not open an issue in the name of {after.author.mailbox}"
                    " (only a maintainer may)"]
        return []
    reasons = []
    changed = differences(before, after)
    fixed = [f for f in changed if f in FIXED_FIELDS or f == "extensions"]
    if fixed and not is_maintainer(sender, access):
        what = ", ".join("unknown elements" if f == "extensions" else f"<{f}>" for f in fixed)
        reasons.append(f"issue {short}: {sender.address} may not change its {what}: no mail can; only a maintainer may")
    for f in changed:
        if f in fixed:
            continue
        where, rules = access.rules_for(f)
        if not may(sender, rules, before, snap, access):
            reasons.append(f"{sender.address} may not change the {f} of issue {short} (allowed by {where}: {', '.join(rules)})")
    return reasons


def file_refusals(sender: Sender, path: str, issue: Issue | None, existing: bytes | None, new: bytes,
                  author: Person | None, snap: Snapshot, access: AccessConfig) -> list[str]:
    """Why the sender may not write a comment (by `author`) or an attachment (`author` None) at
    `path` of `issue` (None: an issue written in the same change, which its opener may add to),
    given what is there already."""
    maintainer = is_maintainer(sender, access)
    where = split_issue_path(path)
    short = (where[0] if where else path)[:7]
    kind = "comment" if author is not None else "attachment"
    if existing is not None and existing != new:
        if maintainer:
            return []
        return [f"{path}: {sender.address} may not rewrite {'a' if kind == 'comment' else 'an'} {kind} on issue {short}: "
                f"no mail changes a {kind} once it is on the branch, and a patch may only if a maintainer sends it"]
    reasons = []
    if issue is not None and not may(sender, access.comment, issue, snap, access):
        reasons.append(f"{path}: {sender.address} may not {'comment on' if author is not None else 'add to'} issue {short}")
    if author is not None and author.email.lower() != sender.email and not maintainer:
        reasons.append(f"{path}: {sender.address} may not write a comment in the name of {author.mailbox} (only a maintainer may)")
    return reasons
