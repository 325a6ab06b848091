"""Mails we write, from jinja2 templates: a configured directory overrides any built-in one.

A template starts with a `Subject: ...` line, then a blank line, then the body; Subject is the only
header a template sets (every other header is computed by the caller, and wins). A value put into a
template never breaks a line of the head: a title "Hi\nReply-To: x" stays in the Subject, folded to
one line, and still has its line breaks in the body. A variable the template uses and the caller did
not give is an error, never a blank.

The built-in templates are the top-level `templates/` of the source tree, shipped as the package
data `mailtrack.templates` (see pyproject.toml) and read with importlib.resources.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import textwrap
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailtrack.mail.ids import new_message_id

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import jinja2

log = logging.getLogger(__name__)

# Stands for a line break inside a value while the head is told from the body. XML cannot hold it,
# so no value read from the branch has it; one from elsewhere just becomes a line break (a space
# in the Subject).
HELD_BREAK = "\uffff"
_BREAK_RE = re.compile(r"\r\n|[\r\n]")
_FIELD_RE = re.compile(r"^([!-9;-~]+):(.*)$")  # a header field's first line (RFC 5322 field name)


def builtin_templates() -> Traversable:
    """The directory of the built-in templates: package data when installed, else the checkout's."""
    try:
        return importlib.resources.files("mailtrack.templates")
    except ModuleNotFoundError:  # a source tree on sys.path, never installed
        return Path(__file__).resolve().parents[2] / "templates"


def one_line(value: str) -> str:
    """A value fit for a header: every run of whitespace, line breaks included, one space."""
    return " ".join(value.split())


def _hold_breaks(value: Any) -> str:
    """jinja2's finalize: every value a template prints, with its line breaks held (see HELD_BREAK)."""
    return _BREAK_RE.sub(HELD_BREAK, str(value))


def _package_loader(root: Traversable) -> jinja2.BaseLoader:
    import jinja2

    def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
        path = root
        for part in jinja2.loaders.split_template_path(name):
            path = path / part
        try:
            return path.read_text("utf-8"), str(path), lambda: True
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    return jinja2.FunctionLoader(load)


def wrap(text: str, width: int = 72) -> str:
    """Wrap long lines of prose; quoted, indented and short lines stay as they are."""
    text = text.replace(HELD_BREAK, "\n")  # in a {% filter %} block, the values' breaks are held
    if width <= 0:
        return text
    out = []
    for line in text.splitlines():
        if len(line) <= width or line.startswith((">", " ", "\t")):
            out.append(line)
        else:
            out.extend(textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""])
    return "\n".join(out)


def quote(text: str) -> str:
    text = text.replace(HELD_BREAK, "\n")
    return "\n".join("> " + ln if ln else ">" for ln in text.splitlines())


class Renderer:
    def __init__(self, override: str | Path = "") -> None:
        import jinja2

        loaders: list[jinja2.BaseLoader] = []
        if override:
            loaders.append(jinja2.FileSystemLoader(str(override)))
        loaders.append(_package_loader(builtin_templates()))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            finalize=_hold_breaks,
        )
        self.env.filters["wrap"] = wrap
        self.env.filters["quote"] = quote

    def render(self, name: str, **context: Any) -> tuple[dict[str, str], str]:
        """({"Subject": ...} or {}, body) of a template.

        The head is the lines before the first blank line, when the first is a header field; a
        field other than Subject there is logged and ignored: the caller computes every other header.
        """
        text = self.env.get_template(name).render(**context)
        head, _, body = text.partition("\n\n")
        if not _FIELD_RE.match(head.partition("\n")[0]):
            head, body = "", text  # no head: all body
        fields: list[list[str]] = []
        for line in head.split("\n"):
            if fields and line[:1] in (" ", "\t"):
                fields[-1][1] += line  # a folded line continues the field before it
            elif m := _FIELD_RE.match(line):
                fields.append([m[1], m[2]])
            elif line.strip():
                log.warning("template %s: %r in its head is not a header field: ignored", name, line[:60])
        headers: dict[str, str] = {}
        for key, value in fields:
            if key.lower() != "subject" or headers:
                log.warning("template %s: header %s ignored: a template sets only Subject, once", name, key)
                continue
            headers["Subject"] = one_line(value.replace(HELD_BREAK, " "))
        return headers, body.replace(HELD_BREAK, "\n").rstrip("\n") + "\n"


def build_mail(
    sender: tuple[str, str],
    to: list[str],
    subject: str,
    body: str,
    headers: dict[str, str] | None = None,
    domain: str = "localhost",
    message_id: str = "",
    attachments: list[tuple[bytes, str, str]] | None = None,
) -> EmailMessage:
    """A plain-text mail; `attachments` are (bytes, maintype/subtype, filename).

    Every header value is folded to one line (`one_line`): a value can never start a header of its own.
    """
    msg = EmailMessage()
    msg["From"] = one_line(formataddr((one_line(sender[0]), one_line(sender[1]))))
    msg["To"] = ", ".join(one_line(t) for t in to)
    msg["Subject"] = one_line(subject)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = one_line(message_id) or new_message_id(domain)  # ours: one that comes back is a loop
    for key, value in (headers or {}).items():
        if one_line(value) and key.lower() not in {"from", "to", "subject", "date", "message-id"}:
            msg[key] = one_line(value)
    msg.set_content(body, cte="quoted-printable" if any(len(ln) > 900 for ln in body.splitlines()) else None)
    for data, ctype, filename in attachments or []:
        maintype, _, subtype = ctype.partition("/")
        if ctype == "message/rfc822":
            import email
            from email import policy

            original = email.message_from_bytes(data, policy=policy.default)
            msg.add_attachment(original, filename=filename)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg
