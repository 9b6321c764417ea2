"""Container logs in the CRI format (`<RFC3339Nano> <stream> <P|F> <text>`), size-rotated, plus a
follower that keeps reading across rotations. Invariant: every byte handed to write() is on disk
once close() returns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nodeagent.runtime.spec import DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES

FULL, PARTIAL = "F", "P"
MAX_LINE = 16 * 1024  # longer lines are cut into P records, as the CRI log format allows


def rfc3339nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass(frozen=True, slots=True)
class LogLine:
    time: str
    stream: str
    tag: str
    text: str


def parse_line(line: str) -> LogLine:
    ts, stream, tag, text = line.rstrip("\n").split(" ", 3) if line.count(" ") >= 3 else (
        *line.rstrip("\n").split(" ", 2), "")
    return LogLine(ts, stream, tag, text)


def rotated_name(path: str, n: int) -> str:
    return path if n == 0 else f"{path}.{n}"


class LogWriter:
    """Turns stream chunks into CRI lines; rotates at max_bytes keeping max_files files in all."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_LOG_MAX_BYTES,
                 max_files: int = DEFAULT_LOG_MAX_FILES,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.path, self.max_bytes, self.max_files = path, max_bytes, max(1, max_files)
        self._clock = clock
        self._pending: dict[str, bytes] = {}
        self._f = open(path, "ab")  # noqa: SIM115 - held for the writer's life
        self._size = self._f.tell()

    def write(self, stream: str, data: bytes) -> None:
        buf = self._pending.get(stream, b"") + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            while len(line) > MAX_LINE:
                self._emit(stream, PARTIAL, line[:MAX_LINE])
                line = line[MAX_LINE:]
            self._emit(stream, FULL, line)
        while len(buf) >= MAX_LINE:
            self._emit(stream, PARTIAL, buf[:MAX_LINE])
            buf = buf[MAX_LINE:]
        self._pending[stream] = buf
        self._f.flush()

    def _emit(self, stream: str, tag: str, text: bytes) -> None:
        record = b"%s %s %s %s\n" % (rfc3339nano(self._clock()).encode(), stream.encode(),
                                     tag.encode(), text)
        if self._size and self._size + len(record) > self.max_bytes:
            self._rotate()
        self._f.write(record)
        self._size += len(record)

    def _rotate(self) -> None:
        self._f.flush()
        self._f.close()
        if self.max_files == 1:
            os.truncate(self.path, 0)
        else:
            for n in range(self.max_files - 1, 0, -1):
                src = rotated_name(self.path, n - 1)
                if os.path.exists(src):
                    os.replace(src, rotated_name(self.path, n))
        self._f = open(self.path, "ab")  # noqa: SIM115 - held until the next rotation
        self._size = 0

    def close(self) -> None:
        """A last line without a newline still counts: emit it as a full record, then sync."""
        for stream, buf in list(self._pending.items()):
            if buf:
                self._emit(stream, FULL, buf)
        self._pending.clear()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _next_after_rotation(path: str, ino: int, max_files: int = 100) -> str | None:
    """The file written after ours, or None if ours is still the live one.

    Ours has moved to path.k, so path.(k-1) follows it; this keeps lines even when several
    rotations happened while we read. If ours is gone altogether, resume at the live file.
    """
    if _ino(path) in (ino, None):
        return None
    for k in range(1, max_files):
        found = _ino(rotated_name(path, k))
        if found is None:
            break
        if found == ino:
            return rotated_name(path, k - 1)
    return path


def follow(path: str, done: Callable[[], bool] = lambda: False,
           poll: float = 0.05, from_start: bool = True) -> Iterator[str]:
    """Yield lines as they are written, across rotations; stops at EOF once done() is true.

    Rotation renames the file, so an open handle keeps reading the old one to its end; only then
    do we switch to whatever now sits at `path`, and no line is skipped or repeated.
    """
    while not os.path.exists(path):
        if done():
            return
        time.sleep(poll)
    f = open(path, "rb")  # noqa: SIM115 - swapped on rotation, closed in finally
    if not from_start:
        f.seek(0, os.SEEK_END)
    partial = b""
    try:
        while True:
            chunk = f.readline()
            if chunk:
                partial += chunk
                if partial.endswith(b"\n"):
                    yield partial.decode(errors="replace")
                    partial = b""
                continue
            nxt = _next_after_rotation(path, os.fstat(f.fileno()).st_ino)
            if nxt is not None:
                f.close()
                f = open(nxt, "rb")  # noqa: SIM115
                continue
            if done():
                return
            time.sleep(poll)
    finally:
        f.close()
