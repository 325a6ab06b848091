"""`mailtrack web` and `mailtrack serve` with [web] enabled: real processes, real HTTP on loopback."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from helpers.cli import mailtrack_command, run_cli
from helpers.ports import free_port, note_listener, refused, wait_for
from helpers.servers import Server

pytestmark = pytest.mark.network  # every test here starts a server process


def _get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return str(r.read().decode())


def test_mailtrack_web_serves_until_sigterm(repo: Path) -> None:
    """`mailtrack web --port P` says where it listens, serves the list, and exits 0 on SIGTERM."""
    assert 0 == run_cli(repo, "new", "Served by waitress", "-m", "x").code
    port = free_port()
    note_listener(f"mailtrack web on 127.0.0.1:{port}")
    proc = subprocess.Popen(mailtrack_command("--repo", str(repo), "web", "--port", str(port)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"on http://127.0.0.1:{port}/" in line, line
        assert "Served by waitress" in _get(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert 0 == code
    assert refused(port)


def test_mailtrack_web_on_a_taken_port_exits_71(repo: Path) -> None:
    """A port in use is a one-line error and exit 71 (EX_OSERR), no traceback."""
    import socket  # here: only this test holds a port itself

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(mailtrack_command("--repo", str(repo), "web", "--port", str(port)), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60, check=False)
    assert 71 == r.returncode
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_serve_runs_the_web_view_when_enabled(tmp_path: Path) -> None:
    """With [web] enabled = true, `mailtrack serve` serves the pages too, and stops them on SIGTERM."""
    from helpers.repos import issues_repo  # here: the other tests use the conftest's repo fixture

    repo = issues_repo(tmp_path / "gw")
    web_port = free_port()
    note_listener(f"the web view of serve on 127.0.0.1:{web_port}")
    server = Server(repo, free_port(), f"[web]\nenabled = true\nport = {web_port}\n")
    server.start()
    try:  # serve says it listens for mail first, then starts the web view and says so
        wait_for(lambda: any(f"the web view on http://127.0.0.1:{web_port}/" in line for line in server.log),
                 timeout=30, what="serve's line saying the web view listens")
        assert 0 == run_cli(repo, "new", "Seen on the web", "-m", "x").code
        page = wait_for(lambda: "Seen on the web" in _get(web_port) and _get(web_port), what="the issue on the web page")
        assert "Issues of proj" in page
    finally:
        assert 0 == server.stop()
    assert refused(web_port)
    assert any(f"the web view on http://127.0.0.1:{web_port}/" in line for line in server.log)
