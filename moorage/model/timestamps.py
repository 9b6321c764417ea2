"""RFC 3339 timestamps as the API writes them (UTC, whole seconds, `Z`), and back."""

from __future__ import annotations

import datetime
import time


def rfc3339(ts: float) -> str:
    """`2026-01-02T03:04:05Z` for a Unix time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def now_rfc3339() -> str:
    """The current wall-clock time, for code that stamps objects as it writes them (the API,
    the dispatcher); controllers take `now` as an argument instead."""
    return rfc3339(time.time())


def parse_rfc3339(text: str) -> float | None:
    """The Unix time of an RFC 3339 timestamp, or None when it is empty or not one."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
