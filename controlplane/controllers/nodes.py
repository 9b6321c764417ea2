"""Node lifecycle: a node whose lease expired goes NotReady; its pods are deleted after a grace.

Deleting them lets their Deployments make replacements, which the scheduler puts elsewhere;
when the agent comes back, its next full assignment no longer has them, so it stops them. For
a while after the control plane starts nothing is evicted, since agents are still reconnecting.
These deletions are immediate, Terminating pods included: no agent is there to confirm a
graceful one. Pods bound to a node that no longer exists are removed the same way (as
Kubernetes' pod garbage collector does).
"""

from __future__ import annotations

import asyncio
import logging
import time

from controlplane.dispatcher.sessions import lease_key, set_condition
from controlplane.events import NORMAL, WARNING, EventRecorder
from controlplane.store import NotLeader, Op, Store, StoreError
from moorage.model import kinds
from moorage.model.pods import TERMINAL_PHASES
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

NODE = kinds.BY_NAME["Node"]
POD = kinds.BY_NAME["Pod"]
MONITOR_SECONDS = 1.0
EVICTION_SECONDS = 4.0
STARTUP_GRACE_SECONDS = 20.0
UNKNOWN_REASON = "NodeStatusUnknown"
# Pods on deleted nodes are looked for every this many checks.
ORPHAN_CHECK_EVERY = 5


def is_ready(node: pb.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def marked_unknown(node: pb.Node) -> bool:
    """Whether this controller set the node's Ready condition to Unknown."""
    return any(c.type == "Ready" and c.reason == UNKNOWN_REASON
               for c in node.status.conditions)


class NodeLifecycle:
    def __init__(self, store: Store, *, eviction_seconds: float = EVICTION_SECONDS,
                 startup_grace_seconds: float = STARTUP_GRACE_SECONDS,
                 period: float = MONITOR_SECONDS, clock=time.monotonic):
        self.store = store
        self.eviction_seconds = eviction_seconds
        self.period = period
        self.clock = clock
        self.started = clock()
        self.startup_grace = startup_grace_seconds
        self.down_since: dict[str, float] = {}
        # Pods bound to a node that does not exist, and since when (monotonic).
        self.orphaned_since: dict[str, float] = {}
        self.checks = 0
        self.events = EventRecorder(store, "node-lifecycle-controller")

    async def _alive(self) -> set[str]:
        prefix = lease_key(self.store, "")
        return {rec.key[len(prefix):].decode()
                for rec in await self.store.raw.list(prefix, keys_only=True)}

    async def check(self) -> None:
        nodes, _ = await self.store.list(NODE)
        alive = await self._alive()
        now = self.clock()
        self.checks += 1
        if self.checks % ORPHAN_CHECK_EVERY == 0 and now - self.started >= self.startup_grace:
            await self._collect_orphans({n.metadata.name for n in nodes}, now)
        for node in nodes:
            name = node.metadata.name
            if name in alive:
                self.down_since.pop(name, None)
                if not is_ready(node) and marked_unknown(node):
                    await self._mark_ready(node)
                continue
            if is_ready(node):
                await self._mark_not_ready(node)
            since = self.down_since.setdefault(name, now)
            if now - since >= self.eviction_seconds and \
                    now - self.started >= self.startup_grace:
                await self._evict(name)

    async def _mark_not_ready(self, node: pb.Node) -> None:
        set_condition(node.status.conditions, "Ready", "Unknown", UNKNOWN_REASON,
                      "the agent stopped heartbeating")
        if await self._write(node, WARNING, "NodeNotReady", f"Node {node.metadata.name} is "
                             "NotReady: the agent stopped heartbeating"):
            log.warning("node %s is NotReady", node.metadata.name)

    async def _mark_ready(self, node: pb.Node) -> None:
        # Its lease is back (heartbeats refreshed it) but the record still says Unknown, as
        # after a NotReady write that raced a reconnect: the lease is the truth.
        set_condition(node.status.conditions, "Ready", "True", "AgentReady",
                      "the agent is connected and heartbeating")
        if await self._write(node, NORMAL, "NodeReady", f"Node {node.metadata.name} is "
                             "Ready: its agent is heartbeating again"):
            log.info("node %s is Ready again", node.metadata.name)

    async def _write(self, node: pb.Node, type_: str, reason: str, message: str) -> bool:
        """The node as changed and an event, if the node is still the version read; False
        when it changed meanwhile (it is looked at again next period)."""
        ok, _, _ = await self.store.commit([
            Op(self.store.key_of(node), node, int(node.metadata.resource_version)),
            await self.events.op(node, type_, reason, message)])
        return ok

    async def _evict(self, name: str) -> None:
        pods, _ = await self.store.list(POD)
        for pod in pods:
            if pod.spec.node_name != name or pod.status.phase in TERMINAL_PHASES:
                continue
            if await self._remove(pod, "NodeNotReady", f"node {name} is NotReady"):
                log.warning("evicted %s/%s from NotReady node %s", pod.metadata.namespace,
                            pod.metadata.name, name)

    async def _remove(self, pod: pb.Pod, reason: str, why: str) -> bool:
        ok, _, _ = await self.store.commit([
            Op(self.store.key_of(pod), None, int(pod.metadata.resource_version)),
            await self.events.op(pod, NORMAL, reason, f"Deleting pod {pod.metadata.namespace}/"
                                 f"{pod.metadata.name}: {why}")])
        return ok

    async def _collect_orphans(self, nodes: set[str], now: float) -> None:
        """Removes pods bound to a node that has not existed for the eviction grace."""
        pods, _ = await self.store.list(POD)
        seen = set()
        for pod in pods:
            if not pod.spec.node_name or pod.spec.node_name in nodes:
                continue
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            seen.add(key)
            since = self.orphaned_since.setdefault(key, now)
            if now - since >= self.eviction_seconds and await self._remove(
                    pod, "NodeDeleted", f"node {pod.spec.node_name} does not exist"):
                log.warning("removed %s, bound to the deleted node %s", key, pod.spec.node_name)
        self.orphaned_since = {k: v for k, v in self.orphaned_since.items() if k in seen}

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except NotLeader:
                raise  # deposed: end the loop so the new leader's lifecycle takes over
            except StoreError as err:  # etcd down, or a race: look again next period
                log.log(min(logging.INFO, self.store.health.retry_level()),
                        "node lifecycle: %s", err)
            await asyncio.sleep(self.period)
