"""A new issue's defaults: the value project.xml's `<default>` marks, else the middle of the
severity and priority scales (never the most urgent one), the same by mail and by `git issues new`."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import deliver, run_cli
from helpers.mail import make_mail
from helpers.repos import git, new_issue, read_issue, read_names
from mailtrack.tracker.model import Person, Project
from mailtrack.tracker.store import Change, Store

MARKED = """<?xml version="1.0" encoding="utf-8"?>
<project>
<severities>
<list>
<item>
blocker
</item>
<item>
major
</item>
<item>
minor
</item>
</list>
<default>
minor
</default>
</severities>
<priorities>
<list>
<item>
p1
</item>
<item>
p2
</item>
<item>
p3
</item>
<item>
p4
</item>
</list>
<default>
p4
</default>
</priorities>
</project>
"""


def set_project(repo: Path, xml: str) -> None:
    with Store.open(repo) as store:
        store.update(lambda snap: Change("project", {"project.xml": xml.encode()}), Person("A", "a@x.org"))


def mailed_issue(repo: Path, message_id: str) -> tuple[str, str]:
    """(severity, priority) of the issue a mail through the real `mailtrack deliver` opens."""
    before = set(read_names(repo))
    r = deliver(repo, make_mail(subject=f"Report {message_id}", message_id=message_id))
    assert 0 == r.returncode, r.stderr
    [name] = set(read_names(repo)) - before
    issue = read_issue(repo, name)
    return issue.severity, issue.priority


def test_a_mailed_issue_takes_the_middle_of_the_shipped_scales(repo: Path) -> None:
    """The shipped project.xml has no marker: a mailed issue is major/med, not blocker/high, and so is `git issues new`."""
    assert ("major", "med") == mailed_issue(repo, "<plain@x>")
    name = new_issue(repo, "From the CLI")
    assert ("major", "med") == (read_issue(repo, name).severity, read_issue(repo, name).priority)


def test_a_mailed_issue_takes_the_marked_default(repo: Path) -> None:
    """A `<default>` after a list wins, by mail and in the CLI; the marker survives a rewrite of project.xml."""
    set_project(repo, MARKED)
    assert ("minor", "p4") == mailed_issue(repo, "<marked@x>")
    name = new_issue(repo, "From the CLI")
    assert ("minor", "p4") == (read_issue(repo, name).severity, read_issue(repo, name).priority)
    shown = git(repo, "show", "issues:project.xml")
    assert "</list>\n<default>\nminor\n</default>\n</severities>" in shown
    with Store.open(repo) as store:
        project = store.snapshot().project()
    assert ({"severity": "minor", "priority": "p4"}, project) == (project.defaults, Project.from_bytes(project.to_bytes()))


def test_an_explicit_value_still_wins_over_the_default(repo: Path) -> None:
    """`Severity: blocker` in the mail and `--severity blocker` on the command line are kept as they are."""
    set_project(repo, MARKED)
    r = deliver(repo, make_mail(subject="Urgent", message_id="<urgent@x>", body="Severity: blocker\n\nIt is.\n"))
    assert 0 == r.returncode, r.stderr
    [name] = read_names(repo)
    assert "blocker" == read_issue(repo, name).severity
    cli = new_issue(repo, "Urgent too", "--severity", "blocker")
    assert "blocker" == read_issue(repo, cli).severity


@pytest.mark.parametrize("values,marker,expected", [
    (["blocker", "critical", "major", "minor", "cosmetic"], "", "major"),
    (["critical", "major", "minor", "trivial"], "", "major"),  # even: the more urgent of the middle two
    (["major", "minor"], "", "major"),
    (["only"], "", "only"),
    (["blocker", "major", "minor"], "minor", "minor"),
    (["blocker", "major", "minor"], "gone", "major"),  # a marker naming no listed value is ignored
])
def test_the_default_severity(values: list[str], marker: str, expected: str) -> None:
    """Project.default: the marked value when it is listed, else the middle of the scale."""
    project = Project(severities=values, defaults={"severity": marker} if marker else {})
    assert expected == project.default("severity")
    assert expected == Project.from_bytes(project.to_bytes()).default("severity")


def test_status_and_type_keep_the_first_value(repo: Path) -> None:
    """Only the scales take the middle: a new issue's status and type are still the first listed ones."""
    assert ("new", "defect") == (Project().default("status"), Project().default("type"))
    set_project(repo, MARKED.replace("<severities>", "<types>\n<list>\n<item>\nbug\n</item>\n<item>\nidea\n</item>\n"
                                     "</list>\n<default>\nidea\n</default>\n</types>\n<severities>"))
    r = run_cli(repo, "new", "Typed", "-m", "x")
    assert 0 == r.code, r.err
    [name] = read_names(repo)
    assert ("idea", "new") == (read_issue(repo, name).type, read_issue(repo, name).status)
