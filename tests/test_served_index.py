"""The fast ways to the same answers: the index rebuilt by `git cat-file` or by dulwich, files in the
writer's form read without an XML tree, and `list`/`show` served by an index that describes the tip.

Each fast way is checked against the slow one it stands for: the same tables, the same records, the
same output, byte for byte.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.cli import run_cli
from helpers.repos import issues_repo
from mailtrack.app import git_issues
from mailtrack.tracker import lookup, model
from mailtrack.tracker.lookup import SCHEMA_VERSION, Index
from mailtrack.tracker.model import Comment, Issue, Person
from mailtrack.tracker.store import Store, issue_dir
from mailtrack.tracker.xmlformat import FormatError, Node, loads

WHO = Person("Bench", "bench@example.org")


def tables(index: Index) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table the index derives from the branch."""
    queries = {t: f"SELECT * FROM {t}" for t in ("msgid", "issues", "people", "unreadable", "files", "comments")}
    queries["issues"] = "SELECT * FROM issues ORDER BY created, rowid"  # the order of ties is the list's
    queries["search"] = "SELECT s.path, s.issue, s.title, s.body FROM search s JOIN search_rows r ON r.row = s.rowid"
    return {t: index.db.execute(q).fetchall() if t == "issues" else sorted(index.db.execute(q).fetchall())  # type: ignore[type-var]
            for t, q in queries.items()}


@pytest.fixture
def branch(tmp_path: Path) -> Path:
    """A branch with issues (two made in the same second), comments, an attachment, a file in the original
    script's inline form and two files that do not parse."""
    repo = issues_repo(tmp_path / "r")
    with Store.open(repo) as store:
        files: dict[str, bytes | None] = {}
        start = datetime(2021, 1, 1, tzinfo=UTC)
        names = []
        for i in range(6):
            issue = Issue(created=start + timedelta(seconds=i // 2), author=WHO, title=f"Issue & <{i}>",
                          description="Steps\n\n1. <do> it\n", status=("new", "closed")[i % 2], components=["core"],
                          name=f"{i:02x}" + "ab" * 19, assigned=[f"Ann {i} <ann@example.org>"]).with_message_id(f"<i{i}@x.org>")
            files[f"{issue_dir(issue.name)}/issue.xml"] = issue.to_bytes()
            names.append(issue.name)
        c = Comment.new(WHO, "a comment\n> quoted\n", created=start + timedelta(hours=1, microseconds=5),
                        attachments=["log.txt", "gone.txt"])
        files[f"{issue_dir(names[0])}/{c.filename}"] = c.to_bytes()
        files[f"{issue_dir(names[0])}/log.txt"] = b"x" * 123
        files[f"{issue_dir(names[1])}/issue.xml"] = (b"<issue><created>20080101T000000</created><title>Inline</title>"
                                                      b"<status>TODO</status></issue>")
        files[f"{issue_dir(names[2])}/comment_20210101T000000.000000Z_{'c' * 40}.xml"] = b"<comment><broken"
        files[f"{issue_dir(names[3])}/issue.xml"] = b"<?xml version='1.0'?><issue>"
        base = store.snapshot()
        assert base.commit is not None
        assert store.move(base.commit, store.write_commit([base.commit], base.tree, files, "issues", WHO))
    return repo


def test_a_rebuild_by_git_and_by_dulwich_and_by_diffs_give_the_same_tables(branch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`git cat-file --batch` (git installed), dulwich alone (no git binary) and the tree diff from the first
    commit on: the same rows in every table, ties in created order included."""
    with Store.open(branch) as store:
        snap = store.snapshot()
        with Index(None) as by_git:
            by_git.sync(snap)
            found = tables(by_git)
        with monkeypatch.context() as m:
            m.setattr("shutil.which", lambda name: None)
            with Index(None) as by_dulwich:
                by_dulwich.sync(snap)
                assert found == tables(by_dulwich)
        with Index(None) as by_diffs:
            assert snap.commit is not None
            parent = store.repo[snap.commit].parents[0]  # type: ignore[attr-defined]
            by_diffs.sync(store.snapshot(parent))
            by_diffs.sync(snap)
            assert found == tables(by_diffs)
    assert len(found["issues"]) == 5 and len(found["unreadable"]) == 2 and [123] == [
        size for path, size in found["files"] if path.endswith("log.txt")]


def test_a_rebuild_that_git_fails_is_made_by_dulwich(branch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git that answers nonsense mid-way: the rebuild starts again with dulwich, to the same tables."""
    with Store.open(branch) as store:
        snap = store.snapshot()
        with Index(None) as good:
            good.sync(snap)
            expected = tables(good)
        monkeypatch.setattr(lookup, "BATCH", 1)
        real = lookup._git_rows

        def broken(*args: object) -> object:
            for n, rows in enumerate(real(*args)):  # type: ignore[arg-type]
                if n == 3:
                    raise lookup._GitFailed("git cat-file: cut short")
                yield rows

        monkeypatch.setattr(lookup, "_git_rows", broken)
        with Index(None) as index:
            index.sync(snap)
            assert expected == tables(index)


def test_list_and_show_served_by_the_index_print_what_the_store_prints(branch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the index at the tip, list (every format) and show are answered without opening the store,
    and print, byte for byte, what the commands on the store print."""
    names = run_cli(branch, "list", "--all", "--format", "id").out.split()  # builds the index
    commands = [["list"], ["list", "--all"], ["list", "--format", "id"], ["list", "--all", "--format", "json"],
                ["list", "--format", "{short} {title} {open}"], ["list", "--format", "{nothing}"],
                *(["show", n[:8]] for n in names), ["show", names[0]], ["show", "#" + names[0][:6]], ["show", "ffff"]]
    served = [run_cli(branch, *c) for c in commands]
    monkeypatch.setattr(git_issues, "served_list", lambda args: None)
    monkeypatch.setattr(git_issues, "served_show", lambda args: None)
    monkeypatch.setattr(lookup, "served", lambda repo: None)
    for command, fast in zip(commands, served, strict=True):
        assert run_cli(branch, *command) == fast, command
    monkeypatch.undo()

    def no_store(*args: object) -> None:
        raise AssertionError("the store was opened")

    monkeypatch.setattr(Store, "open", no_store)
    assert served[1] == run_cli(branch, "list", "--all")  # served: the store never opened
    assert served[6] == run_cli(branch, *commands[6])
    shown = run_cli(branch, "show", "00abab").out
    assert "a comment" in shown and "log.txt (123 bytes)" in shown and "gone.txt (missing bytes)" in shown


def test_an_index_behind_the_tip_or_of_another_version_is_not_served(branch: Path) -> None:
    """A new commit, or an index of an older SCHEMA_VERSION: the list goes through the store, which brings
    the index up to date (or builds it again), and serves the next one."""
    run_cli(branch, "list")
    git_dir = branch / ".git"
    assert lookup.served(str(branch)) is not None
    assert 0 == run_cli(branch, "new", "Another", "-m", "text").code
    assert lookup.served(str(branch)) is None
    assert "Another" in run_cli(branch, "list").out
    assert lookup.served(str(branch)) is not None
    with sqlite3.connect(lookup.index_file(git_dir)) as db:
        db.execute("UPDATE meta SET value = '9' WHERE key = 'version'")
    assert lookup.served(str(branch)) is None
    assert "Another" in run_cli(branch, "list").out
    with sqlite3.connect(lookup.index_file(git_dir)) as db:
        assert (SCHEMA_VERSION,) == db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()


def test_a_configured_branch_or_a_worktree_is_never_served(branch: Path, tmp_path: Path) -> None:
    """issues.branch in git's config (any of its files) or a .git file: the store reads the configuration."""
    run_cli(branch, "list")
    assert lookup.plain_git_dir(str(branch)) == branch / ".git"
    with (branch / ".git" / "config").open("a") as f:
        f.write("[issues]\n\tbranch = other\n")
    assert lookup.plain_git_dir(str(branch)) is None
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {branch / '.git'}\n")
    assert lookup.plain_git_dir(str(tmp_path / "wt")) is None


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
people = st.builds(Person, texts, texts)
times = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC))
extensions = st.lists(st.builds(Node, st.sampled_from(["message-id", "in-reply-to", "x-y", "title", "comment"]),
                                st.one_of(st.none(), texts)), max_size=3)


@settings(max_examples=300, deadline=None)
@given(people, texts, texts, st.lists(texts, max_size=3), st.sampled_from(["new", "TODO", " open ", ""]), times, extensions)
def test_the_writers_form_is_read_as_xml_reads_it(who: Person, title: str, text: str, values: list[str], status: str,
                                                   when: datetime, ext: list[Node]) -> None:
    """Any issue or comment, written canonically: the regular-expression reader gives what loads() and
    the tree give, the same record and the same Comment."""
    issue = Issue(created=when, author=who, title=title, description=text, summary=text[:3], reporters=values,
                  tags=values, status=status, modified=when, extensions=ext, name="n")
    data = issue.to_bytes()
    expected = Issue.from_node(loads(data, "issue"), "n")
    assert expected == Issue.from_bytes(data, "n")
    assert (expected.record(), expected.author.email) == model.issue_record(data, "n")
    comment = Comment.new(who, text, created=when, attachments=values, extensions=ext)
    data = comment.to_bytes()
    node = loads(data, "comment")
    assert node == model.loads(data, "comment")
    assert comment.text == Comment.from_bytes(data, comment.filename).text
    for filename in (comment.filename, ""):
        monkeyed = model._canonical_values
        try:
            model._canonical_values = lambda *a: None  # type: ignore[assignment]
            slow = Comment.from_bytes(data, filename)
        finally:
            model._canonical_values = monkeyed
        assert slow == Comment.from_bytes(data, filename)


@pytest.mark.parametrize("data", [
    b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE issue [<!ENTITY x "boom">]>\n<issue><title>&x;</title></issue>\n',
    b'<?xml version="1.0" encoding="utf-8"?>\n<issue>\n<title>\n&x;\n</title>\n</issue>\n',
    b'<?xml version="1.0" encoding="utf-x"?>\n<issue/>\n',
    b'<?xml version="1.0" encoding="utf-8"?>\n' + b"<a>" * 40 + b"</a>" * 40 + b"\n",
])
def test_hostile_files_in_our_own_shape_are_refused(data: bytes) -> None:
    """A DTD, an undefined entity, an unknown encoding, nesting past MAX_DEPTH behind our own declaration: a FormatError."""
    with pytest.raises(FormatError):
        loads(data)
