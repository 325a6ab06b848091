"""Which issues a list shows, and in what order: the one answer for `git issues list` and the web's `/`.

Both take the filters as (field, wanted value) pairs and a sort key list as `list --sort` reads it
(`-modified,severity`); the rows are the index's records (`lookup.Index.records`) with the issue's
full and short names and whether it is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mailtrack.fields import FILTERS as FILTERS  # the filter options: there, so that the CLI parses them lean
from mailtrack.fields import LIST_FIELDS, TIME_FIELDS
from mailtrack.tracker.changes import field_name
from mailtrack.tracker.model import LIST_OF, Project
from mailtrack.tracker.store import MIN_SHORT, Snapshot, StoreError

if TYPE_CHECKING:  # the index runs the SQL; its module needs this one's columns
    from mailtrack.tracker.lookup import Index

TABLE_FIELDS = ("status", "severity", "components", "assigned", "title")  # what `git issues list` shows of each
SUBSTRING_FILTERS = {"title", "summary", "description", "author"}  # and people in lists; the rest match a whole value

Records = list[tuple[str, dict[str, object]]]
COLUMNS = ("status", "created", "modified", "type", "severity", "priority", "resolution", "milestone", "version",
           "title", "author")  # the record's fields `issues` holds as columns (and LIST_FIELDS in `lists`), for lists
# to filter and sort on (lookup.Index keeps the table; a change here is a new lookup.SCHEMA_VERSION)


def column(fieldname: str) -> str:
    """The SQL expression of a record field in the table `issues`: its column, or read from the record."""
    if fieldname in COLUMNS:
        return fieldname
    if fieldname in LIST_FIELDS:  # from the column of the lists alone: no description parsed
        return f"json_extract(lists, '$.{fieldname}')"
    if not fieldname.isidentifier():
        raise ValueError(f"not a field: {fieldname!r}")
    return f"json_extract(record, '$.{fieldname}')"




class BadFilter(StoreError):
    """A filter value that no issue can have; the message lists the legal ones."""


def check_filters(project: Project, filters: list[tuple[str, str]], records: Records) -> None:
    """A filter on a field with legal values must name one of them (in any case), or one an issue still
    holds from an older project.xml; BadFilter listing the legal ones otherwise, as `new` does."""

    def held(fieldname: str, wanted: str) -> bool:
        values = (r[fieldname] for _, r in records)
        return wanted in {v.lower() for h in values for v in (h if isinstance(h, list) else [str(h)])}

    _check_filters(project, filters, held)


def _check_filters(project: Project, filters: list[tuple[str, str]], held: Callable[[str, str], bool]) -> None:
    """check_filters, with `held(field, wanted value in lower case)` saying whether an issue the list covers has it."""
    for fieldname, wanted in filters:
        legal = project.legal(fieldname)
        if fieldname not in LIST_OF or (fieldname == "version" and not legal):  # versions: any tag, unless listed
            continue
        if wanted.lower() in {v.lower() for v in legal}:
            continue
        if held(fieldname, wanted.lower()):
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
    return {name: shortest(name, (ordered[i - 1] if i else "", ordered[i + 1] if i + 1 < len(ordered) else ""))
            for i, name in enumerate(ordered)}


def shortest(name: str, neighbours: tuple[str, str]) -> str:
    """A name's shortest prefix (7 hex at least) that neither neighbour in sorted order ('' for none) shares."""
    n = MIN_SHORT
    for other in neighbours:
        while n < 40 and other[:n] == name[:n]:
            n += 1
    return name[:n]


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


# --- the same lists from the index's table `issues`, in SQL (lookup.Index.issue_rows) ---------------

MANY_SHORTS = 2000  # rows past this many get their short names from every name at once, not by neighbours


def _match_sql(fieldname: str, whole: bool) -> str:
    """`matches` as an SQL condition on a row of `issues`, with one parameter: the wanted value in lower case."""
    if fieldname in LIST_FIELDS:
        test = "py_lower(value) = ?" if whole or fieldname in LIST_OF or fieldname == "tags" else "instr(py_lower(value), ?) > 0"
        return f"EXISTS (SELECT 1 FROM json_each(lists, '$.{fieldname}') WHERE {test})"
    if fieldname in SUBSTRING_FILTERS and not whole:
        return f"instr(py_lower({column(fieldname)}), ?) > 0"
    return f"py_lower({column(fieldname)}) = ?"


def where_sql(project: Project, filters: list[tuple[str, str]], include_closed: bool) -> tuple[str, list[object]]:
    """`select`'s choice of rows as an SQL condition and its parameters: open ones unless `include_closed`, matching every filter."""
    clauses, params = _covered(project, include_closed)
    for fieldname, wanted in filters:
        clauses.append(_match_sql(fieldname, whole=False))
        params.append(wanted.lower())
    return " AND ".join(clauses), params


def _covered(project: Project, include_closed: bool) -> tuple[list[str], list[object]]:
    if include_closed or not project.closed:
        return [], []
    return [f"status NOT IN ({','.join('?' * len(project.closed))})"], list(project.closed)


def sort_keys(sort: str) -> list[tuple[str, bool]]:
    """(record field, descending) of each key of a `list --sort`; StoreError for an unknown field."""
    keys = []
    for key in (sort or "created").split(","):
        desc = key.startswith("-")
        key = key.lstrip("-")
        keys.append((key if key in ("id", "short", "created", "modified") else field_name(key), desc))
    return keys


def order_sql(project: Project, keys: list[tuple[str, bool]]) -> tuple[str, list[object]] | None:
    """`select`'s order as an SQL ORDER BY and its parameters: each `sort_key` (empty first, then project.xml's
    rank, then the text), ties in created order; None when a key is a list field (sorted in Python)."""
    terms: list[str] = []
    params: list[object] = []
    for key, desc in keys:
        d = " DESC" if desc else ""
        if key in ("id", "short"):  # each short name a prefix of its name, unique: the same order
            terms.append(f"name{d}")
            continue
        if key in LIST_FIELDS:
            return None
        col = column(key)
        if key not in TIME_FIELDS:  # never empty (a modified time is the created one at least): the index's order
            terms.append(f"(NULLIF({col}, '') IS NOT NULL){d}")
        rank = {v: i for i, v in enumerate(project.legal(key))}
        if rank:
            terms.append(f"CASE {col} {' '.join(f'WHEN ? THEN {i}' for i in rank.values())} ELSE {len(rank)} END{d}")
            params += list(rank)
        terms.append(f"{col}{d}")
    return ", ".join([*terms, "created", "rowid"]), params


def listing(index: Index, snap: Snapshot, project: Project, filters: list[tuple[str, str]], sort: str = "",
            include_closed: bool = False, *, fields: tuple[str, ...] | None = None, limit: int = -1, offset: int = 0,
            total: int | None = None) -> tuple[int, list[dict[str, object]]]:
    """`select`'s rows from the index, in SQL: (how many there are, the `limit` of them from `offset`, each
    with `fields` of its record, all with None). `total`: the count when the caller has it already.
    BadFilter, or StoreError for an unknown sort field."""
    covered, covered_params = _covered(project, include_closed)

    def held(fieldname: str, wanted: str) -> bool:
        where = " AND ".join([*covered, _match_sql(fieldname, whole=True)])
        return index.issue_count(snap, where, [*covered_params, wanted]) > 0

    _check_filters(project, filters, held)
    where, params = where_sql(project, filters, include_closed)
    keys = sort_keys(sort)
    order = order_sql(project, keys)
    if order is not None:
        found = index.issue_rows(snap, where, [*params, *order[1]], order[0], fields=fields, limit=limit, offset=offset)
        if total is None:
            total = len(found) + offset if limit < 0 and (found or not offset) else index.issue_count(snap, where, params)
    else:  # a list field among the keys: select's own sort over those fields, then the page's records
        picked = tuple(dict.fromkeys(k for k, _ in keys if k not in ("id", "short")))
        keyed = [{"id": n, "short": n, **r} for n, _, r in index.issue_rows(snap, where, params, fields=picked)]
        for key, desc in reversed(keys):
            keyed.sort(key=sort_key(project, "id" if key == "short" else key), reverse=desc)
        total = len(keyed)
        page = [str(r["id"]) for r in (keyed[offset:] if limit < 0 else keyed[offset : offset + limit])]
        by_name = {n: (n, s, r) for n, s, r in _by_names(index, snap, page, fields)}
        found = [by_name[n] for n in page]
    if len(found) > MANY_SHORTS:
        shorts = shortest_names(index.names(snap))
    else:
        shorts = {n: shortest(n, around) for n, around in index.neighbours(snap, [n for n, _, _ in found]).items()}
    closed = project.closed
    return total, [{"id": n, "short": shorts[n], **r, "open": s not in closed} for n, s, r in found]


def _by_names(index: Index, snap: Snapshot, names: list[str], fields: tuple[str, ...] | None) -> list[tuple[str, str, dict[str, object]]]:
    out = []
    for at in range(0, len(names), 500):  # SQLite's limit on the number of parameters
        batch = names[at : at + 500]
        out += index.issue_rows(snap, f"name IN ({','.join('?' * len(batch))})", batch, fields=fields)
    return out


def records_of(index: Index, snap: Snapshot, project: Project, names: list[str],
               fields: tuple[str, ...] | None = None) -> dict[str, dict[str, object]]:
    """The rows of these issues (as `listing` gives them) by name; a name the index does not hold is left out."""
    found = _by_names(index, snap, names, fields)
    closed = project.closed
    around = index.neighbours(snap, [n for n, _, _ in found])
    return {n: {"id": n, "short": shortest(n, around[n]), **r, "open": s not in closed} for n, s, r in found}
