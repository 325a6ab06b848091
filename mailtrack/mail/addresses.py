"""Which addresses are ours: the one answer for the listeners, the router, the parser and the notifier.

The gateway's addresses are the main one (`issues@`), its plus forms (`issues+<detail>@`, which name
an issue and maybe commands), the control address, and `gateway.own_addresses` (old or extra
addresses of ours: mail from them is a loop, and nobody there is put on a Cc list or mailed).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailtrack.config import GatewayConfig


def bare(address: str) -> str:
    """An address as we compare it: no angle brackets, no surrounding space, lowercase."""
    return address.strip().strip("<>").strip().lower()


@dataclass(frozen=True)
class Ours:
    main: str = "issues@localhost"
    control: str = "control@localhost"
    extra: tuple[str, ...] = ()

    @classmethod
    def of(cls, gw: GatewayConfig) -> Ours:
        return cls(gw.address, gw.control_address, tuple(gw.own_addresses))

    def detail(self, address: str) -> str | None:
        """The `<detail>` of `issues+<detail>@domain`, or None when the address is not a plus form of ours."""
        local, _, domain = bare(address).rpartition("@")
        main_local, _, main_domain = self.main.lower().rpartition("@")
        if local and domain == main_domain and local.startswith(main_local + "+"):
            return local[len(main_local) + 1 :]
        return None

    def issue_address(self, short: str) -> str:
        """The address that reaches one issue: `issues+<short>@domain` (where replies about it go)."""
        local, _, domain = self.main.rpartition("@")
        return f"{local}+{short}@{domain or 'localhost'}"

    def is_control(self, address: str) -> bool:
        return bare(address) == self.control.lower()

    def delivers_here(self, address: str) -> bool:
        """An address mail is taken for (SMTP RCPT TO): the main one, its plus forms, the control one."""
        a = bare(address)
        local, _, domain = a.rpartition("@")
        if not local or not domain:
            return False
        return a in (self.main.lower(), self.control.lower()) or self.detail(a) is not None

    def is_ours(self, address: str) -> bool:
        """Any address of ours or a plus form of one: the main one, the control one, gateway.own_addresses."""
        local, _, domain = bare(address).rpartition("@")
        for mine in (self.main, self.control, *self.extra):
            m_local, _, m_domain = bare(mine).rpartition("@")
            if domain == m_domain and (local == m_local or local.startswith(m_local + "+")):
                return True
        return False
