"""Notifications link to the issue's web page when [web] base_url is set, and say nothing of it otherwise."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

from helpers.mail import make_mail
from helpers.repos import make_gateway
from mailtrack.config import Config, GatewayConfig, NotifyConfig, WebConfig
from mailtrack.outbound.notifier import Notifier
from mailtrack.queue.spool import Spool
from mailtrack.tracker.store import Store


def _notifications(repo: Path, web: WebConfig) -> tuple[str, list[str]]:
    """(the new issue's short name, the bodies of the notifications of it to a watcher)."""
    config = Config(gateway=GatewayConfig(project="proj"), notify=NotifyConfig(watchers=["walt@example.org"]), web=web)
    gw = make_gateway(repo)
    try:
        before = gw.store.tip()
        gw.handle(make_mail(subject="Printer on fire"))
        after = gw.store.tip()
    finally:
        gw.close()
        gw.store.close()
    assert before is not None and after is not None
    with Store.open(repo) as store:
        notifier = Notifier(config, Spool(repo / "scratch-spool"), project="proj")
        mails = notifier.mails(store, before, after)
        (name,) = list(store.snapshot().issue_names())
        short = store.snapshot().short(name)
    bodies = []
    for m in mails:
        msg = email.message_from_bytes(m.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        bodies.append(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    return short, bodies


def test_notification_carries_the_issue_link_with_base_url(repo: Path) -> None:
    """With base_url, each notification names base_url/<short>/ in its footer."""
    short, bodies = _notifications(repo, WebConfig(base_url="https://bugs.example.org/tracker/"))
    assert 1 == len(bodies)
    assert f"\nhttps://bugs.example.org/tracker/{short}/\n" in bodies[0]


def test_notification_has_no_link_without_base_url(repo: Path) -> None:
    """Without base_url nothing in a notification points at a web page."""
    _, bodies = _notifications(repo, WebConfig())
    assert 1 == len(bodies)
    assert "http" not in bodies[0]


def test_issue_url_is_the_one_answer(repo: Path) -> None:
    """WebConfig.issue_url gives base_url/<short>/ with one slash, and "" with no base_url."""
    assert "https://x.test/a1b2c3d/" == WebConfig(base_url="https://x.test").issue_url("a1b2c3d")
    assert "https://x.test/a1b2c3d/" == WebConfig(base_url="https://x.test/").issue_url("a1b2c3d")
    assert "" == WebConfig().issue_url("a1b2c3d")
