"""Every kind of notification carries the full set of headers that mail clients and filters use."""

from __future__ import annotations

import pytest

from mailtrack.tracker.changes import Edit, close_edits, reopen_edits
from mailtrack.tracker.store import Change, issue_dir
from tracker import BOB, DAN, Tracker, body, by_rcpt, h

CONSTANT = {"List-Id": "proj <proj.localhost>", "Auto-Submitted": "auto-generated", "Precedence": "bulk",
            "X-Auto-Response-Suppress": "All", "X-Mailtrack-Loop": "issues@localhost"}


def attach_only(t: Tracker, name: str) -> None:
    """A file added to the issue with no comment (as a merge or a patch mail can bring)."""
    t.change(BOB, lambda s: Change(f"attach {name[:7]}", {f"{issue_dir(name)}/trace.txt": b"t" * 3000}))


EVENTS = {
    "comment": lambda t, n: t.edit(BOB, n, comment="Any news?"),
    "changed": lambda t, n: t.edit(BOB, n, [Edit("severity", "=", "minor")]),
    "closed": lambda t, n: t.edit(BOB, n, close_edits),
    "reopened": lambda t, n: (t.edit(DAN, n, close_edits), t.notify(), t.caught(), t.edit(BOB, n, reopen_edits)),
    "attachment": attach_only,
}


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_event_has_the_headers_that_thread_and_filter(tracker: Tracker, event: str) -> None:  # noqa: F811  (the fixture)
    """For each kind of change: threaded under the issue's first mail, Reply-To the issue, From
    "Name via project", List-Id and List-Unsubscribe, the auto-mail headers, our loop header and
    the X-Mailtrack-* headers; the actor (Bob) is not told."""
    name = tracker.new_issue()
    tracker.notify()
    tracker.caught()
    EVENTS[event](tracker, name)
    tracker.notify()
    mails = by_rcpt(tracker.caught())
    assert "bob@example.org" not in mails
    m = mails["alice@example.org"]
    short, first = name[:7], f"<mailtrack.{name}.issue@localhost>"
    expected = {
        **CONSTANT, "From": "Bob Cc via proj <issues@localhost>", "Subject": f"[proj #{short}] Printer on fire",
        "In-Reply-To": first, "References": f"<report1@example.org> {first}", "Reply-To": f"issues+{short}@localhost",
        "List-Unsubscribe": f"<mailto:control@localhost?subject=unsubscribe%20{short}>",
        "X-Mailtrack-Issue": short, "X-Mailtrack-Event": event, "X-Mailtrack-Components": "core",
        "X-Mailtrack-Reason": "reporter",
    }
    assert expected == {k: h(m, k) for k in expected}
    assert h(m, "Message-ID").startswith(f"<mailtrack.{name}.") and h(m, "Message-ID") != first
    if event == "attachment":
        assert "trace.txt (2.9 KB)" in body(m)
