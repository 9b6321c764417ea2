"""placeholder until written"""

from __future__ import annotations

from builder.errors import BuildError


def tag(args) -> int:
    raise BuildError("moor tag: not built yet")


def images(args) -> int:
    raise BuildError("moor images: not built yet")


def rmi(args) -> int:
    raise BuildError("moor rmi: not built yet")
