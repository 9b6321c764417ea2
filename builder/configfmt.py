"""Docker's value formats in image configs and their history, as Go prints them (pure): port
specs, stop signals, durations, and Go's renderings of string lists."""

from __future__ import annotations

import json
from collections.abc import Sequence

_SIGNALS = {
    "ABRT": 6, "ALRM": 14, "BUS": 7, "CHLD": 17, "CLD": 17, "CONT": 18, "FPE": 8, "HUP": 1,
    "ILL": 4, "INT": 2, "IO": 29, "IOT": 6, "KILL": 9, "PIPE": 13, "POLL": 29, "PROF": 27,
    "PWR": 30, "QUIT": 3, "SEGV": 11, "STKFLT": 16, "STOP": 19, "SYS": 31, "TERM": 15,
    "TRAP": 5, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "USR1": 10, "USR2": 12,
    "VTALRM": 26, "WINCH": 28, "XCPU": 24, "XFSZ": 25,
}


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 0s, 1.5s, 5m0s, 1h0m0s, 300ms."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return sign + _frac(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return sign + _frac(ns, 1_000_000) + "ms"
    h, rem = divmod(ns, 3_600_000_000_000)
    m, rem = divmod(rem, 60_000_000_000)
    s = _frac(rem, 1_000_000_000) + "s"
    if h:
        return f"{sign}{h}h{m}m{s}"
    if m:
        return f"{sign}{m}m{s}"
    return sign + s


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def go_quote_list(items: Sequence[str]) -> str:
    """Go's %q of a []string: ["a" "b"] (JSON-style escapes stand in for Go's, which agree for
    printable text)."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """Go's %v of a []string: [a b]."""
    return "[" + " ".join(items) + "]"


def parse_port(spec: str) -> list[str]:
    """One EXPOSE word as Docker normalises it: 80 -> 80/tcp, 53/UDP -> 53/udp, and a range
    8000-8001 -> one key per port."""
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    if ":" in port:  # ip:hostport:port is accepted by Docker with a warning; the last part counts
        port = port.rsplit(":", 1)[1]
    lo, dash, hi = port.partition("-")
    try:
        start = int(lo)
        end = int(hi) if dash else start
    except ValueError:
        raise ValueError(f"invalid containerPort: {port}") from None
    if not (0 < start <= 65535) or not (0 < end <= 65535):
        raise ValueError(f"invalid containerPort: {port}")
    if end < start:
        raise ValueError(f"invalid range specified for container port: {port}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def check_signal(sig: str) -> str:
    """STOPSIGNAL's value as Docker accepts it: a positive number, or a name with or without
    SIG in any case; stored as written."""
    if sig.isdigit():
        if int(sig) == 0:
            raise ValueError(f"invalid signal: {sig}")
        return sig
    name = sig.upper()
    name = name[3:] if name.startswith("SIG") else name
    if name not in _SIGNALS and not name.startswith("RTMIN") and not name.startswith("RTMAX"):
        raise ValueError(f"invalid signal: {sig}")
    return sig
