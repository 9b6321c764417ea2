"""The one error the builder's commands raise: a one-line message saying what and where."""

from __future__ import annotations


class BuildError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
