"""What a field is called: issue.xml's field names and every other name people give them.

One table for every way in: a pseudo-header in a mail (`Assign: bob`), a control command, a
subject tag's `[assignee=bob]`, `[access.fields]` in the configuration and `git issues set` all
turn a typed name into issue.xml's element through `canonical`. Which fields a way in may set is a
policy of its own (`COMMAND_FIELDS` by mail, `EDITABLE_FIELDS` on the command line); the names are
the same everywhere. Pure data: this module imports nothing.
"""

from __future__ import annotations

# issue.xml: every field, in the order FORMAT.md gives.
TIME_FIELDS = ("created", "modified")
LIST_FIELDS = ("reporters", "owners", "assigned", "carbons", "components", "tags")
PEOPLE_FIELDS = ("reporters", "owners", "assigned", "carbons")
TEXT_FIELDS = (
    "title", "summary", "description", "status", "resolution", "type",
    "version", "milestone", "severity", "priority",
)  # fmt: skip
ISSUE_FIELDS = (
    "created", "author", "title", "summary", "description", "reporters", "owners", "assigned",
    "carbons", "status", "resolution", "type", "components", "version", "milestone", "severity",
    "priority", "tags", "modified",
)  # fmt: skip
# Fields a person may set (everything but the bookkeeping): the command line.
EDITABLE_FIELDS = tuple(f for f in ISSUE_FIELDS if f not in ("created", "author", "modified"))
# Fields commands by mail set (pseudo-headers, control commands, subject tags), and that
# [access.fields] can give a rule of their own.
COMMAND_FIELDS = (
    "status", "resolution", "type", "severity", "priority", "components", "version", "milestone",
    "assigned", "title", "tags", "carbons",
)  # fmt: skip

# The other names people type for a field.
ALIASES = {
    "assignee": "assigned", "assign": "assigned", "cc": "carbons", "component": "components",
    "tag": "tags", "reporter": "reporters", "owner": "owners", "milestones": "milestone",
    "versions": "version", "subject": "title",
}  # fmt: skip

# The filter options of a list (`git issues list --component`, the web's `/?component=`) and the field each
# one matches (tracker.query filters by them; here so that the command line parses its options lean).
FILTERS = {
    "status": "status", "type": "type", "severity": "severity", "priority": "priority",
    "component": "components", "milestone": "milestone", "version": "version", "resolution": "resolution",
    "assigned": "assigned", "reporter": "reporters", "owner": "owners", "cc": "carbons", "tag": "tags",
    "title": "title", "summary": "summary", "description": "description", "author": "author",
}  # fmt: skip


def canonical(name: str, among: tuple[str, ...] = EDITABLE_FIELDS) -> str | None:
    """issue.xml's name for the field a person named, when it is one of `among`; else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in among else None
