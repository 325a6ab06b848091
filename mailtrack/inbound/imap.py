"""The IMAP poller: fetch new mail from a mailbox, spool it, and only then file it away.

One `ImapPoller` per mailbox, each in its own thread (imapclient is blocking). A mail is fetched
with BODY.PEEK[], kept with `spool.accept()` (fsynced), marked with the keyword KEPT_KEYWORD, the
highest UID done is written to a small state file (write-fsync-rename), and only then is the mail
flagged or moved to the processed folder: MOVE, or COPY + \\Deleted + UID EXPUNGE (without UIDPLUS the copy is left marked
\\Deleted, as a plain EXPUNGE would delete others' \\Deleted mail too). A crash between those steps
costs at worst a mail spooled twice (the gateway is idempotent by Message-ID), never a lost one: a
mail leaves the folder only after it is kept. A mail found still in the folder at a UID already
done is filed away only when it carries KEPT_KEYWORD: one skipped (marked \\Deleted at the time,
or vanished before its fetch) was never kept and is left where it is. When UIDVALIDITY changes, the UID state is void and
everything still in the folder is fetched again.

`run(stop)` waits with IDLE when the server offers it (checking `stop` every `idle_timeout`
seconds), polls every `poll_interval` seconds otherwise, and reconnects with exponential backoff
after a dropped connection or a server restart.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient  # type: ignore[import-untyped, unused-ignore]
from imapclient.exceptions import IMAPClientError  # type: ignore[import-untyped, unused-ignore]

from mailtrack.config import KEPT_KEYWORD, ImapConfig
from mailtrack.mail.ids import header_message_id
from mailtrack.queue.spool import Spool, write_durably

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _State:
    uidvalidity: int = 0
    last_uid: int = 0


class ImapPoller:
    """Polls one mailbox into the spool. Not thread-safe: one thread calls poll_once()/run()."""

    def __init__(
        self,
        config: ImapConfig,
        spool: Spool,
        *,
        on_accept: Callable[[str], None] | None = None,
    ) -> None:
        """`on_accept(spool_id)` runs in the poller's thread after each mail is spooled."""
        self.config = config
        self._spool = spool
        self._on_accept = on_accept
        state_dir = Path(config.state_dir) if config.state_dir else spool.layout.imap_state
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.@-]", "_", config.label)
        self.state_path = state_dir / f"imap-{slug}.json"
        self._client: IMAPClient | None = None
        self._idle_ok = False

    @property
    def source(self) -> str:
        """The source recorded with each mail this poller spools (`Spool.source(spool_id)`)."""
        return f"imap:{self.config.label}"

    # --- the public loop ------------------------------------------------------------------------

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Connect if needed, spool and file away every new mail; return how many were spooled.

        With `stop`, it returns after the mail at hand once `stop` is set (the rest waits).
        On any error the connection is dropped (the next call reconnects) and the error raised.
        """
        try:
            client = self._connect()
            return self._poll(client, stop)
        except BaseException:
            self.close()
            raise

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set: IDLE (or sleep) between polls, reconnect with backoff."""
        config = self.config
        backoff = config.backoff_initial
        try:
            while not stop.is_set():
                try:
                    while self.poll_once(stop) and not stop.is_set():
                        pass  # more may have come while we worked
                    backoff = config.backoff_initial
                    if self._idle_ok and config.idle:
                        self._idle(stop)
                    else:
                        stop.wait(config.poll_interval)
                except Exception as error:  # a poller never dies: log, back off, reconnect
                    self.close()
                    log.warning("%s: %s; reconnecting in %.1fs", config.label, error, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, config.backoff_max)
        finally:
            self.close()

    def close(self) -> None:
        """Log out (or just close the socket when the connection is broken)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            try:
                client.shutdown()
            except Exception:
                log.debug("%s: closing the socket failed", self.config.label, exc_info=True)

    def move_to_failed(self, message_id: str) -> int:
        """Move the mail this poller kept with this Message-ID to the failed folder; return how
        many were moved.

        Only mail marked KEPT_KEYWORD counts: a mail not yet kept that shares the Message-ID
        stays where it is. It is looked for in the polled folder first (kept, but not yet filed
        away: the worker may be quicker than the poller's MOVE), then in the processed folder, so
        a mail moved from one to the other meanwhile is found in the second. The caller makes
        sure the mail came from this poller (`Spool.source(spool_id) == poller.source`).
        Uses a connection of its own, so any thread may call it while run() goes on.
        """
        config = self.config
        if not config.failed_folder:
            return 0
        client = self._open()
        try:
            self._ensure_folder(client, config.failed_folder)
            moved = 0
            folders = [config.folder] + ([config.processed_folder] if config.action == "move" else [])
            for folder in folders:
                if not client.folder_exists(folder):
                    continue
                client.select_folder(folder)
                uids = client.search(
                    ["HEADER", "Message-ID", message_id, "KEYWORD", KEPT_KEYWORD, "UNDELETED"]
                )
                if uids:
                    self._move(client, uids, config.failed_folder)
                    moved += len(uids)
            log.info(
                "%s: moved %d mail(s) to %s, Message-ID %s",
                config.label,
                moved,
                config.failed_folder,
                message_id,
            )
            return moved
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    # --- one poll -------------------------------------------------------------------------------

    def _poll(self, client: IMAPClient, stop: threading.Event | None = None) -> int:
        config = self.config
        # SELECT again each time: it syncs our view (a SEARCH right after another client's APPEND
        # may miss it otherwise) and tells a recreated folder by its new UIDVALIDITY.
        uidvalidity = int(client.select_folder(config.folder)[b"UIDVALIDITY"])
        state = self._load_state()
        if state.uidvalidity != uidvalidity:
            if state.uidvalidity:
                log.warning(
                    "%s: UIDVALIDITY changed (%d -> %d): fetching all mail still in the folder",
                    config.label,
                    state.uidvalidity,
                    uidvalidity,
                )
            state = _State(uidvalidity=uidvalidity, last_uid=0)
            self._save_state(state)

        # Kept before but not yet filed away (a crash or a dropped connection in between): only
        # mail marked kept; one skipped at its turn (\Deleted, vanished) was never spooled.
        if state.last_uid:
            criteria = ["UID", f"1:{state.last_uid}", "KEYWORD", KEPT_KEYWORD, *self._pending()]
            leftover = [u for u in client.search(criteria) if u <= state.last_uid]
            if leftover:
                log.info("%s: filing away %d mail(s) kept earlier", config.label, len(leftover))
                self._file_away(client, leftover)

        criteria = ["UID", f"{state.last_uid + 1}:*", "UNDELETED"]
        if state.last_uid == 0 and config.action == "flag":
            criteria += self._pending()  # after a reset, trust the flag
        new = sorted(u for u in client.search(criteria) if u > state.last_uid)
        count = 0
        for uid in new:
            if stop is not None and stop.is_set():  # the rest waits for the next run
                break
            fetched = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
            if not fetched or b"BODY[]" not in fetched:
                log.info("%s: UID %d vanished before it was fetched", config.label, uid)
                continue
            raw = bytes(fetched[b"BODY[]"]).replace(b"\r\n", b"\n")
            spool_id = self._spool.accept(raw, source=self.source, keep_source=True)
            client.add_flags([uid], [KEPT_KEYWORD])  # kept: from now on it may be filed away
            state = _State(uidvalidity=uidvalidity, last_uid=uid)
            self._save_state(state)
            count += 1
            self._notify(spool_id)
            self._file_away(client, [uid])
            log.info(
                "%s: UID %d spooled as %s, Message-ID %s",
                config.label,
                uid,
                spool_id,
                header_message_id(raw),
            )
        return count

    def _pending(self) -> list[str]:
        """Search criteria for mail not yet filed away."""
        if self.config.action == "move":
            return ["UNDELETED"]
        if self.config.flag.lower() == "\\seen":
            return ["UNSEEN"]
        return ["UNKEYWORD", self.config.flag]

    def _file_away(self, client: IMAPClient, uids: list[int]) -> None:
        if self.config.action == "flag":
            client.add_flags(uids, [self.config.flag])
        else:
            self._move(client, uids, self.config.processed_folder)

    def _move(self, client: IMAPClient, uids: list[int], folder: str) -> None:
        if self.config.use_move and client.has_capability("MOVE"):
            client.move(uids, folder)
            return
        client.copy(uids, folder)
        client.add_flags(uids, [b"\\Deleted"])
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)  # only ours, not other mail someone marked \Deleted
        else:  # a plain EXPUNGE would also delete mail we have not kept: leave it \Deleted
            log.info("%s: no UIDPLUS: copied mail left marked \\Deleted", self.config.label)

    def _notify(self, spool_id: str) -> None:
        if self._on_accept is None:
            return
        try:
            self._on_accept(spool_id)
        except Exception:
            log.exception("on_accept(%s) failed", spool_id)

    # --- waiting --------------------------------------------------------------------------------

    def _idle(self, stop: threading.Event) -> None:
        """IDLE until the server reports something, `stop` is set, or poll_interval passes."""
        client = self._client
        assert client is not None
        tick = min(self.config.idle_timeout, self.config.poll_interval)
        deadline = time.monotonic() + self.config.poll_interval
        client.idle()
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                responses = client.idle_check(timeout=tick)
                if responses:
                    log.debug("%s: IDLE: %r", self.config.label, responses)
                    break
                if time.monotonic() - started < tick / 2:
                    # idle_check() swallows EOF and returns [] at once: the server went away.
                    # (A spurious early wake-up costs one needless poll.)
                    break
        finally:
            client.idle_done()

    # --- connection -----------------------------------------------------------------------------

    def _connect(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        config = self.config
        client = self._open()
        try:
            self._ensure_folder(client, config.folder)
            if config.action == "move":
                self._ensure_folder(client, config.processed_folder)
            self._idle_ok = client.has_capability("IDLE")
        except BaseException:
            client.shutdown()
            raise
        self._client = client
        return client

    def _open(self) -> IMAPClient:
        """A new, logged-in connection."""
        config = self.config
        context = ssl.create_default_context(cafile=config.tls_ca_file or None)
        client = IMAPClient(
            config.host, port=config.port, ssl=config.security == "tls",
            ssl_context=context, timeout=config.timeout,
        )  # fmt: skip
        try:
            if config.security == "starttls":
                client.starttls(context)
            client.login(config.username, self._password())
        except BaseException:
            client.shutdown()
            raise
        log.info("%s: logged in", config.label)
        return client

    def _password(self) -> str:
        if self.config.password_file:
            return Path(self.config.password_file).read_text("utf-8").rstrip("\r\n")
        return self.config.password

    @staticmethod
    def _ensure_folder(client: IMAPClient, folder: str) -> None:
        if not client.folder_exists(folder):
            try:
                client.create_folder(folder)
            except IMAPClientError:  # created meanwhile by someone else?
                if not client.folder_exists(folder):
                    raise

    # --- state ----------------------------------------------------------------------------------

    def _load_state(self) -> _State:
        try:
            data: Any = json.loads(self.state_path.read_text())
            return _State(uidvalidity=int(data["uidvalidity"]), last_uid=int(data["last_uid"]))
        except FileNotFoundError:
            return _State()
        except (ValueError, KeyError, TypeError):
            log.warning(
                "%s: unreadable state %s: starting over", self.config.label, self.state_path
            )
            return _State()

    def _save_state(self, state: _State) -> None:
        data = {"uidvalidity": state.uidvalidity, "last_uid": state.last_uid}
        write_durably(self.state_path, json.dumps(data).encode())


def start_pollers(
    configs: list[ImapConfig],
    spool: Spool,
    stop: threading.Event,
    *,
    on_accept: Callable[[str], None] | None = None,
) -> list[threading.Thread]:
    """One started (daemon) thread per mailbox, each running `ImapPoller.run(stop)`."""
    threads = []
    for config in configs:
        poller = ImapPoller(config, spool, on_accept=on_accept)
        thread = threading.Thread(
            target=poller.run, args=(stop,), name=f"imap {config.label}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads
