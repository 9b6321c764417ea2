"""placeholder until written"""

from __future__ import annotations

from builder.errors import BuildError


def run(args) -> int:
    raise BuildError("moor run: not built yet")
