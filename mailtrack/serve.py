"""`mailtrack`: the gateway's front door."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("mailtrack: the gateway is not built yet", file=sys.stderr)
    return 1
