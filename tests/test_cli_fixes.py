"""`git issues`: a newcomer's reports (close twice, sort order, fresh clones, empty editor, bad filters)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from conftest import git, new_issue, read_issue, read_names, run_cli
from mailtrack.tracker.changes import close_edits
from mailtrack.tracker.model import Person, Project
from mailtrack.tracker.store import Change, Store


def tip(repo: Path) -> str:
    return git(repo, "rev-parse", "issues").strip()


def write_project(repo: Path, project: Project) -> None:
    with Store.open(repo) as store:
        store.update(lambda snap: Change("project", {"project.xml": project.to_bytes()}), Person("A", "a@x.org"))


# --- close on a closed issue ------------------------------------------------------------------


def test_close_on_a_closed_issue_changes_nothing(repo: Path) -> None:
    """`close ID` on an issue closed as wontfix keeps it so: one line, exit 0, no commit, not even the comment."""
    name = new_issue(repo, "Closed once")
    assert 0 == run_cli(repo, "close", name[:7], "--resolution", "wontfix").code
    before = tip(repo)
    r = run_cli(repo, "close", name[:7], "-m", "again")
    assert (0, f"nothing to change: issue {name[:7]} is already closed (wontfix)\n", "") == (r.code, r.out, r.err)
    assert (before, "wontfix") == (tip(repo), read_issue(repo, name).resolution)


def test_close_with_a_resolution_on_a_closed_issue_changes_it(repo: Path) -> None:
    """`close ID --resolution R` on a closed issue sets that resolution, and only that."""
    name = new_issue(repo, "Closed once")
    assert 0 == run_cli(repo, "close", name[:7], "--resolution", "wontfix").code
    r = run_cli(repo, "close", name[:7], "--resolution", "dup")
    assert 0 == r.code, r.err
    assert ("closed", "dup") == (read_issue(repo, name).status, read_issue(repo, name).resolution)
    assert f"set {name[:7]} resolution=dup" == git(repo, "log", "-1", "--format=%s", "issues").strip()


def test_close_keeps_another_closed_status(repo: Path) -> None:
    """A new resolution on an issue in a second closed status leaves that status alone."""
    write_project(repo, Project(statuses=["new", "closed", "rejected"], closed_statuses=["closed", "rejected"]))
    name = new_issue(repo, "Rejected", "--status", "rejected")
    assert 0 == run_cli(repo, "close", name[:7], "--resolution", "wontfix").code
    assert ("rejected", "wontfix") == (read_issue(repo, name).status, read_issue(repo, name).resolution)


def test_close_edits_given_the_issue(repo: Path) -> None:
    """close_edits: unchanged without the issue (the mail command); nothing, or the resolution alone, for a closed one."""
    name = new_issue(repo, "Edits")
    with Store.open(repo) as store:
        snap = store.snapshot()
        issue = snap.issue(name)
        closed = replace(issue, status="closed", resolution="wontfix")
        assert ["status=closed", "resolution=fixed"] == [str(e) for e in close_edits(snap)]
        assert ["status=closed", "resolution=dup"] == [str(e) for e in close_edits(snap, "dup", issue)]
        assert ([], ["resolution=dup"]) == ([str(e) for e in close_edits(snap, "", closed)],
                                            [str(e) for e in close_edits(snap, "dup", closed)])


# --- sort by project.xml's order --------------------------------------------------------------


def test_sort_by_project_order(repo: Path) -> None:
    """--sort on a field with legal values follows project.xml's order, not the alphabet; '-' reverses it."""
    minor = new_issue(repo, "A", "--severity", "minor", "--priority", "low")
    blocker = new_issue(repo, "B", "--severity", "blocker", "--priority", "med")
    cosmetic = new_issue(repo, "C", "--severity", "cosmetic", "--priority", "high")
    critical = new_issue(repo, "D", "--severity", "critical", "--priority", "low")

    def ids(*args: str) -> list[str]:
        return run_cli(repo, "list", "--format", "id", *args).out.split()

    assert [blocker, critical, minor, cosmetic] == ids("--sort=severity")
    assert [cosmetic, minor, critical, blocker] == ids("--sort=-severity")
    assert [cosmetic, blocker, minor, critical] == ids("--sort=priority,title")


def test_sort_puts_unknown_values_last(repo: Path) -> None:
    """A value project.xml no longer lists sorts after the listed ones; statuses sort in their order too."""
    major = new_issue(repo, "Major", "--severity", "major")
    minor = new_issue(repo, "Minor", "--severity", "minor")
    write_project(repo, Project(statuses=["open", "new", "closed"], severities=["minor", "blocker"]))
    opened = new_issue(repo, "Open", "--severity", "blocker", "--status", "open")
    assert [minor, opened, major] == run_cli(repo, "list", "--format", "id", "--sort=severity").out.split()
    assert [opened, major, minor] == run_cli(repo, "list", "--format", "id", "--sort=status,title").out.split()


# --- a fresh clone ----------------------------------------------------------------------------


@pytest.mark.parametrize("origin,hint", [("origin", "git issues pull"), ("upstream", "git issues pull upstream")])
def test_fresh_clone_says_pull(repo: Path, tmp_path: Path, origin: str, hint: str) -> None:
    """In a clone whose remote has the issues branch, the hint is to pull, not to init; after the pull, list works."""
    name = new_issue(repo, "On the remote")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-o", origin, str(repo), str(clone))
    for command in (["list"], ["show", name[:7]], ["new", "T", "-m", "x"]):
        r = run_cli(clone, *command)
        assert (1, f"error: no issues branch here; run '{hint}' first\n") == (r.code, r.err), command
    assert 0 == run_cli(clone, "pull", origin).code
    assert [name] == run_cli(clone, "list", "--format", "id").out.split()


def test_clone_without_issues_says_init(repo: Path, tmp_path: Path) -> None:
    """A clone of a repository that has no issues branch is told to init, as before."""
    git(repo, "branch", "-D", "issues")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    r = run_cli(clone, "list")
    assert (1, "error: no issues branch here; run 'git issues init' first\n") == (r.code, r.err)


# --- an editor that leaves nothing ------------------------------------------------------------


@pytest.fixture
def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$EDITOR is a script (no GIT_EDITOR, no VISUAL); the test writes what it does."""
    script = tmp_path / "editor.sh"
    monkeypatch.delenv("GIT_EDITOR")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(script))
    return script


@pytest.mark.parametrize("body", ["exit 0", ': > "$1"', 'printf "\\n  \\n# only a comment\\n" > "$1"'])
def test_empty_editor_text_aborts_new_and_comment(repo: Path, editor: Path, body: str) -> None:
    """An editor that leaves the template, nothing, or only blanks and '#' lines aborts new and comment."""
    name = new_issue(repo, "Target")
    editor.write_text(f"#!/bin/sh\n{body}\n")
    editor.chmod(0o755)
    before = tip(repo)
    r = run_cli(repo, "new", "T")
    assert (1, "error: aborting: empty description\n") == (r.code, r.err)
    r = run_cli(repo, "comment", name[:7])
    assert (1, "error: aborting: empty comment\n") == (r.code, r.err)
    assert before == tip(repo)


def test_empty_message_option_is_allowed(repo: Path) -> None:
    """`-m ""` is an explicit empty text: new and comment accept it."""
    assert 0 == run_cli(repo, "new", "No words", "-m", "").code
    [name] = read_names(repo)
    assert "" == read_issue(repo, name).description
    assert 0 == run_cli(repo, "comment", name[:7], "-m", "").code


def test_editor_text_is_used(repo: Path, editor: Path) -> None:
    """$EDITOR is used when GIT_EDITOR is not set; its text, '#' lines dropped, is the description."""
    editor.write_text('#!/bin/sh\nprintf "from EDITOR\\n# dropped\\n" > "$1"\n')
    editor.chmod(0o755)
    assert 0 == run_cli(repo, "new", "T").code
    [name] = read_names(repo)
    assert "from EDITOR" == read_issue(repo, name).description


# --- filter values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--status", "bogus"], "error: illegal status 'bogus'; legal values are: new, open, pending, deferred, closed\n"),
        (["--severity", "huge"], "error: illegal severity 'huge'; legal values are: blocker, critical, major, minor, cosmetic\n"),
        (["--resolution", "nah"], "error: illegal resolution 'nah'; legal values are: fixed, wontfix, dup\n"),
        (["--priority", "urgent"], "error: illegal priority 'urgent'; legal values are: high, med, low\n"),
        (["--type", "bug"], "error: illegal type 'bug'; legal values are: defect, feature, docs\n"),
        (["--component", "core"], "error: illegal components 'core'; legal values are: (none: project.xml lists no components)\n"),
        (["--milestone", "1.0"], "error: illegal milestone '1.0'; legal values are: (none: project.xml lists no milestones)\n"),
    ],
)
def test_list_refuses_an_illegal_filter_value(repo: Path, args: list[str], message: str) -> None:
    """A filter value that project.xml does not allow is an error listing the legal ones."""
    new_issue(repo, "Target")
    r = run_cli(repo, "list", *args)
    assert (1, "", message) == (r.code, r.out, r.err)


def test_list_filter_values_that_are_allowed(repo: Path) -> None:
    """Legal values match in any case; a value an issue still holds from an older project.xml is a fine filter."""
    name = new_issue(repo, "Major", "--severity", "major")
    write_project(repo, Project(severities=["minor", "blocker"]))
    assert ([name], [name], []) == tuple(run_cli(repo, "list", "--format", "id", *a).out.split() for a in (
        ["--status", "NEW"], ["--severity", "major"], ["--severity", "minor"]))
    assert [] == run_cli(repo, "list", "--format", "id", "--version", "v9").out.split()  # versions: free when unlisted


def test_component_filter_matches_a_whole_name(repo: Path) -> None:
    """--component core is the component core, not every component whose name holds "core"."""
    from mailtrack.tracker.model import Component

    write_project(repo, Project(components=[Component("core"), Component("core-ui")]))
    ui = new_issue(repo, "UI", "--component", "core-ui")
    core = new_issue(repo, "Core", "--component", "core")
    assert ([core], [ui]) == (run_cli(repo, "list", "--format", "id", "--component", "core").out.split(),
                              run_cli(repo, "list", "--format", "id", "--component", "CORE-UI").out.split())


def test_init_in_a_clone_whose_remote_has_the_branch_says_pull(repo: Path, tmp_path: Path) -> None:
    """`init` in a fresh clone would start a second, unrelated issues branch: it is refused with the pull hint;
    `push` there says the same."""
    new_issue(repo, "On the remote")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    expected = [(1, "error: a remote has the issues branch already: run 'git issues pull' to get it\n"),
                (1, "error: no issues branch here; run 'git issues pull' first\n")]
    assert expected == [(r.code, r.err) for r in (run_cli(clone, "init"), run_cli(clone, "push"))]
    assert "" == git(clone, "branch", "--list", "issues")


def test_tag_filter_matches_whole_tags_people_filters_match_part(repo: Path) -> None:
    """`--tag ui` finds the issue tagged ui, not the one tagged gui; `--assigned bob` finds Bob <bob@example.org>."""
    ui, gui = new_issue(repo, "UI", "--tag", "ui", "--assign", "Bob <bob@example.org>"), new_issue(repo, "GUI", "--tag", "gui")
    ids = lambda *f: run_cli(repo, "list", "--format", "id", *f).out.split()  # noqa: E731
    assert ([ui], [gui], [ui]) == (ids("--tag", "ui"), ids("--tag", "GUI"), ids("--assigned", "bob"))
