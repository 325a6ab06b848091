"""The plain text of a body: reply trimming, format=flowed, pseudo-headers.

Split off `mail.parse`; pure functions over `str`, no mailtrack imports.

`trim_reply(body)`, the text a sender wrote for this mail without what it quotes:
- cuts at the first unquoted signature separator ("-- ", "--"), mobile footer ("Sent from my
  iPhone", "Get Outlook for Android", "Von meinem iPhone gesendet", ...), Outlook separator
  ("-----Original Message-----", a line of underscores, a "From: / Sent: / Subject:" block),
  or inline PGP signature (the armor of a clearsigned message goes too);
- drops attribution lines ("On ... wrote:", also wrapped over two lines, "Am ... schrieb ...:",
  "Le ... a écrit :", ...) that stand before a quote or at the end;
- drops quote blocks ("> " lines) that no own text follows (top posting, trailing quotes) and
  keeps those an answer follows (bottom posting, interleaving), cut to their last
  MAX_CONTEXT lines;
- returns the whole body, stripped, when nothing of the sender's own would be left.

`unflow(text, delsp)` joins the soft line breaks of format=flowed (RFC 3676).
`own_text(body)` is the same without that fallback: "" for a mail that is all quote.
`split_pseudo_headers(text)` splits "Field: value" lines off the top of a reply.
"""

from __future__ import annotations

import re

MAX_CONTEXT = 10  # quoted lines kept above an answer
ELIDED = "> [...]"
# matched on a stripped line: a lazy value before `\s*$` retried the rest at each space, O(n^2)
PSEUDO_HEADER_RE = re.compile(r"^([A-Za-z][A-Za-z-]*):[ \t]+(\S.*)$")

QUOTE_RE = re.compile(r"^>")
SIGNATURE_RE = re.compile(r"^\\?--\s*$")  # html2text writes "\--"
FOOTER_RE = re.compile(
    r"^\s*(sent from my .{1,60}|sent from (mail|outlook) for \S+|get outlook for \S+"
    r"|von meinem .{1,40} gesendet|envoyé de mon .{1,40}|enviado desde mi .{1,40}"
    r"|verzonden (vanaf|met) mijn .{1,40}|inviato da(l mio)? .{1,40}|skickat från min .{1,40})$",
    re.IGNORECASE,
)
ORIGINAL_RE = re.compile(
    r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|message d'origine"
    r"|mensaje original|oorspronkelijk bericht|messaggio originale|originalmeddelande"
    r"|oprindelig meddelelse|opprinnelig melding|mensagem original)\s*-{2,}\s*$",
    re.IGNORECASE,
)
PGP_SIGNATURE_RE = re.compile(r"^-----BEGIN PGP SIGNATURE-----\s*$")
UNDERSCORES_RE = re.compile(r"^\s*_{30,}\s*$")  # Outlook's separator, Mailman's list footer
_F = r"^[*_]*({})[*_]*\s*:"  # "From:" or html2text's "**From:**"
OUTLOOK_FROM_RE = re.compile(_F.format("from|von|de|van|da|från|fra|od"), re.IGNORECASE)
OUTLOOK_DATE_RE = re.compile(
    _F.format("sent|date|gesendet|datum|envoyé|date d'envoi|enviado|enviado el|fecha|verzonden"
              "|inviato|data|skickat|sendt|wysłano"),
    re.IGNORECASE,
)  # fmt: skip
OUTLOOK_TO_RE = re.compile(
    _F.format("subject|betreff|objet|asunto|onderwerp|oggetto|ämne|emne|temat|to|an|à|para|aan|a"),
    re.IGNORECASE,
)
ATTRIBUTION_RE = re.compile(
    r"^.{0,300}\b(wrote|writes|schrieb|a\s+écrit|escribió|schreef|ha\s+scritto|escreveu|skrev"
    r"|napisał|napsal|kirjoitti)\b.{0,200}:$"
    r"|^\* .{1,200} \[[^\]]{1,40}\]:$",  # mutt's "* Jane Doe <jane@x> [2024-06-03 10:00]:"
    re.IGNORECASE,
)
# The first half of an attribution that a client wrapped: "On Mon, 3 Jun 2024 at 10:00, Jane <"
ATTRIBUTION_START_RE = re.compile(r"^(On|Am|Le|El|Op|Il|Em|Den|På|W dniu)\s.*\d", re.IGNORECASE)


def _is_outlook_block(lines: list[str], i: int) -> bool:
    """A "From: / Sent: / To: / Subject:" header block (Outlook quoting without ">") at i."""
    if not OUTLOOK_FROM_RE.match(lines[i]):
        return False
    following = lines[i + 1 : i + 7]
    return any(OUTLOOK_DATE_RE.match(x) for x in following) and any(
        OUTLOOK_TO_RE.match(x) for x in following
    )


def _cut(lines: list[str]) -> int:
    """The index of the first unquoted line from which everything is signature or old mail."""
    for i, line in enumerate(lines):
        if QUOTE_RE.match(line):
            continue
        if (
            SIGNATURE_RE.match(line)
            or FOOTER_RE.match(line)
            or ORIGINAL_RE.match(line)
            or UNDERSCORES_RE.match(line)
            or PGP_SIGNATURE_RE.match(line)
            or _is_outlook_block(lines, i)
        ):
            return i
    return len(lines)


def _attributions(lines: list[str], kinds: list[str]) -> None:
    """Mark (in kinds, as "a") attribution lines followed by a quote or by nothing.

    A client may wrap one over two lines ("On Mon, 3 Jun 2024 at 10:00, Jane <" / "jane@x>
    wrote:"): the line before counts too when it opens like one, has a digit (the date) and
    does not end a sentence.
    """
    for i, line in enumerate(lines):
        if kinds[i] != "t":
            continue
        before = lines[i - 1].strip() if i > 0 and kinds[i - 1] == "t" else ""
        wrapped = bool(
            ATTRIBUTION_START_RE.match(before) and not before.endswith((".", "!", "?"))
        ) and bool(ATTRIBUTION_RE.match(before + " " + line.strip()))
        if not (wrapped or ATTRIBUTION_RE.match(line.strip())):
            continue
        after = i + 1  # the next line that is not blank, found without copying the rest (O(n^2) for many attributions)
        while after < len(kinds) and kinds[after] == "b":
            after += 1
        if after < len(kinds) and kinds[after] != "q":
            continue
        kinds[i] = "a"
        if wrapped:
            kinds[i - 1] = "a"


def _unclearsign(lines: list[str]) -> list[str]:
    """The signed text of an inline PGP (clearsigned) message: armor lines off, dashes unescaped."""
    start = next((i for i, line in enumerate(lines) if line.strip()), 0)
    if lines[start : start + 1] != ["-----BEGIN PGP SIGNED MESSAGE-----"]:
        return lines
    end = start + 1
    while end < len(lines) and lines[end].startswith("Hash:"):
        end += 1
    return [line[2:] if line.startswith("- ") else line for line in lines[end:]]


def trim_reply(text: str) -> str:
    """The sender's own text of a reply (see the module docstring)."""
    return own_text(text) or text.replace("\r\n", "\n").replace("\r", "\n").strip()


def own_text(text: str) -> str:
    """The sender's own text of a reply; "" when nothing of theirs is left (all quote).

    `trim_reply` falls back to the whole body then; a caller that must not read quoted text as
    the sender's (pseudo-header commands) asks this first.
    """
    full = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = _unclearsign([line.rstrip() for line in full.split("\n")])
    lines = lines[: _cut(lines)]
    kinds = ["b" if not line.strip() else "q" if QUOTE_RE.match(line) else "t" for line in lines]
    _attributions(lines, kinds)
    own_after = [False] * (len(lines) + 1)  # own text at or after index i
    for i in range(len(lines) - 1, -1, -1):
        own_after[i] = own_after[i + 1] or kinds[i] == "t"
    out: list[str] = []
    i = 0
    while i < len(lines):
        if kinds[i] == "a":
            i += 1
        elif kinds[i] == "q":
            end = i
            while end < len(lines) and kinds[end] in ("q", "b"):
                end += 1
            while kinds[end - 1] == "b":
                end -= 1
            if own_after[end]:
                block = lines[i:end]
                if len(block) > MAX_CONTEXT:
                    block = [ELIDED, *block[-MAX_CONTEXT:]]
                out.extend(block)
            i = end
        else:
            out.append(lines[i])
            i += 1
    result = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n").rstrip()
    if not any(kind == "t" for kind in kinds) or not result.strip():
        return ""
    return result


def unflow(text: str, delsp: bool = False) -> str:
    """Join the soft line breaks of a format=flowed text (RFC 3676), quotes kept as "> "."""
    out: list[str] = []
    buffer: str | None = None
    buffer_depth = 0

    def flush() -> None:
        if buffer is not None:
            prefix = ">" * buffer_depth + (" " if buffer_depth and buffer else "")
            out.append(prefix + buffer)

    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if buffer is not None and depth != buffer_depth:
            flush()
            buffer = None
        if flowed and delsp:
            content = content[:-1]
        buffer = content if buffer is None else buffer + content
        buffer_depth = depth
        if not flowed:
            flush()
            buffer = None
    flush()
    return "\n".join(out)


def split_pseudo_headers(text: str) -> tuple[list[tuple[str, str]], str]:
    """Split "Field: value" lines off the top of a body: ([(field, value), ...], the rest).

    Only when every line of the first paragraph is such a line (a field is letters and hyphens,
    then ": " and a non-empty value); otherwise ([], text) unchanged.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    matches = [PSEUDO_HEADER_RE.match(line.strip()) for line in lines[start:end]]
    if not matches or not all(matches):
        return [], text
    pairs = [(m.group(1), m.group(2)) for m in matches if m is not None]
    return pairs, "\n".join(lines[end:]).lstrip("\n")
