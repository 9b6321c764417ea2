"""Writing files so that readers see the old content or the new, never half of either."""

from __future__ import annotations

import os
import threading


def write_atomic(path: str, data: bytes | str, mode: int = 0o644, sync: bool = True) -> None:
    """Replaces `path` with `data` (str is written as UTF-8), fsynced unless `sync` is False
    (a file that a crash may lose, but never half-write). The temp file is created with the
    final `mode`, so a private key never exists on disk with wider permissions, even briefly."""
    if isinstance(data, str):
        data = data.encode()
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_text_or_empty(path: str) -> str:
    """The file's text, or "" when it cannot be read (absent, a directory, no permission)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
