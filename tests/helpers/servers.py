"""`mailtrack serve` in a process of its own, a served gateway with an offline clone, and git send-email
to it. Nothing here reads the terminal: serve's stdin is /dev/null, git send-email runs with stdin
/dev/null, without a controlling terminal, and never confirms or prompts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from helpers.cli import mailtrack_command, run_cli
from helpers.ports import note_listener
from helpers.repos import git

SEND_EMAIL = "/usr/lib/git-core/git-send-email"
ADDRESS = "issues@example.test"  # git send-email wants a dot in the domain


class Server:
    """`mailtrack serve` on `repo`, listening for SMTP on 127.0.0.1:`port` for `address`."""

    def __init__(self, repo: Path, port: int, extra: str = "", *, inject: str = "", address: str = "issues@tracker.localhost") -> None:
        """`extra`: more TOML for [gateway] and after; `inject`: Python run in the server process before
        `mailtrack serve` (a fault to inject)."""
        self.repo, self.port, self.inject, self.address = repo, port, inject, address
        self.config = repo / "mailtrack.toml"
        self.config.write_text(f'[gateway]\nproject = "proj"\n{extra}\n[[listen]]\nport = {port}\n')
        self.proc: subprocess.Popen[str] | None = None
        self.first_line = ""  # serve's one line at start: where it listens, what it polls
        self.log: list[str] = []  # serve's stderr after the first line, read as it comes (the pipe never fills)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        note_listener(f"mailtrack serve on 127.0.0.1:{self.port}")
        args = ["--repo", str(self.repo), "--config", str(self.config), "serve"]
        if self.inject:
            script = f"import sys\n{self.inject}\nfrom mailtrack.app import mailtrack\nsys.exit(mailtrack.main(sys.argv[1:]))\n"
            command = [sys.executable, "-c", script, *args]
        else:
            command = mailtrack_command(*args)
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        line = self.first_line = self.proc.stderr.readline()
        while " WARNING " in line:  # what the start recovered (a crash before it) comes first
            self.log.append(line.rstrip("\n"))
            line = self.first_line = self.proc.stderr.readline()
        if f"listening on smtp 127.0.0.1:{self.port} for {self.address}" not in line:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()
            pytest.fail(f"serve did not start: {line}")
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line.rstrip("\n"))

    def finish(self) -> int:
        """Wait for serve to exit (SIGTERM sent) and for the rest of its stderr; its exit code."""
        assert self.proc is not None and self.proc.stderr is not None
        code = self.proc.wait(timeout=60)
        if self._reader is not None:
            self._reader.join(timeout=30)
        self.proc.stderr.close()
        return code

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()


@dataclass
class Served:
    repo: Path  # the gateway's repository, with `mailtrack serve` on it
    server: Server
    clone: Path  # an offline clone, level with it (Carol Clone)


def clone(gw: Path, path: Path, user: tuple[str, str] = ("Carol Clone", "carol@example.org")) -> Path:
    """A clone of the gateway's repository, its issues branch pulled, committing as `user`."""
    git(path.parent, "clone", "-q", str(gw), str(path))
    git(path, "config", "user.name", user[0])
    git(path, "config", "user.email", user[1])
    r = run_cli(path, "pull")
    assert 0 == r.code, r.err
    return path


def git_send_email(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`git send-email --confirm=never --no-annotate ARGS`, which never waits for an answer: stdin is
    /dev/null, there is no controlling terminal (its own session) to open /dev/tty on, and
    GIT_SEND_EMAIL_NOTTY (tests/conftest.py) makes it read what it would ask from that stdin."""
    if subprocess.run(["perl", "-MMail::Address", "-e1"], capture_output=True, stdin=subprocess.DEVNULL, check=False).returncode != 0:
        pytest.fail("git send-email needs Perl's Mail::Address: apt-get install libmailtools-perl")
    return subprocess.run([SEND_EMAIL, "--confirm=never", "--no-annotate", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          start_new_session=True, capture_output=True, text=True, check=False, timeout=60)


def send_email(files: list[Path], port: int, sender: str = "Carol Clone <carol@example.org>") -> None:
    """Send patch files with git send-email to the gateway listening on `port`, To: ADDRESS."""
    r = git_send_email("--smtp-server=127.0.0.1", f"--smtp-server-port={port}", "--smtp-encryption=none",
                       "--smtp-domain=localhost", f"--from={sender}", f"--to={ADDRESS}", "--suppress-cc=all", "--quiet",
                       *map(str, files))
    assert (0, "") == (r.returncode, r.stderr)
