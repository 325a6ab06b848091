"""Which addresses are ours: the one answer for the listeners, the router, the parser and the notifier.

The gateway's addresses are the main one (`issues@`), its plus forms (`issues+<detail>@`, which name
an issue and maybe commands), the control address, and `gateway.own_addresses` (old or extra
addresses of ours: mail from them is a loop, and nobody there is put on a Cc list or mailed).
`postmaster@` each of our domains, and a bare `postmaster` (RFC 5321 4.5.1 requires both), is ours
too: the listener takes mail for it and keeps it for the admin, never for the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailtrack.config import GatewayConfig


def bare(address: str) -> str:
    """An address as we compare it: no angle brackets, no surrounding space, lowercase."""
    return address.strip().strip("<>").strip().lower()


@dataclass(frozen=True)
class Ours:
    main: str = GatewayConfig.address  # the configuration's defaults, written once there
    control: str = GatewayConfig.control_address
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

    def is_postmaster(self, address: str) -> bool:
        """`postmaster@` one of our domains (any case), or `postmaster` with no domain (RFC 5321 4.5.1)."""
        local, at, domain = bare(address).rpartition("@")
        if not at:
            return domain == "postmaster"
        return local == "postmaster" and domain in {bare(mine).rpartition("@")[2] for mine in (self.main, self.control, *self.extra)}

    def is_ours(self, address: str) -> bool:
        """Any address of ours or a plus form of one: the main one, the control one, gateway.own_addresses,
        and our postmaster."""
        if self.is_postmaster(address):
            return True
        local, _, domain = bare(address).rpartition("@")
        for mine in (self.main, self.control, *self.extra):
            m_local, _, m_domain = bare(mine).rpartition("@")
            if domain == m_domain and (local == m_local or local.startswith(m_local + "+")):
                return True
        return False
