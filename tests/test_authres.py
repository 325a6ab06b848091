"""Authentication-Results (RFC 8601), read with authres: only the trusted authserv-ids count, a pass only
from the trusted server's own group on top of the mail, and any fail among the trusted results is a fail.
The attacks go through `mailtrack deliver` and the real SMTP listener (`mailtrack serve`)."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail, outbox, spool_path
from helpers.ports import free_port, wait_for
from helpers.repos import git, issues_repo, read_comments, read_issue, read_names
from helpers.servers import Server
from mailtrack.config import AccessConfig
from mailtrack.mail.parse import parse
from mailtrack.worker.admission import verified_by

ACCESS = '[access]\nrequire_auth_for_commands = true\ntrusted_authserv_ids = ["mx.example.org"]\n'
REPORT = "<report@example.net>"
RECEIVED = "Received: from evil.example (evil.example [192.0.2.66]) by mx.example.org; Mon, 3 Jun 2024 10:00:00 +0000\r\n"


def _setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """A gateway repository whose commands need a vouched sender; Alice's issue on it (its name)."""
    repo = issues_repo(tmp_path / "repo")
    config = tmp_path / "mailtrack.toml"
    config.write_text('[gateway]\nproject = "proj"\n' + ACCESS)
    r = mailtrack("deliver", repo=repo, config=config, input=make_mail(frm="Alice <alice@example.net>", message_id=REPORT))
    assert (0, b"") == (r.returncode, r.stderr)
    [name] = read_names(repo)
    return repo, config, name


def _close(top: str, message_id: str = "<c1@example.net>") -> bytes:
    """A mail from Alice closing her issue, with `top` (trace fields, CRLF-ended) above its own fields."""
    mail = make_mail(frm="Alice <alice@example.net>", subject="Re: Printer on fire", message_id=message_id,
                     In_Reply_To=REPORT, body="Status: closed\n\nFixed it.\n")
    return top.encode() + mail


# The attack of issue 12: our MTA's dmarc=fail and Received on top, the sender's own forged pass below them.
DMARC_FORGED = ("Authentication-Results: mx.example.org; dmarc=fail (p=none) header.from=example.net\r\n" + RECEIVED
                + "Authentication-Results: mx.example.org; dmarc=pass header.from=example.net\r\n")
FORGED_BELOW = [
    pytest.param(DMARC_FORGED, id="dmarc-pass-below-dmarc-fail"),
    pytest.param("Authentication-Results: mx.example.org; dkim=fail (bad signature) header.d=example.net\r\n"
                 + RECEIVED
                 + "Authentication-Results: mx.example.org; dkim=pass header.d=example.net\r\n", id="dkim-pass-below-dkim-fail"),
    pytest.param("Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=evil.example; dkim=pass header.d=evil.example\r\n"
                 + RECEIVED
                 + "Authentication-Results: mx.example.org; dmarc=pass header.from=example.net\r\n", id="pass-below-silence"),
    pytest.param("Authentication-Results: mx.example.org; dmarc=fail header.from=example.net\r\n"
                 "Authentication-Results: mx.example.org; dmarc=pass header.from=example.net\r\n", id="pass-next-to-fail"),
    pytest.param("Authentication-Results: mx.example.org; dmarc=pass header.from=example.net;;; =\r\n", id="unreadable"),
    pytest.param(RECEIVED + "Authentication-Results: mx.example.org; dkim=none; dmarc=none header.from=example.net\r\n"
                 "Authentication-Results: mx.example.org; dkim=pass header.d=example.net\r\n", id="pass-below-none"),
]  # fmt: skip


@pytest.mark.parametrize("top", FORGED_BELOW)
def test_a_forged_pass_among_the_trusted_results_is_not_believed(tmp_path: Path, top: str) -> None:
    """Our MTA's own `fail` (or its silence about the From domain) on top, a forged `pass` with our authserv-id
    below it: the sender is not vouched for, so `Status: closed` is refused and the commit has no Verified-By."""
    repo, config, name = _setup(tmp_path)
    r = mailtrack("deliver", repo=repo, config=config, input=_close(top))
    assert (0, b"") == (r.returncode, r.stderr)
    assert ("new", 1) == (read_issue(repo, name).status, len(read_comments(repo, name)))
    assert "Verified-By" not in git(repo, "log", "-1", "--format=%B", "issues")
    [transcript] = [m for m in outbox(repo) if m["Auto-Submitted"] == "auto-replied" and m["In-Reply-To"] == "<c1@example.net>"]
    assert "refused: commands need a sender address the receiving server vouches for" in transcript.get_body(("plain",)).get_content()  # type: ignore[union-attr]


VOUCHED = [
    pytest.param("Authentication-Results: mx.example.org; dkim=pass header.d=example.net header.s=sel; dmarc=pass header.from=example.net\r\n"
                 + RECEIVED, "mx.example.org dkim=pass", id="both"),
    pytest.param("Authentication-Results: mx.example.org 1; spf=softfail smtp.mailfrom=bounces.example.org;\r\n"
                 "\tdmarc=pass (p=reject) header.from=example.net\r\n", "mx.example.org dmarc=pass", id="folded-with-version-spf-aside"),
    pytest.param(RECEIVED + "Authentication-Results: MX.Example.Org; dkim=pass header.i=@example.net\r\n", "mx.example.org dkim=pass",
                 id="under-its-received"),
    pytest.param("Authentication-Results: mx.example.org; dkim=pass header.d=example.net\r\n" + RECEIVED
                 + "Authentication-Results: evil.example; dmarc=fail header.from=example.net\r\n", "mx.example.org dkim=pass",
                 id="a-stranger-s-fail-is-no-matter"),
]  # fmt: skip


@pytest.mark.parametrize("top, verified", VOUCHED)
def test_the_trusted_server_s_own_pass_is_believed(tmp_path: Path, top: str, verified: str) -> None:
    """The trusted server's own pass for the From domain, and no fail among its results: the command applies
    and the commit records who vouched."""
    repo, config, name = _setup(tmp_path)
    assert 0 == mailtrack("deliver", repo=repo, config=config, input=_close(top)).returncode
    assert "closed" == read_issue(repo, name).status
    assert f"Verified-By: {verified}" in git(repo, "log", "-1", "--format=%B", "issues")


def test_results_of_other_domains_and_methods_do_not_decide() -> None:
    """A dkim=fail of a list's own signature, spf=fail, and anything of an untrusted authserv-id say nothing of the
    From domain: the trusted dmarc=pass still counts. With no trusted id configured nothing is believed."""
    top = (b"Authentication-Results: mx.example.org; dkim=fail header.d=lists.example.org; spf=fail smtp.mailfrom=lists.example.org;"
           b" dmarc=pass header.from=example.net\r\n")
    mail = parse(top + make_mail(frm="alice@example.net"))
    assert ("mx.example.org dmarc=pass", "") == (
        verified_by(mail, AccessConfig(trusted_authserv_ids=["mx.example.org"])), verified_by(mail, AccessConfig()))


@pytest.mark.network
def test_forged_pass_below_the_trusted_fail_over_smtp(tmp_path: Path) -> None:
    """The same attack over SMTP to `mailtrack serve`: the forged dmarc=pass under the trusted dmarc=fail
    changes nothing; the same mail with only the trusted pass closes the issue."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port(), extra=ACCESS)
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.port) as smtp:
            smtp.sendmail("alice@example.net", ["issues@tracker.localhost"], make_mail(frm="Alice <alice@example.net>", message_id=REPORT))
            [name] = wait_for(lambda: read_names(repo), what="Alice's issue")
            smtp.sendmail("alice@example.net", ["issues@tracker.localhost"], _close(DMARC_FORGED, "<c1@example.net>"))
            wait_for(lambda: len(read_comments(repo, name)) == 1, what="the forged mail's comment")
            assert "new" == read_issue(repo, name).status
            vouched = _close("Authentication-Results: mx.example.org; dmarc=pass header.from=example.net\r\n" + RECEIVED, "<c2@example.net>")
            smtp.sendmail("alice@example.net", ["issues@tracker.localhost"], vouched)
            wait_for(lambda: read_issue(repo, name).status == "closed", what="the vouched mail's command")
    finally:
        assert 0 == server.stop()
    assert [] == list((spool_path(repo) / "failed").iterdir())


def test_without_require_auth_the_results_decide_nothing(repo: Path) -> None:
    """Without require_auth_for_commands, Authentication-Results decide nothing: a plain reply's command applies."""
    assert 0 == deliver(repo, make_mail(frm="Alice <alice@example.net>", message_id=REPORT)).returncode
    [name] = read_names(repo)
    top = "Authentication-Results: mx.example.org; dmarc=fail header.from=example.net\r\n"
    assert 0 == deliver(repo, _close(top)).returncode
    assert "closed" == read_issue(repo, name).status
