"""placeholder until written"""

from __future__ import annotations

from builder.errors import BuildError


def push(args) -> int:
    raise BuildError("moor push: not built yet")


def pull(args) -> int:
    raise BuildError("moor pull: not built yet")


def login(args) -> int:
    raise BuildError("moor login: not built yet")
