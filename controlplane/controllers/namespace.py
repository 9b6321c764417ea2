"""The namespace controller: finishes deleting Terminating namespaces.

Deleting a namespace removes everything in it but its pods at once and marks it Terminating
(controlplane/api/cluster.py). This controller then deletes its pods as any deletion does
(gracefully: running ones become Terminating and go when their agents confirm), deletes its
claims (marked while a finalizer holds them) and removes the namespace in a Txn that requires
it to hold no pod and no claim, so nothing in it outlives it. It runs on
the shared runner, woken by namespace changes and every half second while one terminates.
"""

from __future__ import annotations

import logging
import time

from controlplane.controllers.runner import Runner, Watch
from controlplane.store import NotLeader, Op, Store, StoreError
from moorage.model import kinds
from moorage.model.pods import graceful_delete, is_terminating
from moorage.model.timestamps import rfc3339

log = logging.getLogger(__name__)

NAMESPACE = kinds.BY_NAME["Namespace"]
POD = kinds.BY_NAME["Pod"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
PERIOD_SECONDS = 0.5
# Pods marked or deleted per Txn (etcd's default --max-txn-ops is 128).
BATCH = 100


class NamespaceController:
    def __init__(self, store: Store, *, clock=time.time, period: float = PERIOD_SECONDS):
        self.store = store
        self.clock = clock
        self.period = period
        self.terminating: dict[str, object] = {}
        self.runner = Runner(self.step, store, [Watch(
            NAMESPACE, self._resync, self._put, lambda ns: self.terminating.pop(
                ns.metadata.name, None))])

    def _resync(self, namespaces) -> None:
        self.terminating = {}
        for ns in namespaces:
            self._put(ns)

    def _put(self, ns) -> None:
        if is_terminating(ns):
            self.terminating[ns.metadata.name] = ns
        else:
            self.terminating.pop(ns.metadata.name, None)

    async def sync(self) -> int:
        """One pass over every Terminating namespace; returns how many are left."""
        left = 0
        for ns in list(self.terminating.values()):
            if not await self._finish(ns):
                left += 1
        return left

    async def _finish(self, ns) -> bool:
        """Deletes the namespace's pods; True once the namespace itself is gone."""
        name = ns.metadata.name
        pods, _ = await self.store.list(POD, name)
        now = self.clock()
        ops = []
        for pod in pods:
            if is_terminating(pod):
                continue   # its agent removes it once its containers stopped
            mark = graceful_delete(pod, None, now)
            ops.append(Op(self.store.key_of(pod), mark, int(pod.metadata.resource_version)))
        # Claims are deleted as any deletion does: those with finalizers (pvc-protection) are
        # marked and go once the volume controller lets them (no pod uses them any more).
        claims, _ = await self.store.list(CLAIM, name)
        for claim in claims:
            if claim.metadata.deletion_timestamp:
                continue
            mark = None
            if claim.metadata.finalizers:
                mark = type(claim)()
                mark.CopyFrom(claim)
                mark.metadata.deletion_timestamp = rfc3339(now)
            ops.append(Op(self.store.key_of(claim), mark, int(claim.metadata.resource_version)))
        for start in range(0, len(ops), BATCH):
            await self.store.commit(ops[start:start + BATCH])   # a lost race: next pass
        if pods or claims:
            return False
        done = await self.store.delete_if_empty(
            self.store.key_of(ns), int(ns.metadata.resource_version),
            self.store.range_prefix(POD, name), (self.store.range_prefix(CLAIM, name),))
        if done:
            log.info("namespace %s is gone", name)
        return done

    async def step(self) -> float | None:
        try:
            left = await self.sync()
        except NotLeader:
            raise
        except StoreError as err:   # etcd down, or a race: look again next period
            log.log(min(logging.INFO, self.store.health.retry_level()),
                    "namespace controller: %s", err)
            return self.period
        return self.period if left else None

    async def run(self) -> None:
        """Runs until cancelled."""
        await self.runner.run()
