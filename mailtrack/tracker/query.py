"""Which issues a list shows, and in what order: the one answer for `git issues list` and the web's `/`.

Both take the filters as (field, wanted value) pairs and a sort key list as `list --sort` reads it
(`-modified,severity`); the rows are the index's records (`lookup.Index.records`) with the issue's
full and short names and whether it is open.
"""

from __future__ import annotations

from collections.abc import Callable

from mailtrack.tracker.changes import field_name
from mailtrack.tracker.model import LIST_OF, Project
from mailtrack.tracker.store import MIN_SHORT, StoreError

# the filter options (`git issues list --component`, `/?component=`) and the field each one matches
FILTERS = {
    "status": "status", "type": "type", "severity": "severity", "priority": "priority",
    "component": "components", "milestone": "milestone", "version": "version", "resolution": "resolution",
    "assigned": "assigned", "reporter": "reporters", "owner": "owners", "cc": "carbons", "tag": "tags",
    "title": "title", "summary": "summary", "description": "description", "author": "author",
}  # fmt: skip
TABLE_FIELDS = ("status", "severity", "components", "assigned", "title")  # what `git issues list` shows of each
SUBSTRING_FILTERS = {"title", "summary", "description", "author"}  # and people in lists; the rest match a whole value

Records = list[tuple[str, dict[str, object]]]


class BadFilter(StoreError):
    """A filter value that no issue can have; the message lists the legal ones."""


def check_filters(project: Project, filters: list[tuple[str, str]], records: Records) -> None:
    """A filter on a field with legal values must name one of them (in any case), or one an issue still
    holds from an older project.xml; BadFilter listing the legal ones otherwise, as `new` does."""
    for fieldname, wanted in filters:
        legal = project.legal(fieldname)
        if fieldname not in LIST_OF or (fieldname == "version" and not legal):  # versions: any tag, unless listed
            continue
        if wanted.lower() in {v.lower() for v in legal}:
            continue
        held = (r[fieldname] for _, r in records)
        if wanted.lower() in {v.lower() for h in held for v in (h if isinstance(h, list) else [str(h)])}:
            continue
        shown = ", ".join(legal) if legal else f"(none: project.xml lists no {LIST_OF[fieldname]})"
        raise BadFilter(f"illegal {fieldname} '{wanted}'; legal values are: {shown}")


def sort_key(project: Project, key: str) -> Callable[[dict[str, object]], tuple[tuple[int, str], ...]]:
    """How `list --sort KEY` orders rows: a field with legal values in project.xml's order, as Bugzilla
    does (empty first, values project.xml does not list last); any other field alphabetically."""
    rank = {v: i for i, v in enumerate(project.legal(key))}

    def key_of(row: dict[str, object]) -> tuple[tuple[int, str], ...]:
        value = row.get(key, "")
        values = [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
        return tuple((rank.get(v, len(rank)), v) for v in values)

    return key_of


def matches(record: dict[str, object], fieldname: str, wanted: str) -> bool:
    value = record[fieldname]
    if isinstance(value, list) and (fieldname in LIST_OF or fieldname == "tags"):  # components, tags: whole values
        return any(wanted.lower() == v.lower() for v in value)
    if isinstance(value, list):  # people: part of "Name <address>" will do (`--assigned bob`)
        return any(wanted.lower() in v.lower() for v in value)
    if fieldname in SUBSTRING_FILTERS:
        return wanted.lower() in str(value).lower()
    return str(value).lower() == wanted.lower()


def shortest_names(names: list[str]) -> dict[str, str]:
    """Each name's shortest unique prefix (7 hex at least), from its neighbours in sorted order."""
    ordered = sorted(names)
    out = {}
    for i, name in enumerate(ordered):
        n = MIN_SHORT
        for other in (ordered[i - 1] if i else "", ordered[i + 1] if i + 1 < len(ordered) else ""):
            while n < 40 and other[:n] == name[:n]:
                n += 1
        out[name] = name[:n]
    return out


def fields_needed(filters: list[tuple[str, str]], sort: str, shown: tuple[str, ...]) -> tuple[str, ...]:
    """The record fields a list reads: the status, what it filters and sorts on, and `shown`."""
    keys = [k.strip().lstrip("-") for k in sort.split(",") if k.strip().lstrip("-")]
    sorted_on = [k if k in ("id", "short", "created", "modified") else field_name(k) for k in keys]
    return tuple(dict.fromkeys(["status", *(f for f, _ in filters), *(k for k in sorted_on if k not in ("id", "short")), *shown]))


def select(project: Project, records: Records, filters: list[tuple[str, str]], sort: str = "",
           include_closed: bool = False, shorts: dict[str, str] | None = None, ordered: bool = False) -> list[dict[str, object]]:
    """The rows a list shows: open issues (all with `include_closed`) matching every filter, sorted by
    `sort` (comma-separated fields, '-' for descending; default: created). `shorts`: the records'
    shortest_names when the caller has them already (of every issue, when `records` holds only some).
    `ordered`: the records come in created order already (`Index.records`), so that sort costs nothing.
    BadFilter, or StoreError for an unknown sort field."""
    check_filters(project, filters, records)
    if shorts is None:
        shorts = shortest_names([n for n, _ in records])
    rows = []
    closed = project.closed
    for name, record in records:
        is_open = record["status"] not in closed
        if not include_closed and not is_open:
            continue
        if filters and any(not matches(record, f, v) for f, v in filters):
            continue
        rows.append({"id": name, "short": shorts[name], **record, "open": is_open})
    if ordered and sort in ("", "created"):
        return rows
    for key in reversed((sort or "created").split(",")):
        desc = key.startswith("-")
        key = key.lstrip("-")
        if key not in ("id", "short", "created", "modified"):
            key = field_name(key)
        rows.sort(key=sort_key(project, key), reverse=desc)
    return rows
