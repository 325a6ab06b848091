"""`mailtrack outbox`, `outbox retry` and `status` from the command line, with a sink for a relay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sink import Sink
from test_gateway import deliver, make_mail


def mailtrack(repo: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "mailtrack.app.mailtrack", "--repo", str(repo), *extra, *args],
                          capture_output=True, text=True, check=False)


def test_outbox_waits_without_a_relay_and_retry_sends_once_there_is_one(repo: Path, tmp_path: Path) -> None:
    """With no relay, `status` and `outbox` say the reply waits and why; `outbox retry` with a relay
    configured sends it, and the outbox is empty after."""
    assert 0 == deliver(repo, make_mail()).returncode  # an acknowledgement to alice
    status = mailtrack(repo, "status").stdout.splitlines()
    assert ["  outbox/new     1", "  (no relay is configured: the 1 outgoing mail(s) wait in the outbox)"] == [
        ln for ln in status if ln.startswith(("  outbox/new", "  (no relay"))]
    listing = mailtrack(repo, "outbox").stdout.splitlines()
    assert (listing[0].endswith("  due now"), "    to: alice@example.org", listing[-1]) == (
        True, listing[1], "no relay is configured ([relay] host): outgoing mail waits here")
    nothing = mailtrack(repo, "outbox", "retry")
    assert (0, "0 delayed mail(s) made due now; no relay is configured ([relay] host): nothing sent\n") == (
        nothing.returncode, nothing.stdout)
    sink = Sink().start()
    try:
        config = tmp_path / "relay.toml"
        config.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n')
        sent = mailtrack(repo, "outbox", "retry", config=config)
        assert (0, "0 delayed mail(s) made due now; sent 1, deferred 0, failed 0\n") == (sent.returncode, sent.stdout)
        assert (["alice@example.org"], "the outbox is empty\n") == (
            [r.recipients[0] for r in sink.received], mailtrack(repo, "outbox", config=config).stdout)
    finally:
        sink.stop()
