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

`run(stop)` waits with IDLE when the server offers it, polls every `poll_interval` seconds
otherwise, and reconnects with exponential backoff after a dropped connection or a server
restart. `wake()` (from any thread; `stop` calls it) ends the wait at once.

Logging in: LOGIN with a password (given, read from `password_file`, or printed by
`password_command`), or OAuth 2.0 (SASL XOAUTH2 or OAUTHBEARER) with the access token printed by
`token_command`; the secret is fetched afresh at each login and never logged. A failure to log in
(refused credentials, an untrusted certificate, a failing command) is an ERROR that says what to
check; a lost connection is a WARNING; each is logged once while it lasts (repeats at DEBUG),
and the login that ends it once.

The folders follow the spool's verdict (`follow_spool`): a mail of ours that ends in the spool's
failed queue goes to `failed_folder`, wherever that verdict came from (the worker, the recovery
at start-up, `mailtrack process`); one processed after a requeue goes back from there to the
processed folder (action "flag": back to the polled folder). The mails filed in `failed_folder`
are remembered in `imap-<mailbox>.failed.json` beside the UID state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient  # type: ignore[import-untyped, unused-ignore]
from imapclient.exceptions import CapabilityError, IMAPClientError, LoginError  # type: ignore[import-untyped, unused-ignore]

from mailtrack.config import KEPT_KEYWORD, ImapConfig
from mailtrack.mail.ids import header_message_id
from mailtrack.queue.spool import Spool, write_durably

CLAIM_PREFIX = "$MailtrackClaim-"  # a poller's claim on a mail (claim_folder): the keyword names the poller

log = logging.getLogger(__name__)

_BYTES_REPR = re.compile(r"""\bb(['"])(.*?)\1""")


class LoginSetupError(Exception):
    """What a login needs could not be had: a password or token command failed, the password
    file or the CA file is unreadable."""


@dataclass(frozen=True)
class _State:
    uidvalidity: int = 0
    last_uid: int = 0


class ImapPoller:
    """Polls one mailbox into the spool. One thread calls poll_once()/run(); any thread may call
    wake(), follow_spool() and move_to_failed() meanwhile."""

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
        # Keyed by the mailbox, not by how it is reached: a new port or security mode rescans nothing.
        digest = hashlib.sha256(config.mailbox.encode()).hexdigest()[:8]
        self.state_path = state_dir / f"imap-{_slug(config.mailbox)}-{digest}.json"
        self.filed_path = self.state_path.with_suffix(".failed.json")
        self.claims_path = self.state_path.with_suffix(".claims.json")  # others' claimed mail: when first seen
        self._polled = config.claim_folder or config.folder  # where mail is fetched from
        legacy = state_dir / f"imap-{_slug(config.label)}.json"  # the name up to 0.x: by label
        if not self.state_path.exists() and legacy.exists():
            os.rename(legacy, self.state_path)
        self._client: IMAPClient | None = None
        self._idle_ok = False
        self._woken = threading.Event()  # wake() was called since the last poll began
        self._wake_lock = threading.Lock()
        self._wake_fd = -1  # while in IDLE: the pipe wake() writes to
        self._follow_lock = threading.Lock()  # follow_spool() runs in the worker's thread too
        self._not_ours: set[str] = set()  # failed mail of other sources, not to be read again
        self._connecting = False
        self._logged_in_once = False
        self._failures = 0  # failed attempts to connect since the last good login
        self._failing_since = 0.0
        self._last_error = ""
        self._follow_error = ""

    @property
    def source(self) -> str:
        """The source recorded with each mail this poller spools (`Spool.source(spool_id)`)."""
        return f"imap:{self.config.mailbox}"

    def owns(self, source: str) -> bool:
        """Was a mail with this recorded source spooled by this poller (now or under the old,
        port-bearing name)?"""
        return bool(source) and source in (self.source, f"imap:{self.config.label}")

    # --- the public loop ------------------------------------------------------------------------

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Connect if needed, spool and file away every new mail; return how many were spooled.

        With `stop`, it returns after the mail at hand once `stop` is set (the rest waits).
        On any error the connection is dropped (the next call reconnects) and the error raised.
        """
        try:
            client = self._connect()
            try:
                self._follow(client)  # before _poll: it SELECTs the polled folder again, for IDLE
            except IMAPClientError as error:  # a folder refused, say: new mail must still come in
                if _text(error) != self._follow_error:
                    log.warning("%s: the folders could not follow the spool: %s", self.config.label, _text(error))
                self._follow_error = _text(error)
            else:
                self._follow_error = ""
            return self._poll(client, stop)
        except BaseException:
            self.close()
            raise

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set: IDLE (or sleep) between polls, reconnect with backoff."""
        config = self.config
        backoff = config.backoff_initial
        threading.Thread(target=self._wake_on, args=(stop,), name=f"wake {config.label}", daemon=True).start()
        try:
            while not stop.is_set():
                try:
                    self._woken.clear()
                    while self.poll_once(stop) and not stop.is_set():
                        pass  # more may have come while we worked
                    backoff = config.backoff_initial
                    if stop.is_set():
                        break
                    if self._idle_ok and config.idle:
                        self._idle()
                    else:
                        self._woken.wait(config.poll_interval)
                except Exception as error:  # a poller never dies: log, back off, reconnect
                    connecting = self._connecting
                    self.close()
                    self._log_failure(error, connecting, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, config.backoff_max)
        finally:
            self.close()

    def wake(self) -> None:
        """Make run() poll now: it leaves IDLE (or its sleep) at once. Any thread may call it."""
        with self._wake_lock:
            self._woken.set()
            if self._wake_fd >= 0:
                with contextlib.suppress(OSError):  # full: it is woken already
                    os.write(self._wake_fd, b"\0")

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self.wake()

    def _log_failure(self, error: Exception, connecting: bool, backoff: float) -> None:
        """Once per error while it lasts (the same again: DEBUG), at the level its kind asks."""
        level, text = self._describe(error) if connecting else (logging.WARNING, f"connection lost: {_text(error)}")
        if connecting:
            if not self._failures:
                self._failing_since = time.monotonic()
            self._failures += 1
        if text == self._last_error:
            level = logging.DEBUG
        self._last_error = text
        log.log(level, "%s: %s; trying again in %gs", self.config.label, text, backoff)

    def _describe(self, error: Exception) -> tuple[int, str]:
        """How bad a failure to connect is, and what it says to the person who reads the log."""
        config = self.config
        where = f"{config.host}:{config.port}"
        if isinstance(error, ssl.SSLCertVerificationError):
            return logging.ERROR, (
                f"the TLS certificate of {where} does not verify ({error.reason}: {error.verify_message}; "
                f"the name checked: {config.host}): set tls_ca_file to the CA that signed it, or host "
                "to a name the certificate is for"
            )
        if isinstance(error, ssl.SSLError):
            return logging.ERROR, f"TLS with {where} failed ({error.reason or error}): check port and security"
        if isinstance(error, LoginError):
            check = {
                "password": "username and password",
                "xoauth2": "username and token_command (is the token expired, or not for IMAP?)",
                "oauthbearer": "username and token_command (is the token expired, or not for IMAP?)",
            }[config.auth]
            if config.auth == "password" and config.password_file:
                check = f"username and the password in {config.password_file}"
            elif config.auth == "password" and config.password_command:
                check = "username and what password_command prints"
            return logging.ERROR, (
                f"{where} refused the login of {config.username} ({config.auth}): {_text(error)}; check {check}"
            )
        if isinstance(error, LoginSetupError):
            return logging.ERROR, f"cannot log in: {error}"
        if isinstance(error, CapabilityError):  # STARTTLS not offered, say
            return logging.ERROR, f"{where}: {_text(error)}: check port and security"
        return logging.WARNING, f"cannot reach {where}: {_text(error)}"

    def close(self) -> None:
        """Log out (or just close the socket when the connection is broken)."""
        client, self._client = self._client, None
        if client is None:
            return
        _logout(client)

    def move_to_failed(self, message_id: str) -> int:
        """Move the mail this poller kept with this Message-ID to the failed folder; return how
        many were moved.

        Only mail marked KEPT_KEYWORD counts: a mail not yet kept that shares the Message-ID
        stays where it is. It is looked for in the polled folder first (kept, but not yet filed
        away: the worker may be quicker than the poller's MOVE), then in the processed folder, so
        a mail moved from one to the other meanwhile is found in the second. The caller makes
        sure the mail came from this poller (`poller.owns(Spool.source(spool_id))`).
        Uses a connection of its own, so any thread may call it while run() goes on.
        """
        if not self.config.failed_folder:
            return 0
        client = self._open()
        try:
            return self._move_kept(client, message_id, self._filed_folders(), self.config.failed_folder)
        finally:
            _logout(client)

    def follow_spool(self, spool_ids: Iterable[str]) -> int:
        """Make the folders follow the spool's verdict on these mails of ours; return how many
        IMAP mails moved.

        Failed in the spool: to failed_folder. Processed after it was in failed_folder (a
        requeue): back to the processed folder. Anything else: nothing, and no connection is
        opened. Uses a connection of its own, so any thread may call it while run() goes on
        (run() itself looks at every failed mail of ours at each poll: `_follow`).
        """
        ids = list(spool_ids)
        if not self.config.failed_folder or not ids:
            return 0
        with self._follow_lock:
            if not self._actions(ids, self._load_filed()):
                return 0
            client = self._open()
            try:
                return self._follow_locked(client, ids)
            finally:
                _logout(client)

    # --- the folders follow the spool -----------------------------------------------------------

    def _follow(self, client: IMAPClient) -> int:
        """In run()'s thread, on its connection: every mail of ours the spool failed that is not
        yet in failed_folder (the recovery at start-up, `mailtrack process`, a missed move), and
        every one in failed_folder whose verdict changed (requeued)."""
        if not self.config.failed_folder:
            return 0
        with self._follow_lock:
            filed = self._load_filed()
            ids = [spool_id for spool_id in filed if not (self._spool.incoming.failed / spool_id).exists()]
            for spool_id, _attempts, _path in self._spool.incoming.entries("failed"):
                if spool_id in filed or spool_id in self._not_ours:
                    continue
                if self.owns(self._spool.source(spool_id)):
                    ids.append(spool_id)
                else:
                    self._not_ours.add(spool_id)
            return self._follow_locked(client, ids) if ids else 0

    def _follow_locked(self, client: IMAPClient, ids: list[str]) -> int:
        filed = self._load_filed()
        actions = self._actions(ids, filed)
        moved = 0
        for spool_id, (verdict, path) in actions.items():
            if verdict == "failed":
                message_id = header_message_id(_head(path))
                if message_id:
                    moved += self._move_kept(client, message_id, self._filed_folders(), self.config.failed_folder)
                filed[spool_id] = message_id
            elif verdict == "processed":
                message_id = filed.pop(spool_id)
                if message_id:
                    done = self.config.processed_folder if self.config.action == "move" else self._polled
                    moved += self._move_kept(client, message_id, [self.config.failed_folder], done)
            else:  # gone from the spool (deleted by hand, pruned): nothing more to follow
                filed.pop(spool_id)
        if actions:
            self._save_filed(filed)
        return moved

    def _actions(self, ids: list[str], filed: dict[str, str]) -> dict[str, tuple[str, Path]]:
        """{spool id: (verdict, its file)} of the mails whose IMAP folder is not their verdict's."""
        incoming = self._spool.incoming
        out: dict[str, tuple[str, Path]] = {}
        waiting: set[str] | None = None  # requeued, not yet processed: listed when first needed
        for spool_id in ids:
            failed = incoming.failed / spool_id
            processed = incoming.finished / spool_id if incoming.finished else failed
            if failed.exists():
                if spool_id not in filed:
                    out[spool_id] = ("failed", failed)
            elif spool_id not in filed:
                continue  # processed, waiting or gone, and never in failed_folder: nothing to do
            elif processed.exists():
                out[spool_id] = ("processed", processed)
            else:
                if waiting is None:
                    waiting = {entry.id for where in ("new", "cur") for entry in incoming.entries(where)}
                if spool_id not in waiting:
                    out[spool_id] = ("gone", failed)
        return out

    def _filed_folders(self) -> list[str]:
        """Where a kept mail may be: the polled folder, then the processed folder."""
        return [self._polled] + ([self.config.processed_folder] if self.config.action == "move" else [])

    def _move_kept(self, client: IMAPClient, message_id: str, folders: list[str], target: str) -> int:
        """Move the mail marked kept with this Message-ID from the first of `folders` that has it."""
        self._ensure_folder(client, target)
        moved = 0
        for folder in folders:
            if not client.folder_exists(folder):
                continue
            client.select_folder(folder)
            uids = client.search(["HEADER", "Message-ID", message_id, "KEYWORD", KEPT_KEYWORD, "UNDELETED"])
            if uids:
                if self.config.action == "flag" and target == self._polled:
                    client.add_flags(uids, [self.config.flag])  # filed away there: not fetched again
                self._move(client, uids, target)
                moved += len(uids)
        log.info("%s: moved %d mail(s) to %s, Message-ID %s", self.config.label, moved, target, message_id)
        return moved

    # --- one poll -------------------------------------------------------------------------------

    def _poll(self, client: IMAPClient, stop: threading.Event | None = None) -> int:
        config = self.config
        # SELECT again each time: it syncs our view (a SEARCH right after another client's APPEND
        # may miss it otherwise) and tells a recreated folder by its new UIDVALIDITY.
        if config.claim_folder:
            self._claim(client)
        uidvalidity = int(client.select_folder(self._polled)[b"UIDVALIDITY"])
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
            kept = ["UID", f"1:{state.last_uid}", "KEYWORD", KEPT_KEYWORD, *self._pending()]
            leftover = [u for u in client.search(kept) if u <= state.last_uid]
            if leftover:
                log.info("%s: filing away %d mail(s) kept earlier", config.label, len(leftover))
                self._file_away(client, leftover)

        criteria: list[Any] = ["UID", f"{state.last_uid + 1}:*", "UNDELETED"]
        if state.last_uid == 0 and config.action == "flag":
            criteria += self._pending()  # after a reset, trust the flag
        elif config.action == "flag":  # kept and filed away, but new here: back from failed_folder
            criteria += ["NOT", ["KEYWORD", KEPT_KEYWORD, *self._filed()]]
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
        if config.claim_folder:  # IDLE watches the shared folder, where new mail lands
            client.select_folder(config.folder)
        return count

    # --- several pollers on one mailbox (claim_folder) ------------------------------------------

    def _claim(self, client: IMAPClient) -> None:
        """Claim the new mail of the shared folder, then move it to ours (claim_folder).

        MOVE alone does not claim: two sessions of Dovecot moving one mail at once may both get a
        copy. The claim is a conditional STORE (CONDSTORE, RFC 7162) of our keyword on a mail that
        carries no claim: of two pollers, the second finds it modified since it looked, and leaves
        it. Mail another poller claimed (in the shared folder, or in its folder beside ours,
        Claimed/*) for longer than claim_timeout is taken over by a conditional STORE too."""
        config = self.config
        for needed in ("CONDSTORE", "MOVE"):
            if not client.has_capability(needed):
                raise IMAPClientError(f"claim_folder needs a server that offers {needed}; {config.host} does not")
        parent, sep, _ = config.claim_folder.rpartition("/")
        folders = [config.folder]
        if sep:
            for _flags, _delimiter, name in client.list_folders(parent + "/", "%"):
                folder = name if isinstance(name, str) else name.decode("utf-8", "replace")
                if folder != config.claim_folder:
                    folders.append(folder)
        seen, current, now = self._load_claims(), {}, time.time()
        for folder in folders:
            uidvalidity = int(client.select_folder(folder)[b"UIDVALIDITY"])
            uids = client.search(["UNDELETED", "UNKEYWORD", KEPT_KEYWORD])  # kept: in its claimant's spool already
            for uid, data in (client.fetch(uids, ["FLAGS", "MODSEQ"]) if uids else {}).items():
                flags = [f.decode() if isinstance(f, bytes) else str(f) for f in data.get(b"FLAGS", ())]
                claims = [f for f in flags if f.lower().startswith(CLAIM_PREFIX.lower())]
                if self._claim_keyword in claims:  # ours, not moved yet (we stopped in between)
                    self._claimed(client, uid)
                    continue
                if claims or folder != config.folder:  # another poller's: only once it is late
                    key = f"{folder} {uidvalidity} {uid} {' '.join(claims)}"
                    current[key] = first = seen.get(key, now)
                    if now - first < config.claim_timeout:
                        continue
                    log.warning("%s: taking over UID %d of %s, claimed (%s) %.0fs ago", config.label, uid, folder,
                                " ".join(claims) or "moved", now - first)
                keep = [f for f in flags if f not in claims and f.lower() != "\\recent"]
                if self._store_if_unchanged(client, uid, data.get(b"MODSEQ", (0,))[0], [*keep, self._claim_keyword]):
                    self._claimed(client, uid)
        self._save_claims(current)

    @property
    def _claim_keyword(self) -> str:
        """The keyword that says this poller claimed a mail: named after its claim folder's last part."""
        return CLAIM_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", self.config.claim_folder.rpartition("/")[2])[:60]

    @staticmethod
    def _store_if_unchanged(client: IMAPClient, uid: int, modseq: int, flags: list[str]) -> bool:
        """UID STORE (UNCHANGEDSINCE modseq) FLAGS: True when the server took it (no MODIFIED)."""
        # imapclient has no UNCHANGEDSINCE: the command goes through its imaplib connection
        imap = client._imap
        imap.untagged_responses.pop("MODIFIED", None)
        typ, _data = imap.uid("STORE", str(uid), f"(UNCHANGEDSINCE {int(modseq)}) FLAGS.SILENT", f"({' '.join(flags)})")
        modified = imap.untagged_responses.pop("MODIFIED", None)
        return bool(typ == "OK" and not modified)

    def _claimed(self, client: IMAPClient, uid: int) -> None:
        client.move([uid], self.config.claim_folder)

    def _load_claims(self) -> dict[str, float]:
        try:
            data = json.loads(self.claims_path.read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save_claims(self, claims: dict[str, float]) -> None:
        write_durably(self.claims_path, json.dumps(claims).encode())

    def _pending(self) -> list[str]:
        """Search criteria for mail not yet filed away."""
        if self.config.action == "move":
            return ["UNDELETED"]
        if self.config.flag.lower() == "\\seen":
            return ["UNSEEN"]
        return ["UNKEYWORD", self.config.flag]

    def _filed(self) -> list[str]:
        """Search criteria for mail filed away (action "flag")."""
        if self.config.flag.lower() == "\\seen":
            return ["SEEN"]
        return ["KEYWORD", self.config.flag]

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

    def _idle(self) -> None:
        """IDLE until the server reports something, wake() is called, or poll_interval passes.

        It waits on the socket and on a pipe wake() writes to, so a stop ends it at once (not
        after idle_timeout), and DONE still ends IDLE cleanly.
        """
        client = self._client
        assert client is not None
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with self._wake_lock:
                if self._woken.is_set():  # woken while polling: poll again first
                    return
                self._wake_fd = write_fd
            sock = client.socket()
            ready: list[Any]
            deadline = time.monotonic() + self.config.poll_interval
            client.idle()
            try:
                while (left := deadline - time.monotonic()) > 0:
                    if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted, unread: select() cannot tell
                        ready = [sock]
                    else:
                        ready, _, _ = select.select([sock, read_fd], [], [], min(left, self.config.idle_timeout))
                    if read_fd in ready:
                        break
                    if sock in ready:
                        responses = client.idle_check(timeout=0)
                        # [] when readable: EOF (idle_check() swallows it); the server went away
                        log.debug("%s: IDLE: %r", self.config.label, responses)
                        break
            finally:
                with self._wake_lock:
                    self._wake_fd = -1
                client.idle_done()
        finally:
            os.close(read_fd)
            os.close(write_fd)

    # --- connection -----------------------------------------------------------------------------

    def _connect(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        config = self.config
        self._connecting = True
        client = self._open()
        try:
            self._ensure_folder(client, config.folder)
            if config.claim_folder:
                self._ensure_folder(client, config.claim_folder)
            if config.action == "move":
                self._ensure_folder(client, config.processed_folder)
            self._idle_ok = client.has_capability("IDLE")
        except BaseException:
            _shutdown(client)
            raise
        self._connecting = False
        self._client = client
        how = f"{config.auth}, {config.security}{', IDLE' if self._idle_ok and config.idle else ''}"
        if self._failures:
            log.warning("%s: logged in again (%s) after %d failed attempt(s) in %.0fs", config.label, how,
                        self._failures, time.monotonic() - self._failing_since)  # fmt: skip
        elif self._logged_in_once:
            log.info("%s: reconnected (%s)", config.label, how)
        else:
            log.info("%s: logged in (%s)", config.label, how)
        self._logged_in_once = True
        self._failures, self._last_error = 0, ""
        return client

    def _open(self) -> IMAPClient:
        """A new, logged-in connection. On an error, the socket is closed and the error that
        stopped us raised (not one of closing a socket TLS left broken)."""
        config = self.config
        try:
            context = ssl.create_default_context(cafile=config.tls_ca_file or None)
        except OSError as e:  # FileNotFoundError; ssl.SSLError: not a PEM file
            raise LoginSetupError(f"tls_ca_file {config.tls_ca_file}: {e.strerror or e}") from None
        client = IMAPClient(
            config.host, port=config.port, ssl=config.security == "tls",
            ssl_context=context, timeout=config.timeout,
        )  # fmt: skip
        try:
            if config.security == "starttls":
                client.starttls(context)
            secret = self._secret()
            if config.auth == "xoauth2":
                client.oauth2_login(config.username, secret)
            elif config.auth == "oauthbearer":
                client.oauthbearer_login(config.username, secret)
            else:
                client.login(config.username, secret)
        except BaseException:
            _shutdown(client)
            raise
        log.debug("%s: logged in", config.label)
        return client

    def _secret(self) -> str:
        """The password or access token, fetched afresh for each login; never logged."""
        config = self.config
        if config.token_command:
            return _run_command("token_command", config.token_command, config.timeout)
        if config.password_command:
            return _run_command("password_command", config.password_command, config.timeout)
        if config.password_file:
            try:
                return Path(config.password_file).read_text("utf-8").rstrip("\r\n")
            except OSError as e:
                raise LoginSetupError(f"password_file {config.password_file}: {e.strerror}") from None
        return config.password

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
        data = {"mailbox": self.config.mailbox, "uidvalidity": state.uidvalidity, "last_uid": state.last_uid}
        write_durably(self.state_path, json.dumps(data).encode())

    def _load_filed(self) -> dict[str, str]:
        """{spool id: Message-ID} of the mails of ours in failed_folder."""
        try:
            data: Any = json.loads(self.filed_path.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError):
            log.warning("%s: unreadable %s: looking at every failed mail again", self.config.label, self.filed_path)
            return {}

    def _save_filed(self, filed: dict[str, str]) -> None:
        write_durably(self.filed_path, json.dumps(filed, indent=0, sort_keys=True).encode())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def _text(error: BaseException) -> str:
    """An error as a person reads it: no Python bytes repr, never empty."""
    return _BYTES_REPR.sub(r"\2", str(error)).strip() or type(error).__name__


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError:
        return b""


def _run_command(key: str, command: str, timeout: float) -> str:
    """The first line `command` prints (run by /bin/sh); LoginSetupError when it fails. Its
    output is never logged; its stderr's last line is quoted in the error."""
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LoginSetupError(f"{key} did not finish in {timeout:.0f}s") from None
    except OSError as e:
        raise LoginSetupError(f"{key} could not be run: {e.strerror}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        said = f": {lines[-1][:200]}" if lines else ""
        raise LoginSetupError(f"{key} exited with status {done.returncode}{said}")
    secret = done.stdout.decode("utf-8", "replace").partition("\n")[0].rstrip("\r")
    if not secret:
        raise LoginSetupError(f"{key} printed nothing")
    return secret


def _shutdown(client: IMAPClient) -> None:
    """Close the socket; an error doing so (TLS left it broken: EBADF) is not the one to report."""
    try:
        client.shutdown()
    except Exception:
        log.debug("closing the socket failed", exc_info=True)


def _logout(client: IMAPClient) -> None:
    """Log out, or just close the socket when the connection is broken."""
    try:
        client.logout()
    except Exception:
        _shutdown(client)


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
