"""Issue, Comment and Project: the records of docs/FORMAT.md and their files.

Each record converts to and from `xmlformat.Node` trees; `to_bytes` / `from_bytes` are the files.
Reading accepts the original git-issues script's dialect too (inline values, zone-less times,
`TODO`, comma-joined lists, `comment_<hash>_<iso>_<text>.xml`); writing is always canonical.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from mailtrack.fields import ISSUE_FIELDS, LIST_FIELDS, PEOPLE_FIELDS, TEXT_FIELDS, TIME_FIELDS
from mailtrack.tracker.xmlformat import DECLARATION, FormatError, Node, clean_text, dumps, loads

NAME_RE = re.compile(r"^[0-9a-f]{40}$")
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"



def now() -> datetime:
    return datetime.now(UTC)


EARLIEST = datetime(1971, 1, 1, tzinfo=UTC)  # no mail was written before: an earlier time is a broken clock


def written_at(date: datetime | None, at: datetime) -> datetime:
    """When something was written, by the time it claims (a mail's Date, the time a patch's files
    record): that time, unless there is none or it is insane (later than `at`, the time we read it,
    or before EARLIEST); then `at`."""
    return date if date is not None and EARLIEST <= date <= at else at


def blob_sha(content: bytes) -> str:
    """What `git hash-object --stdin` prints for these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def make_name(created: datetime, author: Person, text: str) -> str:
    """An issue's or a comment's name: the original script's rule (FORMAT.md)."""
    stamp = str(created.astimezone(UTC).replace(tzinfo=None))
    named = f"{author.name} <{author.email}>" if author.name else author.email  # unquoted, as the script wrote it
    return blob_sha((stamp + named + text).encode("utf-8"))


# RFC 5322 specials but the period (a period in a name is an obsolete phrase every parser still reads):
# a name holding one is quoted, or a strict parser (Debian's email.utils) reads the mailbox as nobody.
_SPECIALS = set('()<>[]:;@\\,"')
_DOT_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_ANGLE_RE = re.compile(r"^(?P<name>.*)<(?P<addr>[^<>]*)>$", re.DOTALL)
_COMMENT_RE = re.compile(r"^(?P<addr>[^\s()<>]+@[^\s()<>]+)\s*\((?P<name>[^()]*)\)$")  # `addr (Name)`
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


def _phrase(name: str) -> str:
    """A display name as written in a mailbox: quoted (backslash and quote escaped) when it needs it."""
    if name != name.strip() or not _SPECIALS.isdisjoint(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _unphrase(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return _QUOTED_PAIR_RE.sub(r"\1", text[1:-1])
    return text


@dataclass(frozen=True)
class Person:
    """Someone on the branch: a display name (may be empty) and an address (empty for a bare name).

    `parse` is the one reader of identities (commit authors, people in lists, access lists): it
    reads every form we, git and the original script wrote, without email.utils, whose parseaddr
    differs between Python builds (Debian's hardened one reads `a@b <a@b>` as nobody). `mailbox` and
    `ident` write forms that every parser reads back as the same person.
    """

    name: str
    email: str

    @property
    def mailbox(self) -> str:
        """`Name <email>` (the name quoted when it holds a special: `"Smith, John" <j@x>`), or the bare address."""
        return f"{_phrase(self.name)} <{self.email}>" if self.name else self.email

    @property
    def ident(self) -> str:
        """As a commit's author or committer: `Name <email>` with a name git accepts, never empty: a
        nameless person is named by the local part of the address (or the whole address, quoted, when
        that is no plain word), never `addr <addr>`."""
        email = re.sub(r"[<>\s]", "", self.email) or "unknown"
        name = " ".join(re.sub(r"[<>\x00-\x1f\x7f]", " ", self.name).split())
        if not name:
            local = email.rpartition("@")[0]
            name = local if _DOT_ATOM_RE.fullmatch(local) else email
        return f"{_phrase(name)} <{email}>"

    @classmethod
    def parse(cls, text: str) -> Person:
        """A person from `Name <addr>`, `"Quoted, Name" <addr>`, `<addr>`, `addr`, `addr (Name)` or a bare
        name; the old `addr <addr>` form is the nameless addr."""
        text = text.strip()
        if (angle := _ANGLE_RE.match(text)) is not None:
            name, addr = _unphrase(angle["name"]), angle["addr"].strip()
            return cls("" if name.lower() == addr.lower() else name, addr)
        if (comment := _COMMENT_RE.match(text)) is not None:
            return cls(comment["name"].strip(), comment["addr"])
        if "@" in text and not any(c.isspace() for c in text):
            return cls("", text)
        return cls(text, "")

    def __str__(self) -> str:
        return self.mailbox


# --- values <-> nodes -------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """A time in FORMAT.md's form or the original script's (zone-less: read as UTC)."""
    t = text.strip()
    if len(t) == 16 and t[8] == "T" and t[15] == "Z" and t[:8].isdigit() and t[9:15].isdigit() and t.isascii():
        try:  # TIME_FORMAT, as every file we write has it: strptime costs 15 times more
            return datetime(int(t[:4]), int(t[4:6]), int(t[6:8]), int(t[9:11]), int(t[11:13]), int(t[13:15]), tzinfo=UTC)
        except ValueError:
            pass  # not a real date (month 13): strptime's and fromisoformat's verdict below
    elif len(t) == 23 and t[8] == "T" and t[15] == "." and t[22] == "Z" and t.isascii() and t[:8].isdigit() \
            and t[9:15].isdigit() and t[16:22].isdigit():
        try:  # STAMP_FORMAT, as comment file names have it
            return datetime(int(t[:4]), int(t[4:6]), int(t[6:8]), int(t[9:11]), int(t[11:13]), int(t[13:15]),
                            int(t[16:22]), tzinfo=UTC)
        except ValueError:
            pass
    for fmt in (TIME_FORMAT, STAMP_FORMAT, "%Y%m%dT%H%M%S", "%Y%m%dT%H%M%S.%f"):
        try:
            return datetime.strptime(t, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"not a time: {t!r}") from None
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def format_time(d: datetime) -> str:
    return d.astimezone(UTC).strftime(TIME_FORMAT)


def _text(node: Node | None) -> str:
    if node is None:
        return ""
    if node.children:  # an element whose value is itself an element: take the first text
        return _text(node.children[0])
    return node.text or ""


def _time_node(tag: str, d: datetime) -> Node:
    return Node(tag, children=[Node("datetime", format_time(d))])


def _read_time(node: Node | None) -> datetime | None:
    if node is None:
        return None
    inner = node.child("datetime")
    t = _text(inner) if inner is not None else _text(node)
    return parse_time(t) if t.strip() else None


def _list_node(tag: str, values: list[str]) -> Node:
    values = [c for c in (clean_text(v).strip() for v in values) if c]  # as a reader will see them
    if not values:
        return Node(tag, children=[Node("list")])
    return Node(tag, children=[Node("list", children=[Node("item", v) for v in values])])


def _read_list(node: Node | None, people: bool = False) -> list[str]:
    if node is None:
        return []
    inner = node.child("list")
    if inner is not None:
        return [i.text.strip() for i in inner.children if i.tag == "item" and i.text and i.text.strip()]
    text = _text(node).strip()  # the original script: one comma-joined text
    if not text:
        return []
    if people:
        return [p.mailbox if p.email else p.name for p in map(Person.parse, split_people(text)) if p.email or p.name]
    return [v.strip() for v in text.split(",") if v.strip()]


def split_people(text: str) -> list[str]:
    """Comma-joined people (the original script's lists, `cc ID +a,b` values): split at the commas outside
    quotes and angle brackets, so `"Smith, John" <j@x.org>` stays one person."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"' and not angle:
            quoted = not quoted
        elif c in "<>" and not quoted:
            angle = c == "<"
        elif c == "," and not quoted and not angle:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    return [part.strip() for part in [*parts, "".join(current)] if part.strip()]


def _person_node(tag: str, p: Person) -> Node:
    return Node(tag, children=[Node("person", children=[Node("name", p.name), Node("email", p.email)])])


def _read_person(node: Node | None) -> Person:
    if node is None:
        return Person("", "")
    inner = node.child("person")
    if inner is not None:
        return Person(_text(inner.child("name")).strip(), _text(inner.child("email")).strip())
    return Person.parse(_text(node))


def dedupe_key(value: str) -> str:
    """What makes two values of a list field the same one: a person's address, else the value."""
    return Person.parse(value).email.lower() or value.lower() if "@" in value else value


def dedupe(values: list[str]) -> list[str]:
    """Values in first-seen order, each once (people compared by address)."""
    seen: set[str] = set()
    out = []
    for v in values:
        key = dedupe_key(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _extension(extensions: list[Node], tag: str) -> str:
    for n in extensions:
        if n.tag == tag:
            return _text(n).strip()
    return ""


def _with_extension(extensions: list[Node], tag: str, value: str) -> list[Node]:
    rest = [n for n in extensions if n.tag != tag]
    return ([Node(tag, value)] + rest) if value else rest


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    created: datetime
    author: Person
    title: str
    summary: str = ""
    description: str = ""
    reporters: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)
    carbons: list[str] = field(default_factory=list)
    status: str = "new"
    resolution: str = ""
    type: str = "defect"
    components: list[str] = field(default_factory=list)
    version: str = ""
    milestone: str = ""
    severity: str = "major"
    priority: str = "med"
    tags: list[str] = field(default_factory=list)
    modified: datetime | None = None
    extensions: list[Node] = field(default_factory=list)
    name: str = ""

    @property
    def message_id(self) -> str:
        return _extension(self.extensions, "message-id")

    def with_message_id(self, message_id: str) -> Issue:
        return replace(self, extensions=_with_extension(self.extensions, "message-id", message_id))

    def get(self, fieldname: str) -> str | list[str]:
        value = getattr(self, fieldname)
        if isinstance(value, datetime):
            return format_time(value)
        if isinstance(value, Person):
            return value.mailbox
        return value  # type: ignore[no-any-return]

    def record(self) -> dict[str, object]:
        """Every field as text or list of text, plus the Message-ID: what `list` shows and filters."""
        record: dict[str, object] = {f: self.get(f) for f in ISSUE_FIELDS}
        record["message_id"] = self.message_id
        return record

    def to_node(self) -> Node:
        kids: list[Node] = []
        for f in ISSUE_FIELDS:
            v = getattr(self, f)
            if f in TIME_FIELDS:
                kids.append(_time_node(f, v or self.created))
            elif f == "author":
                kids.append(_person_node(f, v))
            elif f in LIST_FIELDS:
                kids.append(_list_node(f, v))
            else:
                kids.append(Node(f, clean_text(v) or None))
        return Node("issue", children=kids + self.extensions)

    def to_bytes(self) -> bytes:
        return dumps(self.to_node())

    @classmethod
    def from_node(cls, node: Node, name: str = "") -> Issue:
        by_tag = {c.tag: c for c in reversed(node.children)}
        created = _read_time(by_tag.get("created"))
        if created is None:
            raise FormatError("issue.xml has no <created> time")
        values: dict[str, object] = {"created": created, "name": name}
        values["modified"] = _read_time(by_tag.get("modified")) or created
        values["author"] = _read_person(by_tag.get("author"))
        for f in LIST_FIELDS:
            values[f] = _read_list(by_tag.get(f), people=f in PEOPLE_FIELDS)
        for f in TEXT_FIELDS:
            if f in by_tag:
                values[f] = _text(by_tag[f])
        if str(values.get("status", "")).strip() == "TODO":
            values["status"] = "new"  # the original script's open state
        for f in ("status", "resolution", "type", "version", "milestone", "severity", "priority"):
            if f in values:
                values[f] = str(values[f]).strip()
        values["extensions"] = [c for c in node.children if c.tag not in ISSUE_FIELDS]
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "") -> Issue:
        return _canonical_issue(data, name) or cls.from_node(loads(data, "issue"), name)


# --- issue.xml as we write it, read without a tree ----------------------------------------------
# A file in exactly the writer's form (xmlformat.dumps of Issue.to_node: one element or value per line,
# the fields in order, text escaped as the writer escapes it, no attributes, no comment, no DTD, then
# leaf extensions) is read by one regular expression: the same Issue that loads() and from_node() give,
# ~6x faster (a cold index reads every issue). Anything else, however slightly off, goes the XML way.

_T = "[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"  # text that needs no unescaping to be XML's
_TEXT = f"({_T}(?:&(?:amp|lt|gt|quot|apos);{_T})*)"  # and with the entities the writer writes


def _leaf(tag: str) -> str:
    return f"(?:<{tag}/>|<{tag}>\n{_TEXT}\n</{tag}>)\n"


@functools.cache  # compiled on the first read, not at import: a command that reads no file never pays for it
def _canonical_pattern(root: str) -> re.Pattern[str]:
    parts = [re.escape(DECLARATION), f"<{root}>\n"]
    for f, kind in _LAYOUT[root]:
        if kind == "time":
            parts.append(f"<{f}>\n<datetime>\n([0-9]{{8}}T[0-9]{{6}}Z)\n</datetime>\n</{f}>\n")
        elif kind == "author":
            parts.append(f"<author>\n<person>\n{_leaf('name')}{_leaf('email')}</person>\n</author>\n")
        elif kind == "list":
            parts.append(f"<{f}>\n(?:<list/>|<list>\n((?:<item>\n{_T}(?:&(?:amp|lt|gt|quot|apos);{_T})*\n</item>\n)*)</list>)\n</{f}>\n")
        else:
            parts.append(_leaf(f))
    parts.append("((?:<[a-z][a-z0-9-]*/>\n|<(?P<tag>[a-z][a-z0-9-]*)>\n" + _TEXT.replace("(", "(?:", 1) + f"\n</(?P=tag)>\n)*)</{root}>\n")
    return re.compile("".join(parts))


_ITEM = re.compile(f"<item>\n{_TEXT}\n</item>\n")
_EXTENSION = re.compile(f"<([a-z][a-z0-9-]*)/>\n|<([a-z][a-z0-9-]*)>\n{_TEXT}\n</\\2>\n")


def _unescape(text: str) -> str:
    if "&" not in text:
        return text
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace("&amp;", "&")


def _canonical_values(data: bytes, root: str) -> tuple[dict[str, object], list[Node]] | None:
    """The fields of a file in exactly the writer's form (times as their text) and its extensions;
    None for any other file (read it as XML). `root`: issue or comment, the layouts _LAYOUT gives."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    m = _canonical_pattern(root).fullmatch(text)
    if m is None:
        return None
    groups = m.groups()
    at = 0
    values: dict[str, object] = {}
    for f, kind in _LAYOUT[root]:
        value = groups[at]
        at += 1
        if kind == "time":
            values[f] = value
        elif kind == "author":
            values[f] = Person(_unescape(value or "").strip(), _unescape(groups[at] or "").strip())
            at += 1
        elif kind == "list":
            values[f] = [v for v in (_unescape(i).strip() for i in _ITEM.findall(value)) if v] if value else []
        elif kind == "strip":
            values[f] = _unescape(value or "").strip()
        else:
            values[f] = _unescape(value or "")
    extensions = []
    for empty, tag, value in _EXTENSION.findall(groups[at]):
        if (empty or tag) in values:  # a field twice: the XML way decides which one counts
            return None
        extensions.append(Node(empty, None) if empty else Node(tag, _unescape(value)))
    return values, extensions


def _canonical_issue(data: bytes, name: str) -> Issue | None:
    """The Issue of a file in exactly the writer's form; None for any other file (read it as XML)."""
    found = _canonical_values(data, "issue")
    if found is None:
        return None
    values, extensions = found
    if values["status"] == "TODO":
        values["status"] = "new"  # the original script's open state
    for f in TIME_FIELDS:
        values[f] = parse_time(str(values[f]))
    return Issue(name=name, extensions=extensions, **values)  # type: ignore[arg-type]


def issue_record(data: bytes, name: str = "") -> tuple[dict[str, object], str]:
    """(record, the author's address) of an issue.xml: Issue.from_bytes(data, name).record() and its
    author.email, without an Issue in between for a file in the writer's form (what an index reads).
    FormatError as from_bytes."""
    found = _canonical_values(data, "issue")
    if found is None:
        issue = Issue.from_bytes(data, name)
        return issue.record(), issue.author.email
    values, extensions = found
    if values["status"] == "TODO":
        values["status"] = "new"  # the original script's open state
    author = values["author"]
    assert isinstance(author, Person)
    values["author"] = author.mailbox
    for f in TIME_FIELDS:
        stamp = str(values[f])
        if stamp < "1000" or not _real_time(stamp):  # not what format_time gives back, or no time at all: as record() does
            values[f] = format_time(parse_time(stamp))
    values["message_id"] = _extension(extensions, "message-id")
    return values, author.email


def _real_time(stamp: str) -> bool:
    try:
        datetime(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15]))
    except ValueError:
        return False
    return True


_STRIPPED = ("status", "resolution", "type", "version", "milestone", "severity", "priority")
_LAYOUT = {  # each field of a file in the writer's order, and the form of its value
    "issue": tuple((f, "time" if f in TIME_FIELDS else "author" if f == "author" else "list" if f in LIST_FIELDS
                    else "strip" if f in _STRIPPED else "text") for f in ISSUE_FIELDS),
    "comment": (("created", "time"), ("modified", "time"), ("author", "author"), ("comment", "text"), ("attachments", "list")),
}


@dataclass(frozen=True)
class Comment:
    created: datetime
    author: Person
    text: str
    attachments: list[str] = field(default_factory=list)
    modified: datetime | None = None
    extensions: list[Node] = field(default_factory=list)
    name: str = ""

    @classmethod
    def new(cls, author: Person, text: str, created: datetime | None = None, **kw: object) -> Comment:
        created = created or now()
        text = clean_text(text)
        return cls(created=created, author=author, text=text, name=make_name(created, author, text), **kw)  # type: ignore[arg-type]

    @property
    def filename(self) -> str:
        return f"comment_{self.created.astimezone(UTC).strftime(STAMP_FORMAT)}_{self.name}.xml"

    @property
    def message_id(self) -> str:
        return _extension(self.extensions, "message-id")

    @property
    def in_reply_to(self) -> str:
        return _extension(self.extensions, "in-reply-to")

    def to_node(self) -> Node:
        kids = [
            _time_node("created", self.created),
            _time_node("modified", self.modified or self.created),
            _person_node("author", self.author),
            Node("comment", clean_text(self.text) or None),
            _list_node("attachments", self.attachments),
        ]
        return Node("comment", children=kids + self.extensions)

    def to_bytes(self) -> bytes:
        return dumps(self.to_node())

    @classmethod
    def from_bytes(cls, data: bytes, filename: str = "") -> Comment:
        found = _canonical_values(data, "comment")  # the writer's form: no tree (see _canonical_pattern)
        if found is not None:
            values, extensions = found
            stamp, name = parse_comment_filename(filename) if filename else (None, "")
            made = parse_time(str(values["created"]))
            if stamp is not None and stamp.replace(microsecond=0) == made.replace(microsecond=0):
                made = stamp  # the file name keeps the microseconds the element drops
            return cls(created=made, modified=parse_time(str(values["modified"])), author=values["author"],  # type: ignore[arg-type]
                       text=str(values["comment"]), attachments=values["attachments"], extensions=extensions, name=name)  # type: ignore[arg-type]
        node = loads(data, "comment")
        by_tag = {c.tag: c for c in reversed(node.children)}
        stamp, name = parse_comment_filename(filename) if filename else (None, "")
        created = _read_time(by_tag.get("created")) or stamp
        if created is None:
            raise FormatError(f"comment {filename} has no <created> time")
        if stamp is not None and stamp.replace(microsecond=0) == created.replace(microsecond=0):
            created = stamp  # the file name keeps the microseconds the element drops
        known = ("created", "modified", "author", "comment", "attachments")
        return cls(
            created=created,
            modified=_read_time(by_tag.get("modified")) or created,
            author=_read_person(by_tag.get("author")),
            text=_text(by_tag.get("comment")),
            attachments=_read_list(by_tag.get("attachments")),
            extensions=[c for c in node.children if c.tag not in known],
            name=name,
        )


_COMMENT_NEW = re.compile(r"^comment_(\d{8}T\d{6}(?:\.\d+)?Z?)_([0-9a-f]{40})\.xml$")
_COMMENT_OLD = re.compile(r"^comment_([0-9a-f]{40})_([0-9T:.\-]+?)(?:_.*)?\.xml$")


def is_comment_filename(filename: str) -> bool:
    return bool(_COMMENT_NEW.match(filename) or _COMMENT_OLD.match(filename))


def parse_comment_filename(filename: str) -> tuple[datetime | None, str]:
    """(creation time, name) from `comment_<stamp>_<c>.xml` or the original script's form."""
    m = _COMMENT_NEW.match(filename)
    if m:
        return parse_time(m.group(1)), m.group(2)
    m = _COMMENT_OLD.match(filename)
    if m:
        try:
            return parse_time(m.group(2)), m.group(1)
        except FormatError:
            return None, m.group(1)
    return None, ""


RESERVED_NAMES = ("issue.xml", "project.xml")


def is_reserved_filename(filename: str) -> bool:
    """Names an attachment may never take: they mean something else in an issue directory."""
    lower = filename.lower()
    return lower in RESERVED_NAMES or (lower.startswith("comment_") and lower.endswith(".xml"))


MAX_ATTACHMENT_NAME = 255  # bytes of an attachment's name: what file systems take


def attachment_name_problem(filename: str) -> str:
    """Why an attachment in an issue directory may not be called `filename`; "" when it may.

    The one rule for every way in (mail, patch mails, the CLI): a name a git tree may hold
    (tracker.gitnames, as `git fsck` judges it), no control character (a newline), no hidden
    file, none of the format's own names, and short enough to be checked out.
    """
    from mailtrack.tracker.gitnames import tree_name_problem  # dulwich's path checks: only where a name is judged, not every read

    problem = tree_name_problem(filename)
    if problem:
        return problem
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        return f"{filename!r} holds a control character"
    if filename.startswith("."):
        return f"'{filename}' is a hidden file"
    if is_reserved_filename(filename):
        return f"'{filename}' is a name the issue's own files take"
    if len(filename.encode("utf-8", "surrogateescape")) > MAX_ATTACHMENT_NAME:
        return f"a name of more than {MAX_ATTACHMENT_NAME} bytes"
    return ""


def attachment_name(filename: str) -> str:
    """`filename`, or, when an attachment may not take it, `attachment-<filename>` (or
    `attachment.bin` when even that may not be): for names that came with a mail."""
    if not attachment_name_problem(filename):
        return filename
    prefixed = "attachment-" + filename.lstrip(".")
    return prefixed if not attachment_name_problem(prefixed) else "attachment.bin"


# --- project ----------------------------------------------------------------------------------

PROJECT_LISTS = ("statuses", "resolutions", "types", "versions", "milestones", "severities", "priorities")
PROJECT_ORDER = (
    "statuses", "resolutions", "types", "components", "versions", "milestones", "severities",
    "priorities", "closed-statuses",
)  # fmt: skip
# project.xml element -> issue field it governs
FIELD_OF = {
    "statuses": "status", "resolutions": "resolution", "types": "type", "components": "components",
    "versions": "version", "milestones": "milestone", "severities": "severity", "priorities": "priority",
}  # fmt: skip
LIST_OF = {v: k for k, v in FIELD_OF.items()}
DEFAULTED = ("statuses", "resolutions", "types", "severities", "priorities")  # the lists a `<default>` may mark
SCALES = ("severity", "priority")  # ordered from most to least urgent: without a marker, the middle value


@dataclass(frozen=True)
class Component:
    name: str
    owners: list[str] = field(default_factory=list)
    extensions: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Project:
    statuses: list[str] = field(default_factory=lambda: ["new", "open", "pending", "deferred", "closed"])
    resolutions: list[str] = field(default_factory=lambda: ["fixed", "wontfix", "dup"])
    types: list[str] = field(default_factory=lambda: ["defect", "feature", "docs"])
    components: list[Component] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    milestones: list[str] = field(default_factory=list)
    severities: list[str] = field(default_factory=lambda: ["blocker", "critical", "major", "minor", "cosmetic"])
    priorities: list[str] = field(default_factory=lambda: ["high", "med", "low"])
    closed_statuses: list[str] | None = None
    extensions: list[Node] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)  # field -> the value its list's `<default>` marks

    @property
    def closed(self) -> list[str]:
        return self.closed_statuses if self.closed_statuses is not None else ["closed"]

    def is_open(self, issue: Issue) -> bool:
        return issue.status not in self.closed

    def legal(self, fieldname: str) -> list[str]:
        """The legal values of an issue field (empty for free fields)."""
        if fieldname == "components":
            return [c.name for c in self.components]
        element = LIST_OF.get(fieldname)
        return list(getattr(self, element)) if element else []

    def default(self, fieldname: str) -> str:
        """The value a new issue takes, by mail and by `git issues new` alike: the one its list's
        `<default>` marks (when it is a listed value); else, for the scales (severity, priority),
        the middle value (of an even count, the more urgent of the two middle ones); else the first."""
        values = self.legal(fieldname)
        if not values:
            return ""
        marked = self.defaults.get(fieldname, "")
        if marked in values:
            return marked
        return values[(len(values) - 1) // 2] if fieldname in SCALES else values[0]

    def component_owners(self, names: list[str]) -> list[str]:
        return dedupe([o for c in self.components if c.name in names for o in c.owners])

    def to_node(self) -> Node:
        kids = []
        for element in PROJECT_ORDER:
            if element == "components":
                comps = [
                    Node("component", children=[Node("name", c.name), _list_node("owners", c.owners)] + c.extensions)
                    for c in self.components
                ]
                kids.append(Node("components", children=[Node("list", children=comps)]))
            elif element == "closed-statuses":
                if self.closed_statuses is not None:
                    kids.append(_list_node(element, self.closed_statuses))
            else:
                node = _list_node(element, getattr(self, element))
                marked = self.defaults.get(FIELD_OF[element], "")
                if element in DEFAULTED and marked:
                    node.children.append(Node("default", clean_text(marked).strip() or None))
                kids.append(node)
        return Node("project", children=kids + self.extensions)

    def to_bytes(self) -> bytes:
        return dumps(self.to_node())

    @classmethod
    def from_node(cls, node: Node) -> Project:
        by_tag = {c.tag: c for c in reversed(node.children)}
        values: dict[str, object] = {}
        defaults: dict[str, str] = {}
        for element in PROJECT_LISTS:
            if element in by_tag:
                values[element] = _read_list(by_tag[element])
                marker = by_tag[element].child("default") if element in DEFAULTED else None
                if marker is not None and _text(marker).strip():
                    defaults[FIELD_OF[element]] = _text(marker).strip()
        values["defaults"] = defaults
        if "closed-statuses" in by_tag:
            values["closed_statuses"] = _read_list(by_tag["closed-statuses"])
        comps = by_tag.get("components")
        if comps is not None:
            holder = comps.child("list") or comps
            values["components"] = [
                Component(
                    _text(c.child("name")).strip(),
                    _read_list(c.child("owners"), people=True),
                    [k for k in c.children if k.tag not in ("name", "owners")],
                )
                for c in holder.children
                if c.tag == "component"
            ]
        values["extensions"] = [c for c in node.children if c.tag not in PROJECT_ORDER]
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_bytes(cls, data: bytes) -> Project:
        return cls.from_node(loads(data, "project"))

    def validate(self, issue: Issue, tags: set[str] | None = None) -> list[str]:
        """Every way the issue breaks the rules of this project, as messages; [] when legal.

        `tags` are the repository's tag names: a version must name one of them.
        """
        errors = []
        for f in ("status", "type", "severity", "priority"):
            errors += self._check(f, [issue.get(f)], required=True)  # type: ignore[list-item]
        for f in ("resolution", "milestone"):
            errors += self._check(f, [issue.get(f)] if issue.get(f) else [])  # type: ignore[list-item]
        errors += self._check("components", issue.components)
        if issue.version:
            errors += self._check("version", [issue.version], free_if_empty=True)
            if tags is not None and issue.version not in tags:
                known = ", ".join(sorted(tags)) or "(none)"
                errors.append(f"version '{issue.version}' names no tag of this repository; tags are: {known}")
        if not issue.title.strip():
            errors.append("the title is empty")
        return errors

    def _check(self, fieldname: str, values: list[str], required: bool = False, free_if_empty: bool = False) -> list[str]:
        legal = self.legal(fieldname)
        if free_if_empty and not legal:
            return []
        if required and not [v for v in values if v]:
            return [f"{fieldname} is empty; legal values are: {', '.join(legal)}"]
        bad = [v for v in values if v not in legal]
        if not bad:
            return []
        shown = ", ".join(legal) if legal else "(none: project.xml lists no " + LIST_OF[fieldname] + ")"
        return [f"illegal {fieldname} '{v}'; legal values are: {shown}" for v in bad]
