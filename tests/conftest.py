"""Shared fixtures: throw-away repositories, the real git to check them, the CLI run in-process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailtrack.app import git_issues as cli
from mailtrack.config import AccessConfig, Config, GatewayConfig
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Comment, Issue
from mailtrack.tracker.store import Store
from mailtrack.worker.pipeline import Gateway, default_spool

DATA = Path(__file__).parent / "data"
pytest_plugins = ["conftest_edges", "tracker"]  # Dovecot, IMAP users, TLS certificates, the relay sink; the notify tracker


@pytest.fixture(autouse=True)
def git_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with its own HOME and no system git config, as dulwich's compat tests do."""
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text("[user]\n\tname = Jane Doe\n\temail = jane@example.org\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("GIT_EDITOR", "false")  # a test that opens an editor by mistake fails


def git(repo: Path, *args: str, check: bool = True, input: bytes | None = None) -> str:
    """Run the real git in `repo` and return its stdout."""
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, input=input, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout.decode("utf-8", "replace")


def git_bytes(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(repo: Path, *args: str, stdin: str = "") -> Result:
    """`git issues ARGS` in-process, in `repo`."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_stdin = os.getcwd(), sys.stdin
    os.chdir(repo)
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        os.chdir(old_cwd)
        sys.stdin = old_stdin
    return Result(code, out.getvalue(), err.getvalue())


def make_repo(path: Path, bare: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", *(["--bare"] if bare else []))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A repository with an initialised issues branch and one commit on main."""
    r = make_repo(tmp_path / "repo")
    (r / "README").write_text("project\n")
    git(r, "add", "README")
    git(r, "commit", "-q", "-m", "first")
    assert run_cli(r, "init").code == 0
    yield r


def new_issue(repo: Path, title: str, *args: str) -> str:
    """File an issue with the CLI and return its full name."""
    r = run_cli(repo, "new", title, "-m", f"about {title}", *args)
    assert r.code == 0, r.err
    short = r.out.split()[2].rstrip(":")
    with Store.open(repo) as store:
        return store.snapshot().resolve(short)


def read_issue(repo: Path, name: str) -> Issue:
    with Store.open(repo) as store:
        return store.snapshot().issue(name)


def read_comments(repo: Path, name: str) -> list[Comment]:
    with Store.open(repo) as store:
        return store.snapshot().comments(name)


def read_names(repo: Path) -> list[str]:
    with Store.open(repo) as store:
        return sorted(store.snapshot().issue_names())


def make_gateway(repo: Path, project: str = "proj", reply_rate_limit: int = 100, **access: object) -> Gateway:
    """A gateway on `repo` (its spool in the repository), with the [access] settings given."""
    store = Store.open(repo, durable=True)
    config = Config(gateway=GatewayConfig(project=project, reply_rate_limit=reply_rate_limit),
                    access=AccessConfig(**access))  # type: ignore[arg-type]
    return Gateway(config, store, Spool(default_spool(store)))


@pytest.fixture
def gateway(repo: Path) -> Iterator[Gateway]:
    """The gateway of project "proj" with the default configuration (replies rate-limited as shipped)."""
    g = make_gateway(repo, reply_rate_limit=GatewayConfig().reply_rate_limit)
    yield g
    g.close()
    g.store.close()


@pytest.fixture
def gw(repo: Path) -> Iterator[Gateway]:
    """The gateway of project "proj", boss@example.org a maintainer, replies not rate-limited in practice."""
    g = make_gateway(repo, maintainers=["boss@example.org"])
    yield g
    g.close()
    g.store.close()
