"""The SMTP and LMTP listener: take mail for the gateway's own addresses, spool it, then say 250.

Thin and durable (aiosmtpd, in a Controller thread): a recipient that is not one of ours is
refused at RCPT (`550 5.1.1`), so the listener can never relay; the mail is written to the spool
(fsynced) before the `250`; anything that goes wrong inside is a `451 4.3.0` (try again later),
never a permanent `500` that would make the sending server bounce the mail.

The spooled mail is the received bytes with LF line ends, after the envelope recorded the way an
MDA does: `Return-Path: <mail from>`, one `Delivered-To:` per accepted recipient (the router
reads plus addressing from them), and a `Received:` line. A mail without a Message-ID gets one
made from a hash of the bytes the client sent (not of our trace lines, whose time changes), so a
client's retry after a cut connection is recognised as the same mail.

`stop_accepting()` closes the listening socket at once and answers `421` to any new MAIL in an
open session, while a session already in DATA goes on to its reply; `drain()` waits for those.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailtrack.config import ListenConfig
from mailtrack.mail.addresses import Ours
from mailtrack.mail.ids import hashed_message_id, header_message_id
from mailtrack.queue.spool import Spool

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Internal error, mail not accepted: try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
IDENT = "mailtrack"
_USABLE_ID_RE = re.compile(r"<[^<>\s]+>|^[^<>\s]+$")


def with_message_id(content: bytes) -> bytes:
    """`content` (LF line ends) with a Message-ID header first when it has no usable one: the
    one the parser would make from these bytes, `<sha1 of content@mailtrack.invalid>`."""
    if _USABLE_ID_RE.search(header_message_id(content)):
        return content
    return f"Message-ID: {hashed_message_id(content)}\n".encode() + content


def read_users(path: str) -> dict[str, str]:
    """`user:password` lines (blank lines and `#` comments skipped) -> {user: password}."""
    users = {}
    for line in Path(path).read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            user, sep, password = line.partition(":")
            if not sep:
                raise ValueError(f"{path}: a line without `user:password`")
            users[user.strip()] = password
    return users


def _tls_context(config: ListenConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _is_local(peer: Any) -> bool:
    """A peer on loopback or a Unix socket (whose peer name is not an address pair)."""
    if not isinstance(peer, tuple):
        return True
    try:
        return ipaddress.ip_address(str(peer[0])).is_loopback
    except ValueError:
        return False


class SpoolHandler:
    """The aiosmtpd handler: which recipients we take, and spooling the mail at DATA."""

    def __init__(
        self,
        spool: Spool,
        addresses: Ours,
        config: ListenConfig,
        *,
        on_accept: Callable[[str], None] | None = None,
    ) -> None:
        self._spool = spool
        self._addresses = addresses
        self._config = config
        self._on_accept = on_accept
        self._users = read_users(config.auth_users_file) if config.auth_users_file else {}

    @property
    def auth_enabled(self) -> bool:
        return bool(self._config.auth_users_file)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if not self.auth_enabled:  # aiosmtpd offers AUTH by default: we have no users
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self._addresses.delivers_here(address):
            log.info("refused recipient <%s> from %r", address, session.peer)
            return f"550 5.1.1 <{address}>: recipient not accepted here"
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        raw = self._stamp(session, envelope) + with_message_id(content)
        source = f"{self._config.protocol}:{_peer_text(session.peer)}"
        try:
            spool_id = await asyncio.to_thread(self._spool.accept, raw, source=source)
        except Exception:
            log.exception(
                "could not spool mail from %r, Message-ID %s", session.peer, header_message_id(raw)
            )
            status = TEMPFAIL
        else:
            status = f"250 2.0.0 OK queued as {spool_id}"
            self._notify(spool_id)
        return status  # in LMTP, _LmtpServer repeats it once per accepted recipient

    async def handle_exception(self, error: Exception) -> str:
        log.error("error in an SMTP session", exc_info=error)
        return TEMPFAIL

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd's `authenticator`: check PLAIN/LOGIN credentials against the users file."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self._users.get(user)
        given = auth_data.password.decode("utf-8", "replace")
        if expected is not None and hmac.compare_digest(expected.encode(), given.encode()):
            return AuthResult(success=True, auth_data=user)
        log.warning("failed AUTH %s for %r from %r", mechanism, user, session.peer)
        return AuthResult(success=False, handled=False)

    def _notify(self, spool_id: str) -> None:
        if self._on_accept is None:
            return
        try:
            self._on_accept(spool_id)
        except Exception:  # the mail is kept: a broken wake-up must not turn into a 451
            log.exception("on_accept(%s) failed", spool_id)

    def _stamp(self, session: Session, envelope: Envelope) -> bytes:
        """Return-Path, Delivered-To and Received header lines recording the envelope."""

        def clean(text: str) -> str:
            return "".join(ch for ch in text if ch >= " " and ch != "\x7f")

        sender = clean(envelope.mail_from or "")
        sender = "" if sender == "<>" else sender.strip("<>")
        if self._config.protocol == "lmtp" or session.extended_smtp:  # RFC 3848 names
            with_ = "LMTP" if self._config.protocol == "lmtp" else "ESMTP"
            with_ += ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        else:
            with_ = "SMTP"
        helo = clean(session.host_name or "unknown")
        rcpts = [clean(rcpt) for rcpt in envelope.rcpt_tos]
        for_ = f"\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        lines = [f"Return-Path: <{sender}>"]
        lines += [f"Delivered-To: {rcpt}" for rcpt in rcpts]
        lines.append(
            f"Received: from {helo} ({_peer_text(session.peer)})"
            f"\n\tby {clean(self._config.server_name)}"
            f" ({IDENT}) with {with_}{for_};\n\t{formatdate(localtime=True)}"
        )
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return f"[{peer[0]}]"
    return "local"


class _Gate:
    """Counts live sessions (touched only in the listener's event loop thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.in_data = 0  # sessions between DATA and its reply
        self.closing = False  # stop_accepting() was called: no new transactions


class _Limits:
    """Session and per-session message limits, and AUTH without TLS on loopback only."""

    _gate: _Gate
    _max_messages: int
    _auth_enabled: bool
    _transactions: int = 0

    async def _handle_client(self) -> None:
        server: Any = self
        if self._gate.active >= self._gate.limit:
            log.warning("refused %r: %d sessions already", server.session.peer, self._gate.active)
            await server.push("421 4.7.0 Too many connections, try again later")
            server.transport.close()
            return
        if self._auth_enabled and _is_local(server.session.peer):
            server._auth_require_tls = False  # PLAIN/LOGIN in clear only over loopback
        self._gate.active += 1
        try:
            await super()._handle_client()  # type: ignore[misc]
        finally:
            self._gate.active -= 1

    async def smtp_MAIL(self, arg: str | None) -> None:
        server: Any = self
        if self._gate.closing:
            await server.push(SHUTTING_DOWN)
            server.transport.close()
            return
        if self._transactions >= self._max_messages:
            await server.push("452 4.5.3 Too many messages in this session: reconnect to send more")
            return
        self._transactions += 1
        await super().smtp_MAIL(arg)  # type: ignore[misc]

    async def smtp_DATA(self, arg: str) -> None:
        self._gate.in_data += 1
        try:
            await super().smtp_DATA(arg)  # type: ignore[misc]
        finally:
            self._gate.in_data -= 1


class _SmtpServer(_Limits, SMTP):
    pass


_STATUS_RE = re.compile(r"^(?P<code>[0-9]{3})[ -](?P<enhanced>[245]\.[0-9]{1,3}\.[0-9]{1,3} )?(?P<text>.*)$")


def per_recipient(status: str, rcpts: list[str]) -> str:
    """One reply line per recipient (LMTP, RFC 2033 4.2): `250 2.0.0 <rcpt> OK ...` each."""
    match = _STATUS_RE.match(status)
    if match is None or not rcpts:
        return status
    code, enhanced, text = match["code"], match["enhanced"] or "", match["text"]
    return "\r\n".join(f"{code} {enhanced}<{rcpt}> {text}" for rcpt in rcpts)


class _OneReplyPerRecipient(LMTP):
    """LMTP after DATA: every final reply once per accepted recipient, whoever made it.

    aiosmtpd answers a mail that is too big (`552`, no SIZE given) or has a line too long
    (`500`) with a single line, and an exception inside DATA becomes a single reply of
    handle_exception() (our `451`) pushed outside smtp_DATA: an LMTP client with 2+ recipients
    would wait forever for the rest. So between the `354` and the end of DATA, push() repeats a
    one-line reply for each recipient, and an exception is answered here, inside DATA.
    """

    _in_data = False
    _data_rcpts: list[str] | None = None  # set once the 354 is out, until the final reply

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data, self._data_rcpts = True, None
        try:
            await super().smtp_DATA(arg)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as error:
            if self._data_rcpts is None:  # before the 354: one reply to the DATA command
                raise
            status = await self.handle_exception(error)
            self._set_post_data_state()
            await self.push(status)
        finally:
            self._in_data, self._data_rcpts = False, None

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        if self._in_data and self._data_rcpts is None and text.startswith("354"):
            assert self.envelope is not None
            self._data_rcpts = list(self.envelope.rcpt_tos)
        elif self._data_rcpts is not None:  # the final reply to this DATA
            rcpts, self._data_rcpts, self._in_data = self._data_rcpts, None, False
            if "\r\n" not in text:
                status = per_recipient(text, rcpts)
        await super().push(status)


class _LmtpServer(_Limits, _OneReplyPerRecipient):
    pass


class SmtpListener:
    """Starts and stops the listener (in its own thread); usable as a context manager."""

    def __init__(
        self,
        config: ListenConfig,
        spool: Spool,
        addresses: Ours,
        *,
        on_accept: Callable[[str], None] | None = None,
    ) -> None:
        """`on_accept(spool_id)` runs in the listener's thread after each mail is spooled."""
        self.config = config
        self.handler = SpoolHandler(spool, addresses, config, on_accept=on_accept)
        self._gate = _Gate(config.max_sessions)
        self._controller: Controller | UnixSocketController | None = None

    @property
    def active_sessions(self) -> int:
        return self._gate.active

    def start(self) -> None:
        config = self.config
        kwargs: dict[str, Any] = {
            "data_size_limit": config.max_message_size,
            "hostname": config.server_name,
            "ident": IDENT,
            "tls_context": _tls_context(config),
            "require_starttls": config.require_tls,
            "auth_required": config.require_auth,
            "authenticator": self.handler.authenticate,
            "timeout": config.timeout,
            "enable_SMTPUTF8": True,
        }
        server_class = _LmtpServer if config.protocol == "lmtp" else _SmtpServer

        def make() -> SMTP:  # one server object per connection
            server = server_class(self.handler, **kwargs)
            server._gate = self._gate
            server._max_messages = config.max_messages_per_session
            server._auth_enabled = self.handler.auth_enabled
            return server

        controller: Controller | UnixSocketController
        if config.socket:
            controller = _UnixController(make, self.handler, unix_socket=config.socket)
        else:
            controller = _InetController(make, self.handler, hostname=config.host, port=config.port)
        try:
            controller.start()
        except BaseException:
            _abandon(controller)
            raise
        self._controller = controller
        if config.socket:
            os.chmod(config.socket, int(config.socket_mode, 8))
        where = config.socket or f"{config.host}:{config.port}"
        log.info("%s listener on %s", config.protocol.upper(), where)

    @property
    def sessions_in_data(self) -> int:
        return self._gate.in_data

    def stop_accepting(self, timeout: float = 5.0) -> None:
        """Close the listening socket now (new connections are refused) and answer 421 to a new
        MAIL in an open session; sessions in DATA go on. Safe to call from any thread."""
        controller = self._controller
        if controller is None or not controller.loop.is_running():
            return

        async def close() -> None:
            self._gate.closing = True
            if controller.server is not None:
                controller.server.close()

        asyncio.run_coroutine_threadsafe(close(), controller.loop).result(timeout)
        log.info("%s listener: no longer accepting", self.config.protocol.upper())

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the sessions in DATA to get their reply; True if none is left."""
        deadline = time.monotonic() + timeout
        while self._gate.in_data and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._gate.in_data

    def stop(self) -> None:
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None
        if self.config.socket:
            try:
                os.unlink(self.config.socket)
            except FileNotFoundError:
                pass

    def __enter__(self) -> SmtpListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _abandon(controller: Controller | UnixSocketController) -> None:
    """Clean up after a failed start (e.g. the port is taken) without leaking the loop."""
    if controller.loop.is_running():
        controller.stop()
        return
    if controller._thread is not None:
        controller._thread.join()
        controller._thread = None
    if not controller.loop.is_closed():
        controller.loop.close()


class _InetController(Controller):
    def __init__(self, make: Callable[[], SMTP], handler: SpoolHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._make = make

    def factory(self) -> SMTP:
        return self._make()


class _UnixController(UnixSocketController):
    def __init__(self, make: Callable[[], SMTP], handler: SpoolHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._make = make

    def factory(self) -> SMTP:
        return self._make()
