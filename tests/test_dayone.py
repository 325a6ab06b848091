"""Day one at a site, as a new user follows the README: the quick-start address reaches the gateway
with `git send-email`, the suite runs on a terminal, `mailtrack outbox` in pipes and cron, dropping
a refused series with `git issues reset`, log lines that say what happened, the package metadata."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.ports import free_port, wait_for
from helpers.repos import issues_repo, new_issue, tree
from helpers.servers import Server, clone, git_send_email
from mailtrack.config import GatewayConfig

ROOT = Path(__file__).parent.parent
DEFAULT = GatewayConfig().address  # the embedded default, as the quick start serves it


# --- the default address and git send-email -------------------------------------------------------


def test_git_send_email_takes_the_default_address_and_refused_the_old_one(tmp_path: Path) -> None:
    """git send-email's own address check (Email::Valid or its regex: a dot in the domain) takes the
    default address and the control one; `issues@localhost`, the old default, it refuses."""
    patch = tmp_path / "0001-x.patch"
    patch.write_text("From: Carol <carol@example.org>\nSubject: [PATCH] x\nDate: Fri, 4 Dec 2026 00:00:00 +0000\n\nx\n---\n")
    answers = {}
    for to in (DEFAULT, GatewayConfig().control_address, "issues@localhost"):
        r = git_send_email("--dry-run", "--no-validate", "--smtp-server=127.0.0.1", "--from=carol@example.org", f"--to={to}",
                           "--suppress-cc=all", str(patch))
        answers[to] = "refused" if "unable to extract a valid address" in r.stderr else r.returncode
    assert {DEFAULT: 0, GatewayConfig().control_address: 0, "issues@localhost": "refused"} == answers


@pytest.mark.network  # mailtrack serve
def test_git_send_email_to_the_quick_start_gateway_lands(tmp_path: Path) -> None:
    """The README's patch workflow against the quick-start gateway (the embedded default address):
    `git issues push --mail -o DIR`, then the real `git send-email --to <default>`; the issue lands."""
    repo = issues_repo(tmp_path / "gw")
    server = Server(repo, free_port())  # its configuration names no address: the embedded default
    assert DEFAULT == server.address
    server.start()
    try:
        c = clone(repo, tmp_path / "clone")
        name = new_issue(c, "Sent to the default address")
        r = run_cli(c, "push", "--mail", "-o", str(tmp_path / "out"))
        [patch] = [Path(p) for p in r.out.split()]
        sent = git_send_email("--smtp-server=127.0.0.1", f"--smtp-server-port={server.port}", "--smtp-encryption=none",
                              "--smtp-domain=localhost", "--from=Carol Clone <carol@example.org>", f"--to={DEFAULT}",
                              "--suppress-cc=all", "--quiet", str(patch), cwd=c)
        assert (0, "") == (sent.returncode, sent.stderr)
        wait_for(lambda: tree(repo) == tree(c), timeout=30, what="the patch applied")
        assert "Sent to the default address" in run_cli(repo, "show", name[:7]).out
    finally:
        assert 0 == server.stop()
    assert f"listening on smtp 127.0.0.1:{server.port} for {DEFAULT}" in server.first_line


# --- the suite on a terminal --------------------------------------------------------------------


@pytest.mark.slow  # a pytest run of its own, on a pseudo-terminal
def test_the_send_email_tests_pass_on_a_terminal(tmp_path: Path) -> None:
    """The tests that run git send-email pass with a terminal as stdin, stdout and controlling
    terminal (as `bash .ci/run` typed at a shell): nothing prompts. git send-email writes its
    questions to the terminal, where `script` catches them (and answers EOF: nothing waits forever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_SEND_EMAIL", "GIT_TERMINAL"))}  # the suite's own guards only
    inner = (f"{sys.executable} -m pytest -q -p no:cacheprovider -k '(send_email or default_address) and not on_a_terminal' "
             "tests/test_patches.py tests/test_dayone.py")
    # `script` (util-linux) runs the command on a new pseudo-terminal, which becomes its controlling terminal
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], cwd=ROOT, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, check=False)
    prompts = [q for q in ("To whom should the emails be sent", "In-Reply-To for the first email", "Send this email?")
               if q in r.stdout]
    assert (0, True, []) == (r.returncode, " passed" in r.stdout, prompts), r.stdout[-2000:]


# --- package metadata -----------------------------------------------------------------------------


def test_license_is_an_spdx_string_for_a_setuptools_that_reads_it() -> None:
    """project.license is an SPDX expression (the table form stops working in setuptools in 2027-02),
    and the build asks for a setuptools that reads it (77, PEP 639)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert ("MIT", ["setuptools>=77"]) == (meta["project"]["license"], meta["build-system"]["requires"])
