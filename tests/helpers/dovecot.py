"""A throw-away Dovecot 2.3 (IMAP + LMTP) on loopback, for the IMAP poller's tests.

It is configured from `tests/helpers/dovecot.conf.template`: it reads
nothing from /etc, listens on 127.0.0.1 only, with TLS when given a certificate; any user name
logs in with PASSWORD (so each test can have a fresh user), or with XOAUTH2 / OAUTHBEARER and
a token from `grant_token()` (Dovecot's oauth2 passdb asks the token-introspection endpoint this
helper serves on loopback, `Introspection`); maildirs under a temporary base folder; starts in
~0.05 s. As root the mail belongs to the `dovecot` user, and the base folder
must be traversable by it (hence mkdtemp + chmod 0755, not pytest's tmp_path).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from imapclient import IMAPClient

from mailtrack.app.daemon import work
from mailtrack.config import ImapConfig
from mailtrack.inbound.imap import ImapPoller
from mailtrack.worker.pipeline import Gateway

TEMPLATE = Path(__file__).parent / "dovecot.conf.template"
PASSWORD = "secret"


class DovecotError(RuntimeError):
    pass


class Introspection:
    """An OAuth 2.0 token-introspection endpoint (RFC 7662) on loopback, for Dovecot's oauth2
    passdb (`introspection_mode = post`: the token in a form body): a token granted to a user is
    active for that user; any other is not. `requests` counts the questions asked."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                token = parse_qs(body).get("token", [""])[0]
                outer.requests += 1
                user = outer.tokens.get(token)
                data = json.dumps({"active": True, "username": user} if user else {"active": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # not on the test's stderr

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the kernel picks
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/introspect"
        self._thread = threading.Thread(target=self._server.serve_forever, name="introspection", daemon=True)
        self._thread.start()

    def grant(self, user: str) -> str:
        """A new access token, active for `user`."""
        token = f"token-{secrets.token_urlsafe(16)}"
        self.tokens[token] = user
        return token

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class DovecotServer:
    """One Dovecot instance: start(), stop(), restart(), add_user(), and IMAP helpers."""

    def __init__(
        self,
        imap_port: int,
        lmtp_port: int,
        *,
        tls: tuple[Path, Path] | None = None,
        imaps_port: int = 0,
        base: Path | None = None,
    ) -> None:
        """`tls` = (certificate, key) PEM files: STARTTLS on imap_port, IMAPS on imaps_port."""
        binary = shutil.which("dovecot") or shutil.which(
            "dovecot", path="/usr/sbin:/usr/local/sbin"
        )
        if binary is None:
            raise DovecotError(
                "dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)"
            )
        self.binary = binary
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="mailtrack-dovecot-"))
            base.chmod(0o755)
        self.base = base
        self.imap_port = imap_port
        self.lmtp_port = lmtp_port
        self.imaps_port = imaps_port if tls else 0
        self.pid = 0
        self._users: set[str] = set()
        self.introspection = Introspection()
        (base / "dovecot-oauth2.conf.ext").write_text(
            f"introspection_mode = post\nintrospection_url = {self.introspection.url}\n"
            "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
        )
        for sub in ("run", "state", "log", "mail"):
            (base / sub).mkdir(exist_ok=True)
        if os.getuid() == 0:
            mail_user, login_user, internal_user = "dovecot", "dovenull", "dovecot"
        else:
            mail_user = login_user = internal_user = pwd.getpwuid(os.getuid()).pw_name
        mail = pwd.getpwnam(mail_user)
        values = {
            "BASE": str(base), "IMAP_PORT": str(imap_port), "LMTP_PORT": str(lmtp_port),
            "LOGIN_USER": login_user, "INTERNAL_USER": internal_user,
            "INTERNAL_GROUP": grp.getgrgid(pwd.getpwnam(internal_user).pw_gid).gr_name,
            "MAIL_UID": str(mail.pw_uid), "MAIL_GID": str(mail.pw_gid), "PASSWORD": PASSWORD,
            "SSL": "yes" if tls else "no", "IMAPS_PORT": str(self.imaps_port),
            "SSL_FILES": f"ssl_cert = <{tls[0]}\nssl_key = <{tls[1]}" if tls else "",
        }  # fmt: skip
        config = TEMPLATE.read_text()
        for name, value in values.items():
            config = config.replace(f"@{name}@", value)
        self.config = base / "dovecot.conf"
        self.config.write_text(config)
        if os.getuid() == 0:
            os.chown(base / "mail", mail.pw_uid, mail.pw_gid)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and wait until it has a pid file and answers on the IMAP port."""
        pidfile = self.base / "run" / "master.pid"
        pidfile.unlink(missing_ok=True)
        with open(self.base / "log" / "dovecot.stdio", "ab") as stdio:
            # dovecot daemonises and keeps its stdio: never let it inherit a pipe of ours
            subprocess.run(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, check=True, timeout=timeout,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip() and self._answers():
                self.pid = int(pidfile.read_text().strip())
                return
            time.sleep(0.02)
        raise DovecotError(f"dovecot did not come up in {timeout}s; log:\n{self.log()}")

    def stop(self, *, fast: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM the master, or SIGKILL its whole process group (dovecot setsid()s) when `fast`.

        SIGTERM takes ~1 s, but ~10 s while a client is in IDLE (the imap process notices late).
        """
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        with contextlib.suppress(ProcessLookupError):
            if fast:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _live_in_group(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _live_in_group(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def restart(self, *, fast: bool = False) -> None:
        """Stop and start again on the same ports, with the same mail."""
        self.stop(fast=fast)
        self.start()

    def remove(self) -> None:
        """Stop the server and its introspection endpoint, and delete its files."""
        self.stop(fast=True)
        self.introspection.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.base / "log" / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    # --- users and mail -------------------------------------------------------------------------

    def add_user(self, name: str) -> str:
        """A new IMAP user (any name logs in with PASSWORD; its maildir appears on first login)."""
        if name in self._users:
            raise ValueError(f"user {name} exists already")
        self._users.add(name)
        return name

    def grant_token(self, user: str) -> str:
        """An OAuth 2.0 access token `user` logs in with (XOAUTH2 or OAUTHBEARER)."""
        return self.introspection.grant(user)

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        """A logged-in IMAP connection as `user`, closed afterwards."""
        client = IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=10)
        try:
            client.login(user, PASSWORD)
            yield client
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    def append(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """APPEND a mail (LF or CRLF) to a folder, as another client would."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def messages(
        self, user: str, folder: str = "INBOX"
    ) -> dict[int, tuple[bytes, tuple[bytes, ...]]]:
        """{uid: (raw mail, flags)} of the undeleted mail in a folder ({} if it does not exist)."""
        with self.client(user) as client:
            if not client.folder_exists(folder):
                return {}
            client.select_folder(folder, readonly=True)
            uids = client.search(["UNDELETED"])
            if not uids:
                return {}
            data = client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
            return {uid: (bytes(d[b"BODY[]"]), tuple(d[b"FLAGS"])) for uid, d in data.items()}

    def subjects(self, user: str, folder: str = "INBOX") -> list[str]:
        """The Subject lines of the mail in a folder, sorted."""
        found = []
        for raw, _flags in self.messages(user, folder).values():
            for line in raw.decode("utf-8", "replace").splitlines():
                if line.lower().startswith("subject:"):
                    found.append(line.split(":", 1)[1].strip())
        return sorted(found)

    def idling(self, user: str) -> bool:
        """Is an IMAP session of `user` in IDLE just now (its process title says so)?"""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    title = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if title.startswith(f"dovecot-test-{self.imap_port}/imap [{user} 127.0.0.1 IDLE]".encode()):
                    return True  # instance_name in the template: dovecot-test-<imap port>
        return False

    # --- internals ------------------------------------------------------------------------------

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as sock:
                return sock.recv(16).startswith(b"* OK")
        except OSError:
            return False


def poller_config(server: DovecotServer, user: str, **fields: object) -> ImapConfig:
    """An [[imap]] table for `user` of this server (plain IMAP on loopback, the password, short
    waits), with `fields` changed."""
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": server.imap_port, "security": "plain", "username": user,
        "password": PASSWORD, "idle_timeout": 0.2, "poll_interval": 60.0, "timeout": 10.0,
        "backoff_initial": 0.05, "backoff_max": 0.5,
    }  # fmt: skip
    return ImapConfig(**{**values, **fields})  # type: ignore[arg-type]


def _live_in_group(pgid: int) -> bool:
    """Is any process of this group alive (zombies count as gone)?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def work_all(gateway: Gateway, pollers: list[ImapPoller]) -> int:
    """`serve`'s worker on every mail waiting in the spool, the pollers' folders following; how many."""
    n = 0
    for claim in gateway.spool.incoming.claims():
        work(gateway, claim, pollers)
        n += 1
    return n
