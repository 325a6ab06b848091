"""The decision about one mail, as types: what became of it (`Action`), the replies it calls for
(`Reply`), and the `Outcome` that carries both to the log line, the runner and `deliver --dry-run`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: an Outcome holds what these modules made
    from mailtrack.worker.commands import Applied
    from mailtrack.worker.route import Route


class Action(StrEnum):
    """What became of one mail."""

    CREATED = "created"  # a new issue
    COMMENTED = "commented"  # a comment on an issue
    CHANGED = "changed"  # fields changed (commands, a control mail, a patch series)
    DUPLICATE = "duplicate"  # its Message-ID is on the branch already, or the series was applied
    PENDING = "pending"  # a part of a patch series, kept until the series is complete
    WAITING = "waiting"  # a reply kept until its parent comes (or gateway.reply_wait is over)
    DROPPED = "dropped"  # machine mail, logged and forgotten
    HELD = "held"  # kept in the spool's failed queue with the reason (policy, no sender)
    REJECTED = "rejected"  # refused, and the sender told why
    NOTHING = "nothing"  # a control mail that changed nothing


class Reply(StrEnum):
    """The replies we send to a sender; each is one template."""

    ACK = "ack"  # a new issue was opened
    ERROR = "error"  # the mail was refused as a whole
    TRANSCRIPT = "transcript"  # what each command line did
    HELP = "help"  # the command reference
    SHOW = "show"  # an issue, asked for with `show ID`
    PATCHES = "patches"  # what became of each patch of a series

    @property
    def template(self) -> str:
        return f"reply-{self.value}.txt"

    @property
    def threads_under_issue(self) -> bool:
        """Its Message-ID embeds the issue (mail.ids.reply_message_id): a reply to it routes by In-Reply-To."""
        return self in (Reply.ACK, Reply.TRANSCRIPT)


@dataclass
class Outcome:
    """What became of one mail."""

    action: Action
    reason: str = ""
    message_id: str = ""
    sender: str = ""  # the From address, lowercase (a waiting reply is counted per sender)
    issue: str = ""
    short: str = ""
    commit: str = ""
    route: Route | None = None
    stage: str = ""  # the pipeline stage that decided (worker.pipeline.PIPELINE)
    message: str = ""  # the commit message
    files: list[str] = field(default_factory=list)
    written: dict[str, bytes] = field(default_factory=dict, repr=False)  # path -> content, for --dry-run
    replies: list[tuple[str, str]] = field(default_factory=list)  # (template, recipient)
    commands: Applied | None = None
    verified: str = ""  # who vouched for the sender (Authentication-Results)

    def decide(self, action: Action, reason: str = "") -> None:
        self.action, self.reason = action, reason

    def line(self) -> str:
        """One log line: the Message-ID, then what happened."""
        where = f" {self.short}" if self.short else ""
        return f"{self.message_id}: {self.action}{where}" + (f" ({self.reason})" if self.reason else "")
