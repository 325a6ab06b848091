"""The notification tests' tracker: a gateway repository, its spool and a relay sink, and the people
on its issues. The `tracker` fixture (tests/conftest.py) is one notified up to now."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from helpers.sink import Sink
from mailtrack.config import AccessConfig, Config, GatewayConfig, NotifyConfig
from mailtrack.outbound.notifier import Notifier
from mailtrack.outbound.sender import OutboxSender
from mailtrack.queue.spool import Spool
from mailtrack.tracker.changes import Edit, edit_issue, new_issue
from mailtrack.tracker.model import Person
from mailtrack.tracker.store import Change, Snapshot, Store
from mailtrack.worker.pipeline import Gateway, Outcome

ALICE = Person("Alice Reporter", "alice@example.org")
BOB = Person("Bob Cc", "bob@example.org")
DAN = Person("Dan Assignee", "dan@example.org")
CONFIG = Config(
    gateway=GatewayConfig(project="proj", own_addresses=["robot@localhost"]),
    notify=NotifyConfig(watchers=["Walt Watcher <walt@example.org>", "noreply@example.org", "alice@example.org"]),
    access=AccessConfig(cc_from=["anyone"]),  # the Cc of a first mail (a stranger's) is taken: what notices are about
)
ANYONES_CC = '[access]\ncc_from = ["anyone"]\n'  # the same, as TOML for a process of its own
EVERYONE = {"bob@example.org": "cc", "dan@example.org": "assignee", "oscar@example.org": "owner",
            "olga@example.org": "component-owner", "walt@example.org": "watcher"}


class Tracker:
    """The gateway's repository, spool and relay: make changes, notify, catch what the relay gets."""

    def __init__(self, repo: Path, sink: Sink, config: Config = CONFIG) -> None:
        self.repo = repo
        self.sink = sink
        self.config = config
        self.spool = Spool(repo / ".git" / "mailtrack" / "spool")
        self.seen = 0

    def change(self, author: Person, make: Callable[[Snapshot], Change]) -> bytes:
        with Store.open(self.repo) as store:
            commit, _ = store.update(make, author)
        assert commit is not None
        return commit

    def new_issue(self, title: str = "Printer on fire", author: Person = ALICE, components: list[str] = ["core"]) -> str:  # noqa: B006
        edits = [Edit("carbons", "+", v) for v in ("Bob Cc <bob@example.org>", "noreply@example.org",
                                                  "issues+deadbeef@tracker.localhost", "control@tracker.localhost", "robot@localhost")]
        edits += [Edit("assigned", "=", "Dan Assignee <dan@example.org>"), Edit("owners", "=", "Oscar <oscar@example.org>"),
                  Edit("components", "=", ",".join(components))]
        made = []

        def make(snap: Snapshot) -> Change:
            issue, ch = new_issue(snap, author, title, "It is on fire.\n", edits, message_id="<report1@example.org>")
            made.append(issue.name)
            return ch

        self.change(author, make)
        return made[-1]

    def edit(self, author: Person, name: str, edits: list[Edit] | Callable[[Snapshot], list[Edit]] | None = None,
             comment: str | None = None, attachments: list[tuple[str, bytes]] | None = None) -> bytes:
        def make(snap: Snapshot) -> Change:
            wanted = edits(snap) if callable(edits) else list(edits or [])
            return edit_issue(snap, name, author, wanted, comment, attachments)[1]

        return self.change(author, make)

    def notify(self, config: Config | None = None) -> int:
        with Store.open(self.repo) as store:
            return Notifier(config or self.config, self.spool).notify(store)

    def handle(self, raw: bytes) -> Outcome:
        """The gateway of this tracker (its configuration, its spool) takes one mail."""
        with Store.open(self.repo, durable=True) as store:
            gateway = Gateway(self.config, store, self.spool)
            try:
                return gateway.handle(raw)
            finally:
                gateway.close()

    def caught(self) -> list[EmailMessage]:
        """Send the outbox to the sink; the mails it got since the last call."""
        OutboxSender(self.sink.relay(), self.spool).send_pending()
        new = self.sink.received[self.seen:]
        self.seen = len(self.sink.received)
        for r in new:
            assert [r.message["To"].addresses[0].addr_spec] == r.recipients
        return [r.message for r in new]


def everyone_but(actor: str) -> dict[str, str]:
    """EVERYONE and the reporter Alice, minus the actor."""
    return {k: v for k, v in {**EVERYONE, "alice@example.org": "reporter"}.items() if k != actor}


def by_rcpt(mails: list[EmailMessage]) -> dict[str, EmailMessage]:
    return {m["To"].addresses[0].addr_spec: m for m in mails}


def reasons(mails: list[EmailMessage]) -> dict[str, str]:
    return {m["To"].addresses[0].addr_spec: m["X-Mailtrack-Reason"] for m in mails}


def h(m: EmailMessage, name: str) -> str:
    """A header's value, unfolded (a long Message-ID starts on the line after its name)."""
    return " ".join(str(m[name]).split())


def body(m: EmailMessage) -> str:
    return m.get_content().replace("\r\n", "\n")  # type: ignore[no-any-return]
