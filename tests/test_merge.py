"""Two clones edit independently, pull each other, and end identical with nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.cli import run_cli
from helpers.repos import git, make_repo, new_issue, read_comments, read_issue, read_names, tree


def clone(src: Path, dst: Path) -> Path:
    git(src.parent, "clone", "-q", str(src), str(dst))
    git(dst, "fetch", "-q", "origin", "issues:issues")
    return dst


def two_clones(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """A bare hub with one issue, and two clones of it."""
    hub = make_repo(tmp_path / "hub.git", bare=True)
    assert 0 == run_cli(hub, "init").code
    name = new_issue(hub, "Shared", "--tag", "base")
    return hub, clone(hub, tmp_path / "a"), clone(hub, tmp_path / "b"), name


def sync_all(hub: Path, a: Path, b: Path) -> None:
    for r in (a, b, a):
        assert 0 == run_cli(r, "pull").code, run_cli(r, "pull").err
        res = run_cli(r, "push")
        assert 0 == res.code, res.err


def test_different_fields_merge(tmp_path: Path) -> None:
    """Each clone changes another field; after pulls both have both changes, as one merge commit."""
    hub, a, b, name = two_clones(tmp_path)
    assert 0 == run_cli(a, "set", name[:7], "severity=minor").code
    assert 0 == run_cli(a, "push").code
    assert 0 == run_cli(b, "set", name[:7], "priority=low").code
    r = run_cli(b, "push")
    assert (1, "error: origin has issues this clone lacks; run 'git issues pull' first\n") == (r.code, r.err)
    assert 0 == run_cli(b, "pull").code
    assert 0 == run_cli(b, "push").code
    assert 0 == run_cli(a, "pull").code
    issue = read_issue(a, name)
    assert ("minor", "low") == (issue.severity, issue.priority)
    assert tree(a) == tree(b) == tree(hub)
    assert 2 == len(git(b, "log", "-1", "--format=%p", "issues").split())
    git(a, "fsck", "--strict", "--no-dangling")


@pytest.mark.slow  # ~1.2 s
def test_same_field_later_wins_and_message_names_it(tmp_path: Path) -> None:
    """Both clones set the same field: the later edit wins and the merge commit names both values."""
    hub, a, b, name = two_clones(tmp_path)
    assert 0 == run_cli(a, "set", name[:7], "title=From A").code
    assert 0 == run_cli(a, "push").code
    import time

    time.sleep(1.1)  # modified times have one-second resolution: make B's edit the later one
    assert 0 == run_cli(b, "set", name[:7], "title=From B").code
    sync_all(hub, a, b)
    assert "From B" == read_issue(a, name).title
    message = git(b, "log", "--merges", "-1", "--format=%B", "issues")
    assert f"conflict {name[:7]} title: 'From B' over 'From A'" in message
    assert tree(a) == tree(b)


def test_lists_merge_as_sets_and_comments_union(tmp_path: Path) -> None:
    """Tags added and removed on both sides merge as sets; comments from both sides are all kept."""
    hub, a, b, name = two_clones(tmp_path)
    assert 0 == run_cli(a, "tag", name[:7], "+ui", "-base").code
    assert 0 == run_cli(a, "comment", name[:7], "-m", "from a").code
    assert 0 == run_cli(b, "tag", name[:7], "+crash").code
    assert 0 == run_cli(b, "comment", name[:7], "-m", "from b").code
    assert 0 == run_cli(b, "new", "Only in B", "-m", "x").code
    assert 0 == run_cli(a, "push").code
    sync_all(hub, a, b)
    assert {"ui", "crash"} == set(read_issue(b, name).tags)
    assert ["from a", "from b"] == sorted(c.text for c in read_comments(b, name))
    assert 2 == len(read_names(b))
    assert tree(a) == tree(b) == tree(hub)


edit = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from(["severity", "priority", "tag", "comment", "new", "sync"]),
    st.integers(0, 9),  # for tags: 0-4 add t0..t4, 5-9 remove them again
)


@pytest.mark.slow  # ~1.5 s: hypothesis over clones
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(edit, min_size=1, max_size=10))
def test_random_edits_converge(tmp_path_factory, steps: list[tuple[str, str, int]]) -> None:  # type: ignore[no-untyped-def]
    """Random edit sequences on two clones converge after syncing, and no comment is lost."""
    tmp = tmp_path_factory.mktemp("prop")
    hub, a, b, name = two_clones(tmp)
    clones = {"a": a, "b": b}
    comments = []
    for who, what, n in steps:
        r = clones[who]
        if what == "severity":
            res = run_cli(r, "set", name[:7], f"severity={['blocker', 'critical', 'major', 'minor', 'cosmetic'][n % 5]}")
        elif what == "priority":
            res = run_cli(r, "set", name[:7], f"priority={['high', 'med', 'low'][n % 3]}")
        elif what == "tag":
            res = run_cli(r, "tag", name[:7], f"{'+-'[n // 5]}t{n % 5}")
        elif what == "comment":
            text = f"{who}-{len(comments)}"
            comments.append(text)
            res = run_cli(r, "comment", name[:7], "-m", text)
        elif what == "new":
            res = run_cli(r, "new", f"{who} {n} {len(comments)}", "-m", "x")
        else:
            pulled = run_cli(r, "pull")
            assert 0 == pulled.code, pulled.err
            res = run_cli(r, "push")
        assert 0 == res.code, (what, res.err)
    sync_all(hub, a, b)
    assert tree(a) == tree(b) == tree(hub)
    assert sorted(comments) == sorted(c.text for c in read_comments(a, name))
    git(a, "fsck", "--strict", "--no-dangling")


def test_project_merge_keeps_both_sides_component_owners_whichever_side_merges() -> None:
    """project.xml: owners added on each side of a component are both kept, new components from both
    sides arrive, and the result is the same bytes whichever side does the merge."""
    from mailtrack.tracker.merge import merge_project
    from mailtrack.tracker.model import Component, Project

    base = Project(components=[Component("core", ["Jane <jane@example.org>"])])
    ours = Project(components=[Component("core", ["Jane <jane@example.org>", "Bob <bob@example.org>"]), Component("ui")])
    theirs = Project(components=[Component("core", ["Carol <carol@example.org>"]), Component("docs")], milestones=["1.0"])
    merged, _ = merge_project(base, ours, theirs)
    swapped, _ = merge_project(base, theirs, ours)
    assert merged.to_bytes() == swapped.to_bytes()
    assert [("core", ["Bob <bob@example.org>", "Carol <carol@example.org>"]), ("docs", []), ("ui", [])] == [
        (c.name, c.owners) for c in merged.components]
    assert ["1.0"] == merged.milestones


def test_project_lists_changed_on_both_sides_merge_as_sets_the_same_way() -> None:
    """The same project.xml list changed differently on both sides: both clones get the same union, removals kept."""
    from mailtrack.tracker.merge import merge_project
    from mailtrack.tracker.model import Project

    base = Project()
    ours, theirs = Project(priorities=["high", "p1"]), Project(priorities=["high", "med", "urgent"])
    a, b = merge_project(base, ours, theirs)[0], merge_project(base, theirs, ours)[0]
    assert (["high", "p1", "urgent"], a.to_bytes()) == (a.priorities, b.to_bytes())


def test_list_merge_does_not_depend_on_the_merging_side(tmp_path: Path) -> None:
    """Tags added on both sides merge to the same list whichever clone pulls first."""
    from mailtrack.tracker.merge import merge_issue

    hub, a, b, name = two_clones(tmp_path)
    base = read_issue(a, name)
    assert 0 == run_cli(a, "tag", name[:7], "+x", "+common").code
    assert 0 == run_cli(b, "tag", name[:7], "+common", "+y").code
    ours, theirs = read_issue(a, name), read_issue(b, name)
    one, _ = merge_issue(base, ours, theirs)
    two, _ = merge_issue(base, theirs, ours)
    assert ([*base.tags, "common", "x", "y"], one.to_bytes()) == (one.tags, two.to_bytes())
