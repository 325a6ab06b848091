"""`git issues`: every command against a real repository, checked with the real git."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.repos import git, git_bytes, make_repo, new_issue, read_issue, read_names, tip
from mailtrack.tracker.changes import close_edits
from mailtrack.tracker.model import Comment, Issue, Person, Project
from mailtrack.tracker.store import Change, Store


def branch_log(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%an <%ae>|%s", "issues").splitlines()


def test_init_creates_branch_with_default_project(repo: Path) -> None:
    """init makes a root commit holding only project.xml; the work tree, index and HEAD are untouched."""
    assert ["project.xml"] == git(repo, "ls-tree", "--name-only", "issues").split()
    assert ["Jane Doe <jane@example.org>|init issues"] == branch_log(repo)
    assert "" == git(repo, "merge-base", "--all", "issues", "main", check=False).strip()  # its own root
    assert "" == git(repo, "status", "--porcelain")
    assert "refs/heads/main" == git(repo, "symbolic-ref", "HEAD").strip()
    git(repo, "fsck", "--strict", "--no-dangling")


def test_init_twice_fails(repo: Path) -> None:
    """A second init is refused with one line and exit 1."""
    r = run_cli(repo, "init")
    assert (1, "error: the issues branch exists already\n") == (r.code, r.err)


def test_init_from_project_file(tmp_path: Path) -> None:
    """init --project FILE starts from one's own project.xml, byte for byte."""
    r = make_repo(tmp_path / "r")
    golden = Path(__file__).parent / "data" / "golden" / "project.xml"
    assert 0 == run_cli(r, "init", "--project", str(golden)).code
    assert golden.read_bytes() == git_bytes(r, "show", "issues:project.xml")


def test_new_writes_one_commit_with_format_bytes(repo: Path) -> None:
    """new writes issue.xml at its hashed path, one commit by the git user, in the canonical form."""
    name = new_issue(repo, "Crash on empty config", "--severity", "minor", "--tag", "crash", "--cc", "bob@example.org")
    data = git_bytes(repo, "show", f"issues:{name[:2]}/{name[2:]}/issue.xml")
    issue = Issue.from_bytes(data, name)
    assert data == issue.to_bytes()
    assert ("Crash on empty config", "about Crash on empty config", "minor", ["crash"], ["bob@example.org"]) == (
        issue.title, issue.description, issue.severity, issue.tags, issue.carbons)
    assert ["Jane Doe <jane@example.org>"] == issue.reporters
    assert f"Jane Doe <jane@example.org>|new {name[:7]}: Crash on empty config" == branch_log(repo)[0]
    assert "" == git(repo, "status", "--porcelain")
    git(repo, "fsck", "--strict", "--no-dangling")


def test_list_formats_and_filters(repo: Path) -> None:
    """list shows open issues, filters on fields, sorts, and speaks json and templates."""
    a = new_issue(repo, "Alpha", "--severity", "minor", "--tag", "ui")
    b = new_issue(repo, "Beta", "--severity", "blocker")
    c = new_issue(repo, "Gamma")
    assert 0 == run_cli(repo, "close", c[:7]).code
    table = run_cli(repo, "list", "--sort", "title").out.splitlines()
    assert [a[:7], b[:7]] == [line.split()[0] for line in table]
    assert f"{a[:7]}  new      minor    -            -            Alpha" == table[0]
    assert [b] == run_cli(repo, "list", "--severity", "blocker", "--format", "id").out.split()
    assert [a] == run_cli(repo, "list", "--tag", "ui", "--format", "{id}").out.split()
    assert [c, b, a] == run_cli(repo, "list", "--all", "--sort=-title", "--format", "id").out.split()
    rows = json.loads(run_cli(repo, "list", "--all", "--format", "json").out)
    assert {a: True, b: True, c: False} == {r["id"]: r["open"] for r in rows}
    assert [c] == run_cli(repo, "list", "--status", "closed", "--format", "id").out.split()


def test_show_has_fields_description_and_comments(repo: Path, tmp_path: Path) -> None:
    """show prints every field, the description, then each comment with author, time and attachments."""
    name = new_issue(repo, "Shown")
    log = tmp_path / "crash.log"
    log.write_bytes(b"\x00\x01binary")
    assert 0 == run_cli(repo, "comment", name[:7], "-m", "first words", "--attach", str(log)).code
    out = run_cli(repo, "show", name[:8]).out
    assert out.startswith(f"issue {name}\nAuthor:     Jane Doe <jane@example.org>\n")
    assert "Title:      Shown\nStatus:     new\n" in out
    assert "\n    about Shown\n" in out
    assert "Author: Jane Doe <jane@example.org>\n" in out
    assert "Attachment: crash.log (8 bytes)\n\n    first words" in out


def test_comment_with_attachment_from_stdin(repo: Path, tmp_path: Path) -> None:
    """comment - reads stdin; the attachment lands beside it and `attachment` gives its bytes back."""
    name = new_issue(repo, "Attach")
    f = tmp_path / "dump.bin"
    f.write_bytes(bytes(range(256)))
    r = run_cli(repo, "comment", name[:7], "-m", "-", "--attach", str(f), stdin="from stdin\n")
    assert 0 == r.code, r.err
    files = git(repo, "ls-tree", "--name-only", f"issues:{name[:2]}/{name[2:]}").split()
    comment_file = [x for x in files if x.startswith("comment_")][0]
    c = Comment.from_bytes(git_bytes(repo, "show", f"issues:{name[:2]}/{name[2:]}/{comment_file}"), comment_file)
    assert ("from stdin\n", ["dump.bin"]) == (c.text, c.attachments)
    assert bytes(range(256)) == git_bytes(repo, "show", f"issues:{name[:2]}/{name[2:]}/dump.bin")
    out = tmp_path / "out.bin"
    assert 0 == run_cli(repo, "attachment", name[:7], "dump.bin", "-o", str(out)).code
    assert bytes(range(256)) == out.read_bytes()
    assert f"Jane Doe <jane@example.org>|comment {name[:7]} by jane@example.org" == branch_log(repo)[0]


def test_set_close_reopen_assign_tag_cc(repo: Path) -> None:
    """Each editing command changes exactly its field, one commit each, with a meaningful message."""
    name = new_issue(repo, "Edit me", "--tag", "old")
    short = name[:7]
    for args in (["set", short, "severity=minor", "title=Edited"], ["assign", short, "bob@example.org"],
                 ["tag", short, "+ui", "-old"], ["cc", short, "+Carol <carol@example.org>", "+dan@example.org"],
                 ["cc", short, "-dan@example.org"], ["close", short, "--resolution", "wontfix", "-m", "no"],
                 ["reopen", short]):
        r = run_cli(repo, *args)
        assert 0 == r.code, (args, r.err)
    issue = read_issue(repo, name)
    assert ("Edited", "minor", ["bob@example.org"], ["ui"], ["Carol <carol@example.org>"], "new", "") == (
        issue.title, issue.severity, issue.assigned, issue.tags, issue.carbons, issue.status, issue.resolution)
    assert [
        f"reopen {short}", f"comment {short} by jane@example.org; close {short} (wontfix)",
        f"set {short} carbons=Carol <carol@example.org>", f"set {short} carbons=Carol <carol@example.org>,dan@example.org",
        f"set {short} tags=ui", f"set {short} assigned=bob@example.org", f"set {short} title=Edited severity=minor",
    ] == [line.split("|", 1)[1] for line in branch_log(repo)[:7]]
    git(repo, "fsck", "--strict", "--no-dangling")


def test_set_same_value_writes_nothing(repo: Path) -> None:
    """Setting a field to the value it has makes no commit."""
    name = new_issue(repo, "Same")
    before = git(repo, "rev-parse", "issues")
    r = run_cli(repo, "set", name[:7], "status=new")
    assert (0, "nothing to change\n", before) == (r.code, r.out, git(repo, "rev-parse", "issues"))


def test_dump_gives_raw_xml(repo: Path) -> None:
    """dump prints issue.xml exactly as stored."""
    name = new_issue(repo, "Dumped")
    r = subprocess.run(["git-issues", "dump", name[:7]], cwd=repo, capture_output=True, check=False)
    assert (0, git_bytes(repo, "show", f"issues:{name[:2]}/{name[2:]}/issue.xml")) == (r.returncode, r.stdout)


def test_git_subcommand_works(repo: Path) -> None:
    """`git issues` finds the git-issues script as a git subcommand."""
    r = subprocess.run(["git", "issues", "list"], cwd=repo, capture_output=True, text=True, check=False)
    assert (0, "") == (r.returncode, r.stderr)


@pytest.mark.parametrize(
    "args,message",
    [
        (["set", "{id}", "colour=red"], "error: unknown field 'colour'; fields are: title, summary, description, reporters, owners, "
                                        "assigned, carbons, status, resolution, type, components, version, milestone, severity, priority, tags\n"),
        (["set", "{id}", "severity=huge"], "error: illegal severity 'huge'; legal values are: blocker, critical, major, minor, cosmetic\n"),
        (["set", "{id}", "version=9.9"], "error: version '9.9' names no tag of this repository; tags are: (none)\n"),
        (["close", "{id}", "--resolution", "nah"], "error: illegal resolution 'nah'; legal values are: fixed, wontfix, dup\n"),
        (["show", "deadbeef"], "error: no issue deadbeef\n"),
        (["show", "xyz"], "error: 'xyz' is not an issue ID (4 to 40 hex digits)\n"),
        (["new", "Bad", "-m", "x", "--type", "bug"], "error: illegal type 'bug'; legal values are: defect, feature, docs\n"),
        (["new", "  ", "-m", "x"], "error: the title is empty\n"),
    ],
)
def test_bad_input_one_line_and_nothing_written(repo: Path, args: list[str], message: str) -> None:
    """Bad input gives one line on stderr, exit 1, and no commit."""
    name = new_issue(repo, "Target")
    before = git(repo, "rev-parse", "issues")
    r = run_cli(repo, *[a.replace("{id}", name[:7]) for a in args])
    assert (1, message) == (r.code, r.err)
    assert before == git(repo, "rev-parse", "issues")


def test_version_must_name_a_tag(repo: Path) -> None:
    """A version is accepted once the repository has a tag of that name."""
    name = new_issue(repo, "Versioned")
    git(repo, "tag", "v1.0")
    assert 0 == run_cli(repo, "set", name[:7], "version=v1.0").code
    assert "v1.0" == read_issue(repo, name).version


def test_ambiguous_prefix_lists_candidates(repo: Path) -> None:
    """A prefix that names two issues lists both, each by its shortest unique name."""
    from datetime import UTC, datetime

    from mailtrack.tracker.model import Person
    from mailtrack.tracker.store import Change

    names = ["abcdef0" + "1" * 33, "abcdef0" + "2" * 33]
    issue = Issue(created=datetime(2020, 1, 1, tzinfo=UTC), author=Person("A", "a@x.org"), title="t")
    files: dict[str, bytes | None] = {f"{n[:2]}/{n[2:]}/issue.xml": issue.to_bytes() for n in names}
    with Store.open(repo) as store:
        store.update(lambda snap: Change("two issues", files), Person("A", "a@x.org"))
    r = run_cli(repo, "show", "abcd")
    assert (1, "error: issue ID abcd is ambiguous: abcdef01, abcdef02\n") == (r.code, r.err)
    assert 0 == run_cli(repo, "show", "abcdef02").code


def test_missing_branch_and_not_a_repo(tmp_path: Path) -> None:
    """No branch, or no repository: one clear line and exit 1."""
    r = make_repo(tmp_path / "nobranch")
    assert (1, "error: no issues branch here; run 'git issues init' first\n") == (run_cli(r, "list").code, run_cli(r, "list").err)
    (tmp_path / "plain").mkdir()
    res = run_cli(tmp_path / "plain", "--repo", str(tmp_path / "plain"), "list")
    assert (1, f"error: not a git repository: {tmp_path / 'plain'}\n") == (res.code, res.err)


def test_hostile_issue_file_is_refused(repo: Path) -> None:
    """An issue.xml with a DTD on the branch is refused with a one-line error, not expanded."""
    hostile = b'<?xml version="1.0"?>\n<!DOCTYPE issue [<!ENTITY x "boom">]>\n<issue><title>&x;</title></issue>\n'
    name = "ab" * 20
    blob = git(repo, "hash-object", "-w", "--stdin", input=hostile).strip()
    tree = git(repo, "mktree", input=f"100644 blob {blob}\tissue.xml\n".encode()).strip()
    fan = git(repo, "mktree", input=f"040000 tree {tree}\t{name[2:]}\n".encode()).strip()
    base = git(repo, "ls-tree", "issues").strip()
    root = git(repo, "mktree", input=(base + f"\n040000 tree {fan}\t{name[:2]}\n").encode()).strip()
    commit = git(repo, "commit-tree", root, "-p", "issues", "-m", "hostile").strip()
    git(repo, "update-ref", "refs/heads/issues", commit)
    r = run_cli(repo, "show", name[:7])
    assert 1 == r.code
    assert r.err.startswith(f"error: {name[:2]}/{name[2:]}/issue.xml: not a readable XML file: ")
    assert 1 == len(r.err.splitlines())


def test_list_names_an_unreadable_issue_and_fails(repo: Path) -> None:
    """`list` still lists the readable issues, then names the hostile file on stderr and exits 1."""
    good = new_issue(repo, "Readable")
    test_hostile_issue_file_is_refused(repo)
    r = run_cli(repo, "list", "--format", "id")
    assert (1, f"{good}\n") == (r.code, r.out)
    [line] = r.err.splitlines()
    assert line.startswith(f"error: ab/{'ab' * 19}/issue.xml: not a readable XML file: ")


@pytest.mark.slow  # ~2 s: a shell pipeline
def test_list_into_a_closed_pipe_is_quiet(repo: Path) -> None:
    """`git issues list | head -1` exits quietly, as git does when its reader goes away."""
    for n in range(300):
        assert 0 == run_cli(repo, "new", f"Issue number {n} with a title long enough to fill the pipe", "-m", "x").code
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m mailtrack.app.git_issues list --format json | head -c 10"],
                       cwd=repo, capture_output=True, text=True, check=False)
    assert (0, "", 10) == (r.returncode, r.stderr, len(r.stdout))


def test_attachment_refuses_a_comment_file(repo: Path) -> None:
    """`attachment ID comment_....xml` is not an attachment: refused with the list of real ones."""
    name = new_issue(repo, "With a comment")
    (repo / "log.txt").write_text("log\n")
    assert 0 == run_cli(repo, "comment", name[:7], "-m", "see log", "--attach", str(repo / "log.txt")).code
    [comment] = [f for f in git(repo, "ls-tree", "--name-only", f"issues:{name[:2]}/{name[2:]}").split() if f.startswith("comment_")]
    r = run_cli(repo, "attachment", name[:7], comment)
    assert (1, f"error: issue {name[:7]} has no attachment '{comment}'; it has: log.txt\n") == (r.code, r.err)


def test_bare_repository(tmp_path: Path) -> None:
    """A bare repository works the same, found from inside it."""
    r = make_repo(tmp_path / "bare.git", bare=True)
    assert 0 == run_cli(r, "init").code
    assert 0 == run_cli(r, "new", "In a bare repo", "-m", "x").code
    assert "In a bare repo" in run_cli(r, "list").out
    git(r, "fsck", "--strict", "--no-dangling")


def test_editor_supplies_the_text(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -m, the description comes from $GIT_EDITOR, '#' lines dropped."""
    script = tmp_path / "ed.sh"
    script.write_text('#!/bin/sh\nprintf "written in the editor\\n# a comment line\\n" > "$1"\n')
    script.chmod(0o755)
    monkeypatch.setenv("GIT_EDITOR", str(script))
    assert 0 == run_cli(repo, "new", "Edited text").code
    [name] = read_names(repo)
    assert "written in the editor" == read_issue(repo, name).description


def test_help_for_every_command(repo: Path) -> None:
    """Every command answers --help with exit 0."""
    for command in ("init", "new", "list", "show", "comment", "set", "close", "reopen", "assign", "tag", "cc", "dump", "attachment", "pull", "push"):
        r = run_cli(repo, command, "--help")
        assert (0, True) == (r.code, r.out.startswith("usage: git issues " + command)), command


def test_list_is_served_by_a_rebuildable_index(repo: Path) -> None:
    """list reads the index derived from the branch; deleting it gives the same answer, rebuilt."""
    for t in ("One", "Two", "Three"):
        new_issue(repo, t)
    first = run_cli(repo, "list", "--sort", "title").out
    index = repo / ".git" / "mailtrack" / "index.sqlite"
    assert index.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    assert first == run_cli(repo, "list", "--sort", "title").out
    assert ["One", "Three", "Two"] == [line.split(None, 5)[5] for line in first.splitlines()]


def test_shortest_names_are_unique_prefixes() -> None:
    """Short names grow past 7 hex only where two names share a longer prefix."""
    from mailtrack.tracker.query import shortest_names

    names = ["abcdef01" + "0" * 32, "abcdef02" + "0" * 32, "1234567" + "0" * 33]
    assert {names[0]: "abcdef01", names[1]: "abcdef02", names[2]: "1234567"} == shortest_names(names)


def test_list_filters_on_author_summary_and_description(repo: Path) -> None:
    """--author, --description and --summary match part of the value, case-insensitively."""
    a = new_issue(repo, "First")  # "about First", by Jane Doe
    assert 0 == run_cli(repo, "set", a[:7], "summary=Crashes on start").code
    b = run_cli(repo, "--repo", str(repo), "new", "Second", "-m", "a quite different text")
    assert 0 == b.code
    ids = lambda *f: run_cli(repo, "list", "--format", "id", *f).out.split()  # noqa: E731
    assert ([a], [a], 2, []) == (ids("--description", "ABOUT first"), ids("--summary", "crashes"),
                                 len(ids("--author", "jane@example")), ids("--author", "nobody"))


def write_project(repo: Path, project: Project) -> None:
    with Store.open(repo) as store:
        store.update(lambda snap: Change("project", {"project.xml": project.to_bytes()}), Person("A", "a@x.org"))


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
