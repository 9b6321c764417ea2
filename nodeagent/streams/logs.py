"""`moor logs` on the agent: a container's log file (CRI format, partial lines joined) from
its last N lines, followed while the container runs."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from moorage.v1 import agent_pb2, api_pb2
from nodeagent.runtime.logs import FULL, LogLine, follow, parse_line
from nodeagent.streams.common import RUNNING, coalesce, from_thread

_STREAMS = {"stdout": 1, "stderr": 2}


class LineAssembler:
    """Joins the CRI format's partial (P) records with the full (F) record ending them."""

    def __init__(self) -> None:
        self._partial: dict[str, list[str]] = {}

    def feed(self, line: LogLine) -> LogLine | None:
        parts = self._partial.setdefault(line.stream, [])
        if line.tag != FULL:
            if not parts:
                parts.append(line.time)   # a line's time is its first record's
            parts.append(line.text)
            return None
        if not parts:
            return line
        self._partial[line.stream] = []
        return LogLine(parts[0], line.stream, FULL, "".join(parts[1:]) + line.text)


def format_line(line: LogLine, timestamps: bool) -> bytes:
    text = f"{line.time} {line.text}\n" if timestamps else f"{line.text}\n"
    return text.encode(errors="replace")


def log_lines(raw: Iterable[str], timestamps: bool) -> Iterator[tuple[int, bytes]]:
    """(fd, bytes) for each whole line among CRI records."""
    assembler = LineAssembler()
    for record in raw:
        line = assembler.feed(parse_line(record))
        if line is not None:
            yield _STREAMS.get(line.stream, 1), format_line(line, timestamps)


def tail(items: Iterable, n: int) -> list:
    """The last n items; n <= 0 means all."""
    return list(items) if n <= 0 else list(deque(items, maxlen=n))


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def read_logs(path: str, follow_: bool, tail_lines: int, timestamps: bool,
              running: Callable[[], bool], stop: threading.Event) -> Iterator[tuple[int, bytes]]:
    """The log's lines (the last `tail_lines`), then with `follow_` new ones until the container
    stops or `stop` is set. Blocking: run it in a thread."""
    backlog = _count_lines(path)
    done = (lambda: stop.is_set() or not running()) if follow_ else (lambda: True)
    kept: deque = deque(maxlen=tail_lines if tail_lines > 0 else None)
    records = 0

    def counted():
        nonlocal records
        for record in follow(path, done=done):
            if stop.is_set():
                return
            records += 1
            yield record

    for item in log_lines(counted(), timestamps):
        if records <= backlog:
            kept.append(item)
            if records == backlog:
                yield from kept
                kept.clear()
        else:
            if kept:
                yield from kept
                kept.clear()
            yield item
    yield from kept


async def serve_logs(runtime, call, msg: agent_pb2.OpenStream, cid: str) -> None:
    """Writes the container's log to the stream, then its `eof` frame."""
    req = msg.logs
    path = os.path.join(runtime.state_dir, cid, "container.log")

    def running() -> bool:
        return runtime.status(cid).state == RUNNING
    stop = threading.Event()
    follow_ = req.follow and not req.previous

    def produce(stop):
        return read_logs(path, follow_, req.tail_lines, req.timestamps, running, stop)

    async for batch in from_thread(produce, stop):
        for fd, data in coalesce(batch):
            await call.write(api_pb2.StreamFrame(fd=fd, data=data))
    await call.write(api_pb2.StreamFrame(fd=1, eof=True))
