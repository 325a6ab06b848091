"""Bytes -> parsed mail: headers, readable body text, the reply's own text, attachments.

Pure parsing, no I/O. Two helpers were split off to keep this file readable: `decode` (bytes and
raw header values to text) and `quotes` (reply trimming, format=flowed, pseudo-headers); they
import nothing from mailtrack either. `parse` never raises: malformed MIME, bad base64, broken
headers, unknown or mislabelled charsets and binary garbage all give a `ParsedMail` holding
whatever could be read.

The MIME structure is parsed with `policy.compat32`: `policy.default` builds an `email.headerregistry`
object for every header the parser looks at (Content-Type of each part, ...), 60% of the parse, and
nothing here reads them. Header values are taken from the parser's raw header list and decoded by `decode`, and MIME
parameters are read with the legacy (compat32) parameter code: the `email.headerregistry`
parsers of `policy.default` can raise on hostile input and turn 8-bit names into U+FFFD.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import policy

# The parser headerregistry is built on: only it says which mailboxes of a list were invalid (their token type)
from email._header_value_parser import get_address_list
from email.errors import ObsoleteHeaderDefect
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

from mailtrack.mail.addresses import Ours
from mailtrack.mail.decode import (
    CONTROL_RE,
    clean_text,
    decode_base64,
    decode_text,
    decode_words,
    header_text,
    unfold_raw,
)
from mailtrack.mail.ids import LOOP_HEADER, hashed_message_id
from mailtrack.mail.quotes import own_text, split_pseudo_headers, trim_reply, unflow

__all__ = [
    "Attachment", "ParsedMail", "clean_subject", "parse", "safe_filename", "split_pseudo_headers",
    "strip_subject_tag", "subject_tag", "unique_filename",
]  # fmt: skip

MAX_NAME_LENGTH = 100  # characters of an attachment's file name, extension included
MAX_NAME_BYTES = 200  # and its UTF-8 bytes: file systems allow 255
MAX_DEPTH = 30  # MIME nesting we follow; deeper parts are skipped with a note
MAX_PARTS = 1000  # MIME parts we read; the rest are skipped with a note
MAX_FROM_LENGTH = 2000  # characters of a From field we parse; a longer one is no sender
MAX_LIST_PARSED = 16_000  # characters of a To, Cc or Reply-To field we read, element by element (500 addresses or so)
MAX_LIST_ELEMENT_LENGTH = 320  # characters of one of them: an address and a name of 250 or so
RESERVED_NAME_RE = re.compile(r"^(issue\.xml|project\.xml|comment_.*\.xml)$", re.IGNORECASE)
SIGNATURE_TYPES = frozenset({
    "application/pgp-signature", "application/pkcs7-signature",
    "application/x-pkcs7-signature", "application/pgp-encrypted",
})  # fmt: skip
EXTENSIONS = {
    "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "text/csv": ".csv",
    "text/x-diff": ".diff", "text/x-patch": ".patch", "text/rfc822-headers": ".txt",
    "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
    "image/svg+xml": ".svg", "application/pdf": ".pdf", "application/zip": ".zip",
    "application/gzip": ".gz", "application/json": ".json", "application/ms-tnef": ".dat",
    "message/rfc822": ".eml", "message/global": ".eml",
    "message/delivery-status": ".txt", "message/disposition-notification": ".txt",
}  # fmt: skip
FALLBACK_NAMES = {
    "text/rfc822-headers": "rfc822-headers.txt", "application/ms-tnef": "winmail.dat",
    "text/calendar": "invite.ics",
}  # fmt: skip
# Outlook, Notes, Exchange and friends in several languages; matched at the start of a subject.
OOO_RE = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|auto[- ]?response|out of (the )?office( autoreply)?"
    r"|ooo|auto|abwesenheitsnotiz|automatische antwort|abwesend|réponse automatique"
    r"|absen(ce|t)( du bureau)?|respuesta automática|fuera de la oficina|afwezig"
    r"|automatisch antwoord|afwezigheidsbericht|risposta automatica|fuori sede|autosvar|frånvaro"
    r"|automaattinen vastaus|resposta automática|odpowiedź automatyczna|自动回复|自動回覆|自動返信)"
    r"\s*([:：]|$)",
    re.IGNORECASE,
)
REPLY_PREFIX_RE = re.compile(
    r"^\s*(re|aw|sv|vs|antw|antwort|wg|fwd?|tr|rif|r|i|réf|ref|rép|rv|enc|res|odp|pd|ynt|vl"
    r"|vb|atb|bls|回复|回覆|答复|转发|轉寄|返信|転送)\.?\s*([\[(]\d+[\])]|\^\d+)?\s*[:：]\s*",
    re.IGNORECASE,
)
LIST_PREFIX_RE = re.compile(r"^\s*\[[^\[\]#=]*\]\s*")  # "[dev-list] ": no '#' (tag), no '=' (cmd)
_REPLY_PREFIX_AT, _LIST_PREFIX_AT = (re.compile(p.pattern.removeprefix("^"), p.flags) for p in (REPLY_PREFIX_RE, LIST_PREFIX_RE))  # match(text, pos)
# An address in a header value, found from the start of a word only (the look-behind): unanchored, a
# search tried every position of a long word with no "@" to its end, O(n^2) (100 KB: 23 s).
ADDR_RE = re.compile(r"(?<![^\s<>()\[\]\\,;:\"])[^\s<>()\[\]\\,;:\"]+@[^\s<>()\[\]\\,;:\"]+")
CONTENT_TYPE_RE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
MSG_ID_RE = re.compile(r"<([^<>\s]+)>")
_LIST_SPECIAL_RE = re.compile(r'\\.|["()<>:;,]', re.DOTALL)  # what splits an address list, or does not
SELF_NAMED_RE = re.compile(r"([^\s<>@\"]+@[^\s<>@\"]+)\s*<\1>", re.IGNORECASE)  # `a@x <a@x>`
COMMENT_NAME_RE = re.compile(r"^[^\s()<>]+@[^\s()<>]+\s*\(([^()]*)\)$")  # From: addr (Name)
MACHINE_KINDS = ("loop", "bounce", "report", "auto-reply", "bulk", "list")


@dataclass(frozen=True)
class Attachment:
    filename: str  # safe and unique within the mail (see `safe_filename`)
    content_type: str  # bare "type/subtype", lowercase
    data: bytes


@dataclass(frozen=True)
class ParsedMail:
    raw: bytes
    message_id: str  # with angle brackets, made from a hash of `raw` when the mail has none
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_name: str
    from_addr: str  # lowercase, "" if none or if the From field is not exactly one mailbox (see from_problem)
    reply_to: tuple[tuple[str, str], ...]  # informational only, never an identity
    to: tuple[tuple[str, str], ...]  # (name, lowercase address)
    cc: tuple[tuple[str, str], ...]
    delivered_to: tuple[str, ...]
    return_path: str | None  # None: no header; "": the null path "<>"
    date: datetime | None  # aware, UTC
    body: str
    reply_text: str
    attachments: tuple[Attachment, ...]
    skipped: tuple[str, ...]
    machine: str | None  # why this is machine mail that must never get a reply
    auth_results: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()  # every header, decoded and unfolded, in order
    all_quote: bool = False  # nothing of the sender's own was found: reply_text is the whole body
    from_problem: str = ""  # why the From field(s) give no one sender: "the From field is not one mailbox: ..."

    def header(self, name: str) -> str | None:
        """The first header of that name, decoded and unfolded; None if there is none."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def parse(
    raw: bytes,
    *,
    max_attachment_size: int = 10 * 1024 * 1024,
    loop_header: str = LOOP_HEADER,
    ours: Ours | None = None,
) -> ParsedMail:
    """Parse one mail. Never raises on any input bytes."""
    raw = bytes(raw)
    msg = _parse_bytes(raw)
    raw_headers = _raw_items(msg) if msg is not None else []
    headers = tuple((name, header_text(value)) for name, value in raw_headers)

    def first(name: str) -> str | None:
        return next((value for key, value in headers if key.lower() == name), None)

    from_name, from_addr, from_problem = _sender(raw_headers)
    return_path = None
    if (value := first("return-path")) is not None:
        found = ADDR_RE.search(value)
        return_path = found.group(0).lower() if found else ""
    parts = _Parts(max_attachment_size)
    if msg is not None:
        parts.walk(msg, 0, want_body=True)
    else:
        parts.texts.append(clean_text(decode_text(raw, None)))
    body = "\n\n".join(t.strip("\n") for t in parts.texts if t.strip()).rstrip()
    subject = " ".join((first("subject") or "").split())
    own = own_text(body)
    mail = ParsedMail(
        raw=raw,
        message_id=_message_id(first("message-id"), raw),
        in_reply_to=next(iter(_msg_ids(first("in-reply-to"))), None),
        references=tuple(dict.fromkeys(_msg_ids(" ".join(_all(headers, "references"))))),
        subject=subject,
        from_name=from_name,
        from_addr=from_addr,
        reply_to=tuple(_addresses(raw_headers, "reply-to")),
        to=tuple(_addresses(raw_headers, "to")),
        cc=tuple(_addresses(raw_headers, "cc")),
        delivered_to=tuple(
            m.group(0).lower() for v in _all(headers, "delivered-to") if (m := ADDR_RE.search(v))
        ),
        return_path=return_path,
        date=_date(first("date")),
        body=body,
        reply_text=own or trim_reply(body),
        attachments=tuple(parts.attachments()),
        skipped=tuple(dict.fromkeys(parts.skipped)),
        machine=None,
        auth_results=_all(headers, "authentication-results"),
        headers=headers,
        all_quote=bool(body.strip()) and not own,
        from_problem=from_problem,
    )
    reason = _machine_reason(mail, msg, loop_header=loop_header, ours=ours)
    return replace(mail, machine=reason)


def _machine_reason(
    mail: ParsedMail,
    msg: Message | None = None,
    *,
    loop_header: str = LOOP_HEADER,
    ours: Ours | None = None,
) -> str | None:
    """Why this mail was sent by a machine and must never get a reply, or None.

    The reason starts with its kind, one of MACHINE_KINDS, then ": " and the evidence:
    "bounce: null return path (Return-Path: <>)". Precedence: list is kind "list" (a person's
    mail may come through a list: never reply to it, but the router may still take it).
    """
    if mail.header(loop_header) is not None:
        return f"loop: our own {loop_header} header"
    if mail.from_addr and ours is not None and ours.is_ours(mail.from_addr):
        return f"loop: from our own address {mail.from_addr}"
    if mail.return_path == "":
        return "bounce: null return path (Return-Path: <>)"
    if msg is not None and _content_type(msg) == "multipart/report":
        kind = _param(msg, "content-type", "report-type") or "unknown"
        return f"report: multipart/report (report-type={kind})"
    if mail.from_addr.split("@")[0] in ("mailer-daemon", "postmaster"):
        return f"bounce: from {mail.from_addr}"
    if mail.header("x-failed-recipients") is not None:
        return "bounce: X-Failed-Recipients header"
    auto = (mail.header("auto-submitted") or "").strip()
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"auto-reply: Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Autogenerated"):
        if mail.header(name) is not None:
            return f"auto-reply: {name} header"
    precedence = (mail.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"{'list' if precedence == 'list' else 'bulk'}: Precedence: {precedence}"
    if precedence == "auto_reply":
        return "auto-reply: Precedence: auto_reply"
    if OOO_RE.match(mail.subject):
        return f"auto-reply: out-of-office subject {mail.subject[:80]!r}"
    return None


# --- subjects ---------------------------------------------------------------------------------


def clean_subject(subject: str) -> str:
    """Strip reply/forward prefixes ("Re:", "AW:", "Re[2]:", ...) and "[list]" prefixes.

    An issue tag ("[proj #abc1234]") and command brackets ("[status=closed]") are kept.
    """
    text = " ".join(subject.split())
    start = 0  # where the prefixes end: the subject is not copied once per prefix (O(n^2) for "Re: Re: ...")
    while True:
        reply = _REPLY_PREFIX_AT.match(text, start)
        start = reply.end() if reply else start
        listed = _LIST_PREFIX_AT.match(text, start)
        start = listed.end() if listed else start
        if not reply and not listed:
            break
    return re.sub(r"\s*\(fwd\)\s*$", "", text[start:], flags=re.IGNORECASE).strip()


def _tag_re(project: str) -> re.Pattern[str]:
    return re.compile(r"\[\s*" + re.escape(project) + r"\s*#\s*([0-9a-f]{4,40})\s*\]", re.I)


COMMAND_RE = re.compile(r"\[([^\[\]]*=[^\[\]]*)\]")


def subject_tag(subject: str, project: str) -> tuple[str, list[str]] | None:
    """The issue id of the first "[<project> #<id>]" tag, lowercase, and the commands after it.

    Commands are the Roundup-style brackets after the tag: "[status=closed;priority=high]"
    gives ["status=closed", "priority=high"]. None if there is no tag.
    """
    text = " ".join(subject.split())
    match = _tag_re(project).search(text)
    if match is None:
        return None
    commands = []
    for bracket in COMMAND_RE.finditer(text, match.end()):
        for item in bracket.group(1).split(";"):
            key, _, value = item.partition("=")
            if key.strip():
                commands.append(f"{key.strip()}={value.strip()}")
    return match.group(1).lower(), commands


def strip_subject_tag(subject: str, project: str) -> str:
    """The subject as a title: no prefixes, no issue tag, no command brackets after it."""
    text = clean_subject(subject)
    match = _tag_re(project).search(text)
    if match is not None:
        rest = COMMAND_RE.sub(" ", text[match.end() :])
        text = clean_subject(text[: match.start()] + " " + rest)
    return " ".join(text.split())


def issue_title(subject: str, project: str) -> str:
    """The title of the issue a mail opens (or names): its subject without prefixes and tags."""
    return strip_subject_tag(subject, project).strip() or "(no subject)"


def _parse_bytes(raw: bytes) -> Message | None:
    """The MIME tree; failing that (parser bugs, absurd nesting) the headers and a flat body."""
    attempts = ((policy.compat32, False), (policy.compat32, True))
    for pol, headers_only in attempts:
        try:
            return BytesParser(policy=pol).parsebytes(raw, headersonly=headers_only)
        except Exception:  # the parser's own bugs and RecursionError: try a simpler parse
            continue
    return None


def _raw_items(msg: Message) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in msg.raw_items()]


def _all(headers: tuple[tuple[str, str], ...], name: str) -> tuple[str, ...]:
    return tuple(v for k, v in headers if k.lower() == name)


def _elements(value: str) -> Iterator[str]:
    """The top-level elements of an address list, split at commas in one pass over its specials: a
    comma inside a quoted string, a comment, an angle address or a group (`name: a, b;`), or
    escaped, does not split."""
    start, quoted, comment, angle, group = 0, False, 0, False, False
    for m in _LIST_SPECIAL_RE.finditer(value):
        c = m.group(0)
        if c.startswith("\\"):
            continue
        if quoted:
            quoted = c != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(c, 0)
        elif c == '"':
            quoted = True
        elif c == "(":
            comment = 1
        elif angle or c == "<":
            angle = c != ">"
        elif c in ":;":
            group = c == ":"
        elif c == "," and not group:
            yield value[start:m.start()]
            start = m.end()
    yield value[start:]


def _addresses(raw_headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """(display name, lowercase address) pairs of the mailboxes of a To, Cc or Reply-To field, read
    as the From is (the standard library's RFC 5322 parser, the raw value before decoding): an
    element that is no valid mailbox gives nothing, so `bob@example.net <mallory@evil.example>` is
    not bob, and `"bob@example.net"@evil.example` is the mailbox at evil.example it says.

    The parser is slow (some 10 us a character) and its cost grows with the square of its input (it
    copies the rest of the text at each step: 9 s for 32 KB of `(a),`), so the list is split first,
    linearly, each element of at most MAX_LIST_ELEMENT_LENGTH characters is parsed alone (a longer
    one gives nothing), and reading stops after MAX_LIST_PARSED characters of each field."""
    values = [unfold_raw(v) for k, v in raw_headers if k.lower() == name]
    result, parsed = [], 0
    for element in (e for value in values for e in _elements(value)):
        parsed += len(element)
        if parsed > MAX_LIST_PARSED:
            break
        if len(element) > MAX_LIST_ELEMENT_LENGTH or not element.strip():
            continue
        if (self_named := SELF_NAMED_RE.fullmatch(element.strip())) is not None:
            result.append(("", self_named[1].lower()))  # the old nameless `addr <addr>`: one mailbox, no doubt which
            continue
        try:
            mailboxes = get_address_list(element)[0].all_mailboxes
        except Exception:  # the parser's own bugs on hostile input (an IndexError): no address, not a crash
            continue
        for mailbox in mailboxes:
            try:  # its properties walk the token tree again: `"a b".<c@d>` raises an AttributeError there
                if mailbox.token_type != "mailbox" or not mailbox.local_part or not mailbox.domain:
                    continue  # an invalid-mailbox: what the parser could not read as one
                addr = mailbox.addr_spec.lower()
                name = mailbox.display_name or ""
            except Exception:  # the parser's own bugs on hostile input: no address, not a crash
                continue
            if re.search(r"[\s<>\\]", addr) or CONTROL_RE.search(addr):
                continue
            display = " ".join(CONTROL_RE.sub(" ", name).split()).strip("'\"")
            result.append(("" if display.lower() == addr else display, addr))
    return result


def _sender(raw_headers: list[tuple[str, str]]) -> tuple[str, str, str]:
    """(display name, lowercase address, "") of the one mailbox of the From field; ("", "", why) when
    the mail has several From fields or the field is not exactly one mailbox by the standard library's
    RFC 5322 parser, strictly: no invalid syntax (`alice@example.net <mallory@evil.example>` is none),
    no group, no second mailbox, a domain. ("", "", "") when there is no From field.

    The raw value is parsed, before any decoding, so an encoded word stays inside the display name.
    A quoted local part is part of the address: `"alice@example.net"@evil.example` is a mailbox at
    evil.example. Obsolete but unambiguous forms (a period in a name, a route) are accepted.
    """
    values = [unfold_raw(v) for k, v in raw_headers if k.lower() == "from"]
    if not values:
        return "", "", ""
    problem = "the From field is not one mailbox: "
    if len(values) > 1:
        return "", "", problem + f"the mail has {len(values)} From fields"
    value = values[0].strip()
    shown = " ".join(value.split())[:200]
    if len(value) > MAX_FROM_LENGTH:
        return "", "", problem + f"it is over {MAX_FROM_LENGTH} characters long"
    try:
        header = HeaderRegistry()("from", value)
        groups, defects = header.groups, header.defects  # type: ignore[attr-defined]
    except Exception:  # the parser's own bugs on hostile input: no sender, not a crash
        return "", "", problem + f"it does not parse: {shown}"
    invalid = [str(d) for d in defects if not isinstance(d, ObsoleteHeaderDefect)]
    if invalid:
        return "", "", problem + f"{invalid[0]}: {shown}"
    mailboxes = [a for g in groups for a in g.addresses]
    if len(groups) != 1 or groups[0].display_name is not None or len(mailboxes) != 1:
        what = "a group" if any(g.display_name is not None for g in groups) else f"{len(mailboxes)} mailboxes"
        return "", "", problem + f"it holds {what}: {shown}"
    mailbox = mailboxes[0]
    addr = mailbox.addr_spec.lower()
    if not mailbox.username or not mailbox.domain or re.search(r"[\s<>\\]", addr) or CONTROL_RE.search(addr):
        return "", "", problem + f"'{addr}' is no address we can answer: {shown}"
    name = mailbox.display_name
    if not name and (comment := COMMENT_NAME_RE.match(value)) is not None:  # the old `addr (Name)` form
        name = decode_words(comment.group(1))
    display = " ".join(CONTROL_RE.sub(" ", name).split()).strip("'\"")
    return ("" if display.lower() == addr else display), addr, ""


def _msg_ids(value: str | None) -> list[str]:
    return [f"<{m}>" for m in MSG_ID_RE.findall(value or "")]


def _message_id(value: str | None, raw: bytes) -> str:
    ids = _msg_ids(value)
    if ids:
        return ids[0]
    bare = (value or "").strip()
    if bare and re.fullmatch(r"[^<>\s]+", bare):
        return f"<{bare}>"
    return hashed_message_id(raw)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        date = parsedate_to_datetime(value)
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        return date.astimezone(UTC)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


# --- MIME parts -------------------------------------------------------------------------------


def _mime_headers(part: Message) -> Message:
    """The part's MIME headers on a plain (compat32) message, decoded to text.

    The legacy parameter parsing (RFC 2231 continuations included) does not raise on hostile
    input, and 8-bit file names come out as UTF-8 or cp1252 instead of replacement characters.
    """
    view = Message()
    view.set_default_type(part.get_default_type())
    for name, value in _raw_items(part):
        if name.lower() in ("content-type", "content-disposition") and name.lower() not in view:
            view[name] = unfold_raw(value)
    return view


def _content_type(part: Message) -> str:
    """The lowercase "type/subtype"; application/octet-stream when the header makes no sense."""
    ctype = re.sub(r"[^a-z0-9!#$&^_.+/-]", "", _mime_headers(part).get_content_type())
    return ctype if CONTENT_TYPE_RE.fullmatch(ctype) else "application/octet-stream"


def _param(part: Message, header: str, name: str) -> str | None:
    value = _mime_headers(part).get_param(name, None, header)
    if isinstance(value, tuple):  # RFC 2231: (charset, language, text)
        return decode_text(value[2].encode("latin-1", "replace"), value[0])
    return value


def _filename(part: Message) -> str | None:
    view = _mime_headers(part)
    try:
        name = view.get_filename() or view.get_param("name", None)
    except Exception:  # a broken parameter is no file name
        return None
    if isinstance(name, tuple):
        name = decode_text(name[2].encode("latin-1", "replace"), name[0])
    return decode_words(name) if name else None


def _payload(part: Message) -> bytes:
    try:
        payload = part.get_payload()
    except Exception:  # it decodes 8-bit text by a charset that may be garbage
        payload = getattr(part, "_payload", "")  # the raw text, as the parser stored it
    encodings = [v for k, v in _raw_items(part) if k.lower() == "content-transfer-encoding"]
    if isinstance(payload, str) and encodings and header_text(encodings[0]).lower() == "base64":
        return decode_base64(payload)
    try:
        data = part.get_payload(decode=True)
    except Exception:  # undecodable payload: take it as it stands
        data = None
    if isinstance(data, bytes):
        return data
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _serialize(msg: Message) -> bytes | None:
    """A (forwarded) message as bytes, headers as received."""
    try:
        return msg.as_bytes(policy=policy.default.clone(refold_source="none"))
    except Exception:  # a part we cannot re-serialize is skipped with a note
        return None


def html_to_text(html: str) -> str:
    """Readable text (Markdown-ish) from HTML; blockquotes become "> " lines."""
    try:
        import html2text

        converter = html2text.HTML2Text()
        converter.body_width = 0
        converter.ignore_images = True
        converter.ignore_mailto_links = True
        converter.unicode_snob = True
        text = converter.handle(html)
    except Exception:  # html2text chokes: strip the tags ourselves
        import html as html_module

        text = html_module.unescape(re.sub(r"(?s)<(style|script)\b.*?</\1>|<[^>]*>", " ", html))
    text = "\n".join(line.replace("\xa0", " ").rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _size(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} kB" if n >= 1024 else f"{n} bytes"
    return f"{n / 1024 / 1024:.1f}".removesuffix(".0") + " MB"


class _Parts:
    """Walks the MIME tree, collecting body texts, attachments and notes of skipped parts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.texts: list[str] = []
        self.files: list[tuple[str | None, str, str, bytes]] = []  # name, fallback, type, data
        self.skipped: list[str] = []
        self.count = 0

    def walk(self, part: Message, depth: int, want_body: bool) -> None:
        self.count += 1
        if depth > MAX_DEPTH:
            self.skipped.append(f"parts nested deeper than {MAX_DEPTH} levels")
            return
        if self.count > MAX_PARTS:
            self.skipped.append(f"parts after the first {MAX_PARTS}")
            return
        ctype = _content_type(part)
        children = part.get_payload() if part.is_multipart() else None
        if isinstance(children, list) and not ctype.startswith("multipart/"):  # message/*
            self.message(part, ctype, children)
        elif isinstance(children, list):
            subparts = [c for c in children if isinstance(c, Message)]
            if ctype == "multipart/alternative" and want_body:
                chosen = _choose_alternative(subparts)
                for child in subparts:
                    self.walk(child, depth + 1, want_body=child is chosen)
            else:
                for child in subparts:
                    self.walk(child, depth + 1, want_body)
        else:
            self.leaf(part, ctype, want_body)

    def leaf(self, part: Message, ctype: str, want_body: bool) -> None:
        if ctype in SIGNATURE_TYPES:
            return
        filename = _filename(part)
        data = _payload(part)
        inline = filename is None and _mime_headers(part).get_content_disposition() != "attachment"
        if inline and (ctype in ("text/plain", "text/html") or ctype.startswith("multipart/")):
            if not want_body:
                return  # the other rendering of a multipart/alternative
            text = clean_text(decode_text(data, _param(part, "content-type", "charset")))
            if ctype == "text/html":
                self.texts.append(html_to_text(text))
                self.add(None, "message.html", ctype, data)
                return
            if (_param(part, "content-type", "format") or "").lower() == "flowed":
                delsp = (_param(part, "content-type", "delsp") or "").lower() == "yes"
                text = unflow(text, delsp)
            self.texts.append(text)
            return
        if not want_body and inline and ctype.startswith("text/"):
            return
        fallback = FALLBACK_NAMES.get(ctype) or (
            ("image" if ctype.startswith("image/") else "attachment") + _extension(ctype)
        )
        self.add(filename, fallback, ctype, data)

    def message(self, part: Message, ctype: str, children: Sequence[object]) -> None:
        inner = [c for c in children if isinstance(c, Message)]
        serialized = [_serialize(m) for m in inner]
        filename = _filename(part)
        if ctype in ("message/rfc822", "message/global"):
            subject = ""
            if inner:
                subjects = [v for k, v in _raw_items(inner[0]) if k.lower() == "subject"]
                subject = header_text(subjects[0]) if subjects else ""
            fallback = (subject[:80] + ".eml") if subject.strip() else "forwarded.eml"
        else:
            fallback = ctype.split("/")[1] + ".txt"
        if any(s is None for s in serialized):
            self.skipped.append(f"{filename or fallback} (could not be read)")
            return
        self.add(filename, fallback, ctype, b"\n".join(s for s in serialized if s is not None))

    def add(self, filename: str | None, fallback: str, ctype: str, data: bytes) -> None:
        if len(data) > self.limit:
            name = safe_filename(filename, fallback)
            self.skipped.append(f"{name} ({_size(len(data))}) over the {_size(self.limit)} limit")
            return
        self.files.append((filename, fallback, ctype, data))

    def attachments(self) -> list[Attachment]:
        taken: set[str] = set()
        result = []
        for filename, fallback, ctype, data in self.files:
            name = unique_filename(safe_filename(filename, fallback), taken)
            taken.add(name.casefold())
            result.append(Attachment(name, ctype, data))
        return result


def _choose_alternative(parts: list[Message]) -> Message | None:
    """text/plain with some text in it, else the richest (last) HTML or multipart rendering."""
    for part in parts:
        plain = _content_type(part) == "text/plain" and _filename(part) is None
        if plain and _payload(part).strip():
            return part
    for part in reversed(parts):
        if _content_type(part) == "text/html" or part.is_multipart():
            return part
    return parts[-1] if parts else None


def _extension(ctype: str) -> str:
    if ctype in EXTENSIONS:
        return EXTENSIONS[ctype]
    import mimetypes

    return mimetypes.guess_extension(ctype, strict=False) or ".bin"


# --- file names -------------------------------------------------------------------------------


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10 and ext.isalnum():
        return stem, "." + ext
    return name, ""


def _fit(stem: str, ext: str, suffix: str = "") -> str:
    """stem + suffix + ext, the stem cut so the whole stays within the length limits."""
    while stem and (
        len(stem + suffix + ext) > MAX_NAME_LENGTH
        or len((stem + suffix + ext).encode("utf-8")) > MAX_NAME_BYTES
    ):
        stem = stem[:-1]
    return stem.rstrip(" .") + suffix + ext


def safe_filename(name: str | None, fallback: str = "attachment.bin") -> str:
    """A name that is safe as a file in an issue directory of the branch.

    No path parts, no leading dots, no control or format characters, none of `<>:"|?*`, not
    one of the format's reserved names, at most MAX_NAME_LENGTH characters, extension kept.
    The fallback (made safe the same way) stands in for a name that leaves nothing.
    """
    return _safe_name(name or "") or _safe_name(fallback) or "attachment.bin"


def _safe_name(name: str) -> str:
    text = unicodedata.normalize("NFC", name)
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(
        " " if c in "\t\n\r" else "_" if c in '<>:"|?*' else c
        for c in text
        if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") or c in "\t\n\r"
    )
    text = " ".join(text.split()).lstrip(". -").rstrip(" .")
    if RESERVED_NAME_RE.match(text):
        text = "attachment-" + text
    return _fit(*_split_extension(text)) if text else ""


def unique_filename(name: str, taken: set[str]) -> str:
    """name, or "stem-1.ext", "stem-2.ext", ... whichever is not in taken (casefolded)."""
    stem, ext = _split_extension(name)
    candidate, n = name, 0
    while candidate.casefold() in taken:
        n += 1
        candidate = _fit(stem, ext, f"-{n}")
    return candidate
