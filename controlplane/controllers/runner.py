"""The one loop every controller runs on (the scheduler, Deployments, node lifecycle,
namespaces): it follows the controller's watches, waits until all their initial lists are in,
then calls its `step()` whenever something woke it (a watch event, a `wake()`), when the time
`step()` asked for has come, and at least every `period`. A watch that fails ends the run with
its error, as does any error of `step()` (NotLeader above all: the new leader takes over).

`DirtyKeys` is the usual state of a keyed controller: keys to look at now, or after a delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from moorage.model.kinds import Kind


@dataclass(frozen=True, slots=True)
class Watch:
    """Feed `kind`'s changes to a controller's cache: the whole list (first, and after a
    compaction), then each put and delete."""

    kind: Kind
    resync: Callable[[Sequence], None]
    put: Callable[[object], None]
    delete: Callable[[object], None]


class DirtyKeys:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.now: set[str] = set()
        self.later: dict[str, float] = {}

    def mark(self, key: str, delay: float = 0.0) -> None:
        if delay <= 0:
            self.now.add(key)
        else:
            at = self.clock() + delay
            self.later[key] = min(at, self.later.get(key, at))

    def take(self) -> list[str]:
        """The keys due now, sorted; they are no longer dirty."""
        now = self.clock()
        for key, at in list(self.later.items()):
            if at <= now:
                del self.later[key]
                self.now.add(key)
        keys, self.now = sorted(self.now), set()
        return keys

    def next_in(self) -> float | None:
        """Seconds until a key falls due (0 when one is due now), None when none waits."""
        if self.now:
            return 0.0
        if not self.later:
            return None
        return max(0.0, min(self.later.values()) - self.clock())


class Runner:
    def __init__(self, step: Callable[[], Awaitable[float | None]], store=None,
                 watches: Sequence[Watch] = (), *, period: float | None = None):
        self.step = step
        self.store = store
        self.watches = list(watches)
        self.period = period
        self.synced = asyncio.Event()
        self._wake = asyncio.Event()
        self._listed: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    def _feed(self, i: int, watch: Watch):
        def resync(items) -> None:
            watch.resync(items)
            self._listed.add(i)
            if len(self._listed) == len(self.watches):
                self.synced.set()
            self._wake.set()

        def put(obj) -> None:
            watch.put(obj)
            self._wake.set()

        def delete(obj) -> None:
            watch.delete(obj)
            self._wake.set()
        return self.store.follow(watch.kind, resync=resync, put=put, delete=delete)

    async def run(self) -> None:
        """Runs until cancelled (or a watch or a step fails)."""
        tasks = [asyncio.create_task(self._feed(i, w)) for i, w in enumerate(self.watches)]
        try:
            if tasks:
                await self._until(self.synced.wait(), tasks)
            else:
                self.synced.set()
            while True:
                self._wake.clear()
                delay = await self.step()
                _raise_failed(tasks)
                if delay is not None and delay <= 0:
                    await asyncio.sleep(0)   # let watch events in between steps
                    continue
                waits = [d for d in (delay, self.period) if d is not None]
                try:
                    await self._until(asyncio.wait_for(self._wake.wait(),
                                                       min(waits) if waits else None), tasks)
                except TimeoutError:
                    pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _until(awaitable: Awaitable, tasks: list[asyncio.Task]) -> None:
        """Awaits `awaitable`, but ends at once with the error of a watch that failed."""
        waiter = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            _raise_failed(tasks)
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()


def _raise_failed(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()
