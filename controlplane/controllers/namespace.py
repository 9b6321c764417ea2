"""The namespace controller: finishes deleting Terminating namespaces.

Deleting a namespace removes everything in it but its pods at once and marks it Terminating
(controlplane/api/servicer.py). This controller then deletes its pods as any deletion does
(gracefully: running ones become Terminating and go when their agents confirm) and removes the
namespace in a Txn that requires it to hold no pod, so nothing in it outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from controlplane.store import NotLeader, Op, Store, StoreError
from moorage.model import kinds
from moorage.model.pods import graceful_delete, is_terminating

log = logging.getLogger(__name__)

NAMESPACE = kinds.BY_NAME["Namespace"]
POD = kinds.BY_NAME["Pod"]
PERIOD_SECONDS = 0.5
# Pods marked or deleted per Txn (etcd's default --max-txn-ops is 128).
BATCH = 100


class NamespaceController:
    def __init__(self, store: Store, *, clock=time.time, period: float = PERIOD_SECONDS):
        self.store = store
        self.clock = clock
        self.period = period

    async def sync(self) -> int:
        """One pass over every Terminating namespace; returns how many are left."""
        namespaces, _ = await self.store.list(NAMESPACE)
        left = 0
        for ns in namespaces:
            if is_terminating(ns) and not await self._finish(ns):
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
        for start in range(0, len(ops), BATCH):
            await self.store.commit(ops[start:start + BATCH])   # a lost race: next pass
        if pods:
            return False
        done = await self.store.delete_if_empty(
            self.store.key_of(ns), int(ns.metadata.resource_version),
            self.store.range_prefix(POD, name))
        if done:
            log.info("namespace %s is gone", name)
        return done

    async def run(self) -> None:
        """Runs until cancelled."""
        while True:
            try:
                await self.sync()
            except NotLeader:
                raise
            except StoreError as err:   # etcd down, or a race: look again next period
                log.log(min(logging.INFO, self.store.health.retry_level()),
                        "namespace controller: %s", err)
            await asyncio.sleep(self.period)
