"""The lists the index answers in SQL (`tracker.query.listing`) are `tracker.query.select`'s, row for row."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from helpers.repos import issues_repo
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import Issue, Person
from mailtrack.tracker.query import BadFilter, listing, records_of, select
from mailtrack.tracker.store import Store, StoreError, issue_dir

VALUES = {
    "status": ["new", "open", "pending", "closed", "Closed", "triage"],  # 'triage': no longer in project.xml
    "severity": ["blocker", "critical", "minor", "cosmetic", "", "urgent"],
    "priority": ["high", "low", "", "med"],
    "components": [[], ["core"], ["web", "core"], ["Ünïcode"], ["core", "web"]],
    "tags": [[], ["easy"], ["easy", "big"]],
    "assigned": [[], ["Dan Assignee <dan@example.org>"], ["Bob <bob@example.org>", "Ann <ann@example.org>"]],
    "title": ["Printer on fire", "ÉCRAN noir", "printer jam", "", "Zebra"],
}
SORTS = ["", "created", "-created", "severity", "-severity", "priority,-modified", "status,severity,title", "-title",
         "id", "-short", "components", "-assigned,severity", "tags,-id", "modified", "resolution,-priority"]
FILTERS = [[], [("severity", "minor")], [("components", "core")], [("components", "ünïcode")], [("assigned", "BOB")],
           [("title", "écran")], [("title", "printer"), ("severity", "blocker")], [("tags", "EASY")],
           [("status", "closed")], [("status", "triage")], [("author", "bench")], [("description", "nothing")]]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Index]:
    repo = issues_repo(tmp_path_factory.mktemp("sql") / "repo")
    store = Store.open(repo)
    rnd = random.Random(16)
    who = Person("Bench", "bench@example.org")
    start = datetime(2021, 1, 1, tzinfo=UTC)
    files: dict[str, bytes | None] = {}
    for i in range(80):
        created = start + timedelta(minutes=i // 3)  # ties in created: the order among them is the index's
        fields = {f: rnd.choice(v) for f, v in VALUES.items()}
        issue = Issue(created=created, modified=created + timedelta(hours=rnd.randrange(5)), author=who,
                      description="Some description\n", name=f"{rnd.getrandbits(160):040x}", **fields)  # type: ignore[arg-type]
        files[f"{issue_dir(issue.name)}/issue.xml"] = issue.to_bytes()
    base = store.snapshot()
    assert store.move(base.commit, store.write_commit([base.commit] if base.commit else [], base.tree, files, "issues", who))
    return store, Index(None)


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("include_closed", [False, True])
def test_listing_is_select_for_every_sort_and_filter(index: tuple[Store, Index], sort: str, include_closed: bool) -> None:
    """Every filter and sort of FILTERS and SORTS, open only or all: the same rows, the same order, page by page."""
    store, idx = index
    snap = store.snapshot()
    project = snap.project()
    records = idx.records(snap)
    for filters in FILTERS:
        try:
            expected = select(project, records, filters, sort, include_closed)
        except BadFilter as e:
            with pytest.raises(BadFilter, match=str(e)):
                listing(idx, snap, project, filters, sort, include_closed)
            continue
        total, rows = listing(idx, snap, project, filters, sort, include_closed)
        assert (len(expected), expected) == (total, rows), (filters, sort)
        pages = [listing(idx, snap, project, filters, sort, include_closed, limit=7, offset=at) for at in range(0, total + 7, 7)]
        assert {total} == {t for t, _ in pages}
        assert expected == [r for _, page in pages for r in page], (filters, sort)


def test_listing_with_fields_and_errors(index: tuple[Store, Index]) -> None:
    """`fields` picks the record's fields (lists as lists); an unknown sort field and an illegal value are errors."""
    store, idx = index
    snap = store.snapshot()
    project = snap.project()
    _, rows = listing(idx, snap, project, [], "severity", fields=("status", "components", "title"))
    _, full = listing(idx, snap, project, [], "severity")
    assert [{k: r[k] for k in ("id", "short", "status", "components", "title", "open")} for r in full] == rows
    with pytest.raises(StoreError, match="unknown field"):
        listing(idx, snap, project, [], "bogus")
    with pytest.raises(BadFilter, match="legal values are"):
        listing(idx, snap, project, [("severity", "nonsense")])
    names = [str(r["id"]) for r in full[:5]]
    assert {n: r for n, r in ((str(r["id"]), r) for r in full[:5])} == records_of(idx, snap, project, [*names, "0" * 40])


def test_severity_sorts_in_project_xml_order(index: tuple[Store, Index]) -> None:
    """A severity sort is project.xml's order (empty first, unlisted last), not the alphabet."""
    store, idx = index
    snap = store.snapshot()
    project = snap.project()
    _, rows = listing(idx, snap, project, [], "severity", True, fields=("severity",))
    seen = list(dict.fromkeys(str(r["severity"]) for r in rows))
    assert ["", "blocker", "critical", "minor", "cosmetic", "urgent"] == seen
