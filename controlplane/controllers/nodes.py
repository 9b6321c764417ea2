"""Node lifecycle: a node whose lease expired goes NotReady; its pods are deleted after a grace.

Deleting them lets their Deployments make replacements, which the scheduler puts elsewhere;
when the agent comes back, its next full assignment no longer has them, so it stops them.
A StatefulSet's pods are the exception: they stay in the store (so no second pod of their
ordinal is made) until the node is deleted (`moor delete node`: the agent is confirmed gone)
or the operator force-deletes the pod. For
a while after the control plane starts nothing is evicted, since agents are still reconnecting.
These deletions are immediate, Terminating pods included: no agent is there to confirm a
graceful one. Pods bound to a node that no longer exists are removed the same way (as
Kubernetes' pod garbage collector does).

`decide`, `to_evict` and `orphans` are pure (the clock is an argument); `NodeLifecycle` reads
nodes, node leases and pods, calls them, and writes what they say, on the shared runner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.controllers.runner import Runner
from controlplane.dispatcher.sessions import lease_key, set_condition
from controlplane.events import NORMAL, WARNING, EventRecorder
from controlplane.store import NotLeader, Op, Store, StoreError
from moorage.model import kinds
from moorage.model.pods import TERMINAL_PHASES
from moorage.model.timestamps import rfc3339
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


# ---- pure core ----

@dataclass(frozen=True, slots=True)
class MarkNotReady:
    node: str


@dataclass(frozen=True, slots=True)
class MarkReady:
    node: str


@dataclass(frozen=True, slots=True)
class EvictPods:
    node: str


Action = MarkNotReady | MarkReady | EvictPods


def decide(nodes: Sequence[pb.Node], leases: set[str], since: Mapping[str, float],
           now: float, *, eviction_seconds: float, evicting: bool
           ) -> tuple[list[Action], dict[str, float]]:
    """What to do about each node, and since when each node without a lease has had none.

    `leases` names the nodes whose agents heartbeat; `since` is the previous call's answer;
    `evicting` is False during the start-up grace. A node with a lease that this controller
    had marked Unknown is Ready again (the lease is the truth); one without is marked NotReady
    (once), and its pods are evicted once it has been without for `eviction_seconds`."""
    actions: list[Action] = []
    down: dict[str, float] = {}
    for node in nodes:
        name = node.metadata.name
        if name in leases:
            if not is_ready(node) and marked_unknown(node):
                actions.append(MarkReady(name))
            continue
        if is_ready(node):
            actions.append(MarkNotReady(name))
        first = down[name] = since.get(name, now)
        if evicting and now - first >= eviction_seconds:
            actions.append(EvictPods(name))
    return actions, down


def is_stateful(pod: pb.Pod) -> bool:
    return any(ref.controller and ref.kind == "StatefulSet"
               for ref in pod.metadata.owner_references)


def to_evict(pods: Iterable[pb.Pod], node: str) -> tuple[list[pb.Pod], list[pb.Pod]]:
    """The pods on a NotReady `node` to delete, and the StatefulSet pods kept there: their
    ordinal may still be running on the unreachable node, so it must not be made again."""
    evict, kept = [], []
    for pod in pods:
        if pod.spec.node_name != node or pod.status.phase in TERMINAL_PHASES:
            continue
        (kept if is_stateful(pod) else evict).append(pod)
    return evict, kept


def orphans(pods: Iterable[pb.Pod], nodes: set[str], since: Mapping[str, float], now: float,
            grace: float) -> tuple[list[pb.Pod], dict[str, float]]:
    """Pods bound to a node that has not existed for `grace` seconds, and since when each pod
    on a missing node has been seen so."""
    gone: list[pb.Pod] = []
    seen: dict[str, float] = {}
    for pod in pods:
        if not pod.spec.node_name or pod.spec.node_name in nodes:
            continue
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        first = seen[key] = since.get(key, now)
        if now - first >= grace:
            gone.append(pod)
    return gone, seen


# ---- shell ----

class NodeLifecycle:
    def __init__(self, store: Store, *, eviction_seconds: float = EVICTION_SECONDS,
                 startup_grace_seconds: float = STARTUP_GRACE_SECONDS,
                 period: float = MONITOR_SECONDS, clock=time.monotonic, wall=time.time):
        self.store = store
        self.eviction_seconds = eviction_seconds
        self.period = period
        self.clock, self.wall = clock, wall
        self.started = clock()
        self.startup_grace = startup_grace_seconds
        self.down_since: dict[str, float] = {}
        # Pods bound to a node that does not exist, and since when (monotonic).
        self.orphaned_since: dict[str, float] = {}
        self.checks = 0
        # StatefulSet pods on NotReady nodes already told about (by uid).
        self.kept_warned: set[str] = set()
        self.events = EventRecorder(store, "node-lifecycle-controller")
        self.runner = Runner(self.step, store, period=period)

    async def _alive(self) -> set[str]:
        prefix = lease_key(self.store, "")
        return {rec.key[len(prefix):].decode()
                for rec in await self.store.raw.list(prefix, keys_only=True)}

    async def check(self) -> None:
        nodes, _ = await self.store.list(NODE)
        alive = await self._alive()
        now = self.clock()
        evicting = now - self.started >= self.startup_grace
        self.checks += 1
        if self.checks % ORPHAN_CHECK_EVERY == 0 and evicting:
            pods, _ = await self.store.list(POD)
            gone, self.orphaned_since = orphans(pods, {n.metadata.name for n in nodes},
                                                self.orphaned_since, now,
                                                self.eviction_seconds)
            for pod in gone:
                if await self._remove(pod, "NodeDeleted",
                                      f"node {pod.spec.node_name} does not exist"):
                    log.warning("removed %s/%s, bound to the deleted node %s",
                                pod.metadata.namespace, pod.metadata.name, pod.spec.node_name)
        actions, self.down_since = decide(nodes, alive, self.down_since, now,
                                          eviction_seconds=self.eviction_seconds,
                                          evicting=evicting)
        by_name = {n.metadata.name: n for n in nodes}
        for action in actions:
            if isinstance(action, MarkNotReady):
                await self._mark_not_ready(by_name[action.node])
            elif isinstance(action, MarkReady):
                await self._mark_ready(by_name[action.node])
            else:
                await self._evict(action.node)

    async def _mark_not_ready(self, node: pb.Node) -> None:
        set_condition(node.status.conditions, "Ready", "Unknown", UNKNOWN_REASON,
                      "the agent stopped heartbeating", rfc3339(self.wall()))
        if await self._write(node, WARNING, "NodeNotReady", f"Node {node.metadata.name} is "
                             "NotReady: the agent stopped heartbeating"):
            log.warning("node %s is NotReady", node.metadata.name)

    async def _mark_ready(self, node: pb.Node) -> None:
        # Its lease is back (heartbeats refreshed it) but the record still says Unknown, as
        # after a NotReady write that raced a reconnect: the lease is the truth.
        set_condition(node.status.conditions, "Ready", "True", "AgentReady",
                      "the agent is connected and heartbeating", rfc3339(self.wall()))
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
        evict, kept = to_evict(pods, name)
        for pod in evict:
            if await self._remove(pod, "NodeNotReady", f"node {name} is NotReady"):
                log.warning("evicted %s/%s from NotReady node %s", pod.metadata.namespace,
                            pod.metadata.name, name)
        for pod in kept:
            if pod.metadata.uid in self.kept_warned:
                continue
            self.kept_warned.add(pod.metadata.uid)
            await self.events.record(pod, WARNING, "NodeNotReady", (
                f"node {name} is NotReady; a StatefulSet pod is not replaced until the node "
                f"is deleted (moor delete node {name}) or the pod is force-deleted (moor "
                f"delete pod {pod.metadata.name} --force --grace-period 0)"))

    async def _remove(self, pod: pb.Pod, reason: str, why: str) -> bool:
        ok, _, _ = await self.store.commit([
            Op(self.store.key_of(pod), None, int(pod.metadata.resource_version)),
            await self.events.op(pod, NORMAL, reason, f"Deleting pod {pod.metadata.namespace}/"
                                 f"{pod.metadata.name}: {why}")])
        return ok

    async def step(self) -> float:
        try:
            await self.check()
        except NotLeader:
            raise  # deposed: end the loop so the new leader's lifecycle takes over
        except StoreError as err:  # etcd down, or a race: look again next period
            log.log(min(logging.INFO, self.store.health.retry_level()),
                    "node lifecycle: %s", err)
        return self.period

    async def run(self) -> None:
        await self.runner.run()
