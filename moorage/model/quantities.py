"""Resource quantities as Kubernetes writes them (`500m`, `1.5`, `512Mi`, `2e3`): parsing into
millicores, bytes and counts, and formatting back."""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from moorage.model.show import show as _show


class QuantityError(ValueError):
    """A resource quantity is malformed or out of range."""


_QUANTITY_RE = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(.*)", re.DOTALL)
_EXPONENT_RE = re.compile(r"[eE]([+-]?[0-9]+)")
_BINARY_UNITS = [("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20),
                 ("Ki", 2**10)]
_SUFFIXES = {suffix: Fraction(size) for suffix, size in _BINARY_UNITS} | {
    suffix: Fraction(10) ** power
    for suffix, power in zip(["n", "u", "m", "", "k", "M", "G", "T", "P", "E"], range(-9, 19, 3))
}
# Both limits keep a hostile manifest from making us build enormous integers.
_MAX_QUANTITY_CHARS = 64
_MAX_EXPONENT = 30
_MAX_CPUS = 1_000_000
_MAX_PODS = 1_000_000
_MAX_BYTES = 2**63 - 1  # what a signed 64-bit field on the node agent can hold


def parse_quantity(value: object) -> Fraction:
    """Parse a Kubernetes quantity ("500m", "1.5Gi", "1e3", 2, 0.5) into an exact Fraction."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(
            f'{_show(value)} is not a quantity (expected a string like "500m" or "128Mi")')
    if isinstance(value, int):
        return Fraction(value)
    # repr() is the shortest string that round-trips, so YAML's 0.1 becomes exactly 1/10
    # instead of the binary float's 0.1000000000000000055...
    text = repr(value) if isinstance(value, float) else value
    bad = f"{_show(value)} is not a quantity"
    if len(text) > _MAX_QUANTITY_CHARS:
        raise QuantityError(f"{bad} (longer than {_MAX_QUANTITY_CHARS} characters)")
    m = _QUANTITY_RE.fullmatch(text)
    e = m and _EXPONENT_RE.fullmatch(m.group(3))
    if m is None or (m.group(3) not in _SUFFIXES and e is None):
        raise QuantityError(bad + (" (surrounding whitespace)" if text != text.strip() else ""))
    sign, number, suffix = m.groups()
    if e:
        if abs(int(e.group(1))) > _MAX_EXPONENT:
            raise QuantityError(f"{bad} (exponent out of range)")
        scale = Fraction(10) ** int(e.group(1))
    else:
        scale = _SUFFIXES[suffix]
    result = Fraction(number) * scale
    return -result if sign == "-" else result


def _whole(value: object, unit: int, limit: int, too_big: str, too_fine: str) -> int:
    """value counted in 1/unit steps, checked to be a whole count in 0..limit."""
    count = parse_quantity(value) * unit
    if count < 0:
        raise QuantityError(f"{_show(value)} must not be negative")
    if count > limit:
        raise QuantityError(f"{_show(value)} {too_big}")
    if count.denominator != 1:
        raise QuantityError(f"{_show(value)} {too_fine}")
    return int(count)


def cpu_millicores(value: object) -> int:
    """CPU quantity as whole millicores: "500m" and 0.5 are both 500."""
    return _whole(value, 1000, _MAX_CPUS * 1000, f"is more than {_MAX_CPUS} cpus",
                  "is finer than 1m (one millicore)")


def memory_bytes(value: object) -> int:
    """Memory or storage quantity as whole bytes: "128Mi" is 134217728."""
    return _whole(value, 1, _MAX_BYTES, "is larger than 8Ei minus one byte (the 64-bit limit)",
                  "is not a whole number of bytes")


def _pod_count(value: object) -> int:
    return _whole(value, 1, _MAX_PODS, f"is more than {_MAX_PODS} pods",
                  "is not a whole number of pods")


_RESOURCES = {"cpu": cpu_millicores, "memory": memory_bytes,
              "ephemeral-storage": memory_bytes, "pods": _pod_count}


def parse_resource(name: str, value: object) -> int:
    """Parse a resources.requests/limits entry into its integer unit (millicores, bytes, pods)."""
    if type(name) is str and type(value) is str:
        return _parse_resource_cached(name, value)
    return _parse_resource(name, value)


# Manifests repeat the same few quantities ("100m", "64Mi") endlessly; exact Fraction parsing is
# the costliest part of validating them, and the answer never changes.
@functools.lru_cache(maxsize=4096)
def _parse_resource_cached(name: str, value: str) -> int:
    return _parse_resource(name, value)


def _parse_resource(name: str, value: object) -> int:
    parser = _RESOURCES.get(name) if isinstance(name, str) else None
    if parser is None:
        raise QuantityError(f"unsupported resource {_show(name)} "
                            f"(supported: {', '.join(_RESOURCES)})")
    return parser(value)


def format_cpu(millis: int) -> str:
    """Shortest canonical CPU quantity: 2000 -> "2", 1500 -> "1500m"."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    """Byte count with the largest binary suffix that divides it exactly, else plain digits."""
    for suffix, size in _BINARY_UNITS:
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)
