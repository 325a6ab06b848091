"""Loopback ports, and waiting for a condition with a deadline (no test sleeps to wait)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

# Set for each test by tests/conftest.py: None when the test is marked `network` (it may start
# listeners and servers), else a list that collects what it started all the same (it then fails).
unmarked_listeners: list[str] | None = None


def note_listener(what: str) -> None:
    """Record that the running test starts a listener or a server (see tests/conftest.py)."""
    if unmarked_listeners is not None:
        unmarked_listeners.append(what)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused(port: int) -> bool:
    """Is a connection to 127.0.0.1:`port` refused (nothing listens there)?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for(predicate: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
