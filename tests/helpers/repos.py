"""Throw-away repositories, the real git to check them, and reading the issues branch back."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.cli import run_cli
from mailtrack.config import AccessConfig, Config, GatewayConfig
from mailtrack.queue.layout import default_root
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Comment, Issue
from mailtrack.tracker.store import Store
from mailtrack.worker.pipeline import Gateway

DATA = Path(__file__).parent.parent / "data"

# Set for every test (tests/conftest.py, git_env): no git or git send-email asks anything on a terminal.
NONINTERACTIVE = {
    "GIT_TERMINAL_PROMPT": "0",  # no username/password prompts
    "GIT_ASKPASS": "false", "SSH_ASKPASS": "false",  # nor through a helper program
    "GIT_SEND_EMAIL_NOTTY": "1",  # git send-email asks on its stdin (which is /dev/null), not on /dev/tty
    "GIT_EDITOR": "false",  # a test that opens an editor by mistake fails
}


def git(repo: Path, *args: str, check: bool = True, input: bytes | None = None) -> str:
    """Run the real git in `repo` and return its stdout."""
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, input=input,
                       stdin=subprocess.DEVNULL if input is None else None, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout.decode("utf-8", "replace")


def git_bytes(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, stdin=subprocess.DEVNULL, check=True).stdout


def tip(repo: Path) -> str:
    """The commit the issues branch points to."""
    return git(repo, "rev-parse", "issues").strip()


def tree(repo: Path) -> str:
    """The tree of the issues branch's tip."""
    return git(repo, "rev-parse", "issues^{tree}").strip()


def make_repo(path: Path, bare: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", *(["--bare"] if bare else []))
    return path


def issues_repo(path: Path) -> Path:
    """A repository with one commit on main and an initialised issues branch."""
    r = make_repo(path)
    (r / "README").write_text("project\n")
    git(r, "add", "README")
    git(r, "commit", "-q", "-m", "first")
    assert 0 == run_cli(r, "init").code
    return r


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


def titles(repo: Path) -> list[str]:
    """The titles of the issues on the branch, sorted."""
    return sorted(read_issue(repo, n).title for n in read_names(repo))


def make_gateway(repo: Path, project: str = "proj", reply_rate_limit: int = 100, **access: object) -> Gateway:
    """A gateway on `repo` (its spool in the repository), with the [access] settings given."""
    store = Store.open(repo, durable=True)
    config = Config(gateway=GatewayConfig(project=project, reply_rate_limit=reply_rate_limit),
                    access=AccessConfig(**access))  # type: ignore[arg-type]
    return Gateway(config, store, Spool(default_spool(store)))


def default_spool(store: Store) -> Path:
    """The spool a gateway on this store uses when none is configured (queue.layout.default_root)."""
    return default_root(Path(store.repo.controldir()))
