"""The files of FORMAT.md: golden bytes, round trips, the original script's dialect, hostile XML."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.repos import DATA
from mailtrack.tracker.model import Comment, Issue, Person, Project, make_name, parse_comment_filename
from mailtrack.tracker.xmlformat import FormatError

GOLDEN = DATA / "golden"


@pytest.mark.parametrize("filename,cls", [("issue.xml", Issue), ("comment.xml", Comment), ("project.xml", Project)])
def test_golden_round_trip(filename: str, cls: type) -> None:
    """Reading a canonical file and writing it again gives the same bytes."""
    data = (GOLDEN / filename).read_bytes()
    assert data == cls.from_bytes(data).to_bytes()


def test_golden_issue_fields() -> None:
    """issue.xml's values are read into the right fields, extensions kept in order."""
    issue = Issue.from_bytes((GOLDEN / "issue.xml").read_bytes())
    assert datetime(2008, 11, 14, 23, 41, 47, tzinfo=UTC) == issue.created
    assert Person("Jane Doe", "jane@example.org") == issue.author
    assert ["Bob <bob@example.org>", "carol@example.org"] == issue.carbons
    assert "Start with an empty ~/.foorc:\n\n  $ foo --check\n  Segmentation fault\n\nExpected a message & an exit code <> 0." == issue.description
    assert "" == issue.summary
    assert ["crash", "ui"] == issue.tags
    assert "<20081114234147.GA1234@example.org>" == issue.message_id
    assert ["message-id", "x-custom"] == [n.tag for n in issue.extensions]


def test_issue_written_from_scratch_matches_golden() -> None:
    """An Issue built in code is written exactly as the golden file."""
    golden = Issue.from_bytes((GOLDEN / "issue.xml").read_bytes())
    rebuilt = Issue(**{f: getattr(golden, f) for f in golden.__dataclass_fields__})
    assert (GOLDEN / "issue.xml").read_bytes() == rebuilt.to_bytes()


def test_comment_fields_and_name() -> None:
    """A comment keeps its text, attachments, Message-ID and In-Reply-To; its file name sorts by time."""
    c = Comment.from_bytes((GOLDEN / "comment.xml").read_bytes())
    assert ("I can reproduce this.\n\nThe log is attached.", ["crash.log"]) == (c.text, c.attachments)
    assert ("<87abc@bob.example.org>", "<20081114234147.GA1234@example.org>") == (c.message_id, c.in_reply_to)
    made = Comment.new(Person("Bob", "bob@example.org"), "hi", created=datetime(2008, 11, 15, 10, 0, 0, 500000, tzinfo=UTC))
    assert f"comment_20081115T100000.500000Z_{made.name}.xml" == made.filename
    assert (made.created, made.name) == parse_comment_filename(made.filename)


def test_name_is_git_hash_object_of_the_original_rule() -> None:
    """An issue's name is the blob hash of str(created) + mailbox + title, as git hash-object gives."""
    import subprocess

    created = datetime(2008, 11, 14, 23, 41, 47, 123456, tzinfo=UTC)
    content = "2008-11-14 23:41:47.123456" + "Jane Doe <jane@example.org>" + "First issue"
    expected = subprocess.run(["git", "hash-object", "--stdin"], input=content.encode(), capture_output=True, check=True).stdout.decode().strip()
    assert expected == make_name(created, Person("Jane Doe", "jane@example.org"), "First issue")


def test_original_dialect_issue() -> None:
    """The original script's inline values, zone-less times, TODO and comma lists are read."""
    issue = Issue.from_bytes((GOLDEN / "original-issue.xml").read_bytes())
    assert datetime(2008, 11, 14, 23, 41, 47, 123456, tzinfo=UTC) == issue.created
    assert datetime(2008, 11, 15, 10, 0, 0, tzinfo=UTC) == issue.modified
    assert Person("John Wiegley", "johnw@newartisans.com") == issue.author
    assert ("First issue", "The first line.\nThe second line.") == (issue.title, issue.description)
    assert "new" == issue.status
    assert ["ui", "crash"] == issue.tags
    assert ["core", "ui"] == issue.components
    assert ["John Wiegley <johnw@newartisans.com>", "Jane Doe <jane@example.org>"] == issue.reporters
    assert ["johnw@newartisans.com"] == issue.assigned
    # written back, it is in the canonical form and reads the same
    again = Issue.from_bytes(issue.to_bytes())
    assert (issue.tags, issue.components, issue.status, issue.title) == (again.tags, again.components, again.status, again.title)


def test_original_dialect_comment() -> None:
    """A comment_<hash>_<iso>_<text>.xml file of the original script is read with its time and name."""
    path = next(GOLDEN.glob("comment_f00d*"))
    c = Comment.from_bytes(path.read_bytes(), path.name)
    assert ("f00dface" * 5, "I can reproduce it.") == (c.name, c.text)
    assert datetime(2008, 11, 15, 10, 0, 0, 500000, tzinfo=UTC) == c.created


def test_project_defaults_and_components() -> None:
    """Without a project.xml the FORMAT.md defaults hold; components carry their owners."""
    d = Project()
    assert (["new", "open", "pending", "deferred", "closed"], ["closed"]) == (d.statuses, d.closed)
    p = Project.from_bytes((GOLDEN / "project.xml").read_bytes())
    assert ["Jane Doe <jane@example.org>"] == p.component_owners(["core", "docs"])
    assert ["core", "docs"] == p.legal("components")


def test_validation_lists_legal_values() -> None:
    """An illegal value is reported with the legal ones; a version must name a tag."""
    p = Project.from_bytes((GOLDEN / "project.xml").read_bytes())
    issue = Issue.from_bytes((GOLDEN / "issue.xml").read_bytes())
    assert [] == p.validate(issue, set())
    from dataclasses import replace

    bad = replace(issue, severity="huge", components=["core", "gui"], version="9.9")
    assert [
        "illegal severity 'huge'; legal values are: major, minor",
        "illegal components 'gui'; legal values are: core, docs",
        "version '9.9' names no tag of this repository; tags are: v1.0",
    ] == p.validate(bad, {"v1.0"})


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<issue><title>&lol2;</title></issue>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE issue [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<issue><title>&xxe;</title></issue>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL, b"<issue><title>unclosed</issue>", b"", b"\xff\xfe"])
def test_hostile_or_broken_xml_is_refused(data: bytes) -> None:
    """Entity expansion, external entities and broken XML are refused with FormatError, never obeyed."""
    with pytest.raises(FormatError):
        Issue.from_bytes(data)


def test_wrong_root_is_refused() -> None:
    """A project.xml where an issue.xml belongs is refused."""
    with pytest.raises(FormatError, match="expected a <issue> file"):
        Issue.from_bytes((GOLDEN / "project.xml").read_bytes())


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@pytest.mark.slow  # ~1.5 s: hypothesis
@given(title=text.filter(lambda t: t.strip()), description=text,
       tags=st.lists(text.filter(lambda t: t.strip() and "," not in t and t == t.strip()), max_size=4))
def test_any_text_round_trips(title: str, description: str, tags: list[str]) -> None:
    """Any text survives write -> read -> write byte for byte (after XML's forbidden characters go)."""
    issue = Issue(created=datetime(2020, 1, 1, tzinfo=UTC), author=Person("A", "a@x"), title=title, description=description, tags=tags)
    data = issue.to_bytes()
    assert data == Issue.from_bytes(data).to_bytes()
