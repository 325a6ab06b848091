"""Configuration: one TOML file read with tomllib into frozen dataclasses, passed down explicitly.

Every key has a working default, so `mailtrack serve` with no file runs on loopback. An unknown
key or a value of the wrong type is an error that names it; `config.example.toml` lists every key.
This module imports nothing heavy: `mailtrack deliver` reads it once per mail.
"""

from __future__ import annotations

import ipaddress
import platform
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from mailtrack.fields import COMMAND_FIELDS, canonical


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayConfig:
    """Who the gateway is and where it keeps things."""

    repo: str = ""  # the git repository; default: the one around the current directory
    spool: str = ""  # the spool directory; default: <git dir>/mailtrack/spool
    project: str = ""  # the name in subject tags and List-Id; default: the repository's directory name
    # tracker.localhost: reserved for this machine (RFC 6761), with the dot in the domain that git send-email wants
    address: str = "issues@tracker.localhost"  # the main address; issues+<id>@ reaches one issue
    control_address: str = "control@tracker.localhost"  # batches of commands, one a line
    name: str = ""  # the display name of our From: "<person> via <name>"; default: the project name
    own_addresses: list[str] = field(default_factory=list)  # more addresses of ours (mail from them is a loop)
    carbons_from_cc: bool = True  # people Cc'd on a new issue's mail go on its Cc list
    machine_mail: str = "drop"  # bounces and auto-replies: "drop" (log and forget) or "keep" (in failed)
    max_attachment_size: int = 10 * 1024 * 1024  # bigger parts are skipped and named in the comment
    processed_retention_days: int = 30  # how long processed mail stays in the spool
    templates: str = ""  # a directory whose templates override the built-in ones
    reply_rate_limit: int = 5  # at most this many replies to one address...
    reply_rate_window: int = 3600  # ...within this many seconds
    patch_series_timeout: int = 3600  # seconds a partial patch series waits for its missing parts
    max_patch_series_size: int = 5 * 1024 * 1024  # bytes of one patch series, as mailed
    postmaster_forward: str = ""  # mail to our postmaster@ is kept in <spool>/postmaster/ and also sent here
    reply_wait: int = 900  # seconds a reply whose parent we have not seen waits for it (0: never)
    reply_wait_max: int = 1000  # replies waiting at once; past it, a reply is taken at once, as if none waited
    reply_wait_per_sender: int = 20  # of those, from one sender
    max_pending_series: int = 100  # partial patch series kept at once, waiting for their parts; past it, a new one is refused
    max_pending_series_per_sender: int = 5  # and from one sender

    def __post_init__(self) -> None:
        if self.machine_mail not in ("drop", "keep"):
            raise ConfigError(f"gateway.machine_mail must be drop or keep, not {self.machine_mail!r}")
        if not 0 <= self.reply_wait <= 86400:  # the spool tidies what is beside mail after 36 h
            raise ConfigError(f"gateway.reply_wait must be 0 to 86400 seconds, not {self.reply_wait}")
        if self.reply_wait_max < 0 or self.reply_wait_per_sender < 0:
            raise ConfigError("gateway.reply_wait_max and reply_wait_per_sender cannot be negative")


@dataclass(frozen=True)
class ListenConfig:
    """Where and how the listener takes mail; every default runs on loopback."""

    protocol: str = "smtp"  # or "lmtp"
    host: str = "127.0.0.1"
    port: int = 8025
    socket: str = ""  # a Unix socket path instead of host/port (LMTP from the local MTA)
    socket_mode: str = "0660"  # octal permissions set on the socket after bind (the MTA must write)
    server_name: str = "localhost"  # our name in the greeting and in Received:
    max_message_size: int = 25 * 1024 * 1024
    tls_cert: str = ""  # PEM files; with both set, STARTTLS is offered
    tls_key: str = ""
    require_tls: bool = False  # refuse MAIL until STARTTLS
    auth_users_file: str = ""  # lines `user:password`; with it, AUTH PLAIN/LOGIN is offered
    require_auth: bool = False  # refuse MAIL until AUTH
    max_sessions: int = 50
    max_sessions_per_client: int = 20  # sessions from one IP address at once (0: no limit; a Unix socket's count only in max_sessions)
    max_messages_per_session: int = 100
    max_recipients: int = 100
    timeout: float = 300.0  # seconds of client silence before we hang up
    idle_timeout: float = 60.0  # seconds a session may go without delivering a mail (NOOP, RSET... do not count; 0: no limit)
    max_postmaster_mails: int = 1000  # unread mails kept for postmaster@ (<spool>/postmaster/new); past it, RCPT gets 452
    max_postmaster_bytes: int = 100 * 1024 * 1024  # and their bytes

    def __post_init__(self) -> None:
        if self.protocol not in ("smtp", "lmtp"):
            raise ConfigError(f"protocol must be smtp or lmtp, not {self.protocol!r}")
        mode = self.socket_mode
        if not (mode.isascii() and mode.isdigit() and len(mode) in (3, 4) and set(mode) <= set("01234567") and int(mode, 8) <= 0o777):
            raise ConfigError(f"socket_mode must be octal permissions like \"0660\", not {self.socket_mode!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        if self.require_tls and not self.tls_cert:
            raise ConfigError("require_tls needs tls_cert and tls_key")
        if self.require_auth and not self.auth_users_file:
            raise ConfigError("require_auth needs auth_users_file")
        local = bool(self.socket) or is_loopback(self.host)
        if self.auth_users_file and not self.tls_cert and not local:
            raise ConfigError(f"AUTH on {self.host} needs TLS (tls_cert, tls_key): passwords in clear")


KEPT_KEYWORD = "$MailtrackKept"


@dataclass(frozen=True)
class ImapConfig:
    """One mailbox to poll."""

    host: str = "127.0.0.1"
    username: str = ""
    port: int = 993
    security: str = "tls"  # "tls" (implicit), "starttls", or "plain" (loopback only...)
    allow_plain: bool = False  # ...unless forced with this
    auth: str = "password"  # "password" (LOGIN), or OAuth 2.0: "xoauth2" (Gmail, Microsoft 365) or "oauthbearer"
    password: str = ""
    password_file: str = ""  # read at each login; one line, the password
    password_command: str = ""  # run (sh -c) at each login; its first line of output is the password
    token_command: str = ""  # auth xoauth2/oauthbearer: run at each login; prints a fresh access token
    tls_ca_file: str = ""  # trust this CA (e.g. a self-signed server) instead of the system's
    folder: str = "INBOX"
    processed_folder: str = "Archive"  # action "move": where kept mail goes
    failed_folder: str = "Failed"  # where mail the gateway gave up on goes
    action: str = "move"  # or "flag": leave the mail, flag it
    flag: str = KEPT_KEYWORD  # action "flag": a keyword, or "\\Seen"
    use_move: bool = True  # False: always COPY + \Deleted + EXPUNGE, even when MOVE is offered
    idle: bool = True  # use IDLE when the server offers it
    idle_timeout: float = 5.0  # longest single wait in IDLE (a stop ends IDLE at once)
    poll_interval: float = 60.0  # longest wait between two polls (in IDLE too)
    timeout: float = 60.0  # socket timeout
    backoff_initial: float = 1.0  # reconnect delays: doubled after each failure, up to max
    backoff_max: float = 300.0
    state_dir: str = ""  # default: <spool>/imap-state
    claim_folder: str = ""  # several pollers on one mailbox: this poller's own folder (Claimed/mx1); mail is MOVEd there first
    claim_timeout: float = 600.0  # mail left this long in another poller's folder beside it (Claimed/*) is taken over

    def __post_init__(self) -> None:
        if self.claim_folder and self.claim_folder in (self.folder, self.processed_folder, self.failed_folder):
            raise ConfigError("claim_folder must name a folder of its own (or be empty)")
        if self.security not in ("tls", "starttls", "plain"):
            raise ConfigError(f"security must be tls, starttls or plain, not {self.security!r}")
        if self.action not in ("move", "flag"):
            raise ConfigError(f"action must be move or flag, not {self.action!r}")
        if self.security == "plain" and not self.allow_plain and not is_loopback(self.host):
            raise ConfigError(
                f"security = plain sends the password in clear to {self.host}: use tls or "
                "starttls, or set allow_plain = true"
            )
        if self.auth not in ("password", "xoauth2", "oauthbearer"):
            raise ConfigError(f"auth must be password, xoauth2 or oauthbearer, not {self.auth!r}")
        secrets = [self.password, self.password_file, self.password_command]
        if self.auth != "password":
            if not self.token_command or any(secrets):
                raise ConfigError(f"auth = {self.auth} takes token_command, not a password")
        elif self.token_command:
            raise ConfigError("token_command goes with auth = xoauth2 or oauthbearer")
        elif sum(map(bool, secrets)) != 1:
            raise ConfigError("give exactly one of password, password_file and password_command")
        if self.action == "move" and self.processed_folder in ("", self.folder):
            raise ConfigError("processed_folder must name another folder than folder")
        if self.failed_folder == self.folder:
            raise ConfigError("failed_folder must name another folder than folder")

    @property
    def label(self) -> str:
        """The mailbox and how it is reached, for log lines."""
        return f"{self.username}@{self.host}:{self.port}/{self.folder}"

    @property
    def mailbox(self) -> str:
        """What identifies the mailbox (not the port or the security mode): the key of the
        poller's state and of the source recorded with its mail."""
        return f"{self.username}@{self.host.lower()}/{self.folder}"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RelayConfig:
    """The SMTP relay that carries our mail out. With no host, mail waits in the outbox."""

    host: str = ""
    port: int = 25
    security: str = "starttls"  # "starttls", "tls" (implicit) or "none"
    username: str = ""
    password: str = ""
    password_file: str = ""
    timeout: float = 30.0
    retry_initial: int = 60  # seconds before the first retry of a temporary failure, doubled each time
    retry_max: int = 3600
    give_up_after: int = 5 * 24 * 3600  # a mail still undelivered after this long goes to failed

    def __post_init__(self) -> None:
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigError(f"relay.security must be starttls, tls or none, not {self.security!r}")


@dataclass(frozen=True)
class NotifyConfig:
    """Who hears of changes."""

    enabled: bool = True
    watchers: list[str] = field(default_factory=list)  # addresses that hear of every change
    notify_actor: bool = False  # whether the person who made a change gets a copy
    wrap: int = 72  # wrap notification text at this column (0: never)
    rate_limit: int = 10  # at most this many changes one address makes to one issue are notified (0: no bound)...
    rate_window: int = 3600  # ...within this many seconds; later ones are on the branch, not mailed




@dataclass(frozen=True)
class SyncConfig:
    """Several gateways, one tracker: the issues branch shared through an ordinary git remote."""

    remote: str = ""  # a git URL or a path of a (bare) repository every gateway pushes to; "" = no sync
    interval: float = 30.0  # seconds between fetches in `mailtrack serve`
    gateway_id: str = ""  # names this gateway in its commits (Gateway-Id:); "" = the host name
    notify_unmarked: bool = False  # this gateway also tells of the unmarked commits that came from the remote
    # (a `git issues push` straight to it); set it on exactly one gateway, or nobody hears of those

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ConfigError(f"sync.interval must be more than 0, not {self.interval}")
        if not self.gateway_id:
            object.__setattr__(self, "gateway_id", platform.node() or "gateway")
        if len(self.gateway_id.split()) != 1 or len(self.gateway_id) > 100:
            raise ConfigError(f"sync.gateway_id must be one word of 100 characters at most, not {self.gateway_id!r}")


@dataclass(frozen=True)
class WebConfig:
    """The read-only web view (`mailtrack web`; `serve` too when enabled)."""

    enabled: bool = False  # `mailtrack serve` serves it too
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""  # where people reach it (https://bugs.example.org/): links in notifications and feeds
    page_size: int = 50  # issues per page of the list
    threads: int = 4  # requests served at once

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= 1000:
            raise ConfigError(f"web.page_size must be 1 to 1000, not {self.page_size}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"web.base_url must start with http:// or https://, not {self.base_url!r}")

    def issue_url(self, short: str) -> str:
        """The one answer to "where is this issue on the web": base_url/<short>/, or "" when base_url is unset."""
        return f"{self.base_url.rstrip('/')}/{short}/" if self.base_url else ""


@dataclass(frozen=True)
class AccessConfig:
    """Who may do what by mail. Each list names: anyone, known, reporter, assignee, owner, maintainer,
    or literal addresses and @domains."""

    open: list[str] = field(default_factory=lambda: ["anyone"])  # who may open issues
    comment: list[str] = field(default_factory=lambda: ["anyone"])  # who may comment
    change: list[str] = field(default_factory=lambda: ["reporter", "assignee", "owner", "maintainer"])  # who may change fields
    fields: dict[str, list[str]] = field(default_factory=dict)  # per field, who may change it instead of `change`
    change_project: list[str] = field(default_factory=lambda: ["maintainer"])  # who may change project.xml (patch mails)
    maintainers: list[str] = field(default_factory=list)  # addresses with every right
    unknown_senders: str = "accept"  # accept | hold (in failed, with the reason) | reject (with a reply)
    trusted_authserv_ids: list[str] = field(default_factory=list)  # Authentication-Results we believe (on top of the mail; RFC 8601 s. 5)
    require_auth_for_commands: bool = False  # commands need dkim=pass or dmarc=pass from a trusted authserv-id
    verify_dkim: bool = False  # where no trusted authserv-id stamped the mail, verify its DKIM signature ourselves (dkimpy)
    cc_from: list[str] = field(default_factory=lambda: ["known"])  # whose Cc header goes on a new issue's Cc list (gateway.carbons_from_cc)
    max_cc_per_mail: int = 10  # addresses one mail may put on Cc lists: from its Cc header, and as many by Cc commands

    def __post_init__(self) -> None:
        if self.unknown_senders not in ("accept", "hold", "reject"):
            raise ConfigError(f"access.unknown_senders must be accept, hold or reject, not {self.unknown_senders!r}")
        rules: dict[str, list[str]] = {}
        given: dict[str, str] = {}
        for name, rule in self.fields.items():
            key = canonical(name, COMMAND_FIELDS)
            if key is None:
                raise ConfigError(f"access.fields: unknown field '{name}'; fields are: {', '.join(COMMAND_FIELDS)}")
            if key in rules:
                raise ConfigError(f"access.fields: {key} is given twice, as '{given[key]}' and as '{name}'")
            rules[key], given[key] = rule, name
        object.__setattr__(self, "fields", rules)

    def rules_for(self, fieldname: str) -> tuple[str, list[str]]:
        """Who may change `fieldname` by mail, and where that rule comes from: access.fields.<field> or access.change."""
        if fieldname in self.fields:
            return f"access.fields.{fieldname}", self.fields[fieldname]
        return "access.change", self.change


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    listen: list[ListenConfig] = field(default_factory=lambda: [ListenConfig()])
    imap: list[ImapConfig] = field(default_factory=list)
    relay: RelayConfig = field(default_factory=RelayConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    web: WebConfig = field(default_factory=WebConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)


def _check(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is dict:
        _, inner = typing.get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return {k: _check(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return _build(typ, value, where)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float) and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(f"{where} must be {typ.__name__}, not {type(value).__name__}")
    return value


def _build(cls: Any, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in [{where or 'top level'}]; keys are: {', '.join(sorted(known))}")
    values = {k: _check(v, hints[k], f"{where}.{k}" if where else k) for k, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"[{where}] {e}") from None
    except TypeError as e:
        raise ConfigError(f"[{where}] {e}") from None


def parse(text: str, source: str = "config") -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return _build(Config, table, "")  # type: ignore[no-any-return]
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load(path: str | Path | None) -> Config:
    """The configuration in `path`, or the embedded default when there is none."""
    if not path:
        return Config()
    p = Path(path)
    try:
        return parse(p.read_text(encoding="utf-8"), str(p))
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None


def all_keys(cls: Any = Config, prefix: str = "") -> list[str]:
    """Every key the code reads, dotted (`gateway.address`, `listen.port`): for the docs test."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        typ = hints[f.name]
        inner = typing.get_args(typ)[0] if typing.get_origin(typ) is list else typ
        if is_dataclass(inner):
            out += all_keys(inner, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out

