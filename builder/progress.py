"""`moor build`'s output, shaped like `docker build --progress=plain`: one header per
filesystem step (`[2/6] RUN ...`, `[build 1/3] FROM ...` in a multi-stage build), the step's
output lines, then `CACHED` or `DONE 0.4s`; the summary at the end. Quiet mode keeps the
output of the running step only to show it if the step fails."""

from __future__ import annotations

import time
from typing import TextIO

HEADER_MAX = 200  # a long RUN is cut in its header, as BuildKit's plain output does


class Progress:
    def __init__(self, out: TextIO, quiet: bool = False, clock=time.monotonic):
        self.out, self.quiet, self.clock = out, quiet, clock
        self.started = clock()
        self._step_start = self.started
        self._held: list[str] = []

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.out.write(text + "\n")
            self.out.flush()

    def step(self, label: str, n: int, total: int, text: str) -> None:
        head = " ".join(text.split("\n"))
        if len(head) > HEADER_MAX:
            head = head[:HEADER_MAX - 3] + "..."
        self._held = []
        self._step_start = self.clock()
        self._write(f"[{label + ' ' if label else ''}{n}/{total}] {head}")

    def output(self, line: str) -> None:
        if self.quiet:
            self._held.append(line)
        else:
            self._write(line)

    def cached(self) -> None:
        self._write("CACHED")

    def done(self) -> None:
        self._write(f"DONE {self.clock() - self._step_start:.1f}s")

    def held_output(self) -> list[str]:
        """The failed step's output in quiet mode (shown with its error)."""
        return list(self._held)

    def note(self, text: str) -> None:
        self._write(text)

    def finished(self, image_id: str, tags: list[str]) -> None:
        if self.quiet:
            self.out.write(image_id + "\n")
            self.out.flush()
            return
        self._write(f"Successfully built {image_id.split(':', 1)[-1][:12]}")
        for tag in tags:
            self._write(f"Successfully tagged {tag}")
        self._write(f"Built in {self.clock() - self.started:.1f}s")
