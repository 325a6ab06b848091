"""Bytes and raw header values -> text, never raising: charsets, RFC 2047 words, broken base64.

Split off `mail.parse` along the seam "what the bytes say" / "what the MIME tree says". No
mailtrack imports; every function here takes whatever a mail holds and returns text.
"""

from __future__ import annotations

import binascii
import codecs
import re

ENCODED_WORD_RE = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?]*)\?=")
BASE64_LINE_RE = re.compile(r"[A-Za-z0-9+/]*=*")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not \t \n \r
# Labels read as something wider (as browsers do), Outlook's odd names, and "no idea".
CHARSET_ALIASES = {
    "us-ascii": "cp1252", "ascii": "cp1252", "iso-8859-1": "cp1252", "latin1": "cp1252",
    "latin-1": "cp1252", "iso8859-1": "cp1252", "gb2312": "gbk", "shift_jis": "cp932",
    "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949", "tis-620": "cp874", "iso-8859-8-i": "iso-8859-8",
    "utf8": "utf-8", "x-unknown": "", "unknown-8bit": "", "unknown": "", "x-user-defined": "",
}  # fmt: skip
# Codecs Python knows that would do something other than decode a text.
NOT_TEXT_CODECS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"}
)
# Labels under which mislabelled UTF-8 is common and real text is rarely valid UTF-8.
WESTERN = frozenset({"cp1252", "iso8859-1", "ascii", "utf-8"})


def codec(charset: str | None) -> str | None:
    """The Python codec for a declared charset, or None when it is unknown or not a text codec."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = CHARSET_ALIASES.get(label, label)
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    return None if name in NOT_TEXT_CODECS else name


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, else UTF-8, else cp1252, else Latin-1. Never raises.

    For us-ascii, ISO-8859-1 and windows-1252 labels UTF-8 is tried first: such mail is often
    UTF-8 in truth, and Latin-1 text with accents is practically never valid UTF-8.
    A declared CJK charset with a few broken bytes keeps its charset, with replacement marks.
    """
    declared = codec(charset)
    for name in ("utf-8",) if declared in WESTERN or declared is None else (declared, "utf-8"):
        try:
            return data.decode(name)
        except (UnicodeError, LookupError):
            pass
    if declared is not None and declared not in WESTERN:
        try:
            return data.decode(declared, "replace")
        except (UnicodeError, LookupError):
            pass
    try:
        return data.decode("cp1252")
    except UnicodeError:
        return data.decode("latin-1")


def clean_text(text: str) -> str:
    """Line ends to "\\n"; control characters and byte-order marks removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    return CONTROL_RE.sub("", text)


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "bB":
        clean = re.sub(r"[^A-Za-z0-9+/]", "", text)
        return _base64_chunk(clean)
    return binascii.a2b_qp(text.encode("utf-8", "surrogateescape"), header=True)


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words, leniently: no spacing rules, bad padding, any charset.

    Adjacent words of one charset are joined before decoding, so a character split between two
    words (as some clients do with UTF-8) survives.
    """
    out: list[str] = []
    pending: tuple[str, bytes] | None = None
    pos = 0
    for match in ENCODED_WORD_RE.finditer(value):
        between = value[pos : match.start()]
        charset = match.group(1).lower()
        adjacent = pending is not None and not between.strip()  # the space between is dropped
        if pending is not None and (not adjacent or pending[0] != charset):
            out.append(decode_text(pending[1], pending[0]))
            pending = None
        if not adjacent:
            out.append(between)
        data = _word_bytes(match.group(2), match.group(3))
        pending = (charset, pending[1] + data) if pending is not None else (charset, data)
        pos = match.end()
    if pending is not None:
        out.append(decode_text(pending[1], pending[0]))
    out.append(value[pos:])
    return "".join(out)


def unfold_raw(value: str) -> str:
    """A raw header value as the parser stores it (8-bit bytes surrogate-escaped) as text."""
    data = value.encode("utf-8", "surrogateescape")
    return re.sub(r"\r\n|\r|\n", "", decode_text(data, None))


def header_text(value: str) -> str:
    """A raw header value decoded: 8-bit bytes, encoded words, folding, control characters."""
    return CONTROL_RE.sub(" ", decode_words(unfold_raw(value))).strip()


def _base64_chunk(chunk: str) -> bytes:
    chunk = chunk[: len(chunk) - 1] if len(chunk) % 4 == 1 else chunk  # a lone 6 bits: no byte
    try:
        return binascii.a2b_base64(chunk + "=" * (-len(chunk) % 4))
    except binascii.Error:
        return b""


def decode_base64(text: str) -> bytes:
    """Base64 line by line: a line that is not base64 is dropped, not allowed to shift the rest."""
    lines = (line.strip() for line in text.splitlines())
    good = "".join(line for line in lines if BASE64_LINE_RE.fullmatch(line))
    return b"".join(_base64_chunk(c) for c in re.findall(r"[A-Za-z0-9+/]+", good))
