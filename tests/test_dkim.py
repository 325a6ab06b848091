"""Our own DKIM check (`access.verify_dkim`, dkimpy) where no trusted MTA stamps Authentication-Results: a
mail signed by the From domain with a key the test makes is vouched for, looked up through a DNS function
that serves that key; an unsigned, tampered or foreign-signed one is not. End to end by `mailtrack deliver`."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from helpers.mail import make_mail, outbox
from helpers.repos import git, issues_repo, read_comments, read_issue, read_names
from mailtrack.config import AccessConfig
from mailtrack.mail.parse import parse
from mailtrack.worker.admission import Verifier, verified_by
from mailtrack.worker.dkimcheck import DnsFunc, signed_by

REPORT = "<report@example.net>"
SIGNED = [b"from", b"to", b"subject", b"message-id", b"in-reply-to"]
# `mailtrack` run with dkimpy's DNS lookup replaced by one that serves the test's own keys and notes each name asked.
DELIVER = """import sys
import dkim.dnsplug
RECORDS, ASKED = {records!r}, {asked!r}
def lookup(name, timeout=5):
    with open(ASKED, "ab") as f:
        f.write(name + b"\\n")
    return RECORDS.get(name.rstrip(b"."))
dkim.dnsplug.get_txt = lookup
from mailtrack.app import mailtrack
sys.exit(mailtrack.main(sys.argv[1:]))
"""


def _key(folder: Path, name: str) -> tuple[bytes, bytes]:
    """A fresh RSA key pair made by openssl: (private key PEM, the DKIM TXT record of its public key)."""
    pem = folder / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(pem), "2048"], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True,
                         stdin=subprocess.DEVNULL, timeout=60).stdout
    return pem.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    """Key pairs for example.net (Alice's domain), evil.example, and a stray one no DNS serves."""
    folder = tmp_path_factory.mktemp("dkim")
    return {name: _key(folder, name) for name in ("example.net", "evil.example", "stray")}


def _records(keys: dict[str, tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {b"sel._domainkey.example.net": keys["example.net"][1], b"sel._domainkey.evil.example": keys["evil.example"][1]}


def _sign(raw: bytes, key: bytes, domain: str = "example.net", **options: bool) -> bytes:
    return dkim.sign(raw, b"sel", domain.encode(), key, include_headers=SIGNED, **options) + raw  # type: ignore[no-any-return]


def _check(dns: DnsFunc) -> Verifier:
    """Our own DKIM check, looking keys up through `dns` (the Gateway is given it with dkimpy's own lookup)."""
    return lambda mail, domain: signed_by(mail, domain, dns)


def _comment(body: str = "Looks fixed to me.\n", message_id: str = "<c1@example.net>") -> bytes:
    return make_mail(frm="Alice <alice@example.net>", subject="Re: Printer on fire", message_id=message_id,
                     In_Reply_To=REPORT, body=body)


def _deliver(tmp_path: Path, repo: Path, raw: bytes, keys: dict[str, tuple[bytes, bytes]]) -> list[bytes]:
    """`mailtrack deliver` of `raw` with commands needing a vouched sender and verify_dkim on, DNS served
    by the test; the names it looked up."""
    config, asked = tmp_path / "mailtrack.toml", tmp_path / "asked.txt"
    config.write_text('[gateway]\nproject = "proj"\n[access]\nrequire_auth_for_commands = true\nverify_dkim = true\n')
    asked.write_bytes(b"")
    script = DELIVER.format(records=_records(keys), asked=str(asked))
    r = subprocess.run([sys.executable, "-c", script, "--repo", str(repo), "--config", str(config), "deliver"],
                       input=raw, capture_output=True, check=False, timeout=120)
    assert (0, b"") == (r.returncode, r.stderr)
    return asked.read_bytes().splitlines()


def _filed(tmp_path: Path, keys: dict[str, tuple[bytes, bytes]]) -> tuple[Path, str]:
    repo = issues_repo(tmp_path / "repo")
    _deliver(tmp_path, repo, make_mail(frm="Alice <alice@example.net>", message_id=REPORT), keys)
    [name] = read_names(repo)
    return repo, name


def test_a_mail_signed_by_the_from_domain_is_vouched_for(tmp_path: Path, keys: dict[str, tuple[bytes, bytes]]) -> None:
    """Alice's `Status: closed`, DKIM-signed by example.net with the test's key: the key is looked up through the
    DNS function, the signature verifies, the command applies and the commit says who vouched."""
    repo, name = _filed(tmp_path, keys)
    asked = _deliver(tmp_path, repo, _sign(_comment("Status: closed\n\nFixed it.\n"), keys["example.net"][0]), keys)
    assert ([b"sel._domainkey.example.net."], "closed") == (asked, read_issue(repo, name).status)
    assert "Verified-By: mailtrack dkim=pass" in git(repo, "log", "-1", "--format=%B", "issues")


def _tampered(keys: dict[str, tuple[bytes, bytes]]) -> bytes:
    """Alice's genuinely signed comment, a command put on top of its body afterwards."""
    signed = _sign(_comment(), keys["example.net"][0])
    return signed.replace(b"\n\nLooks fixed", b"\n\nStatus: closed\n\nLooks fixed", 1)


REFUSED = {
    "unsigned": lambda keys: _comment("Status: closed\n\nFixed it.\n"),
    "tampered": _tampered,
    "signed-by-another-domain": lambda keys: _sign(_comment("Status: closed\n\nx\n"), keys["evil.example"][0], "evil.example"),
    "signed-with-a-key-dns-does-not-serve": lambda keys: _sign(_comment("Status: closed\n\nx\n"), keys["stray"][0]),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_an_unsigned_or_tampered_mail_is_not_vouched_for(tmp_path: Path, keys: dict[str, tuple[bytes, bytes]], kind: str) -> None:
    """Unsigned, tampered after signing, signed by a domain that is not the From's, or signed with a key the
    domain does not publish: `Status: closed` is refused (the comment lands), and no Verified-By is written."""
    repo, name = _filed(tmp_path, keys)
    _deliver(tmp_path, repo, REFUSED[kind](keys), keys)
    assert ("new", 1) == (read_issue(repo, name).status, len(read_comments(repo, name)))
    assert "Verified-By" not in git(repo, "log", "-1", "--format=%B", "issues")
    [transcript] = [m for m in outbox(repo) if m["In-Reply-To"] == "<c1@example.net>" and m["Auto-Submitted"] == "auto-replied"]
    assert "refused: commands need a sender address" in transcript.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_body_length_limit_vouches_for_nothing(keys: dict[str, tuple[bytes, bytes]]) -> None:
    """A signature with l= covers only part of the body (anything may follow it): dkimpy verifies it, we do not
    take it; without l= the same mail is vouched for. The DNS function is given to the check directly."""
    access, asked = AccessConfig(verify_dkim=True), []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return _records(keys).get(name.rstrip(b"."))

    limited = _sign(_comment(), keys["example.net"][0], length=True) + b"\nStatus: closed\n"
    assert dkim.verify(limited, dnsfunc=dns)
    asked.clear()
    assert ("", []) == (verified_by(parse(limited), access, _check(dns)), asked)
    assert "mailtrack dkim=pass" == verified_by(parse(_sign(_comment(), keys["example.net"][0])), access, _check(dns))


def test_own_check_only_where_no_trusted_server_stamped(keys: dict[str, tuple[bytes, bytes]]) -> None:
    """With a trusted authserv-id's results on top, those decide (its dkim=fail is a fail, a valid signature
    notwithstanding) and DNS is not asked; with verify_dkim off nothing is checked at all."""
    asked: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return _records(keys).get(name.rstrip(b"."))

    signed = _sign(_comment(), keys["example.net"][0])
    stamped = b"Authentication-Results: mx.example.org; dkim=fail header.d=example.net\r\n" + signed
    trusted = AccessConfig(verify_dkim=True, trusted_authserv_ids=["mx.example.org"])
    assert ("", "", []) == (verified_by(parse(stamped), trusted, _check(dns)), verified_by(parse(signed), AccessConfig(), _check(dns)), asked)
    assert "mailtrack dkim=pass" == verified_by(parse(signed), trusted, _check(dns))  # no stamp of mx.example.org on it
