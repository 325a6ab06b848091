"""One kept mail -> one decision -> one commit on the branch (or a kept, explained refusal), and the replies.

`Gateway.handle(raw)` parses one mail and walks it through `PIPELINE`, an ordered list of named
stages, against one snapshot of the branch; the first stage that decides (a duplicate, machine mail,
a refusal) ends the walk, and the last one computes the change. The store commits it with a
compare-and-swap, and on a lost race the walk is done again on the new tip. `AFTER` runs once the
change is committed. The result is an `Outcome` (a value, never an exception for a decision about
the mail); patch mails take their own path (worker.patchmail). The runner around it (retries,
quarantine) is worker.runner.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailtrack.config import Config
from mailtrack.mail.addresses import Ours, bare
from mailtrack.mail.ids import LOOP_HEADER, commit_trailers
from mailtrack.mail.parse import ParsedMail, issue_title, parse, split_pseudo_headers, strip_subject_tag
from mailtrack.patches.detect import is_patch_mail
from mailtrack.queue.layout import ID_RE, Layout, id_time
from mailtrack.queue.optouts import OptOuts
from mailtrack.queue.spool import Claim, Spool
from mailtrack.queue.waiting import Note, Waiting
from mailtrack.tracker import rights
from mailtrack.tracker.changes import Edit, comment_change, edit_issue, new_issue
from mailtrack.tracker.lookup import Index, normalize_msgid
from mailtrack.tracker.model import Person, attachment_name, now, written_at
from mailtrack.tracker.rights import Sender
from mailtrack.tracker.store import Change, Snapshot, Store
from mailtrack.worker import admission, commands
from mailtrack.worker.commands import Applied, LineAction
from mailtrack.worker.outcome import Action, Outcome, Reply
from mailtrack.worker.replies import HeldReplies, Replier
from mailtrack.worker.route import Route, RouteKind, route

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One mail on its way through the pipeline, against one snapshot."""

    mail: ParsedMail
    out: Outcome
    author: Person
    when: datetime
    imported: bool
    wait_until: float | None = None  # it may wait for its parent until then (Gateway.wait_until)
    route: Route | None = None
    sender: Sender | None = None
    change: Change | None = None


@dataclass(frozen=True)
class Stage:
    """A named step: returns False when it has decided what becomes of the mail (the walk ends)."""

    name: str
    description: str
    run: Callable[[Gateway, Job, Snapshot], bool]


def _route(gw: Gateway, job: Job, snap: Snapshot) -> bool:
    r = route(job.mail, snap, gw.index, gw.ours, gw.project, may_wait=job.wait_until is not None and time.time() < job.wait_until)
    if r.kind == RouteKind.WAIT and not gw.room_to_wait(job):
        r = Route(RouteKind.NEW, reason=f"no issue named by address, thread or subject; {r.awaits[0]} not seen, and too many replies wait")
    job.route, job.out.route, job.out.issue = r, r, r.issue
    job.out.short = snap.short(r.issue) if r.issue else ""
    if r.kind == RouteKind.DUPLICATE:
        job.out.decide(Action.DUPLICATE, r.reason)
    elif r.kind == RouteKind.WAIT:  # worker.runner parks it (queue.waiting)
        job.out.decide(Action.WAITING, r.reason)
    elif r.kind == RouteKind.UNKNOWN_ISSUE:
        job.out.decide(Action.REJECTED, r.reason)
    elif r.kind == RouteKind.MACHINE:
        job.out.decide(gw.machine_action(), f"machine mail: {r.reason}")
    else:
        return True
    return False


def _sender(gw: Gateway, job: Job, snap: Snapshot) -> bool:
    if (problem := admission.sender_problem(job.mail)) is not None:
        job.out.decide(Action.HELD, problem)
        return False
    job.sender = admission.sender(job.mail, job.out.verified, snap, gw.index, gw.config.access)
    return True


def _admission(gw: Gateway, job: Job, snap: Snapshot) -> bool:
    assert job.route is not None and job.sender is not None
    issue = snap.issue(job.route.issue) if job.route.issue else None
    refusal = admission.refusal(job.sender, job.route.kind, issue, snap, gw.config.access, gw.project)
    if refusal is not None:
        job.out.decide(*refusal)
        return False
    return True


def _change(gw: Gateway, job: Job, snap: Snapshot) -> bool:
    assert job.route is not None and job.sender is not None
    if job.route.kind == RouteKind.CONTROL:
        job.change = gw.control(snap, job)
    elif job.route.kind == RouteKind.NEW:
        job.change = gw.new_issue(snap, job)
    else:
        job.change = gw.comment(snap, job)
    if job.change is not None:
        trailers = commit_trailers(job.out.verified, imported=job.imported)
        if trailers:
            job.change.message += "\n\n" + "\n".join(trailers)
    return True


# The order of the work on one mail, against one snapshot (retried whole on a lost race).
PIPELINE: tuple[Stage, ...] = (
    Stage("route", "which issue the mail is about: a duplicate, machine mail, an unknown issue and a reply that waits for its parent end here", _route),
    Stage("sender", "the mail has a sender address, and the rights know who that is", _sender),
    Stage("admission", "the sender may do what the mail does (known senders, access.open, access.comment)", _admission),
    Stage("change", "the files the mail writes: a new issue, a comment, commands, a control batch", _change),
)


class Gateway:
    def __init__(self, config: Config, store: Store, spool: Spool, *, read_only: bool = False,
                 dkim: admission.Verifier | None = None) -> None:
        """`read_only`: for dry runs, the index lives in memory (nothing is written to disk). `dkim`: our own
        DKIM check (worker.dkimcheck.signed_by), which `access.verify_dkim` needs and nothing else loads."""
        if config.access.verify_dkim and dkim is None:
            raise ValueError("access.verify_dkim is on, but the gateway was given no DKIM check")
        self.config = config
        self.dkim = dkim
        self.store = store
        self.spool = spool
        gw = config.gateway
        self.project = store.project_name(gw.project)
        self.ours = Ours.of(gw)
        self.identity = Person(gw.name or self.project, gw.address)
        self.index = Index.for_snapshot(store.snapshot(), read_only=read_only)
        self.replier = Replier(config, store, spool, self.project, self.identity)
        self.waiting = Waiting(spool.layout)
        self._looked_at: bytes | None = None  # the tip due() last looked up the waiting mails' parents on,
        self._checked: set[str] = set()  # and the waiting mails it looked at there
        if not read_only:  # the replies a crashed writer left held: queued if their commit landed
            self.replier.settle()

    def close(self) -> None:
        self.index.close()
        self.replier.close()

    # --- one mail -----------------------------------------------------------------------------

    def parse(self, raw: bytes) -> ParsedMail:
        gw = self.config.gateway
        return parse(raw, max_attachment_size=gw.max_attachment_size, loop_header=LOOP_HEADER, ours=self.ours)

    def handle(self, raw: bytes, *, dry_run: bool = False, received: datetime | None = None, imported: bool = False,
               spool_id: str = "", hold_early: bool = False) -> Outcome:
        """Apply one mail to the branch and queue the replies it calls for.

        `imported` (`mailtrack import` of an old archive) applies the mail the same way, but queues
        no reply of any kind and marks its commit with IMPORTED_TRAILER (mail.ids), which the
        notifier skips: the people of old mail must not hear from us. Its records and its commit's
        author date take the mail's own Date when it is sane (`written_at`). `received` overrides
        the time of any mail. `spool_id`: the mail is kept in the spool under that id, so it may
        wait for its parent (Action.WAITING: worker.runner parks it). `hold_early` (imported): a
        reply to a mail not seen yet is Action.WAITING, for the importer to take again later.
        """
        self.replier.quiet = imported
        try:
            mail = self.parse(raw)
            if is_patch_mail(mail):  # a series of issues-branch commits, applied as `git am` would
                from mailtrack.worker import patchmail  # here: only patch mail needs the patches' code (deliver starts lean)

                out = patchmail.handle(self, mail, dry_run=dry_run)
            else:
                # a dry run is told what `deliver` would do: the mail would arrive now
                arrived = id_time(spool_id) if spool_id and ID_RE.match(spool_id) else time.time() if dry_run else None
                until = (math.inf if hold_early else None) if imported else self.wait_until(arrived)
                out = self._walk(mail, dry_run, received, imported, until)
            log.info("%s", out.line())
            return out
        finally:
            self.replier.quiet = False

    def _walk(self, mail: ParsedMail, dry_run: bool, received: datetime | None, imported: bool, wait_until: float | None) -> Outcome:
        out = Outcome(Action.NOTHING, message_id=mail.message_id, sender=mail.from_addr)
        out.verified = admission.verified_by(mail, self.config.access, self.dkim)
        when = received or (written_at(mail.date, now()) if imported else now())
        job = Job(mail, out, Person(mail.from_name, mail.from_addr), when, imported, wait_until)

        def attempt(snap: Snapshot) -> Change | None:
            out.action, out.reason, out.commands, job.change = Action.NOTHING, "", None, None
            for stage in PIPELINE:
                out.stage = stage.name
                if not stage.run(self, job, snap):
                    break
            return job.change

        def prepare(commit: bytes) -> HeldReplies:
            """The replies about the commit, queued with it: held until the ref points at it."""
            assert job.change is not None
            _record(out, job.change, commit)
            out.replies.clear()  # a lost race prepares them again
            with self.replier.holding(commit) as held:
                self.replies(mail, out, dry_run=False)
            return held

        if dry_run:
            result, commit = attempt(self.store.snapshot()), None
        else:
            commit, result = self.store.update(attempt, job.author, self.identity, when=when if imported else None, prepare=prepare)
            for stage in AFTER:
                stage.run(self, job, self.store.snapshot())
        if result is not None and result.files:
            _record(out, result, commit)
        if commit is None:  # nothing committed: the replies are queued now (else they came with the commit)
            self.replies(mail, out, dry_run)
        return out

    # --- replies that wait for their parent --------------------------------------------------------

    def wait_until(self, arrived: float | None) -> float | None:
        """Until when a mail that `arrived` (in the spool, seconds since the epoch) may wait for its
        parent: gateway.reply_wait later; None when it may not wait (not kept, reply_wait = 0)."""
        wait = self.config.gateway.reply_wait
        return arrived + wait if arrived is not None and wait > 0 else None

    def room_to_wait(self, job: Job) -> bool:
        """Whether a reply to a mail we have not seen, whose time is not up, may wait: fewer than
        reply_wait_max mails wait (reply_wait_per_sender from its sender). Past the bounds it is taken
        at once, as if no mail waited: a stranger's 10,000 replies to nothing cost no more."""
        gw = self.config.gateway
        if self.waiting.count() >= gw.reply_wait_max:
            log.warning("%s: not waiting for its parent: %d replies wait already (reply_wait_max)",
                        job.mail.message_id, gw.reply_wait_max)
            return False
        if self.waiting.count(job.mail.from_addr) >= gw.reply_wait_per_sender:
            log.warning("%s: not waiting for its parent: %d replies from %s wait already (reply_wait_per_sender)",
                        job.mail.message_id, gw.reply_wait_per_sender, job.mail.from_addr)
            return False
        return True

    def park(self, claim: Claim, out: Outcome) -> None:
        """Keep a mail that waits for its parent (Action.WAITING) aside, with what it waits for."""
        assert out.route is not None
        until = self.wait_until(id_time(claim.id)) or time.time()
        self.waiting.park(claim, Note(tuple(normalize_msgid(m) for m in out.route.awaits), out.sender, until))

    def woken_by(self, message_id: str) -> list[str]:
        """The waiting mails this mail's commit may thread: they wait for its Message-ID, now on the branch."""
        mid = normalize_msgid(message_id)
        waiting = self.waiting.awaiting(mid)
        if not waiting or not self.index.lookup(self.store.snapshot(), mid):
            return []
        return waiting

    def due(self) -> list[str]:
        """The waiting mails to take again now: a Message-ID they wait for is on the branch, or their
        time is up (then they are taken as if they had not waited), or their note was lost."""
        now, snap, notes = time.time(), self.store.snapshot(), self.waiting.notes()
        if snap.commit != self._looked_at:  # a parent only comes with a commit: look again at every note
            self._looked_at, self._checked = snap.commit, set()
        fresh = {i: n for i, n in notes.items() if n is not None and i not in self._checked}
        landed = self.index.present(snap, [m for n in fresh.values() for m in n.awaits]) if fresh else set()
        self._checked.update(fresh)
        return [spool_id for spool_id, note in notes.items()
                if note is None or note.until <= now or (spool_id in fresh and not landed.isdisjoint(note.awaits))]

    def machine_action(self) -> Action:
        return Action.HELD if self.config.gateway.machine_mail == "keep" else Action.DROPPED

    # --- the change a mail makes ----------------------------------------------------------------

    def new_issue(self, snap: Snapshot, job: Job) -> Change | None:
        """A new issue, with the commands at the top of the mail and in the subject."""
        mail, out, author, r = job.mail, job.out, job.author, job.route
        assert r is not None and job.sender is not None
        text, lines = self._text_and_commands(mail, r, mail.body, new=True)
        attachments = [(attachment_name(a.filename), a.data) for a in mail.attachments]
        edits, left_out = self._cc_edits(mail, job.sender, snap, job.imported)
        if left_out:
            text = _with_skipped(text, (left_out,))
        # the commands are checked against the new issue, with its reporter's rights
        issue, ch = new_issue(snap, author, issue_title(mail.subject, self.project), text, edits, created=job.when, message_id=mail.message_id)
        out.issue, out.short = issue.name, issue.name[:7]
        if lines:
            applied = commands.apply(lines, _WithIssue(snap, issue), admission.opener(job.sender), issue.name, self.config.access)
            out.commands = applied
            if not applied.ok:
                out.decide(Action.REJECTED, f"{len(applied.errors)} command error(s)")
                return None
            edits += applied.edits.get(issue.name, [])
            issue, ch = new_issue(snap, author, issue_title(mail.subject, self.project), text, edits, created=job.when, message_id=mail.message_id)
        if attachments:  # attachments belong to the comment that brought them
            _, files = comment_change(snap, issue.name, author, "Attachments sent with the report.", attachments, job.when)
            ch.files.update(files)
        out.decide(Action.CREATED, r.reason + _refused_note(out.commands))
        return ch

    def comment(self, snap: Snapshot, job: Job) -> Change | None:
        """A comment on an issue, with the commands at the top of the reply and in the subject."""
        mail, out, r = job.mail, job.out, job.route
        assert r is not None and job.sender is not None
        text, lines = self._text_and_commands(mail, r, mail.reply_text, new=False)
        attachments = [(attachment_name(a.filename), a.data) for a in mail.attachments]
        applied = commands.apply(lines, snap, job.sender, r.issue, self.config.access) if lines else None
        out.commands = applied
        if applied is not None and not applied.ok:
            out.decide(Action.REJECTED, f"{len(applied.errors)} command error(s)")
            return None
        edits = applied.edits.get(r.issue, []) if applied else []
        _, ch = edit_issue(snap, r.issue, job.author, edits, comment=text, attachments=attachments, when=job.when,
                           message_id=mail.message_id, in_reply_to=mail.in_reply_to or "")
        out.decide(Action.CHANGED if edits else Action.COMMENTED, r.reason + _refused_note(applied))
        return ch

    def _text_and_commands(self, mail: ParsedMail, r: Route, text: str, *, new: bool) -> tuple[str, list[commands.Line]]:
        """The text a mail leaves and its command lines: pseudo-headers on top, then the subject's."""
        # commands come only from the sender's own text: never from a reply that is all quote
        pairs, rest = split_pseudo_headers(text) if new or not mail.all_quote else ([], text)
        lines = commands.pseudo_lines(pairs) + commands.subject_lines(r.commands)
        if not commands.pseudo_lines(pairs):
            rest = text
        return _with_skipped(rest.lstrip("\n") if lines else rest, mail.skipped), lines

    def control(self, snap: Snapshot, job: Job) -> Change | None:
        """A batch of commands over several issues: one commit for all of them, or none."""
        mail, out, author = job.mail, job.out, job.author
        assert job.sender is not None
        lines = commands.control_lines(mail.reply_text or mail.body)
        if not [ln for ln in lines if ln.action != LineAction.NOTE]:  # a mailto: link puts the command in the subject
            in_subject = commands.control_lines(strip_subject_tag(mail.subject, self.project))
            if [ln for ln in in_subject if ln.action != LineAction.NOTE]:
                lines = in_subject
        applied = commands.apply(lines, snap, job.sender, "", self.config.access)
        out.commands = applied
        if not applied.ok:
            out.decide(Action.REJECTED, f"{len(applied.errors)} command error(s)")
            return None
        files: dict[str, bytes | None] = {}
        messages = []
        recorded = False
        for name, edits in applied.edits.items():
            _, ch = edit_issue(snap, name, author, edits, when=job.when)
            if ch.files:
                # Each changed issue says in a comment which lines of the mail changed it, and only
                # those (its followers are told of this comment). The first one is the mail's one
                # record (FORMAT.md): it carries the Message-ID, so that a repeat is a duplicate.
                first = not recorded
                _, ch = edit_issue(snap, name, author, edits, comment=_control_record(applied, name), when=job.when,
                                   message_id=mail.message_id if first else "",
                                   in_reply_to=(mail.in_reply_to or "") if first else "")
                recorded = True
            files.update(ch.files)
            if ch.files:
                messages.append(ch.message)
        subscriptions = _subscription_changes(applied, self.spool.layout, job.mail.from_addr)  # beside the branch
        out.decide(Action.CHANGED if files or subscriptions else Action.NOTHING,
                   "control mail" + "".join(f"; {s}" for s in subscriptions) + _refused_note(applied))
        return Change("; ".join(messages) or "control", files) if files else None

    def _cc_edits(self, mail: ParsedMail, who: Sender, snap: Snapshot, imported: bool) -> tuple[list[Edit], str]:
        """The Cc header as Cc edits of a new issue: only from senders `access.cc_from` names (or
        `imported`, from an archive the admin chose), and at most `access.max_cc_per_mail`
        addresses; with a note for the issue of what the cap left out."""
        access = self.config.access
        cc = [(name, addr) for name, addr in mail.cc
              if addr and not self.ours.is_ours(addr) and addr.lower() != mail.from_addr.lower()]
        if not self.config.gateway.carbons_from_cc or not cc:
            return [], ""
        if not imported and not rights.may(who, access.cc_from, None, snap, access):  # a stranger's Cc: third parties who asked for nothing
            log.info("%s: Cc not taken (%d addresses): %s is not in access.cc_from", mail.message_id, len(cc), who.address)
            return [], ""
        kept, over = cc[:access.max_cc_per_mail], len(cc) - access.max_cc_per_mail
        note = f"{over} addresses of the mail's Cc: at most {access.max_cc_per_mail} are taken (access.max_cc_per_mail)" if over > 0 else ""
        return [Edit("carbons", "+", Person(name, addr).mailbox) for name, addr in kept], note

    # --- replies ------------------------------------------------------------------------------

    def replies(self, mail: ParsedMail, out: Outcome, dry_run: bool) -> None:
        """The replies the decision calls for."""
        r, gw = out.route, self.config.gateway
        send = self.replier.send
        if out.action == Action.REJECTED and r is not None and r.kind == RouteKind.UNKNOWN_ISSUE:
            send(mail, Reply.ERROR, out, dry_run,
                 error=f"Your mail names issue {r.ident}, and {self.project} has no such issue ({r.reason}).",
                 hint=f"To open a new issue, write to <{gw.address}> with a subject that names no issue.")
        elif out.action == Action.REJECTED and out.commands is None:
            send(mail, Reply.ERROR, out, dry_run, error=out.reason + ".",
                 hint=f"Ask the maintainers of {self.project} to let you in.")
        if out.commands is not None and out.commands.lines:
            send(mail, Reply.TRANSCRIPT, out, dry_run, applied=out.commands)
            if out.commands.help:
                send(mail, Reply.HELP, out, dry_run, help=commands.HELP)
            for name in out.commands.shows:
                send(mail, Reply.SHOW, out, dry_run, shown=self._show(name, out.commit))
        if out.action == Action.CREATED:
            send(mail, Reply.ACK, out, dry_run)

    def _show(self, name: str, commit: str = "") -> dict[str, Any]:
        snap = self.store.snapshot(commit.encode() if commit else None)  # as of the mail's own commit
        issue = snap.issue(name)
        return {"short": snap.short(name), "issue": issue, "comments": snap.comments(name)}


def _subscriptions(gw: Gateway, job: Job, snap: Snapshot) -> bool:
    """`unsubscribe ID` keeps the sender out of every notice about the issue, whatever their role,
    until `subscribe ID` (kept outside the branch, see queue.optouts)."""
    applied = job.out.commands
    if applied is None or not applied.ok:
        return True
    for ln in applied.lines:
        if ln.action not in (LineAction.SUBSCRIBE, LineAction.UNSUBSCRIBE) or not ln.issue or ln.error or ln.refused:
            continue
        if OptOuts(gw.spool.layout).record(ln.issue, job.mail.from_addr, ln.action == LineAction.SUBSCRIBE):
            log.info("%s: %s %s %s", job.mail.message_id, ln.action, ln.issue[:7], job.mail.from_addr)
    return True


# After the store's update, outside the walk that a lost race repeats (not in a dry run).
AFTER: tuple[Stage, ...] = (
    Stage("subscriptions", "subscribe and unsubscribe commands, recorded beside the branch", _subscriptions),
)


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


def _refused_note(applied: Applied | None) -> str:
    """For the log line of a mail that landed although some of its commands were refused."""
    return f"; {len(applied.refused)} command(s) refused" if applied is not None and applied.refused else ""


def _subscription_changes(applied: Applied, layout: Layout, sender: str) -> list[str]:
    """The `subscribe ID`/`unsubscribe ID` lines of a control mail that change who hears (the
    subscriptions stage records them): `unsubscribe abc1234`."""
    out = []
    for ln in applied.lines:
        if ln.action in (LineAction.SUBSCRIBE, LineAction.UNSUBSCRIBE) and ln.issue and not (ln.error or ln.refused):
            if (ln.action == LineAction.UNSUBSCRIBE) != (bare(sender) in OptOuts(layout).of(ln.issue)):
                out.append(f"{ln.action} {ln.issue[:7]}")
    return out


def _record(out: Outcome, change: Change, commit: bytes | None) -> None:
    """What the mail's commit wrote, in its outcome."""
    out.message, out.files = change.message, sorted(change.files)
    out.written = {p: d for p, d in change.files.items() if d is not None}
    out.commit = commit.decode() if commit else ""


def _with_skipped(text: str, skipped: tuple[str, ...]) -> str:
    if not skipped:
        return text
    return text.rstrip("\n") + "\n\n[Not kept from the mail: " + "; ".join(skipped) + "]\n"


def _control_record(applied: Applied, issue: str) -> str:
    """The comment a control mail leaves on `issue`: the command lines applied to it, one a line."""
    done = [ln.text for ln in applied.lines
            if ln.issue == issue and not (ln.error or ln.refused or ln.noop) and ln.action not in (LineAction.NOTE, LineAction.HELP, LineAction.SHOW)]
    return "Commands by mail to the control address:\n\n" + "\n".join(done)
