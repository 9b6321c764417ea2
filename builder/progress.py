"""`moor build`'s output, shaped like `docker build --progress=plain`: each filesystem step
gets a number and a header (`#3 [2/6] RUN ...`, `#5 [build 1/3] FROM ...` in a multi-stage
build), its output lines and its end (`#3 CACHED`, `#3 DONE 0.4s`) carry the number, so the
steps of stages built side by side stay apart; then the summary. Quiet mode keeps a step's
output only to show it if the step fails.

Thread-safe: each thread reports on the step it started last.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TextIO

HEADER_MAX = 200  # a long RUN is cut in its header, as BuildKit's plain output does


class _Step:
    __slots__ = ("number", "started", "held")

    def __init__(self, number: int, started: float):
        self.number, self.started = number, started
        self.held: list[str] = []


class Progress:
    def __init__(self, out: TextIO, quiet: bool = False, clock=time.monotonic):
        self.out, self.quiet, self.clock = out, quiet, clock
        self.started = clock()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.local()

    def _write(self, text: str) -> None:
        if not self.quiet:
            with self._lock:
                self.out.write(text + "\n")
                self.out.flush()

    @property
    def _step(self) -> _Step | None:
        return getattr(self._local, "step", None)

    def step(self, label: str, n: int, total: int, text: str) -> None:
        head = " ".join(text.split("\n"))
        if len(head) > HEADER_MAX:
            head = head[:HEADER_MAX - 3] + "..."
        step = self._local.step = _Step(next(self._numbers), self.clock())
        # BuildKit pads the index to the total's width: `[ 2/11]`, `[base 10/11]`.
        index = f"{n:>{len(str(total))}}/{total}"
        self._write(f"#{step.number} [{label + ' ' if label else ''}{index}] {head}")

    def _tagged(self, text: str) -> str:
        step = self._step
        return f"#{step.number} {text}" if step else text

    def output(self, line: str) -> None:
        step = self._step
        if self.quiet:
            if step is not None:
                step.held.append(line)
        else:
            self._write(self._tagged(line))

    def cached(self) -> None:
        self._write(self._tagged("CACHED"))

    def done(self) -> None:
        step = self._step
        took = self.clock() - step.started if step else 0.0
        self._write(self._tagged(f"DONE {took:.1f}s"))

    def held_output(self) -> list[str]:
        """The failed step's output in quiet mode (shown with its error)."""
        step = self._step
        return list(step.held) if step else []

    def note(self, text: str) -> None:
        self._write(self._tagged(text))

    def finished(self, image_id: str, tags: list[str]) -> None:
        if self.quiet:
            with self._lock:
                self.out.write(image_id + "\n")
                self.out.flush()
            return
        self._write(f"Successfully built {image_id.split(':', 1)[-1][:12]}")
        for tag in tags:
            self._write(f"Successfully tagged {tag}")
        self._write(f"Built in {self.clock() - self.started:.1f}s")
