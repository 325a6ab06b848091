"""Replies to a sender (acknowledgement, errors, transcripts, help, show, patch reports), queued in
the outbox threaded under their mail, within the per-address rate limit. Machine mail never gets one.

The replies about a commit (the ack of a new issue, the transcript of commands) are queued with
the commit (`holding`): held in the outbox before the ref moves, queued once it has moved, so a
crash right after the commit cannot lose them, and the retry, which sees a duplicate, sends
nothing twice (queue.spool: held mail, settle). With [sync] they stay held past the local ref:
`landed` queues them once the remote holds the commit and kept this gateway's record of the mail
(tracker.merge.survived), and deletes them when the merge kept another gateway's (that one answers),
so a mail that reached two gateways is answered once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mailtrack.config import Config
from mailtrack.mail.compose import Renderer, build_mail
from mailtrack.mail.ids import LOOP_HEADER, reply_message_id
from mailtrack.mail.parse import ParsedMail, issue_title
from mailtrack.queue.ratelimit import RateLimiter
from mailtrack.queue.spool import Spool
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Store
from mailtrack.worker.outcome import Outcome, Reply

log = logging.getLogger(__name__)


@dataclass
class HeldReplies:
    """The replies queued for a commit not yet on the branch (tracker.store.Held)."""

    spool: Spool
    ids: list[str] = field(default_factory=list)
    until_remote: bool = False  # [sync]: held until the remote holds the commit (settle)

    def publish(self) -> None:
        if self.until_remote:
            return
        for spool_id in self.ids:
            self.spool.publish_out(spool_id)

    def discard(self) -> None:
        for spool_id in self.ids:
            self.spool.discard_out(spool_id)


class Replier:
    def __init__(self, config: Config, store: Store, spool: Spool, project: str, identity: Person) -> None:
        self.config, self.store, self.spool, self.project, self.identity = config, store, spool, project, identity
        self._renderer: Renderer | None = None
        self._limiter: RateLimiter | None = None
        self.quiet = False  # an import of old mail: nobody hears from us
        self._held: HeldReplies | None = None  # while holding(): the replies wait for this commit
        self._commit: bytes | None = None

    def close(self) -> None:
        if self._limiter is not None:
            self._limiter.close()

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:  # the templates are read on the first reply, not at start
            self._renderer = Renderer(self.config.gateway.templates)
        return self._renderer

    @contextmanager
    def holding(self, commit: bytes) -> Iterator[HeldReplies]:
        """While in it, send() holds each reply until `commit` is on the branch (publish/discard)."""
        held = HeldReplies(self.spool, until_remote=bool(self.config.sync.remote))
        self._held, self._commit = held, commit
        try:
            yield held
        except BaseException:
            held.discard()
            raise
        finally:
            self._held, self._commit = None, None

    def settle(self) -> int:
        """The replies held for a commit: queued when it landed, else deleted (`settle`)."""
        return settle(self.config, self.store, self.spool)

    def send(self, mail: ParsedMail, kind: Reply, out: Outcome, dry_run: bool, **extra: Any) -> None:
        """Queue a reply of `kind` to a human sender, threaded under their mail, within the rate limit."""
        if mail.machine or not mail.from_addr or self.quiet:
            return
        gw = self.config.gateway
        if not dry_run:
            if self._limiter is None:
                self._limiter = RateLimiter(self.spool.layout.replies_db)
            if not self._limiter.allow(mail.from_addr, gw.reply_rate_limit, gw.reply_rate_window):
                log.warning("%s: no %s to %s: over the reply rate limit", mail.message_id, kind.template, mail.from_addr)
                return
        out.replies.append((kind.template, mail.from_addr))
        if dry_run:
            return
        local, _, domain = gw.address.partition("@")
        applied = out.commands
        context = {
            "project": self.project, "address": gw.address, "control_address": gw.control_address,
            "subject": mail.subject or "(no subject)", "short": out.short, "issue": out.issue,
            "issue_address": f"{local}+{out.short}@{domain}" if out.short else "",
            "title": issue_title(mail.subject, self.project), "skipped": list(mail.skipped), "sender": mail.from_addr,
            "errors": len(applied.errors) if applied else 0, "applied": applied, **extra,
        }  # fmt: skip
        headers, body = self.renderer.render(kind.template, **context)
        with_original = kind == Reply.ERROR or (
            kind == Reply.TRANSCRIPT and applied is not None and (not applied.ok or bool(applied.refused))
        )  # an error or a refusal: the sender sees what arrived (and whether someone forged it)
        msg = build_mail(
            (self.identity.name, gw.address), [mail.from_addr], headers.pop("Subject", ""), body,
            headers={
                "In-Reply-To": mail.message_id, "References": " ".join([*mail.references, mail.message_id][-10:]),
                "Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All", LOOP_HEADER: gw.address, **headers,
            },  # fmt: skip
            domain=domain or "localhost",
            message_id=self._message_id(mail, kind, out, domain or "localhost"),
            attachments=[(mail.raw, "message/rfc822", "original.eml")] if with_original else None,
        )
        spool_id = self.spool.queue_out(bytes(msg), sender=gw.address, recipients=[mail.from_addr], after=self._commit)
        if self._held is not None:
            self._held.ids.append(spool_id)

    def _message_id(self, mail: ParsedMail, kind: Reply, out: Outcome, domain: str) -> str:
        """For the ack and a transcript about an issue on the branch, a Message-ID that embeds the
        issue's name as notifications do (mail.ids), so a reply to it routes by In-Reply-To alone;
        "" (a random one) for the other replies."""
        if not kind.threads_under_issue:
            return ""
        issue = out.issue
        if not issue and out.commands is not None:  # a control mail: when its commands name one issue
            named = {ln.issue for ln in out.commands.lines if ln.issue}
            issue = named.pop() if len(named) == 1 else ""
        if not issue or not self.store.snapshot(self._commit).exists(issue):  # e.g. a new issue refused: not written
            return ""
        return reply_message_id(issue, kind.value, mail.message_id, domain)


def settle(config: Config, store: Store, spool: Spool) -> int:
    """Queue the held replies whose commit landed, delete those whose never will (a crash, or
    [sync]: the remote kept another gateway's record); returns how many were queued. Holds the
    writers' lock, so that no live writer is half-way."""
    with store.writing():
        return spool.settle(landed(config, store))


def landed(config: Config, store: Store) -> Callable[[bytes], bool | None]:
    """Whether a held reply's commit landed: on the branch; with [sync], also on the remote
    (None until then) with the mail's record of ours kept."""
    level = None
    if config.sync.remote:
        # here: only [sync] needs the remote's state and the merge (dulwich's client); deliver starts lean
        from mailtrack.tracker.merge import survived
        from mailtrack.tracker.sync import SyncState

        level = SyncState.read(store).level

    def verdict(commit: bytes) -> bool | None:
        if not store.is_committed(commit):
            return False
        if not config.sync.remote:
            return True
        if level is None or not store.is_committed(commit, at=level.encode()):
            return None
        return survived(store, commit, level.encode())

    return verdict
