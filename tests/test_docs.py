"""The docs keep up with the code: config.example.toml and the README name everything there is."""

from __future__ import annotations

import re
from pathlib import Path

from mailtrack import config
from mailtrack.app import git_issues as cli
from mailtrack.app import mailtrack as serve

ROOT = Path(__file__).parent.parent


def test_example_config_parses_to_the_defaults() -> None:
    """config.example.toml parses, and every value in it is the default the code uses with no file."""
    assert config.Config() == config.parse((ROOT / "config.example.toml").read_text(), "config.example.toml")


def test_example_imap_block_parses_to_the_defaults() -> None:
    """The commented-out [[imap]] block, uncommented with a username and password filled in, parses
    to ImapConfig's defaults with those two values; booleans are spelt the TOML way throughout."""
    text = (ROOT / "config.example.toml").read_text()
    start = text.index("\n# [[imap]]\n") + 1
    end = text.index("\n\n", start)
    lines = text[start:end].splitlines()
    assert [] == [line for line in lines if not line.startswith("# ")]
    block = "\n".join(line[2:] for line in lines)
    for key, value in (("username", "alice"), ("password", "secret")):
        block, n = re.subn(rf'^{key} = ""', f'{key} = "{value}"', block, count=1, flags=re.MULTILINE)
        assert 1 == n, key
    parsed = config.parse(text[:start] + block + text[end:], "config.example.toml, [[imap]] uncommented")
    assert config.Config(imap=[config.ImapConfig(username="alice", password="secret")]) == parsed
    assert [] == re.findall(r"\b(?:True|False)\b", text)


def test_example_config_names_every_key() -> None:
    """Every key the code reads stands in config.example.toml, in its own section."""
    text = (ROOT / "config.example.toml").read_text()
    sections: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.lstrip("# ").strip()
        m = re.match(r"^\[\[?(\w+)\]\]?$", line)
        if m:
            current = m.group(1)
        elif (m := re.match(r"^(\w+) = ", line)) and current:
            sections.setdefault(current, set()).add(m.group(1))
    found = {f"{s}.{k}" for s, keys in sections.items() for k in keys}
    assert sorted(config.all_keys()) == sorted(found)


def test_readme_documents_every_command() -> None:
    """Each `git issues` and `mailtrack` command appears in the README."""
    readme = (ROOT / "README.md").read_text()
    for prog, parser in (("git issues", cli.build_parser()), ("mailtrack", serve.build_parser())):
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        missing = [name for name in sub.choices if f"{prog} {name}" not in readme]  # type: ignore[attr-defined]
        assert [] == missing, prog


def test_readme_opens_with_the_two_commands() -> None:
    """The Quick start's first command starts the gateway, its second runs what CI runs."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 2 == len(block)
    assert re.search(r"mailtrack( --[a-z]+ \S+)* serve$", block[0])
    assert "bash .ci/run" == block[1] and "python -m pytest" in ci


def test_the_embedded_default_listens_on_127_0_0_1_8025() -> None:
    """`mailtrack serve` with no --config runs on the embedded default, which listens for SMTP on
    127.0.0.1:8025 for issues@tracker.localhost, as the README's first command says (read here, not bound:
    a user's own gateway may hold 8025 while the tests run)."""
    args = serve.build_parser().parse_args(["serve"])
    default = config.load(args.config)
    assert (None, config.Config()) == (args.config, default)
    assert ([("smtp", "127.0.0.1", 8025, "")], "issues@tracker.localhost") == (
        [(listen.protocol, listen.host, listen.port, listen.socket) for listen in default.listen], default.gateway.address)
    assert "listens for SMTP on 127.0.0.1:8025 for `issues@tracker.localhost`" in " ".join((ROOT / "README.md").read_text().split())
