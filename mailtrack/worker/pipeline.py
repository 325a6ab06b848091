"""From a kept mail to one commit on the branch (or a kept, explained rejection), and the replies.

`Gateway.handle(raw)` parses, routes and applies one mail and returns an `Outcome` (a value,
never an exception for a decision about the mail); `Gateway.work(claim)` is the runner around it:
it never dies on one mail, it retries and finally quarantines in the spool's failed queue.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mailtrack.config import Config
from mailtrack.mail.ids import LOOP_HEADER, commit_trailers, reply_message_id
from mailtrack.mail.parse import ParsedMail, parse, split_pseudo_headers, strip_subject_tag
from mailtrack.queue.spool import Claim, Spool
from mailtrack.tracker.changes import Edit, comment_change, edit_issue, new_issue
from mailtrack.tracker.lookup import Index
from mailtrack.tracker.model import Person, now
from mailtrack.tracker.store import Change, Snapshot, Store
from mailtrack.worker import commands
from mailtrack.worker.route import Addressing, Route, route

log = logging.getLogger(__name__)



@dataclass
class Outcome:
    """What became of one mail."""

    action: str  # created | commented | changed | duplicate | dropped | held | rejected | nothing
    reason: str = ""
    message_id: str = ""
    issue: str = ""
    short: str = ""
    commit: str = ""
    route: Route | None = None
    message: str = ""  # the commit message
    files: list[str] = field(default_factory=list)
    written: dict[str, bytes] = field(default_factory=dict, repr=False)  # path -> content, for --dry-run
    replies: list[tuple[str, str]] = field(default_factory=list)  # (template, recipient)
    commands: commands.Applied | None = None
    verified: str = ""  # who vouched for the sender (Authentication-Results)

    def line(self) -> str:
        """One log line: the Message-ID, then what happened."""
        where = f" {self.short}" if self.short else ""
        return f"{self.message_id}: {self.action}{where}" + (f" ({self.reason})" if self.reason else "")


def default_spool(store: Store) -> Path:
    return Path(store.repo.controldir()) / "mailtrack" / "spool"


def project_name(config: Config, store: Store) -> str:
    if config.gateway.project:
        return config.gateway.project
    path = Path(store.repo.path).resolve()
    name = path.name
    if name == ".git":
        name = path.parent.name
    return name.removesuffix(".git") or "issues"


# The fields a mail is written with (RFC 5322 originator, destination, identification and MIME
# fields): the Authentication-Results we believe stand above the first of them, among the trace
# fields that receiving servers add (Received, Return-Path, X-Spam-*, ...).
_OWN_FIELDS = {"from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to",
               "references", "mime-version", "content-type", "content-transfer-encoding"}


def topmost_auth_results(mail: ParsedMail) -> list[str]:
    """The Authentication-Results in the trace block on top of the mail, above its own fields.

    A receiving server adds its results above the fields the mail was written with (RFC 8601);
    one further down came with the mail and may be forged, so it is not read. One on top can be
    forged too, unless the trusted server removes incoming Authentication-Results that carry its
    authserv-id, as RFC 8601 section 5 asks of it: `access.trusted_authserv_ids` must name only
    servers that do.
    """
    if not mail.headers:
        return list(mail.auth_results[:1])
    found: list[str] = []
    for name, value in mail.headers:
        if name.lower() in _OWN_FIELDS:
            break
        if name.lower() == "authentication-results":
            found.append(value)
    return found


def verified_by(mail: ParsedMail, trusted: list[str]) -> str:
    """`authserv-id dkim=pass` when a trusted receiving server vouches for the sender, else ""."""
    domain = mail.from_addr.rpartition("@")[2]
    for value in topmost_auth_results(mail):
        authserv, _, rest = value.partition(";")
        authserv = authserv.strip().split()[0].lower() if authserv.strip() else ""
        if authserv not in {t.lower() for t in trusted}:
            continue
        for method in rest.split(";"):
            words = method.strip().lower().split()
            if not words:
                continue
            if words[0] == "dmarc=pass" and f"header.from={domain}" in words:
                return f"{authserv} dmarc=pass"
            if words[0] == "dkim=pass" and any(w in (f"header.d={domain}", f"header.i=@{domain}") for w in words):
                return f"{authserv} dkim=pass"
    return ""


class Gateway:
    def __init__(self, config: Config, store: Store, spool: Spool, *, read_only: bool = False) -> None:
        """`read_only`: for dry runs, the index lives in memory (nothing is written to disk)."""
        self.config = config
        self.store = store
        self.spool = spool
        gw = config.gateway
        self.project = project_name(config, store)
        self.addressing = Addressing(gw.address, gw.control_address, self.project)
        self.identity = Person(gw.name or self.project, gw.address)
        self.index = Index.for_snapshot(store.snapshot(), read_only=read_only)
        self._renderer: Any = None
        self._limiter: Any = None
        self._quiet = False  # an import: no replies at all, commits marked as imported (see `handle`)

    def close(self) -> None:
        self.index.close()
        if self._limiter is not None:
            self._limiter.close()

    # --- one mail -----------------------------------------------------------------------------

    def parse(self, raw: bytes) -> ParsedMail:
        gw = self.config.gateway
        own = (gw.address, gw.control_address, *gw.own_addresses)
        return parse(raw, max_attachment_size=gw.max_attachment_size, loop_header=LOOP_HEADER, own_addresses=own)

    def handle(self, raw: bytes, *, dry_run: bool = False, received: datetime | None = None, imported: bool = False) -> Outcome:
        """Apply one mail to the branch and queue the replies it calls for.

        `imported` (`mailtrack import` of an old archive) applies the mail the same way, but queues
        no reply of any kind and marks its commit with IMPORTED_TRAILER, which the notifier skips:
        the people of old mail must not hear from us.
        """
        self._quiet = imported
        try:
            return self._handle(raw, dry_run, received)
        finally:
            self._quiet = False

    def _handle(self, raw: bytes, dry_run: bool, received: datetime | None) -> Outcome:
        mail = self.parse(raw)
        from mailtrack import patches

        if patches.is_patch_mail(mail):  # a series of issues-branch commits, applied as `git am` would
            from mailtrack.patches.apply import handle

            out = handle(self, mail, dry_run=dry_run)
            log.info("%s", out.line())
            return out
        out = Outcome("nothing", message_id=mail.message_id)
        out.verified = verified_by(mail, self.config.access.trusted_authserv_ids)
        author = Person(mail.from_name, mail.from_addr)
        when = received or now()

        def change(snap: Snapshot) -> Change | None:
            out.action, out.reason, out.commands = "nothing", "", None
            r = route(mail, snap, self.index, self.addressing)
            out.route, out.issue = r, r.issue
            out.short = snap.short(r.issue) if r.issue else ""
            if r.kind in ("duplicate", "machine", "unknown-issue"):
                out.action = {"duplicate": "duplicate", "unknown-issue": "rejected"}.get(r.kind, self._machine_action())
                out.reason = r.reason if r.kind != "machine" else f"machine mail: {r.reason}"
                return None
            if not mail.from_addr:
                out.action, out.reason = "held", "the mail has no sender address (From)"
                return None
            refusal = self._admission(snap, mail, r)
            if refusal:
                out.action, out.reason = refusal
                return None
            if r.kind == "control":
                ch = self._control(snap, mail, author, when, out)
            else:
                ch = self._issue_mail(snap, mail, author, r, when, out)
            trailers = commit_trailers(out.verified, imported=self._quiet)
            if ch is not None and trailers:
                ch.message += "\n\n" + "\n".join(trailers)
            return ch

        if dry_run:
            result = change(self.store.snapshot())
            commit = None
        else:
            commit, result = self.store.update(change, author, self.identity)
            self._record_subscriptions(mail, out)
        if result is not None and result.files:
            out.message, out.files = result.message, sorted(result.files)
            out.written = {p: d for p, d in result.files.items() if d is not None}
            out.commit = commit.decode() if commit else ""
        self._replies(mail, out, dry_run)
        log.info("%s", out.line())
        return out

    def _record_subscriptions(self, mail: ParsedMail, out: Outcome) -> None:
        """After the commit: `unsubscribe ID` keeps the sender out of every notice about the issue,
        whatever their role, until `subscribe ID` (kept outside the branch, see mailtrack.queue.optouts)."""
        if out.commands is None or not out.commands.ok:
            return
        from mailtrack.queue.optouts import OptOuts

        for ln in out.commands.lines:
            if ln.action not in ("subscribe", "unsubscribe") or not ln.issue or ln.error or ln.refused:
                continue
            if OptOuts(self.spool.root).record(ln.issue, mail.from_addr, ln.action == "subscribe"):
                log.info("%s: %s %s %s", mail.message_id, ln.action, ln.issue[:7], mail.from_addr)

    def _machine_action(self) -> str:
        return "held" if self.config.gateway.machine_mail == "keep" else "dropped"

    def _admission(self, snap: Snapshot, mail: ParsedMail, r: Route) -> tuple[str, str] | None:
        """(held or rejected, why) when this sender may not do what the mail does; else None."""
        access = self.config.access
        sender = mail.from_addr
        issue = snap.issue(r.issue) if r.issue else None
        known = commands.allowed(sender, ["known"], issue, snap, access, self.index.known(snap, sender))
        if not known and access.unknown_senders != "accept":
            return ("held" if access.unknown_senders == "hold" else "rejected"), f"{sender} is not known to {self.project}"
        rules = {"new": access.open, "comment": access.comment, "control": access.comment}[r.kind]
        if not commands.allowed(sender, rules, issue, snap, access, known):
            what = {"new": "open issues", "comment": "comment on issues", "control": "send commands"}[r.kind]
            return "rejected", f"{sender} may not {what} in {self.project}"
        return None

    def _issue_mail(self, snap: Snapshot, mail: ParsedMail, author: Person, r: Route, when: datetime, out: Outcome) -> Change | None:
        """A new issue or a comment, with the commands at the top of the mail and in the subject."""
        text = mail.body if r.kind == "new" else mail.reply_text
        # commands come only from the sender's own text: never from a reply that is all quote
        pairs, rest = split_pseudo_headers(text) if r.kind == "new" or not mail.all_quote else ([], text)
        lines = commands.pseudo_lines(pairs) + commands.subject_lines(r.commands)
        if not commands.pseudo_lines(pairs):
            rest = text
        text = _with_skipped(rest.lstrip("\n") if lines else rest, mail.skipped)
        attachments = [(a.filename, a.data) for a in mail.attachments]
        if r.kind == "new":
            edits = self._cc_edits(mail)
            # the commands are checked against the new issue, with its reporter's rights
            issue, ch = new_issue(snap, author, self._title(mail), text, edits, created=when, message_id=mail.message_id)
            out.issue, out.short = issue.name, issue.name[:7]
            if lines:
                applied = commands.apply(lines, _WithIssue(snap, issue), mail.from_addr, issue.name,
                                         self.config.access, True, self._verified_for_commands(mail))
                out.commands = applied
                if not applied.ok:
                    out.action, out.reason = "rejected", f"{len(applied.errors)} command error(s)"
                    return None
                edits += applied.edits.get(issue.name, [])
                issue, ch = new_issue(snap, author, self._title(mail), text, edits, created=when, message_id=mail.message_id)
            if attachments:  # attachments belong to the comment that brought them
                _, files = comment_change(snap, issue.name, author, "Attachments sent with the report.", attachments, when)
                ch.files.update(files)
            out.action, out.reason = "created", r.reason
            return ch
        reply_commands = commands.apply(lines, snap, mail.from_addr, r.issue, self.config.access,
                                        self.index.known(snap, mail.from_addr), self._verified_for_commands(mail)) if lines else None
        out.commands = reply_commands
        if reply_commands is not None and not reply_commands.ok:
            out.action, out.reason = "rejected", f"{len(reply_commands.errors)} command error(s)"
            return None
        edits = reply_commands.edits.get(r.issue, []) if reply_commands else []
        _, ch = edit_issue(snap, r.issue, author, edits, comment=text, attachments=attachments, when=when,
                           message_id=mail.message_id, in_reply_to=mail.in_reply_to or "")
        out.action, out.reason = ("changed" if edits else "commented"), r.reason
        return ch

    def _control(self, snap: Snapshot, mail: ParsedMail, author: Person, when: datetime, out: Outcome) -> Change | None:
        """A batch of commands over several issues: one commit for all of them, or none."""
        lines = commands.control_lines(mail.reply_text or mail.body)
        if not [ln for ln in lines if ln.action != "note"]:  # a mailto: link puts the command in the subject
            in_subject = commands.control_lines(strip_subject_tag(mail.subject, self.project))
            if [ln for ln in in_subject if ln.action != "note"]:
                lines = in_subject
        applied = commands.apply(lines, snap, mail.from_addr, "",
                                 self.config.access, self.index.known(snap, mail.from_addr), self._verified_for_commands(mail))
        out.commands = applied
        if not applied.ok:
            out.action, out.reason = "rejected", f"{len(applied.errors)} command error(s)"
            return None
        files: dict[str, bytes | None] = {}
        messages = []
        recorded = False
        for name, edits in applied.edits.items():
            _, ch = edit_issue(snap, name, author, edits, when=when)
            if ch.files:
                # Each changed issue says in a comment which lines of the mail changed it, and only
                # those (its followers are told of this comment). The first one is the mail's one
                # record (FORMAT.md): it carries the Message-ID, so that a repeat is a duplicate.
                first = not recorded
                _, ch = edit_issue(snap, name, author, edits, comment=_control_record(applied, name), when=when,
                                   message_id=mail.message_id if first else "",
                                   in_reply_to=(mail.in_reply_to or "") if first else "")
                recorded = True
            files.update(ch.files)
            if ch.files:
                messages.append(ch.message)
        out.action = "changed" if files else "nothing"
        out.reason = "control mail"
        return Change("; ".join(messages) or "control", files) if files else None

    def _verified_for_commands(self, mail: ParsedMail) -> bool:
        access = self.config.access
        return not access.require_auth_for_commands or bool(verified_by(mail, access.trusted_authserv_ids))

    def _title(self, mail: ParsedMail) -> str:
        return strip_subject_tag(mail.subject, self.project).strip() or "(no subject)"

    def _cc_edits(self, mail: ParsedMail) -> list[Edit]:
        gw = self.config.gateway
        if not gw.carbons_from_cc:
            return []
        ours = {a.lower() for a in (gw.address, gw.control_address, *gw.own_addresses, mail.from_addr)}
        return [Edit("carbons", "+", f"{name} <{addr}>" if name else addr) for name, addr in mail.cc
                if addr and addr.lower() not in ours and self.addressing.detail(addr) is None]

    # --- replies ------------------------------------------------------------------------------

    def _replies(self, mail: ParsedMail, out: Outcome, dry_run: bool) -> None:
        r = out.route
        gw = self.config.gateway
        if out.action == "rejected" and r is not None and r.kind == "unknown-issue":
            self.reply(mail, "reply-error.txt", out, dry_run,
                        error=f"Your mail names issue {r.ident}, and {self.project} has no such issue ({r.reason}).",
                        hint=f"To open a new issue, write to <{gw.address}> with a subject that names no issue.")
        elif out.action == "rejected" and out.commands is None:
            self.reply(mail, "reply-error.txt", out, dry_run, error=out.reason + ".",
                        hint=f"Ask the maintainers of {self.project} to let you in.")
        if out.commands is not None and out.commands.lines:
            self.reply(mail, "reply-transcript.txt", out, dry_run, applied=out.commands)
            if out.commands.help:
                self.reply(mail, "reply-help.txt", out, dry_run, help=commands.HELP)
            for name in out.commands.shows:
                self.reply(mail, "reply-show.txt", out, dry_run, shown=self._show(name))
        if out.action == "created":
            self.reply(mail, "reply-ack.txt", out, dry_run)

    def _show(self, name: str) -> dict[str, Any]:
        snap = self.store.snapshot()
        issue = snap.issue(name)
        return {"short": snap.short(name), "issue": issue, "comments": snap.comments(name)}

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            from mailtrack.mail.compose import Renderer

            self._renderer = Renderer(self.config.gateway.templates)
        return self._renderer

    def reply(self, mail: ParsedMail, template: str, out: Outcome, dry_run: bool, **extra: Any) -> None:
        """Queue a reply to a human sender, threaded under their mail, within the rate limit."""
        if mail.machine or not mail.from_addr or self._quiet:
            return
        gw = self.config.gateway
        if not dry_run:
            if self._limiter is None:
                from mailtrack.queue.ratelimit import RateLimiter

                self._limiter = RateLimiter(self.spool.root / "replies.sqlite")
            if not self._limiter.allow(mail.from_addr, gw.reply_rate_limit, gw.reply_rate_window):
                log.warning("%s: no %s to %s: over the reply rate limit", mail.message_id, template, mail.from_addr)
                return
        out.replies.append((template, mail.from_addr))
        if dry_run:
            return
        from mailtrack.mail.compose import build_mail

        local, _, domain = gw.address.partition("@")
        applied = out.commands
        context = {
            "project": self.project, "address": gw.address, "control_address": gw.control_address,
            "subject": mail.subject or "(no subject)", "short": out.short, "issue": out.issue,
            "issue_address": f"{local}+{out.short}@{domain}" if out.short else "",
            "title": self._title(mail), "skipped": list(mail.skipped), "sender": mail.from_addr,
            "errors": len(applied.errors) if applied else 0, "applied": applied, **extra,
        }  # fmt: skip
        headers, body = self.renderer.render(template, **context)
        with_original = template == "reply-error.txt" or (
            template == "reply-transcript.txt" and applied is not None and (not applied.ok or bool(applied.refused))
        )  # an error or a refusal: the sender sees what arrived (and whether someone forged it)
        msg = build_mail(
            (self.identity.name, gw.address), [mail.from_addr], headers.pop("Subject", ""), body,
            headers={
                "In-Reply-To": mail.message_id, "References": " ".join([*mail.references, mail.message_id][-10:]),
                "Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All", LOOP_HEADER: gw.address, **headers,
            },  # fmt: skip
            domain=domain or "localhost",
            message_id=self._reply_message_id(mail, template, out, domain or "localhost"),
            attachments=[(mail.raw, "message/rfc822", "original.eml")] if with_original else None,
        )
        self.spool.queue_out(bytes(msg), sender=gw.address, recipients=[mail.from_addr])

    def _reply_message_id(self, mail: ParsedMail, template: str, out: Outcome, domain: str) -> str:
        """For the ack and a transcript about an issue on the branch, a Message-ID that embeds the
        issue's name as notifications do (router.OUR_MSGID), so a reply to it routes by In-Reply-To
        alone; "" (a random one) for the other replies."""
        kind = {"reply-ack.txt": "ack", "reply-transcript.txt": "transcript"}.get(template)
        if kind is None:
            return ""
        issue = out.issue
        if not issue and out.commands is not None:  # a control mail: when its commands name one issue
            named = {ln.issue for ln in out.commands.lines if ln.issue}
            issue = named.pop() if len(named) == 1 else ""
        if not issue or not self.store.snapshot().exists(issue):  # e.g. a new issue refused: not written
            return ""
        return reply_message_id(issue, kind, mail.message_id, domain)

    # --- the runner ---------------------------------------------------------------------------

    def work(self, claim: Claim) -> Outcome | None:
        """Process one claimed mail; never raises for a problem with the mail or with us."""
        try:
            out = self.handle(claim.read())
        except Exception:
            error = traceback.format_exc()
            log.error("%s: processing failed: %s", claim.id, error.strip().splitlines()[-1])
            self.spool.retry_later(claim, error)
            return None
        if out.action == "held":
            # a decision about the mail, not a failure: logged as a warning (ERROR is for retries exhausted)
            self.spool.fail(claim, f"{out.reason}\nMessage-ID: {out.message_id}", level=logging.WARNING)
        else:
            self.spool.done(claim)
        return out

    def housekeeping(self) -> None:
        """Periodic work: report the partial patch series that waited past their timeout."""
        if (self.spool.root / "patches").is_dir():
            from mailtrack.patches.apply import expire_pending

            expire_pending(self)

    def drain(self) -> int:
        """Process every waiting mail; return how many were taken."""
        n = 0
        for claim in self.spool.claims():
            self.work(claim)
            n += 1
        return n


class _WithIssue(Snapshot):
    """A snapshot that also holds one issue not yet written: commands on a new issue check against it."""

    def __init__(self, snap: Snapshot, issue: Any) -> None:
        self.__dict__.update(snap.__dict__)
        self._extra = issue

    def resolve(self, ident: str) -> str:
        if self._extra.name.startswith(ident.lower().lstrip("#")) and len(ident.lstrip("#")) >= 4:
            return str(self._extra.name)
        return super().resolve(ident)

    def issue(self, name: str) -> Any:
        return self._extra if name == self._extra.name else super().issue(name)

    def short(self, name: str) -> str:
        return name[:7] if name == self._extra.name else super().short(name)


def _with_skipped(text: str, skipped: tuple[str, ...]) -> str:
    if not skipped:
        return text
    return text.rstrip("\n") + "\n\n[Not kept from the mail: " + "; ".join(skipped) + "]\n"



def _control_record(applied: commands.Applied, issue: str) -> str:
    """The comment a control mail leaves on `issue`: the command lines applied to it, one a line."""
    done = [ln.text for ln in applied.lines
            if ln.issue == issue and not (ln.error or ln.refused or ln.noop) and ln.action not in ("note", "help", "show")]
    return "Commands by mail to the control address:\n\n" + "\n".join(done)
