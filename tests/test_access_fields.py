"""Who may change which field: [access.fields], read from the configuration and applied by mail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.mail import filed, make_mail, replies, text_of
from helpers.repos import git, make_gateway, read_comments, read_issue
from mailtrack.config import AccessConfig, ConfigError, parse
from mailtrack.worker.pipeline import Gateway


def test_fields_table_is_read_with_aliases() -> None:
    """An [access.fields] table gives fields their own rule; component and cc name components and carbons."""
    access = parse('[access.fields]\nseverity = ["maintainer"]\nComponent = ["owner"]\ncc = ["anyone"]\n').access
    assert {"severity": ["maintainer"], "components": ["owner"], "carbons": ["anyone"]} == access.fields
    assert ("access.fields.severity", ["maintainer"]) == access.rules_for("severity")
    assert ("access.change", ["reporter", "assignee", "owner", "maintainer"]) == access.rules_for("status")


def test_unknown_field_is_an_error_naming_the_legal_ones() -> None:
    """A field name commands cannot change is refused at load, with the list of the fields there are."""
    with pytest.raises(ConfigError) as e:
        parse('[access.fields]\nseverty = ["maintainer"]\n', "mailtrack.toml")
    assert (
        "mailtrack.toml: [access] access.fields: unknown field 'severty'; fields are: status, resolution, type, "
        "severity, priority, components, version, milestone, assigned, title, tags, carbons"
    ) == str(e.value)


@pytest.mark.parametrize("text,expected", [
    ('[access.fields]\nseverity = "maintainer"\n', "cfg: access.fields.severity must be a list"),
    ('[access.fields]\nseverity = [1]\n', "cfg: access.fields.severity[0] must be str, not int"),
    ('[access]\nfields = ["severity"]\n', "cfg: access.fields must be a table"),
    ('[access.fields]\ncomponent = ["a@x"]\ncomponents = ["b@x"]\n',
     "cfg: [access] access.fields: components is given twice, as 'component' and as 'components'"),
])  # fmt: skip
def test_bad_fields_tables(text: str, expected: str) -> None:
    """A rule that is not a list of strings, or a field given twice, is an error that says so."""
    with pytest.raises(ConfigError) as e:
        parse(text, "cfg")
    assert expected == str(e.value)


@pytest.fixture
def strict(repo: Path) -> Iterator[Gateway]:
    """A gateway where only maintainers may change the severity; the rest follows `change`."""
    g = make_gateway(repo, maintainers=["boss@example.org"], fields={"severity": ["maintainer"]})
    yield g
    g.close()
    g.store.close()


def test_reporter_may_close_but_not_set_the_severity(strict: Gateway, repo: Path) -> None:
    """severity = ["maintainer"]: the reporter's Severity line is refused, naming the rule; Status and the comment land."""
    name = filed(strict, repo)
    out = strict.handle(make_mail(message_id="<r@x>", In_Reply_To="<filed@x>", body="Severity: minor\nStatus: closed\n\nDone, I think.\n"))
    issue = read_issue(repo, name)
    assert ("changed", "major", "closed", "fixed") == (out.action, issue.severity, issue.status, issue.resolution)
    assert ["Done, I think."] == [c.text for c in read_comments(repo, name)]
    [t] = replies(repo)
    assert "Processed (with 1 refusal): Printer on fire" == t["Subject"]
    assert (
        "Your commands were processed:\n\n"
        "> Severity: minor\n"
        f"refused: alice@example.org may not change the severity of issue {name[:7]}\n"
        "(allowed by access.fields.severity: maintainer)\n\n"
        "> Status: closed\n"
        "status: new -> closed, resolution: (none) -> fixed\n\n"
        "Refused commands were not applied; the rest of your mail was.\n\n"
    ) in text_of(t)
    assert f"comment {name[:7]} by alice@example.org; close {name[:7]} (fixed)" == git(repo, "log", "-1", "--format=%s", "issues").strip()


def test_maintainer_may_set_the_restricted_field(strict: Gateway, repo: Path) -> None:
    """The field's own rule lets in whom it names: a maintainer sets the severity."""
    name = filed(strict, repo)
    strict.handle(make_mail(message_id="<b@x>", In_Reply_To="<filed@x>", frm="boss@example.org", body="Severity: minor\n\nok\n"))
    assert "minor" == read_issue(repo, name).severity
    [t] = replies(repo)
    assert "> Severity: minor\nseverity: major -> minor\n" in text_of(t)


def test_a_field_rule_can_open_a_field_to_anyone(repo: Path) -> None:
    """tags = ["anyone"]: a stranger may tag, but still may not close (access.change), and is told so."""
    g = make_gateway(repo, fields={"tags": ["anyone"]})
    try:
        name = filed(g, repo)
        g.handle(make_mail(message_id="<s@x>", In_Reply_To="<filed@x>", frm="mallory@example.net", body="Tags: +ui\nStatus: closed\n\nhm\n"))
        issue = read_issue(repo, name)
        assert (["ui"], "new") == (issue.tags, issue.status)
        [t] = replies(repo)
        assert (
            "> Tags: +ui\ntags: (none) -> ui\n\n> Status: closed\n"
            f"refused: mallory@example.net may not change issue {name[:7]} (allowed:\nreporter, assignee, owner, maintainer)\n"
        ) in text_of(t)
    finally:
        g.close()
        g.store.close()


def test_the_reporter_of_a_new_issue_is_known_to_it(repo: Path) -> None:
    """severity = ["known"]: a first-time sender's `Severity:` in their new issue applies, as its reporter."""
    g = make_gateway(repo, fields={"severity": ["known"]})
    try:
        out = g.handle(make_mail(message_id="<first@x>", frm="newcomer@example.net", body="Severity: minor\n\nIt broke.\n"))
        assert ("created", "minor") == (out.action, read_issue(repo, out.issue).severity)
    finally:
        g.close()
        g.store.close()


def test_control_close_with_a_resolution_needs_the_resolution_rule(repo: Path) -> None:
    """By control mail, `close ID RES` needs both the status and the resolution rule; `close ID` only status's."""
    g = make_gateway(repo, fields={"resolution": ["maintainer"]})
    try:
        name = filed(g, repo)
        tip = git(repo, "rev-parse", "issues")
        out = g.handle(make_mail(to="control@tracker.localhost", message_id="<c1@x>", body=f"close {name[:7]} wontfix\nthanks\n"))
        assert (tip, "new") == (git(repo, "rev-parse", "issues"), read_issue(repo, name).status)
        assert [f"alice@example.org may not change the resolution of issue {name[:7]} (allowed by access.fields.resolution: maintainer)"] == [
            ln.refused for ln in out.commands.lines]  # type: ignore[union-attr]
        replies(repo)
        g.handle(make_mail(to="control@tracker.localhost", message_id="<c2@x>", body=f"close {name[:7]}\nthanks\n"))
        issue = read_issue(repo, name)
        assert ("closed", "fixed") == (issue.status, issue.resolution)
    finally:
        g.close()
        g.store.close()


def test_default_access_has_no_field_rules() -> None:
    """With no [access.fields], every field follows `change`."""
    assert {} == AccessConfig().fields
