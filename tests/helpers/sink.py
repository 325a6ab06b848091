"""A relay for what the gateway sends: an aiosmtpd server on loopback that records what it accepts.

`Sink().start()` listens on a free port; `relay()` is the [relay] configuration that reaches it;
`received` is what it took; its handler can refuse recipients, answer DATA with an error and
check AUTH. The `sink` fixture (tests/conftest.py) is one that is running.
"""

from __future__ import annotations

import email
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from helpers.ports import free_port
from mailtrack.config import RelayConfig


@dataclass
class Received:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it accepts and refuses what it is told to."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> the reply to RCPT
    data_reply: str = ""  # a reply to DATA instead of accepting it (e.g. "451 ...")
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            self.logins.append((login, password))
            if (login, password) == ("gateway", "s3cret"):
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class Sink:
    """A relay on a loopback port, started and stopped at will (the port stays the same)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = Recorder()
        self.controller: Controller | None = None

    def start(self, **kwargs: Any) -> Sink:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def relay(self, **kwargs: Any) -> RelayConfig:
        return RelayConfig(**{"host": "127.0.0.1", "port": self.port, "security": "none", **kwargs})

    @property
    def received(self) -> list[Received]:
        return self.handler.received
