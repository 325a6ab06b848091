"""The store: commits built from objects, compare-and-swap on the ref, redone on a lost race."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.mail import make_mail
from helpers.repos import git, make_gateway, new_issue, read_comments, read_issue
from mailtrack.tracker.changes import Edit, edit_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot, Store, ValidationError

WRITER = """
import sys
from mailtrack.tracker.changes import edit_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store
store = Store.open(sys.argv[1])
who = Person("Writer " + sys.argv[3], f"w{sys.argv[3]}@example.org")
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
for i in range(int(sys.argv[4])):
    store.update(lambda snap: edit_issue(snap, sys.argv[2], who, comment=f"{sys.argv[3]}-{i}")[1], who)
"""


def test_two_processes_writing_at_once_both_land(repo: Path) -> None:
    """Two processes commenting on one issue at the same time: every comment lands, history is linear."""
    name = new_issue(repo, "Contended")
    n = 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(repo), name, tag, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    for p in procs:
        assert "ready\n" == p.stdout.readline()  # type: ignore[union-attr]
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    assert [0, 0] == [p.wait(timeout=120) for p in procs]
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
        p.stdout.close()  # type: ignore[union-attr]
    texts = sorted(c.text for c in read_comments(repo, name))
    assert sorted([f"a-{i}" for i in range(n)] + [f"b-{i}" for i in range(n)]) == texts
    assert str(2 * n + 2) == git(repo, "rev-list", "--count", "issues").strip()
    git(repo, "fsck", "--strict", "--no-dangling")


def test_lost_race_is_redone_on_the_new_tip(repo: Path) -> None:
    """When the ref moves between read and write, the change is computed again on the new tip."""
    name = new_issue(repo, "Raced")
    me = Person("Me", "me@example.org")
    calls: list[bytes | None] = []

    def change(snap: Snapshot) -> Change:
        calls.append(snap.commit)
        if len(calls) == 1:  # someone else writes while we compute
            with Store.open(repo) as other:
                other.update(lambda s: edit_issue(s, name, me, [Edit("severity", "=", "minor")])[1], me)
        return edit_issue(snap, name, me, [Edit("tags", "+", "raced")])[1]

    with Store.open(repo) as store:
        store.update(change, me)
    issue = read_issue(repo, name)
    assert (2, "minor", ["raced"]) == (len(calls), issue.severity, issue.tags)
    assert calls[0] != calls[1]


def test_snapshot_reads_one_commit(repo: Path) -> None:
    """A snapshot keeps reading the commit it was taken at while the branch moves on."""
    name = new_issue(repo, "Before")
    me = Person("Me", "me@example.org")
    with Store.open(repo) as store:
        snap = store.snapshot()
        store.update(lambda s: edit_issue(s, name, me, [Edit("title", "=", "After")])[1], me)
        assert ("Before", "After") == (snap.issue(name).title, store.snapshot().issue(name).title)


def test_failed_validation_writes_nothing(repo: Path) -> None:
    """A change that raises writes no object reachable from the branch and leaves the tip alone."""
    name = new_issue(repo, "Valid")
    me = Person("Me", "me@example.org")
    with Store.open(repo) as store:
        tip = store.tip()
        with pytest.raises(ValidationError) as e:
            store.update(lambda s: edit_issue(s, name, me, [Edit("status", "=", "bogus")])[1], me)
        assert "illegal status 'bogus'; legal values are: new, open, pending, deferred, closed" == str(e.value)
        assert tip == store.tip()


def test_work_tree_index_and_head_untouched(repo: Path) -> None:
    """Writing issues never changes HEAD, the index or the files of the work tree."""
    (repo / "README").write_text("local edit\n")
    git(repo, "add", "README")
    index_before = (repo / ".git" / "index").read_bytes()
    head = git(repo, "rev-parse", "HEAD")
    new_issue(repo, "Quiet")
    assert (head, index_before, "local edit\n") == (git(repo, "rev-parse", "HEAD"), (repo / ".git" / "index").read_bytes(), (repo / "README").read_text())
    assert "M  README\n" == git(repo, "status", "--porcelain")


def test_branch_name_from_git_config(repo: Path) -> None:
    """git config issues.branch names another branch."""
    git(repo, "config", "issues.branch", "tracker")
    from helpers.cli import run_cli

    assert 0 == run_cli(repo, "init").code
    new_issue(repo, "Elsewhere")
    assert "Elsewhere" in git(repo, "log", "-1", "--format=%s", "tracker")


def test_a_stray_issue_xml_outside_the_layout_stops_nothing(repo: Path) -> None:
    """notes/issue.xml on the branch (outside xx/38hex/) is not an issue: the index and the next
    mails pass over it when it is written, changed and deleted."""
    g = make_gateway(repo)
    try:
        jane = Person("Jane Doe", "jane@example.org")
        for i, data in enumerate([b"<notes/>\n", b"<notes>2</notes>\n", None]):
            g.store.update(lambda snap, data=data: Change("a stray file", {"notes/issue.xml": data}), jane)
            out = g.handle(make_mail(subject=f"Mail {i}", message_id=f"<stray{i}@x>"))
            assert "created" == out.action, out.reason
    finally:
        g.close()
        g.store.close()
