"""Human-readable quantities for scheduler messages: cpu as `500m` or `2`, memory as `512Mi`."""

from __future__ import annotations

_BINARY_UNITS = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def format_cpu(millicores: int) -> str:
    """Whole cores print bare (`2`), anything else in millicores (`500m`)."""
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"


def format_memory(size: int) -> str:
    """The largest binary unit that divides exactly; otherwise one decimal (`1.3Gi`)."""
    magnitude = abs(size)
    for unit, factor in _BINARY_UNITS:
        if magnitude >= factor and magnitude % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in _BINARY_UNITS:
        if magnitude >= factor:
            return f"{size / factor:.1f}{unit}"
    return str(size)
