"""The sender: mail from the spool's outbox to the configured SMTP relay, with retries.

- One SMTP session per pass, reused for every mail that is due; STARTTLS, implicit TLS or none,
  AUTH with `password` or `password_file` (read at each login).
- A temporary failure (4xx, a refused connection, a timeout, a TLS or AUTH problem: things that
  get better when someone fixes the relay) puts the mail back in `outbox/new` with a not-before
  time: `retry_initial` seconds, doubled after each failure, at most `retry_max`. A mail still
  undelivered `give_up_after` seconds after it was queued goes to `outbox-failed`.
- A permanent failure (5xx) for a recipient ends that recipient; the others are not held back.
  Once no recipient is left to try, a mail any recipient refused goes to `outbox-failed` with the
  reasons; `mailtrack requeue` sends it again, and only to those who did not get it.
- What a mail's attempts taught us (who has it, who refused it, how often it failed and why)
  lives in `<spool>/outbox-state/<id>.json` (write, fsync, rename), so it survives a restart; the
  not-before time is the mail file's mtime, as for every delayed mail of the spool.

With no relay configured, mail waits in the outbox and the sender does nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailtrack.config import RelayConfig
from mailtrack.mail.ids import header_message_id
from mailtrack.queue.layout import OUTBOX_STATE, id_time
from mailtrack.queue.spool import Claim, Spool, Where, write_durably

if TYPE_CHECKING:
    import smtplib
    import ssl

log = logging.getLogger(__name__)

STALE_STATE = 24 * 3600  # a state file whose mail is gone is deleted after this long


@dataclass
class MailState:
    """What the attempts to send one outgoing mail taught us."""

    queued: float  # give_up_after counts from here
    attempts: int = 0  # temporary failures so far
    last_error: str = ""
    delivered: list[str] = field(default_factory=list)  # recipients the relay took
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> why it failed for good
    failed_at: float = 0.0  # set when the mail went to outbox-failed: a requeue starts over


class _States:
    def __init__(self, spool: Spool) -> None:
        self.dir = spool.layout.outbox_state
        self.dir.mkdir(mode=0o750, exist_ok=True)

    def path(self, spool_id: str) -> Path:
        return self.dir / f"{spool_id}{OUTBOX_STATE}"

    def load(self, spool_id: str) -> MailState | None:
        try:
            data = json.loads(self.path(spool_id).read_text("utf-8"))
            return MailState(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            log.warning("%s: unreadable outbox state, starting over: %s", spool_id, e)
            return None

    def save(self, spool_id: str, state: MailState) -> None:
        path = self.path(spool_id)
        tmp = self.dir / f".{path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crashed run that had our pid
        write_durably(path, json.dumps(asdict(state), indent=1).encode(), tmp=tmp)

    def remove(self, spool_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(spool_id).unlink()

    def tidy(self, spool: Spool) -> None:
        """Delete old state files of mails that are no longer in the spool."""
        kept = spool.outbox.ids()
        limit = time.time() - STALE_STATE
        for path in self.dir.glob(f"*{OUTBOX_STATE}"):
            with contextlib.suppress(FileNotFoundError):
                if path.name[: -len(OUTBOX_STATE)] not in kept and path.stat().st_mtime < limit:
                    path.unlink()


# --- talking to the relay ---------------------------------------------------------------------


def _crlf(raw: bytes) -> bytes:
    """SMTP wants CRLF line ends; smtplib sends bytes as they are."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return " ".join(text.split())


def describe(error: BaseException) -> str:
    """One line for a failure, as the listing and the logs show it."""
    import smtplib

    if isinstance(error, smtplib.SMTPResponseException):
        return f"{error.smtp_code} {_text(error.smtp_error)}"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if isinstance(error, OSError) else text


class _Session:
    """One SMTP session with the relay, opened on first use and reused for the rest of a pass."""

    def __init__(self, sender: OutboxSender) -> None:
        self.sender = sender
        self.smtp: smtplib.SMTP | None = None
        self.fresh = False  # opened for the current mail (a failure is not a stale session)
        self.down = ""  # why the relay cannot be reached: no more tries this pass

    def get(self) -> smtplib.SMTP:
        if self.smtp is not None:
            self.fresh = False
            return self.smtp
        self.smtp, self.fresh = self.sender.connect(), True
        return self.smtp

    def drop(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(Exception):
                self.smtp.close()
            self.smtp = None

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(Exception):
                self.smtp.quit()
        self.drop()


class OutboxSender:
    """Sends what waits in the spool's outbox through the relay of `relay`."""

    def __init__(
        self, relay: RelayConfig, spool: Spool, *, helo: str = "", ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.relay = relay
        self.spool = spool
        self.helo = helo or socket.gethostname() or "localhost"
        self.ssl_context = ssl_context
        self.states = _States(spool)
        self._wake = threading.Event()

    # --- the relay ----------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            import ssl

            self.ssl_context = ssl.create_default_context(cafile=getattr(self.relay, "tls_ca_file", "") or None)
        return self.ssl_context

    def _password(self) -> str:
        if self.relay.password_file:
            lines = Path(self.relay.password_file).read_text("utf-8").splitlines()
            return lines[0] if lines else ""
        return self.relay.password

    def connect(self) -> smtplib.SMTP:
        """A session with the relay: greeted, secured and logged in as configured."""
        import smtplib

        r = self.relay
        smtp: smtplib.SMTP
        if r.security == "tls":
            smtp = smtplib.SMTP_SSL(r.host, r.port, local_hostname=self.helo, timeout=r.timeout, context=self._ssl())
        else:
            smtp = smtplib.SMTP(r.host, r.port, local_hostname=self.helo, timeout=r.timeout)
        try:
            smtp.ehlo()
            if r.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError(f"{r.host}:{r.port} offers no STARTTLS (relay.security)")
                smtp.starttls(context=self._ssl())
                smtp.ehlo()
            if r.username:
                smtp.login(r.username, self._password())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _transmit(
        self, session: _Session, sender: str, recipients: list[str], raw: bytes
    ) -> dict[str, tuple[int, str]]:
        """Send to `recipients`; return the refused ones: recipient -> (code, text); code 0: no answer."""
        import smtplib

        data = _crlf(raw)
        for _ in range(2):  # a second try only when a reused session turned out to be dead
            if session.down:
                return {r: (0, session.down) for r in recipients}
            try:
                smtp = session.get()
            except (OSError, smtplib.SMTPException) as e:
                session.down = f"cannot reach the relay {self.relay.host}:{self.relay.port}: {describe(e)}"
                return {r: (0, session.down) for r in recipients}
            options = ["BODY=8BITMIME"] if not data.isascii() and smtp.has_extn("8bitmime") else []
            try:
                refused = smtp.sendmail(sender, recipients, data, mail_options=options)
                return {r: (code, _text(msg)) for r, (code, msg) in refused.items()}
            except smtplib.SMTPRecipientsRefused as e:
                return {r: (code, _text(msg)) for r, (code, msg) in e.recipients.items()}
            except smtplib.SMTPResponseException as e:  # MAIL FROM or DATA refused: for everyone
                if e.smtp_code == 421:  # the relay is closing the session
                    session.drop()
                return {r: (e.smtp_code, _text(e.smtp_error)) for r in recipients}
            except smtplib.SMTPServerDisconnected as e:
                was_fresh = session.fresh
                session.drop()
                if was_fresh:
                    return {r: (0, describe(e)) for r in recipients}
            except (OSError, smtplib.SMTPException) as e:
                session.drop()
                return {r: (0, describe(e)) for r in recipients}
        return {r: (0, "the relay closed the connection") for r in recipients}

    # --- one mail -----------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        r = self.relay
        return float(max(1, min(r.retry_initial * 2 ** max(0, attempts - 1), r.retry_max)))

    def _deliver(self, claim: Claim, session: _Session, now: float) -> str:
        """Try one claimed mail; return sent | deferred | failed."""
        envelope = self.spool.envelope(claim)
        state = self.states.load(claim.id) or MailState(queued=id_time(claim.id))
        if state.failed_at:  # back from outbox-failed: start over, but never resend to who has it
            state = MailState(queued=now, delivered=state.delivered)
        pending = [r for r in envelope.recipients if r not in state.delivered and r not in state.refused]
        raw = claim.read()
        mid = header_message_id(raw) or claim.id
        if pending:
            refused = self._transmit(session, envelope.sender, pending, raw)
            delivered = [r for r in pending if r not in refused]
            if delivered:
                state.delivered += delivered
                log.info("%s: delivered to %s via %s:%d", mid, ", ".join(delivered), self.relay.host, self.relay.port)
            temporary = {}
            for rcpt, (code, text) in refused.items():
                reason = f"{code} {text}" if code else text
                if 500 <= code <= 599:
                    state.refused[rcpt] = reason
                    log.error("%s: %s refused for good: %s", mid, rcpt, reason)
                else:
                    temporary[rcpt] = reason
            if temporary:
                first = next(iter(temporary.values()))
                waited = now - state.queued
                if waited < self.relay.give_up_after:
                    state.attempts += 1
                    state.last_error = first
                    delay = self._backoff(state.attempts)
                    self.states.save(claim.id, state)
                    self.spool.outbox.defer(claim, now + delay)
                    log.warning("%s: not delivered to %s (attempt %d): %s; next try in %ds", mid,
                                ", ".join(temporary), state.attempts, first, delay)
                    return "deferred"
                gave_up = f"gave up after {state.attempts + 1} attempts in {_duration(waited)}"
                for rcpt, reason in temporary.items():
                    state.refused[rcpt] = f"{gave_up}: {reason}"
        if state.refused:
            state.failed_at = now
            self.states.save(claim.id, state)
            lines = [f"{rcpt}: {reason}" for rcpt, reason in state.refused.items()]
            summary = f"not delivered to {', '.join(state.refused)}: {next(iter(state.refused.values()))}"
            detail = [f"Message-ID: {mid}", *lines]
            if state.delivered:
                detail.append(f"delivered to: {', '.join(state.delivered)}")
            self.spool.outbox.fail(claim, "\n".join([summary, "", *detail]))
            return "failed"
        self.spool.outbox.done(claim)
        self.states.remove(claim.id)
        return "sent"

    # --- passes -------------------------------------------------------------------------------

    def send_pending(self, now: float | None = None) -> dict[str, int]:
        """Try every mail that is due (by `now`, default the clock); return how many were sent,
        deferred and failed. Does nothing without a relay."""
        counts = {"sent": 0, "deferred": 0, "failed": 0}
        if not self.relay.host:
            return counts
        now = time.time() if now is None else now
        self.spool.outbox.release(now)
        session = _Session(self)
        seen: set[str] = set()
        try:
            for claim in self.spool.outbox.claims():
                if claim.id in seen:  # due again within this pass (a clock behind `now`): next pass
                    self.spool.outbox.defer(claim, None)
                    break
                seen.add(claim.id)
                try:
                    counts[self._deliver(claim, session, now)] += 1
                except Exception:  # our bug or our disk, not the mail's: keep it, try again later
                    log.exception("%s: sending failed", claim.id)
                    self.spool.outbox.defer(claim, now + self._backoff(1))
                    counts["deferred"] += 1
        finally:
            session.close()
        self.states.tidy(self.spool)
        if any(counts.values()):
            log.info("outbox: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        return counts

    def wake(self) -> None:
        """Make a running `run` loop look at the outbox now (after queuing mail)."""
        self._wake.set()

    def run(self, stop_event: threading.Event, *, interval: float = 30.0) -> None:
        """Send until `stop_event` is set: when mail is due, when woken, at least every `interval` s."""
        if not self.relay.host:
            log.info("no relay is configured: outgoing mail waits in the outbox")
        while not stop_event.is_set():
            timeout = interval
            if self.relay.host:
                try:
                    self.send_pending()
                except Exception:  # the loop never dies: log, wait, try again
                    log.exception("outbox pass failed")
                due = next_due(self.spool)
                if due is not None:
                    timeout = max(1.0, min(interval, due - time.time()))
            deadline = time.monotonic() + timeout
            while not stop_event.is_set() and not self._wake.is_set() and time.monotonic() < deadline:
                stop_event.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            self._wake.clear()


def next_due(spool: Spool) -> float | None:
    """The earliest not-before time of the mails waiting in the outbox (None: none waits)."""
    return spool.outbox.next_due()


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


# --- for the command line ---------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """One mail of the outbox, as `mailtrack outbox` shows it."""

    id: str
    where: str  # queued | sending | failed
    recipients: list[str]
    message_id: str
    subject: str
    not_before: float  # the file's not-before time (its mtime)
    attempts: int
    last_error: str
    delivered: list[str]
    refused: dict[str, str]
    reason: str  # failed: the first line of why


def waiting(spool: Spool) -> list[Waiting]:
    """Every mail in the outbox and in outbox-failed, oldest first."""
    from email import policy
    from email.parser import BytesHeaderParser

    states = _States(spool)
    failures = dict(spool.outbox.failures())
    out = []
    places: list[tuple[str, Where]] = [("queued", "new"), ("sending", "cur"), ("failed", "failed")]
    for where, directory in places:
        for spool_id, attempts, path in spool.outbox.entries(directory):
            try:
                raw = path.read_bytes()
                mtime = path.stat().st_mtime
                envelope = spool.envelope(Claim(spool_id, path, attempts))
            except (FileNotFoundError, ValueError, KeyError):
                continue  # sent or moved while we looked
            head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] + b"\n\n"
            subject = str(BytesHeaderParser(policy=policy.default).parsebytes(head).get("subject", ""))
            state = states.load(spool_id) or MailState(queued=id_time(spool_id))
            reason = failures.get(spool_id, "") if where == "failed" else ""
            out.append(Waiting(
                spool_id, where, envelope.recipients, header_message_id(raw), subject, mtime, state.attempts,
                state.last_error, state.delivered, state.refused, reason,
            ))  # fmt: skip
    return sorted(out, key=lambda w: w.id)


def _when(t: float, now: float) -> str:
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} (in {_duration(t - now)})"


def outbox_listing(spool: Spool, now: float | None = None) -> list[str]:
    """Lines for `mailtrack outbox`: each mail, what it waits for, its recipients and last error."""
    now = time.time() if now is None else now
    lines = []
    for w in waiting(spool):
        if w.where == "failed":
            status = f"failed: {w.reason}"
        elif w.where == "sending":
            status = "being sent now"
        elif w.not_before > now:
            status = f"next attempt {_when(w.not_before, now)}"
        else:
            status = "due now"
        lines.append(f"{w.id}  {status}")
        lines.append(f"    to: {', '.join(w.recipients)}")
        lines.append(f"    subject: {w.subject}  {w.message_id}".rstrip())
        if w.attempts:
            lines.append(f"    attempts: {w.attempts}, last error: {w.last_error}")
        if w.delivered:
            lines.append(f"    delivered to: {', '.join(w.delivered)}")
        for rcpt, reason in w.refused.items():
            lines.append(f"    refused: {rcpt}: {reason}")
    return lines


def outbox_message(spool: Spool, spool_id: str) -> bytes | None:
    """The mail text of `spool_id` as it waits in the outbox or in outbox-failed (None: not there)."""
    places: tuple[Where, ...] = ("new", "cur", "failed")
    for directory in places:
        for entry_id, _, path in spool.outbox.entries(directory):
            if entry_id == spool_id:
                try:
                    return path.read_bytes()
                except FileNotFoundError:
                    break  # sent or moved while we looked: see the next place
    return None


def retry_now(spool: Spool, relay: RelayConfig | None = None, *, now: float | None = None) -> dict[str, int]:
    """Make every delayed mail claimable now, then send what is due when a relay is configured.

    Returns {"released": n} plus send_pending's counts when it sent.
    """
    counts = {"released": spool.outbox.release(float("inf"))}
    if relay is not None and relay.host:
        counts.update(OutboxSender(relay, spool).send_pending(now))
    return counts
