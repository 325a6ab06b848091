"""Mails we write, from jinja2 templates: a configured directory overrides any built-in one.

A template starts with header lines (`Subject: ...`), then a blank line, then the body. A variable
the template uses and the caller did not give is an error, never a blank.
"""

from __future__ import annotations

import textwrap
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Any

BUILTIN = Path(__file__).resolve().parent.parent / "templates"


def wrap(text: str, width: int = 72) -> str:
    """Wrap long lines of prose; quoted, indented and short lines stay as they are."""
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
    return "\n".join("> " + ln if ln else ">" for ln in text.splitlines())


class Renderer:
    def __init__(self, override: str | Path = "") -> None:
        import jinja2

        loaders: list[jinja2.BaseLoader] = []
        if override:
            loaders.append(jinja2.FileSystemLoader(str(override)))
        loaders.append(jinja2.FileSystemLoader(str(BUILTIN)))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
        self.env.filters["wrap"] = wrap
        self.env.filters["quote"] = quote

    def render(self, name: str, **context: Any) -> tuple[dict[str, str], str]:
        """(headers, body) of a template."""
        text = self.env.get_template(name).render(**context)
        head, _, body = text.partition("\n\n")
        headers = {}
        for line in head.splitlines():
            key, _, value = line.partition(":")
            headers[key.strip()] = value.strip()
        return headers, body.rstrip("\n") + "\n"


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
    """A plain-text mail; `attachments` are (bytes, maintype/subtype, filename)."""
    msg = EmailMessage()
    msg["From"] = formataddr(sender)
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or make_msgid(domain=domain)
    for key, value in (headers or {}).items():
        if value:
            msg[key] = value
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
