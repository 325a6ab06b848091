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

Mail to our postmaster (`Ours.is_postmaster`: RFC 5321 requires it) is kept for the admin in the
spool's postmaster Maildir (`Spool.keep_for_postmaster`), never given to the worker, and also
queued to `gateway.postmaster_forward` when one is set; a mail to postmaster and to the tracker
is kept in both places, each copy listing only its own recipients. Anyone may write there and only
the admin empties it: past `max_postmaster_mails` unread mails or `max_postmaster_bytes`, RCPT to
postmaster is a `452 4.2.2` (mailbox full).

Lines of any length are taken and kept whole, as Postfix does (it joins what `line_length_limit`
cut up); only the whole mail is bounded (`max_message_size`, `552`). aiosmtpd itself answers a
data line over 1,001 bytes with a permanent `500`, and buffers the rest of such a line without
bound: `_Data.smtp_DATA` reads the data instead. A client's sessions are bounded: at most
`max_sessions` in all and `max_sessions_per_client` from one address (IP; a Unix socket's peers
count only against `max_sessions`), and a session that delivers no mail for `idle_timeout`
seconds (NOOP, RSET, VRFY... do not count; a DATA in progress does) is closed with a `421`.

`stop_accepting()` closes the listening socket at once and answers `421` to any new MAIL in an
open session, while a session already in DATA goes on to its reply; `drain()` waits for those.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from mailtrack.config import ConfigError, ListenConfig
from mailtrack.mail.addresses import Ours
from mailtrack.mail.ids import hashed_message_id, header_message_id
from mailtrack.queue.spool import Spool

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Internal error, mail not accepted: try again later"
TOO_BIG = "552 5.3.4 Error: too much mail data"
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
        postmaster_forward: str = "",
    ) -> None:
        """`postmaster_forward`: an address (not one of ours) that also gets mail to our postmaster."""
        if postmaster_forward and (addresses.is_ours(postmaster_forward) or addresses.delivers_here(postmaster_forward)):
            raise ConfigError(f"gateway.postmaster_forward = {postmaster_forward!r} is an address of ours: it would loop")
        self._spool = spool
        self._addresses = addresses
        self._config = config
        self._on_accept = on_accept
        self._forward = postmaster_forward
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
        if not (self._addresses.delivers_here(address) or self._addresses.is_postmaster(address)):
            log.info("refused recipient <%s> from %r", address, session.peer)
            return f"550 5.1.1 <{address}>: recipient not accepted here"
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return "452 4.5.3 Too many recipients"
        config = self._config
        if self._addresses.is_postmaster(address) and await asyncio.to_thread(
                self._spool.postmaster_full, config.max_postmaster_mails, config.max_postmaster_bytes):
            log.warning("refused <%s> from %r: the postmaster Maildir is full (max_postmaster_mails, max_postmaster_bytes)", address, session.peer)
            return f"452 4.2.2 <{address}>: mailbox full, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = with_message_id((envelope.original_content or b"").replace(b"\r\n", b"\n"))
        postmaster = [r for r in envelope.rcpt_tos if self._addresses.is_postmaster(r)]
        tracker = [r for r in envelope.rcpt_tos if r not in postmaster]
        source = f"{self._config.protocol}:{_peer_text(session.peer)}"
        try:  # the tracker's copy first: if the postmaster's then fails, the retry is a duplicate the worker knows
            spool_ids = []
            if tracker:
                raw = self._stamp(session, envelope, tracker) + content
                spool_ids.append(await asyncio.to_thread(self._spool.accept, raw, source=source))
            if postmaster:
                raw = self._stamp(session, envelope, postmaster) + content
                spool_ids.append(await asyncio.to_thread(self._keep_for_postmaster, raw, source))
        except Exception:
            log.exception("could not spool mail from %r, Message-ID %s", session.peer, header_message_id(content))
            return TEMPFAIL
        if tracker:
            self._notify(spool_ids[0])
        return f"250 2.0.0 OK queued as {spool_ids[0]}"  # in LMTP, _LmtpServer repeats it once per accepted recipient

    def _keep_for_postmaster(self, raw: bytes, source: str) -> str:
        spool_id = self._spool.keep_for_postmaster(raw, source=source)
        if self._forward:  # null sender: a forward that fails must not bounce back to anyone
            self._spool.queue_out(raw, sender="", recipients=[self._forward])
        return spool_id

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

    def _stamp(self, session: Session, envelope: Envelope, recipients: list[str]) -> bytes:
        """Return-Path, Delivered-To and Received header lines recording the envelope (`recipients`:
        those of the envelope's recipients this copy is for)."""

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
        rcpts = [clean(rcpt) for rcpt in recipients]
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
    """Counts live sessions, in all and per client address (touched only in the listener's event
    loop thread)."""

    def __init__(self, limit: int, per_client: int = 0) -> None:
        self.limit = limit
        self.per_client = per_client  # 0: no limit per client
        self.active = 0
        self.clients: dict[str, int] = {}  # live sessions per client IP address
        self.in_data = 0  # sessions between DATA and its reply
        self.closing = False  # stop_accepting() was called: no new transactions


IDLE_EXPIRED = "421 4.4.2 {host} Error: no mail delivered in {seconds:g}s: closing the session"


class _Limits:
    """Session and per-session message limits, sessions per client, the idle clock, and AUTH
    without TLS on loopback only."""

    _gate: _Gate
    _max_messages: int
    _auth_enabled: bool
    _idle_timeout: float = 0.0  # 0: sessions never expire for doing nothing
    _idle_clock: asyncio.TimerHandle | None = None
    _transactions: int = 0

    async def _handle_client(self) -> None:
        server: Any = self
        peer = server.session.peer
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        gate = self._gate
        if gate.active >= gate.limit:
            log.warning("refused %r: %d sessions already", peer, gate.active)
            await server.push("421 4.7.0 Too many connections, try again later")
            server.transport.close()
            return
        if client and gate.per_client and gate.clients.get(client, 0) >= gate.per_client:
            log.warning("refused %r: %d sessions from %s already", peer, gate.clients[client], client)
            await server.push("421 4.7.0 Too many connections from your address, try again later")
            server.transport.close()
            return
        if self._auth_enabled and _is_local(peer):
            server._auth_require_tls = False  # PLAIN/LOGIN in clear only over loopback
        gate.active += 1
        if client:
            gate.clients[client] = gate.clients.get(client, 0) + 1
        self._start_idle_clock()
        try:
            await super()._handle_client()  # type: ignore[misc]
        finally:
            self._stop_idle_clock()
            gate.active -= 1
            if client:
                gate.clients[client] -= 1
                if not gate.clients[client]:
                    del gate.clients[client]

    def _start_idle_clock(self) -> None:
        """(Re)start the time the session has to deliver its next mail."""
        self._stop_idle_clock()
        if self._idle_timeout > 0:
            server: Any = self
            self._idle_clock = server.loop.call_later(self._idle_timeout, self._expire)

    def _stop_idle_clock(self) -> None:
        if self._idle_clock is not None:
            self._idle_clock.cancel()
            self._idle_clock = None

    def _expire(self) -> None:
        server: Any = self
        self._idle_clock = None
        transport = server.transport
        if transport is None or transport.is_closing():
            return
        log.warning("%r: no mail delivered in %gs: session closed", server.session.peer, self._idle_timeout)
        transport.write(IDLE_EXPIRED.format(host=server.hostname, seconds=self._idle_timeout).encode() + b"\r\n")
        transport.close()  # what is written goes out first

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

    def _data_begins(self) -> None:  # the 354 is out: a long upload is no idle session
        self._stop_idle_clock()

    def _data_ends(self) -> None:  # the mail got its reply, whatever it was: the clock starts again
        self._start_idle_clock()


class _Data(SMTP):
    """aiosmtpd's DATA, reading lines of any length (kept whole) in bounded memory.

    aiosmtpd 1.4 answers a line over `line_length_limit` (1,001 bytes) with a permanent `500 Line
    too long`, and keeps every piece of such a line until its end, however long. Here a line is
    gathered from the pieces the reader gives (each at most its limit, and never split inside a
    CRLF), the mail is bounded as a whole by `data_size_limit` (`552` once all is read, as
    RFC 5321 4.2.5 implies), and over the limit nothing more is kept. The rest is as upstream:
    dot-unstuffing, `envelope.original_content`, the DATA hook's reply.
    """

    def _data_begins(self) -> None:
        pass

    def _data_ends(self) -> None:
        pass

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._data_begins()
        try:
            await self._receive()
        finally:
            self._data_ends()

    async def _receive(self) -> None:
        assert self.envelope is not None
        limit = self.data_size_limit
        lines: list[bytes] = []
        line: list[bytes] = []  # the pieces of the line being read
        size, too_big, mid_line = 0, False, False
        while True:
            try:
                piece = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:  # a long line: take what is there, then the rest
                piece = await self._reader.read(e.consumed)
            except asyncio.CancelledError:  # the connection was lost
                self._writer.close()
                raise
            if not mid_line and piece == b".\r\n":
                break
            ends = piece.endswith(b"\r\n")
            size += len(piece)
            too_big = too_big or bool(limit and size > limit)
            if too_big:  # keep nothing more; read on to the end of the data
                lines.clear()
                line.clear()
            else:
                line.append(piece)
                if ends:
                    whole = b"".join(line)
                    lines.append(whole[1:] if whole.startswith(b".") else whole)  # RFC 5321 4.5.2
                    line = []
            mid_line = not ends
        if too_big:
            self.envelope = self._create_envelope()  # aiosmtpd's _set_post_data_state
            await self.push(TOO_BIG)
            return
        self.envelope.original_content = self.envelope.content = b"".join(lines)
        lines.clear()
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)


class _SmtpServer(_Limits, _Data):
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

    `_Data` answers a mail that is too big (`552`, no SIZE given) with a single line, and an exception inside DATA becomes a single reply of
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


class _LmtpServer(_Limits, _OneReplyPerRecipient, _Data):
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
        postmaster_forward: str = "",
    ) -> None:
        """`on_accept(spool_id)` runs in the listener's thread after each mail for the tracker is
        spooled; `postmaster_forward`: where mail to our postmaster is also sent (gateway.postmaster_forward)."""
        self.config = config
        self.handler = SpoolHandler(spool, addresses, config, on_accept=on_accept, postmaster_forward=postmaster_forward)
        self._gate = _Gate(config.max_sessions, config.max_sessions_per_client)
        self._controller: Controller | UnixSocketController | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound

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
            server._idle_timeout = config.idle_timeout
            return server

        controller: Controller | UnixSocketController
        if config.socket:
            clear_stale_socket(config.socket)
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
            st = os.stat(config.socket)
            self._socket_id = (st.st_dev, st.st_ino)
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
        if self._socket_id is not None:  # ours only: never a socket another process bound since
            try:
                st = os.lstat(self.config.socket)
                if (st.st_dev, st.st_ino) == self._socket_id:
                    os.unlink(self.config.socket)
            except FileNotFoundError:
                pass
            self._socket_id = None

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

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        """Bind the socket ourselves: asyncio's create_unix_server(path=) first deletes whatever
        socket is at the path, a live one too; bind() fails (EADDRINUSE) on any existing path."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        return self.loop.create_unix_server(self._factory_invoker, sock=sock, ssl=self.ssl_context)


def clear_stale_socket(path: str) -> None:
    """Make way for a socket at `path`: remove a stale socket there (nobody accepts on it), and
    raise OSError when a live one is (EADDRINUSE: a listener answers) or something else is (EEXIST)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket: not removed")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # a socket nobody listens on (left by a killed process)
        os.unlink(path)
        log.warning("removed the stale socket %s", path)
        return
    except FileNotFoundError:
        return
    except OSError as e:  # a timeout: a full backlog is a live listener too
        raise OSError(errno.EADDRINUSE, f"{path} is in use ({e})") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use: a listener answers on it")
