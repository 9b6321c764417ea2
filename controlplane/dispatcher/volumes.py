"""Local persistent volumes for the agents: one PersistentVolume watch, and per session what
its node holds.

Invariant: a session sends its node every volume bound there (full at session start, then each
change) before the assignments of the pods that use it, and names in `deleted` the volumes
whose data the reclaim policy removes (Released, reclaimPolicy Delete). The node's report of a
removal deletes the PersistentVolume; its usage reports become the claim's status.used_bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from controlplane.store import Conflict, NotFound, Store, StoreError
from moorage.model import kinds, storage
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

VOLUME = kinds.BY_NAME["PersistentVolume"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
WRITE_ATTEMPTS = 5
# A claim's used bytes are written at most this often (and only when they changed).
USAGE_WRITE_SECONDS = 10.0


def reclaimed(pv: pb.PersistentVolume) -> bool:
    """Whether the volume's data is to be removed (its claim is gone, policy Delete)."""
    return pv.status.phase == storage.RELEASED and \
        (pv.spec.persistent_volume_reclaim_policy or "Delete") == "Delete"


def local_volume(pv: pb.PersistentVolume) -> agent_pb2.LocalVolume:
    ref = pv.spec.claim_ref
    return agent_pb2.LocalVolume(name=pv.metadata.name, claim_namespace=ref.namespace,
                                 claim_name=ref.name,
                                 capacity_bytes=storage.capacity_bytes(pv.spec.capacity))


class VolumeIndex:
    def __init__(self, store: Store, changed: Callable[[str], None]):
        self.store = store
        self.by_node: dict[str, dict[str, pb.PersistentVolume]] = {}
        # Called with a node's name when one of its volumes is created, changed or deleted.
        self.changed = changed
        self.synced = asyncio.Event()

    def _resync(self, items) -> None:
        old = set(self.by_node)
        self.by_node = {}
        for pv in items:
            node = storage.pv_node(pv)
            if node:
                self.by_node.setdefault(node, {})[pv.metadata.name] = pv
        self.synced.set()
        for node in old | set(self.by_node):
            self.changed(node)

    def _put(self, pv) -> None:
        node = storage.pv_node(pv)
        if not node:
            return
        held = self.by_node.setdefault(node, {})
        old = held.get(pv.metadata.name)
        if old is not None and int(old.metadata.resource_version or 0) > \
                int(pv.metadata.resource_version or 0):
            return
        held[pv.metadata.name] = pv
        self.changed(node)

    def _delete(self, pv) -> None:
        node = storage.pv_node(pv)
        if self.by_node.get(node, {}).pop(pv.metadata.name, None) is not None:
            self.changed(node)

    def on(self, node: str) -> dict[str, pb.PersistentVolume]:
        return self.by_node.get(node, {})

    def missing(self, node: str, pods: Iterable[pb.Pod]) -> bool:
        """Whether a pod here names a claim whose volume on this node is not known yet."""
        have = {(pv.spec.claim_ref.namespace, pv.spec.claim_ref.name)
                for pv in self.on(node).values()}
        return any((pod.metadata.namespace, name) not in have
                   for pod in pods for name in storage.claim_names(pod.spec))

    async def refresh(self) -> None:
        """Reads every volume from the store: the pod watch can run ahead of this one, and a
        pod must never reach its node before its volume."""
        items, _ = await self.store.list(VOLUME)
        for pv in items:
            node = storage.pv_node(pv)
            if node and pv.metadata.name not in self.by_node.get(node, {}):
                self.by_node.setdefault(node, {})[pv.metadata.name] = pv

    async def run(self) -> None:
        await self.store.follow(VOLUME, resync=self._resync, put=self._put, delete=self._delete)


class SessionVolumes:
    """What one session has sent; `update` says what to send next."""

    def __init__(self, index: VolumeIndex, node: str):
        self.index = index
        self.node = node
        self.sent: dict[str, agent_pb2.LocalVolume] = {}
        self.deleted: set[str] = set()

    def update(self, full: bool = False) -> agent_pb2.VolumeData | None:
        if full:
            self.sent.clear()
            self.deleted.clear()
        msg = agent_pb2.VolumeData(full=full)
        for name, pv in sorted(self.index.on(self.node).items()):
            if reclaimed(pv):
                self.sent.pop(name, None)
                if name not in self.deleted:
                    self.deleted.add(name)
                    msg.deleted.append(name)
                continue
            vol = local_volume(pv)
            if self.sent.get(name) != vol:
                self.sent[name] = vol
                msg.volumes.append(vol)
        here = self.index.on(self.node)
        for name in [n for n in self.sent if n not in here]:
            # The PersistentVolume is gone without the node reclaiming it (deleted by hand):
            # the node keeps the data; nothing to send.
            del self.sent[name]
        self.deleted &= set(here)
        return msg if full or msg.volumes or msg.deleted else None


class VolumeReports:
    """The agents' VolumeReports: used bytes onto claims, removals onto volumes."""

    def __init__(self, store: Store, events=None, clock=time.monotonic):
        self.store = store
        self.events = events
        self.clock = clock
        self.last: dict[str, tuple[int, float]] = {}   # claim key -> (used bytes, written at)

    async def handle(self, node: str, index: VolumeIndex, report: agent_pb2.VolumeReport) -> None:
        mine = index.on(node)
        for name in report.deleted:
            pv = mine.get(name)
            if pv is None:
                try:
                    pv = await self.store.get(VOLUME, "", name)
                except NotFound:
                    continue
            if storage.pv_node(pv) != node or not reclaimed(pv):
                log.warning("node %s reported removing volume %s, which it was not asked to; "
                            "ignored", node, name)
                continue
            await self._remove(node, pv)
        now = self.clock()
        for usage in report.usage:
            pv = mine.get(usage.name)
            if pv is None or not pv.spec.claim_ref.name:
                continue
            ref = pv.spec.claim_ref
            key = f"{ref.namespace}/{ref.name}"
            last = self.last.get(key)
            if last is not None and (last[0] == usage.used_bytes or
                                     now - last[1] < USAGE_WRITE_SECONDS):
                continue
            if await self._write_usage(ref, usage.used_bytes):
                self.last[key] = (usage.used_bytes, now)
            if len(self.last) > 100_000:
                self.last.clear()

    async def _remove(self, node: str, pv: pb.PersistentVolume) -> None:
        for _ in range(WRITE_ATTEMPTS):
            try:
                await self.store.delete(VOLUME, "", pv.metadata.name,
                                        int(pv.metadata.resource_version))
            except NotFound:
                return
            except Conflict:
                try:
                    pv = await self.store.get(VOLUME, "", pv.metadata.name)
                except NotFound:
                    return
                if not reclaimed(pv):
                    return
                continue
            log.info("volume %s removed: node %s deleted its data", pv.metadata.name, node)
            if self.events is not None:
                try:
                    await self.events.record(pv, "Normal", "VolumeDeleted",
                                             f"node {node} removed the volume's data")
                except StoreError as err:
                    log.warning("recording an event for volume %s: %s", pv.metadata.name, err)
            return

    async def _write_usage(self, ref, used: int) -> bool:
        for _ in range(WRITE_ATTEMPTS):
            try:
                claim = await self.store.get(CLAIM, ref.namespace, ref.name)
            except NotFound:
                return False
            if claim.metadata.uid != ref.uid:
                return False
            if claim.status.used_bytes == used:
                return True
            claim.status.used_bytes = used
            try:
                await self.store.update(claim)
                return True
            except Conflict:
                continue
        return False
