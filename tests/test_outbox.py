"""The sender: the outbox to an aiosmtpd sink standing in for the relay, with retries and failures;
`mailtrack outbox`, `outbox retry` and `status` from the command line."""

from __future__ import annotations

import ssl
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers.cli import deliver, mailtrack
from helpers.mail import make_mail
from helpers.ports import free_port, wait_for
from helpers.sink import Sink
from mailtrack.config import RelayConfig
from mailtrack.outbound.sender import OutboxSender, next_due, outbox_listing, retry_now, waiting
from mailtrack.queue.spool import Spool


def queue(spool: Spool, subject: str = "Hello", to: tuple[str, ...] = ("ann@example.org",), body: str = "Hi.\n") -> str:
    """Queue a small mail as the gateway would; return its spool id."""
    msg = EmailMessage()
    msg["From"] = "proj <issues@tracker.localhost>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@localhost>"
    msg.set_content(body)
    return spool.queue_out(bytes(msg), sender="issues@tracker.localhost", recipients=list(to))


def test_no_relay_leaves_mail_queued(spool: Spool) -> None:
    """Without a relay the sender does nothing and the mail waits in the outbox."""
    queue(spool)
    counts = OutboxSender(RelayConfig(), spool).send_pending()
    assert ({"sent": 0, "deferred": 0, "failed": 0}, 1) == (counts, spool.counts()["outbox/new"])


def test_delivers_each_mail_to_its_recipients(sink: Sink, spool: Spool) -> None:
    """Every queued mail reaches the relay once, with its envelope, CRLF line ends and 8-bit text intact."""
    queue(spool, "One", ("ann@example.org", "bob@example.org"))
    queue(spool, "Two", ("cid@example.org",), body="Grüße aus Köln.\n")
    counts = OutboxSender(sink.relay(), spool).send_pending()
    got = [(r.sender, r.recipients, r.message["Subject"]) for r in sink.received]
    assert {"sent": 2, "deferred": 0, "failed": 0} == counts
    assert [("issues@tracker.localhost", ["ann@example.org", "bob@example.org"], "One"),
            ("issues@tracker.localhost", ["cid@example.org"], "Two")] == got
    assert "Grüße aus Köln.\r\n" == sink.received[1].message.get_content()
    leftovers = list((spool.root / "outbox-state").iterdir())
    assert (True, 0, []) == (b"\r\n" in sink.received[0].raw, spool.counts()["outbox/new"], leftovers)


@pytest.mark.network  # starts a Sink itself
def test_refused_then_451_then_back_delivers_each_mail_once(spool: Spool) -> None:
    """Relay down, then answering 451, then back: each mail arrives exactly once, across restarts."""
    ids = [queue(spool, f"Mail {i}") for i in range(3)]
    relay = RelayConfig(host="127.0.0.1", port=free_port(), security="none", retry_initial=60, retry_max=600)
    t0 = time.time()
    assert {"sent": 0, "deferred": 3, "failed": 0} == OutboxSender(relay, spool).send_pending(now=t0)
    assert {"sent": 0, "deferred": 0, "failed": 0} == OutboxSender(relay, spool).send_pending(now=t0 + 30)
    sink = Sink(relay.port)
    sink.handler.data_reply = "451 4.3.0 Try again later"
    sink.start()
    try:
        restarted = Spool(spool.root)
        restarted.recover()
        assert {"sent": 0, "deferred": 3, "failed": 0} == OutboxSender(relay, restarted).send_pending(now=t0 + 60)
        assert [(2, "451 4.3.0 Try again later")] * 3 == [(w.attempts, w.last_error) for w in waiting(restarted)]
        sink.handler.data_reply = ""
        assert {"sent": 0, "deferred": 0, "failed": 0} == OutboxSender(relay, restarted).send_pending(now=t0 + 179)
        assert {"sent": 3, "deferred": 0, "failed": 0} == OutboxSender(relay, restarted).send_pending(now=t0 + 180)
        assert {"sent": 0, "deferred": 0, "failed": 0} == OutboxSender(relay, restarted).send_pending(now=t0 + 9999)
    finally:
        sink.stop()
    assert ["Mail 0", "Mail 1", "Mail 2"] == sorted(r.message["Subject"] for r in sink.received)
    assert (3, []) == (len(ids), waiting(spool))


def test_550_for_one_recipient_others_delivered_it_fails(sink: Sink, spool: Spool) -> None:
    """A 550 for one recipient: the others get the mail; the mail goes to outbox-failed naming that one."""
    sink.handler.refuse["bob@example.org"] = "550 5.1.1 No such user"
    spool_id = queue(spool, "Mixed", ("ann@example.org", "bob@example.org", "cid@example.org"))
    counts = OutboxSender(sink.relay(), spool).send_pending()
    assert {"sent": 0, "deferred": 0, "failed": 1} == counts
    assert [["ann@example.org", "cid@example.org"]] == [r.recipients for r in sink.received]
    assert [(spool_id, "not delivered to bob@example.org: 550 5.1.1 No such user")] == spool.outbox.failures()
    reason = (spool.root / "outbox-failed" / f"{spool_id}.reason").read_text()
    assert "delivered to: ann@example.org, cid@example.org" in reason


def test_requeued_failure_goes_only_to_who_lacks_it(sink: Sink, spool: Spool) -> None:
    """After `mailtrack requeue`, a partly refused mail is sent again only to the refused recipient."""
    sink.handler.refuse["bob@example.org"] = "550 5.1.1 No such user"
    spool_id = queue(spool, "Mixed", ("ann@example.org", "bob@example.org"))
    OutboxSender(sink.relay(), spool).send_pending()
    sink.handler.refuse.clear()
    spool.requeue(spool_id)
    counts = OutboxSender(sink.relay(), spool).send_pending()
    assert ({"sent": 1, "deferred": 0, "failed": 0}, [["ann@example.org"], ["bob@example.org"]]) == (
        counts, [r.recipients for r in sink.received])


def test_temporary_refusal_of_one_recipient_retries_only_that_one(sink: Sink, spool: Spool) -> None:
    """A 450 for one recipient: the others get it now; later only that one is tried, even after a restart."""
    sink.handler.refuse["bob@example.org"] = "450 4.2.0 Mailbox busy"
    queue(spool, "Busy", ("ann@example.org", "bob@example.org"))
    t0 = time.time()
    assert {"sent": 0, "deferred": 1, "failed": 0} == OutboxSender(sink.relay(), spool).send_pending(now=t0)
    [w] = waiting(spool)
    assert (["ann@example.org"], 1, "450 4.2.0 Mailbox busy") == (w.delivered, w.attempts, w.last_error)
    sink.handler.refuse.clear()
    restarted = OutboxSender(sink.relay(), Spool(spool.root))
    assert {"sent": 1, "deferred": 0, "failed": 0} == restarted.send_pending(now=t0 + 60)
    assert [["ann@example.org"], ["bob@example.org"]] == [r.recipients for r in sink.received]


def test_backoff_doubles_up_to_retry_max(spool: Spool) -> None:
    """The delay before each retry doubles from retry_initial and stops growing at retry_max."""
    queue(spool)
    relay = RelayConfig(host="127.0.0.1", port=free_port(), security="none", retry_initial=10, retry_max=40)
    now, delays = time.time(), []
    for _ in range(5):
        OutboxSender(relay, spool).send_pending(now=now)
        due = next_due(spool)
        assert due is not None
        delays.append(round(due - now))
        now = due
    assert [10, 20, 40, 40, 40] == delays


def test_gives_up_after_give_up_after(spool: Spool) -> None:
    """A mail still undelivered give_up_after seconds after it was queued goes to outbox-failed."""
    spool_id = queue(spool)
    relay = RelayConfig(host="127.0.0.1", port=free_port(), security="none", retry_initial=60, give_up_after=3600)
    t0 = time.time()
    OutboxSender(relay, spool).send_pending(now=t0)
    counts = OutboxSender(relay, spool).send_pending(now=t0 + 4000)
    [(failed_id, reason)] = spool.outbox.failures()
    assert ({"sent": 0, "deferred": 0, "failed": 1}, spool_id) == (counts, failed_id)
    assert reason.startswith("not delivered to ann@example.org: gave up after 2 attempts in 66m: cannot reach the relay")


@pytest.mark.network  # starts a Sink itself
def test_listing_says_what_waits_and_retry_now_sends_it(spool: Spool) -> None:
    """`mailtrack outbox` shows the next attempt, the last error and the recipients; `retry` sends at once."""
    spool_id = queue(spool, "Waiting", ("ann@example.org", "bob@example.org"))
    relay = RelayConfig(host="127.0.0.1", port=free_port(), security="none", retry_initial=300)
    t0 = time.time()
    OutboxSender(relay, spool).send_pending(now=t0)
    lines = outbox_listing(spool, now=t0)
    assert f"{spool_id}  next attempt " == lines[0][: len(spool_id) + 15] and lines[0].endswith("(in 5m)")
    assert ["    to: ann@example.org, bob@example.org", "    subject: Waiting  <Waiting@localhost>"] == lines[1:3]
    error = f"cannot reach the relay 127.0.0.1:{relay.port}: ConnectionRefusedError"
    assert lines[3].startswith(f"    attempts: 1, last error: {error}")
    sink = Sink(relay.port).start()
    try:
        counts = retry_now(spool, relay)
    finally:
        sink.stop()
    assert ({"released": 1, "sent": 1, "deferred": 0, "failed": 0}, [], 1) == (
        counts, outbox_listing(spool), len(sink.received))


@pytest.mark.network  # starts a Sink itself, with TLS
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_auth_with_password_file(tls_cert: tuple[Path, Path], tmp_path: Path, spool: Spool, security: str) -> None:
    """STARTTLS or implicit TLS, AUTH with a password file; a wrong password is a temporary failure."""
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    sink = Sink()
    # aiosmtpd does not see implicit TLS as TLS: there AUTH must be allowed "without" it, and optional
    tls = ({"tls_context": server_ctx, "auth_required": True} if security == "starttls"
           else {"ssl_context": server_ctx, "auth_require_tls": False})
    sink.start(authenticator=sink.handler.authenticate, **tls)
    (tmp_path / "wrong").write_text("nope\n")
    (tmp_path / "right").write_text("s3cret\n")
    try:
        queue(spool, "Secure")
        wrong = OutboxSender(sink.relay(security=security, username="gateway", password_file=str(tmp_path / "wrong")),
                             spool, ssl_context=client_ctx, helo="localhost").send_pending()
        [w] = waiting(spool)
        right = OutboxSender(sink.relay(security=security, username="gateway", password_file=str(tmp_path / "right")),
                             spool, ssl_context=client_ctx, helo="localhost").send_pending(now=time.time() + 60)
    finally:
        sink.stop()
    assert ({"sent": 0, "deferred": 1, "failed": 0}, {"sent": 1, "deferred": 0, "failed": 0}) == (wrong, right)
    assert w.last_error.startswith("cannot reach the relay") and "535" in w.last_error
    assert ({("gateway", "nope"), ("gateway", "s3cret")}, ["Secure"]) == (
        set(sink.handler.logins), [r.message["Subject"] for r in sink.received])


def test_run_loop_sends_when_woken_and_stops(sink: Sink, spool: Spool) -> None:
    """run() sends mail queued while it waits as soon as it is woken, and returns when told to stop."""
    sender = OutboxSender(sink.relay(), spool)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), kwargs={"interval": 60.0})
    thread.start()
    try:
        queue(spool, "Woken")
        sender.wake()
        wait_for(lambda: sink.received, what="the mail to reach the sink")
    finally:
        stop.set()
        thread.join(10)
    assert (["Woken"], False) == ([r.message["Subject"] for r in sink.received], thread.is_alive())


@pytest.mark.network  # starts a Sink itself
def test_outbox_waits_without_a_relay_and_retry_sends_once_there_is_one(repo: Path, tmp_path: Path) -> None:
    """With no relay, `status` and `outbox` say the reply waits and why; `outbox retry` with a relay
    configured sends it, and the outbox is empty after."""
    assert 0 == deliver(repo, make_mail()).returncode  # an acknowledgement to alice
    status = mailtrack("status", repo=repo, text=True).stdout.splitlines()
    assert ["  outbox/new     1", "  (no relay is configured: the 1 outgoing mail(s) wait in the outbox)"] == [
        ln for ln in status if ln.startswith(("  outbox/new", "  (no relay"))]
    listing = mailtrack("outbox", repo=repo, text=True).stdout.splitlines()
    assert (listing[0].endswith("  due now"), "    to: alice@example.org", listing[-1]) == (
        True, listing[1], "no relay is configured ([relay] host): outgoing mail waits here")
    nothing = mailtrack("outbox", "retry", repo=repo, text=True)
    assert (78, "0 delayed mail(s) made due now; no relay is configured ([relay] host): nothing sent\n") == (
        nothing.returncode, nothing.stdout)  # EX_CONFIG: nothing can go out until [relay] host is set
    sink = Sink().start()
    try:
        config = tmp_path / "relay.toml"
        config.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n')
        sent = mailtrack("outbox", "retry", repo=repo, config=config, text=True)
        assert (0, "0 delayed mail(s) made due now; sent 1, deferred 0, failed 0\n") == (sent.returncode, sent.stdout)
        assert (["alice@example.org"], "the outbox is empty\n") == (
            [r.recipients[0] for r in sink.received], mailtrack("outbox", repo=repo, config=config, text=True).stdout)
    finally:
        sink.stop()
