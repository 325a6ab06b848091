"""The XML dialect of docs/FORMAT.md: a small generic tree, parsed safely, written canonically.

Every file on the branch (issue.xml, comment files, project.xml) is read into `Node` trees and
written back from them. The writer puts every element and every text value on a line of its own,
so that concurrent edits of different fields merge line by line; reading a canonical file and
writing it again gives the same bytes. Unknown elements are just nodes and survive untouched.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, XMLParser

DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
MAX_DEPTH = 32  # elements within elements: the format needs four; unknown extensions get the rest

# Characters XML 1.0 cannot carry at all; mail bodies sometimes hold them.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class FormatError(ValueError):
    """A file on the branch that cannot be read: malformed, hostile, or of the wrong shape."""


@dataclass
class Node:
    """One element: a text value (a leaf) or child elements, never both."""

    tag: str
    text: str | None = None
    children: list[Node] = field(default_factory=list)
    attrib: dict[str, str] = field(default_factory=dict)

    def child(self, tag: str) -> Node | None:
        for c in self.children:
            if c.tag == tag:
                return c
        return None


def clean_text(text: str) -> str:
    """Text as it will survive a write and a read: LF line ends, no characters XML forbids."""
    return _INVALID_XML.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _escape(text: str, quote: bool = False) -> str:
    text = clean_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote else text


def _write(node: Node, out: list[str]) -> None:
    attrs = "".join(f' {k}="{_escape(v, True)}"' for k, v in node.attrib.items())
    if node.children:
        out.append(f"<{node.tag}{attrs}>\n")
        for c in node.children:
            _write(c, out)
        out.append(f"</{node.tag}>\n")
    elif node.text:
        out.append(f"<{node.tag}{attrs}>\n{_escape(node.text)}\n</{node.tag}>\n")
    else:
        out.append(f"<{node.tag}{attrs}/>\n")


def dumps(root: Node) -> bytes:
    """The canonical bytes of a file: declaration, then one element or value per line."""
    out = [DECLARATION]
    _write(root, out)
    return "".join(out).encode("utf-8")


def _from_element(el: Element, depth: int = 1) -> Node:
    if depth > MAX_DEPTH:
        raise FormatError(f"elements nested more than {MAX_DEPTH} deep")
    children = [_from_element(c, depth + 1) for c in el]
    text = None
    if not children and el.text is not None:
        text = el.text
        # A value on a line of its own: the writer's newlines are not part of it. Values
        # written inline by the original script have none to drop.
        if text.startswith("\n"):
            text = text[1:]
        if text.endswith("\n"):
            text = text[:-1]
    return Node(str(el.tag), text, children, dict(el.attrib))


_PLAIN = DECLARATION.encode()  # how every file we write begins


def loads(data: bytes, root_tag: str | None = None) -> Node:
    """Parse a file safely: no DTD, no entity expansion, no external entities, and elements nested
    at most MAX_DEPTH deep (counted while reading: a deeper file stops there, a FormatError).

    A file that begins as ours do (UTF-8 declared) and holds no `<!` at all can declare no DTD and
    no entity: expat's C tree builder reads it, ~3x faster than defusedxml's Python one, to the same
    tree. Anything else, and any file that fails there (for the error's words), goes the defused way."""
    if data.startswith(_PLAIN) and b"<!" not in data and b"\0" not in data:
        try:
            parser = XMLParser()
            parser.feed(data)
            node = _from_element(parser.close())
        except (SyntaxError, FormatError):  # ParseError is a SyntaxError; the words come from the defused way
            pass
        else:
            if root_tag is not None and node.tag != root_tag:
                raise FormatError(f"expected a <{root_tag}> file, found <{node.tag}>")
            return node
    return _defused_loads(data, root_tag)


def _defused_loads(data: bytes, root_tag: str | None) -> Node:
    from defusedxml import DefusedXmlException  # only for a file not of our own shape: most reads never load it
    from defusedxml.ElementTree import ParseError, iterparse

    depth = 0
    try:
        events = iterparse(io.BytesIO(data), ("start", "end"), forbid_dtd=True, forbid_entities=True, forbid_external=True)
        for event, _ in events:
            depth += 1 if event == "start" else -1
            if depth > MAX_DEPTH:
                raise FormatError(f"elements nested more than {MAX_DEPTH} deep")
    except (ParseError, DefusedXmlException, LookupError) as e:  # LookupError: an encoding Python has no codec for
        raise FormatError(f"not a readable XML file: {e}") from None
    node = _from_element(events.root)
    if root_tag is not None and node.tag != root_tag:
        raise FormatError(f"expected a <{root_tag}> file, found <{node.tag}>")
    return node
