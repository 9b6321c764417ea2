"""Leader election on an etcd lease: one replica holds `<prefix>/leader` and runs controllers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

from controlplane.metrics import LEADER
from controlplane.store import ABSENT, NotLeader, Op, Store, StoreError

log = logging.getLogger(__name__)

DEFAULT_TTL = 5
# etcd raises shorter TTLs to its own floor (about 2 s with default election timeouts).
MIN_TTL = 2


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def keepalive_period(ttl: float) -> float:
    """Three refreshes per TTL, so one lost or slow refresh does not cost the lease."""
    return max(ttl / 3, 0.1)


def leadership_expired(last_renewed: float, now: float, ttl: float) -> bool:
    """True once etcd may have dropped the lease. Measured from when the last successful
    refresh was *sent*, which is no later than when etcd restarted the TTL, so we step down
    no later than the lease can expire."""
    return now - last_renewed >= ttl


class Election:
    """Campaigns for `<store.prefix>/leader` with a lease of `ttl` seconds.

    `elected` is set while leading; `lost` is set (and `on_lost` callbacks run) when the lease
    could not be kept, expired, or the key no longer carries our revision.
    """

    def __init__(self, store: Store, name: str | None = None, ttl: int = DEFAULT_TTL,
                 clock=time.monotonic):
        self.store = store
        self.name = name or default_name()
        self.ttl = max(int(ttl), MIN_TTL)
        self.key = f"{store.prefix}/leader".encode()
        self.clock = clock
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self.on_lost: list[Callable[[str], None]] = []
        self.lease_id = 0
        self.revision = 0
        self.last_renewed = 0.0
        self._keepalive: asyncio.Task | None = None
        # Leases of lost terms not yet revoked (etcd was unreachable): revoked before the next
        # attempt, so a replica cut off from etcd does not then wait out its own old key.
        self._orphans: set[int] = set()
        LEADER.labels(self.name).set(0)

    @property
    def is_leader(self) -> bool:
        return self.elected.is_set()

    def leader_guard(self) -> tuple[bytes, int]:
        """The (key, mod_revision) a leader's writes must compare, so a deposed leader's
        late write fails instead of racing the new leader."""
        if not self.is_leader:
            raise NotLeader(f"{self.name} is not the leader")
        return self.key, self.revision

    async def leader(self) -> str | None:
        """The current leader's name, as stored in etcd (None when nobody leads)."""
        held = await self.store.raw.get(self.key)
        return held.value.decode() if held is not None else None

    # ---- campaigning ----

    async def campaign(self) -> None:
        """Returns once this replica leads; waits for the key to go away in between."""
        while not self.is_leader:
            try:
                held = await self._try_acquire()
            except StoreError as err:
                # etcd is unreachable: keep campaigning, there is nothing else to do.
                log.log(self.store.health.retry_level(),
                        "campaigning for leadership failed: %s", err)
                await asyncio.sleep(keepalive_period(self.ttl))
                continue
            if held is None:
                return
            await self._wait_deleted(held)

    async def _try_acquire(self) -> int | None:
        """Creates the key if absent. Returns None on success, else the holder's revision."""
        await self._revoke_orphans()
        # Before the grant: etcd starts the TTL no earlier than this.
        sent = self.clock()
        lease = await self.store.leases.grant(self.ttl)
        try:
            ok, revision, current = await self.store.commit(
                [Op(self.key, self.name.encode(), ABSENT, lease=lease)])
        except BaseException:
            await _quietly(self.store.leases.revoke(lease))
            raise
        if not ok:
            # An unused lease would only linger until its TTL; drop it now.
            await _quietly(self.store.leases.revoke(lease))
            held = current.get(self.key)
            return held.mod_revision if held is not None else 0
        self.lease_id, self.revision, self.last_renewed = lease, revision, sent
        self.lost.clear()
        self.elected.set()
        LEADER.labels(self.name).set(1)
        log.info("%s became the leader (revision %d)", self.name, self.revision)
        self._keepalive = asyncio.create_task(self._keep_alive())
        return None

    async def _revoke_orphans(self) -> None:
        for lease in list(self._orphans):
            await self.store.leases.revoke(lease)   # one already expired is fine
            self._orphans.discard(lease)

    async def _wait_deleted(self, held: int) -> None:
        """Waits until the key held at revision `held` is deleted (resigned or expired), or at
        most one TTL, after which the caller simply tries again; the watch only makes the
        hand-over quick, correctness never depends on it."""
        if held == 0:
            return
        try:
            async with asyncio.timeout(self.ttl):
                await self.store.raw.watch_deleted(self.key, held)
        except TimeoutError:
            pass
        except StoreError as err:   # the caller re-checks the key anyway
            log.debug("watching the leader key: %r", err)
            await asyncio.sleep(min(1.0, self.ttl / 3))

    # ---- while leading ----

    async def _keep_alive(self) -> None:
        period = keepalive_period(self.ttl)
        while self.is_leader:
            await asyncio.sleep(period)
            if not self.is_leader:
                return
            if leadership_expired(self.last_renewed, self.clock(), self.ttl):
                self._lose("the lease could not be refreshed within its TTL")
                return
            sent = self.clock()
            try:
                async with asyncio.timeout(period):
                    remaining = await self.store.leases.refresh(self.lease_id)
                    current = await self.store.raw.get(self.key)
            except (StoreError, TimeoutError) as err:   # the TTL check decides
                log.log(self.store.health.retry_level(),
                        "refreshing the leader lease failed: %r", err)
                continue
            if remaining <= 0:
                self._lose("the lease expired")
                return
            if current is None or current.mod_revision != self.revision:
                self._lose("the leader key was deleted or replaced")
                return
            self.last_renewed = sent

    def _lose(self, reason: str) -> None:
        if not self.is_leader:
            return
        log.warning("%s is no longer the leader: %s", self.name, reason)
        self.elected.clear()
        self.revision = 0
        LEADER.labels(self.name).set(0)
        lease, self.lease_id = self.lease_id, 0
        if lease:
            # Any key still on the lease must go with us; nothing else holds it.
            self._orphans.add(lease)
            asyncio.get_running_loop().create_task(self._revoke_orphans_quietly())
        task, self._keepalive = self._keepalive, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.lost.set()
        for callback in list(self.on_lost):
            callback(reason)

    async def _revoke_orphans_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._revoke_orphans()

    def step_down(self, reason: str = "a guarded write was rejected") -> None:
        """Forgets leadership locally, e.g. after a write raised NotLeader."""
        self._lose(reason)

    async def resign(self) -> None:
        """Deletes the key (if still ours) and revokes the lease, so another replica takes
        over at once instead of after the TTL."""
        if not self.is_leader:
            return
        revision, lease = self.revision, self.lease_id
        self.lease_id = 0  # _lose must not revoke it in the background; we do it here
        self._lose("resigned")
        await _quietly(self.store.commit([Op(self.key, None, revision)]))
        await _quietly(self.store.leases.revoke(lease))

    async def close(self) -> None:
        await self.resign()
        if self._keepalive is not None:
            self._keepalive.cancel()


async def _quietly(aw: Awaitable, timeout: float = 2.0) -> None:
    """Best-effort cleanup: a failure here only delays a hand-over until the TTL."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await aw


async def run_while_leader(election: Election,
                           factory: Callable[[Store], Iterable[Awaitable]]) -> None:
    """Campaigns; while leading, runs the awaitables `factory(guarded_store)` makes, where
    `guarded_store` fails every write with NotLeader once leadership moved. Losing leadership
    (or a task raising NotLeader) cancels them and campaigns again. Any other failure of a
    task resigns and is raised, so the process does not look healthy without its controllers.
    Runs until cancelled, and resigns then."""
    try:
        while True:
            await election.campaign()
            guarded = election.store.with_guard(*election.leader_guard())
            tasks = {asyncio.ensure_future(aw) for aw in factory(guarded)}
            lost = asyncio.create_task(election.lost.wait())
            try:
                pending = set(tasks)
                while pending and not lost.done():
                    done, _ = await asyncio.wait(pending | {lost},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done - {lost}:
                        pending.discard(task)
                        err = task.exception()
                        if isinstance(err, NotLeader):
                            election.step_down(str(err))
                        elif err is not None:
                            raise err
                    # Every task returned on its own: keep leading, but idle, until deposed.
                    if not pending:
                        await lost
            finally:
                lost.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, lost, return_exceptions=True)
    finally:
        await asyncio.shield(election.resign())
