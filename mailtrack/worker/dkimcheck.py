"""Our own DKIM check (`access.verify_dkim`, dkimpy), where no trusted server stamped the mail.

Its own module so that only a gateway that verifies DKIM loads dkimpy and dnspython (a tenth of a
second of `deliver`'s start): app/ imports it when the config asks for it and hands `signed_by` to
the Gateway, which gives it to `admission.verified_by`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import dkim
import dkim.dnsplug
import dkim.util

from mailtrack.mail.parse import ParsedMail

MAX_DKIM_SIGNATURES = 3  # DKIM signatures of the From domain we try on one mail (each may cost a DNS lookup)
DKIM_TIMEOUT = 5  # seconds for one DNS lookup of a DKIM key

# dkimpy's DNS lookup: (name, timeout=...) -> the TXT record as bytes, or None. The default is
# dkim.dnsplug.get_txt, looked up when a mail is checked (a test process replaces it with its own keys).
DnsFunc = Callable[..., bytes | None]


def signed_by(mail: ParsedMail, domain: str, dnsfunc: DnsFunc | None = None) -> str:
    """`mailtrack dkim=pass` when a DKIM signature of the From domain (d= that domain, From among the
    signed fields, no l= body length: what follows it would be unsigned) verifies, else ""."""
    lookup = dnsfunc or dkim.dnsplug.get_txt
    try:
        checker = dkim.DKIM(mail.raw, minkey=1024, timeout=DKIM_TIMEOUT)
        signatures = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    except Exception:  # dkimpy raises on a message it cannot split into fields: no signature
        return ""
    tried = 0
    for index, value in enumerate(signatures):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:  # dkim.util.InvalidTagValueList and others on hostile tags: not this one
            continue
        signed = [h.strip().lower() for h in re.split(rb"\s*:\s*", tags.get(b"h", b"").strip())]
        if tags.get(b"d", b"").strip().lower() != domain.encode("utf-8", "replace") or b"l" in tags or b"from" not in signed:
            continue
        tried += 1
        if tried > MAX_DKIM_SIGNATURES:
            break
        try:
            if checker.verify(idx=index, dnsfunc=lookup):
                return "mailtrack dkim=pass"
        except Exception:  # dkim.DKIMException for a bad signature or key, others on hostile input or DNS
            continue
    return ""
