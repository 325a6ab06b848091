"""What issue 14's fast path keeps in memory gives the answers the slow path gives.

- tracker.store.Trees: the trees a Store keeps between commits; its commits are what plain git reads.
- tracker.lookup.Index learning the gateway's own commits from the files written, without a tree diff:
  the same tables as an index built from the branch from nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.mail import make_mail
from helpers.repos import issues_repo, make_gateway
from mailtrack.tracker import store as store_module
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Store

WHO = Person("Bench", "bench@example.org")


def tables(index: Index) -> dict[str, list[tuple[object, ...]]]:
    """Every row the index derives from the branch (FTS rows by file, as a search finds them)."""
    queries = {
        "msgid": "SELECT message_id, path, issue FROM msgid",
        "issues": "SELECT name, status, created, record FROM issues",
        "people": "SELECT email, path FROM people",
        "unreadable": "SELECT path, error FROM unreadable",
        "search": "SELECT path, issue, title, body FROM search",
        "search_rows": "SELECT path FROM search_rows",
        "files": "SELECT path, size FROM files",
        "comments": "SELECT * FROM comments",
    }
    return {name: sorted(index.db.execute(q).fetchall()) for name, q in queries.items()}  # type: ignore[type-var]


def test_the_gateway_index_learns_its_commits_without_a_diff_and_matches_a_rebuild(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = issues_repo(tmp_path / "r")
    gw = make_gateway(repo)
    gw.handle(make_mail("First report", message_id="<a1@example.org>"))  # the index catches up with init
    diffs: list[object] = []
    real = Index._apply
    monkeypatch.setattr(Index, "_apply", lambda self, *a: (diffs.append(a), real(self, *a)))
    gw.handle(make_mail("Second report", body="zebra words\n", message_id="<a2@example.org>"))
    gw.handle(make_mail("Re: First report", body="a reply with giraffe\n", message_id="<a3@example.org>",
                        In_Reply_To="<a1@example.org>"))
    gw.handle(make_mail("Re: First report", body="close\n", message_id="<a4@example.org>",
                        In_Reply_To="<a3@example.org>"))
    snap = gw.store.snapshot()
    assert gw.index.lookup(snap, "<a3@example.org>") == gw.index.lookup(snap, "<a1@example.org>")
    assert diffs == [], "the gateway's own commits were learnt by a tree diff"
    learnt = tables(gw.index)
    gw.close()
    with Index(None) as rebuilt:
        rebuilt.sync(Store.open(repo).snapshot())
        assert tables(rebuilt) == learnt
    with Index(None) as fresh:
        assert len(fresh.search(snap, "giraffe")) == 1 and len(fresh.search(snap, "zebra")) == 1


def test_a_store_keeping_few_trees_writes_what_git_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "TREES_KEPT", 3)  # every commit drops trees it will need again
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "b")], check=True)
    store = Store.open(tmp_path / "b")
    names = [f"{i:02x}{i:038x}" for i in (1, 2, 3, 1 + 256 * 7)]
    for i, name in enumerate(names):
        path = f"{name[:2]}/{name[2:]}/issue.xml"
        store.update(lambda s, p=path, i=i: Change(f"add {i}", {p: f"<issue>{i}</issue>".encode()}), WHO)
    first = f"{names[0][:2]}/{names[0][2:]}/issue.xml"
    store.update(lambda s: Change("drop the first", {first: None}), WHO)
    store.update(lambda s: Change("again", {first: b"<issue>again</issue>"}), WHO)
    listed = subprocess.run(["git", "-C", str(tmp_path / "b"), "ls-tree", "-r", "--name-only", "issues"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listed) == sorted(f"{n[:2]}/{n[2:]}/issue.xml" for n in names)
    shown = subprocess.run(["git", "-C", str(tmp_path / "b"), "show", f"issues:{first}"], capture_output=True, check=True)
    assert shown.stdout == b"<issue>again</issue>"
    subprocess.run(["git", "-C", str(tmp_path / "b"), "fsck", "--strict"], capture_output=True, check=True)
    assert store.snapshot().read(first) == b"<issue>again</issue>"


def test_files_too_big_to_remember_are_diffed_and_the_index_still_matches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "WRITTEN_BYTES", 10)  # no commit's files are remembered
    repo = issues_repo(tmp_path / "r")
    gw = make_gateway(repo)
    gw.handle(make_mail("First report", message_id="<b1@example.org>"))
    diffs: list[object] = []
    real = Index._apply
    monkeypatch.setattr(Index, "_apply", lambda self, *a: (diffs.append(a), real(self, *a)))
    gw.handle(make_mail("Re: First report", body="okapi\n", message_id="<b2@example.org>", In_Reply_To="<b1@example.org>"))
    snap = gw.store.snapshot()
    assert gw.store.trees.written == {}
    assert gw.index.lookup(snap, "<b2@example.org>") == gw.index.lookup(snap, "<b1@example.org>") is not None
    assert diffs, "the index did not diff trees for a commit it was not told about"
    learnt = tables(gw.index)
    gw.close()
    with Index(None) as rebuilt:
        rebuilt.sync(Store.open(repo).snapshot())
        assert tables(rebuilt) == learnt
