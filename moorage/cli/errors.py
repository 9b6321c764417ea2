"""The one error the CLI reports: finished lines for stderr and an exit status."""

from __future__ import annotations


class CliError(Exception):
    """A failure to report: `message` holds finished lines for stderr, `code` the exit status."""

    def __init__(self, message: str, code: int = 1, reason: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        # kubectl's reason ("NotFound", ...) for errors from the server; empty for local ones.
        self.reason = reason
