"""The scheduler shell: watches pods and nodes, decides in batches with the pure core, and binds.

Its cache (nodes, and the pods bound to each) is rebuilt from etcd by the watches' initial
lists. A binding is a Txn comparing the pod's revision, so a pod is never bound twice even with
two schedulers running: the loser sees a conflict and re-reads. A placed pod is counted on its
node at once ("assumed"), before the watch confirms it, so the next batch sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass

from controlplane.controllers.runner import Runner, Watch
from controlplane.events import NORMAL, WARNING, EventRecorder
from controlplane.metrics import (
    PENDING_PODS,
    SCHEDULE_ATTEMPT_LATENCY,
    SCHEDULE_ATTEMPTS,
    SCHEDULING_LATENCY,
)
from controlplane.scheduler.config import SchedulerConfig
from controlplane.scheduler.core import batch_order, schedule_batch
from controlplane.scheduler.model import NodeInfo, PodInfo
from controlplane.scheduler.objects import node_info, pod_info
from controlplane.scheduler.outcome import Placement, Unschedulable
from controlplane.scheduler.volumes import claim_key, needs, storage_used
from controlplane.store import ABSENT, NotFound, NotLeader, Op, Store, StoreError
from moorage.model import kinds, storage
from moorage.model.pods import TERMINAL_PHASES
from moorage.model.timestamps import now_rfc3339
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

POD = kinds.BY_NAME["Pod"]
NODE = kinds.BY_NAME["Node"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
VOLUME = kinds.BY_NAME["PersistentVolume"]
STORAGE_CLASS = kinds.BY_NAME["StorageClass"]
BATCH_SIZE = 1000
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# An unschedulable pod's status lists at most this many per-node reasons.
MAX_DETAILS = 50
SCHEDULED_CONDITION = "PodScheduled"


@dataclass(slots=True)
class Queued:
    pod: pb.Pod
    info: PodInfo
    first_seen: float
    attempts: int = 0
    next_try: float = 0.0
    last_try: float = 0.0
    last_message: str = ""


def _key(obj) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def _name(obj) -> str:
    return obj.metadata.name


def _set_condition(pod: pb.Pod, status: str, reason: str, message: str, now: str) -> None:
    for cond in pod.status.conditions:
        if cond.type == SCHEDULED_CONDITION:
            if cond.status != status:
                cond.last_transition_time = now
            cond.status, cond.reason, cond.message = status, reason, message
            return
    pod.status.conditions.add(type=SCHEDULED_CONDITION, status=status, reason=reason,
                              message=message, last_transition_time=now)


class Scheduler:
    def __init__(self, store: Store, config: SchedulerConfig | None = None, *,
                 name: str = "default-scheduler", clock=time.monotonic,
                 batch_size: int = BATCH_SIZE, record_events: bool = True):
        self.store = store
        self.config = config or SchedulerConfig()
        self.clock = clock
        self.batch_size = batch_size
        self.events = EventRecorder(store, name) if record_events else None
        self.nodes: dict[str, pb.Node] = {}
        self._node_base: dict[str, tuple[str, NodeInfo]] = {}
        self.bound: dict[str, dict[str, PodInfo]] = {}
        self.pod_node: dict[str, str] = {}
        self.queue: dict[str, Queued] = {}
        self.seen_rv: dict[str, int] = {}
        # Storage: claims by namespace/name, volumes and classes by name, and the claims of
        # every bound (or assumed) pod that has any.
        self.claims: dict[str, pb.PersistentVolumeClaim] = {}
        self.volumes: dict[str, pb.PersistentVolume] = {}
        self.classes: dict[str, pb.StorageClass] = {}
        self.pod_claims: dict[str, tuple[str, ...]] = {}
        self.start = 0
        self.bindings = 0
        self.conflicts = 0
        self.runner = Runner(self.step, store, [
            Watch(POD, self._replace_pods, self.on_pod, self.on_pod_deleted),
            Watch(NODE, self._resync_nodes, self.on_node, self.on_node_deleted),
            Watch(CLAIM, self._storage_resync(self.claims, _key), self._storage_put(
                self.claims, _key), self._storage_delete(self.claims, _key)),
            Watch(VOLUME, self._storage_resync(self.volumes, _name),
                  self._storage_put(self.volumes, _name),
                  self._storage_delete(self.volumes, _name)),
            Watch(STORAGE_CLASS, self._storage_resync(self.classes, _name),
                  self._storage_put(self.classes, _name),
                  self._storage_delete(self.classes, _name))])
        self.synced = self.runner.synced

    # ---- cache maintenance (from the watches) ----

    # ---- storage caches ----

    def _storage_resync(self, cache: dict, key_of):
        def resync(items) -> None:
            cache.clear()
            cache.update((key_of(o), o) for o in items)
            self._cluster_changed()
        return resync

    def _storage_put(self, cache: dict, key_of):
        def put(obj) -> None:
            old = cache.get(key_of(obj))
            # Our own binding may be cached already, newer than this event.
            if old is None or int(obj.metadata.resource_version or 0) >= \
                    int(old.metadata.resource_version or 0):
                cache[key_of(obj)] = obj
            self._cluster_changed()
        return put

    def _storage_delete(self, cache: dict, key_of):
        def delete(obj) -> None:
            cache.pop(key_of(obj), None)
            self._cluster_changed()
        return delete

    def claim_users(self, key: str) -> list[str]:
        """The bound (or assumed) pods that use claim `key`, sorted."""
        return sorted(p for p, claims in self.pod_claims.items() if key in claims)

    def _hold_claims(self, pod: pb.Pod) -> None:
        names = storage.claim_names(pod.spec)
        if names:
            self.pod_claims[_key(pod)] = tuple(claim_key(pod.metadata.namespace, n)
                                               for n in names)

    def _with_volumes(self, q: Queued) -> PodInfo:
        if not q.pod.spec.volumes:
            return q.info
        return dataclasses.replace(q.info, volumes=needs(
            q.pod, self.claims, self.volumes, self.classes, self.claim_users))

    def _forget(self, key: str) -> bool:
        self.pod_claims.pop(key, None)
        node = self.pod_node.pop(key, None)
        if node is not None:
            self.bound.get(node, {}).pop(key, None)
        return node is not None

    def on_pod(self, pod: pb.Pod) -> None:
        key, rv = _key(pod), int(pod.metadata.resource_version or 0)
        if rv <= self.seen_rv.get(key, 0):
            return  # not newer than what we know (e.g. our own binding, seen before its event)
        self.seen_rv[key] = rv
        if pod.spec.node_name or pod.status.phase in TERMINAL_PHASES:
            self.queue.pop(key, None)
            freed = self._forget(key)
            if pod.spec.node_name and pod.status.phase not in TERMINAL_PHASES:
                self.pod_node[key] = pod.spec.node_name
                self.bound.setdefault(pod.spec.node_name, {})[key] = pod_info(pod)
                self._hold_claims(pod)
            elif freed:
                self._cluster_changed()
            return
        queued = self.queue.get(key)
        if queued is None:
            now = self.clock()
            self.queue[key] = Queued(pod, pod_info(pod), first_seen=now, next_try=now)
            self.runner.wake()
        else:
            queued.pod, queued.info = pod, pod_info(pod)

    def on_pod_deleted(self, pod: pb.Pod) -> None:
        key = _key(pod)
        self.queue.pop(key, None)
        self.seen_rv.pop(key, None)
        if self._forget(key):
            self._cluster_changed()

    def on_node(self, node: pb.Node) -> None:
        self.nodes[node.metadata.name] = node
        self._cluster_changed()

    def on_node_deleted(self, node: pb.Node) -> None:
        self.nodes.pop(node.metadata.name, None)
        self._node_base.pop(node.metadata.name, None)

    def _cluster_changed(self) -> None:
        """Something may now fit: retry unschedulable pods, but not sooner than their backoff
        floor, so a busy cluster does not make them spin."""
        now = self.clock()
        for q in self.queue.values():
            if q.attempts:
                q.next_try = min(q.next_try, max(now, q.last_try + INITIAL_BACKOFF_SECONDS))
        self.runner.wake()

    def _replace_pods(self, pods) -> None:
        self.queue.clear()
        self.bound.clear()
        self.pod_node.clear()
        self.pod_claims.clear()
        self.seen_rv.clear()
        for pod in pods:
            self.on_pod(pod)

    # ---- deciding ----

    def snapshot(self) -> list[NodeInfo]:
        infos = []
        used = storage_used(self.volumes) if self.volumes else {}
        for name in sorted(self.nodes):
            node = self.nodes[name]
            cached = self._node_base.get(name)
            if cached is None or cached[0] != node.metadata.resource_version:
                cached = (node.metadata.resource_version, node_info(node))
                self._node_base[name] = cached
            base = cached[1]
            pods = tuple(self.bound.get(name, {}).values())
            requested = base.requested
            for p in pods:
                requested = requested + p.requests
            infos.append(NodeInfo(base.name, base.labels, base.ready, base.unschedulable,
                                  base.taints, base.allocatable, requested, pods,
                                  base.local_storage_free - used.get(name, 0),
                                  base.allowed_host_paths))
        return infos

    def due(self) -> list[Queued]:
        """The next batch. Pods sharing a claim go in different batches, and so do pods
        whose claims bind with them: each decision then sees the claims and free storage the
        earlier one left (the engine caches volume verdicts for a whole batch)."""
        now = self.clock()
        ready = [q for q in self.queue.values() if q.next_try <= now]
        ready.sort(key=lambda q: batch_order(q.info))
        out: list[Queued] = []
        taken: set[str] = set()
        binding = False
        for q in ready:
            if len(out) >= self.batch_size:
                break
            q.info = self._with_volumes(q)
            vol = q.info.volumes
            if vol is not None:
                mine = {claim_key(q.pod.metadata.namespace, n)
                        for n in storage.claim_names(q.pod.spec)}
                if mine & taken or (vol.unbound and binding):
                    continue
                taken |= mine
                binding = binding or bool(vol.unbound)
            out.append(q)
        return out

    async def _read_missing_claims(self) -> None:
        """Claims that due pods name but the cache lacks, read from the store: a claim made in
        the same Txn as its pod (a StatefulSet's) may reach the claim watch after the pod's,
        and the pod would be marked unschedulable for a claim that exists."""
        now = self.clock()
        missing = {(q.pod.metadata.namespace, n) for q in self.queue.values()
                   if q.next_try <= now for n in storage.claim_names(q.pod.spec)
                   if claim_key(q.pod.metadata.namespace, n) not in self.claims}
        for ns, name in sorted(missing):
            try:
                claim = await self.store.get(CLAIM, ns, name)
            except NotFound:
                continue
            self.claims.setdefault(_key(claim), claim)

    async def schedule_once(self) -> int:
        """Decides and binds one batch of due pods; returns how many were decided."""
        await self._read_missing_claims()
        batch = self.due()
        PENDING_PODS.set(len(self.queue))
        if not batch:
            return 0
        self._attempt_began = time.perf_counter()
        result = schedule_batch([q.info for q in batch], self.snapshot(), config=self.config,
                                start=self.start)
        self.start = result.next_start
        now = self.clock()
        writes = []
        for decision in result.decisions:
            key = decision.pod.key
            q = self.queue.get(key)
            if q is None:
                continue
            q.last_try = now
            if isinstance(decision, Placement):
                del self.queue[key]
                self.pod_node[key] = decision.node
                self.bound.setdefault(decision.node, {})[key] = decision.pod
                self._hold_claims(q.pod)
                writes.append(self._bind(q, decision))
            else:
                q.attempts += 1
                backoff = min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2 ** (q.attempts - 1))
                q.next_try = now + backoff
                SCHEDULE_ATTEMPTS.labels("unschedulable").inc()
                self._observe_attempt("unschedulable")
                if decision.message != q.last_message:
                    writes.append(self._mark_unschedulable(q, decision))
        await asyncio.gather(*writes)
        PENDING_PODS.set(len(self.queue))
        return len(result.decisions)

    def _observe_attempt(self, result: str) -> None:
        began = getattr(self, "_attempt_began", None)
        if began is not None:
            SCHEDULE_ATTEMPT_LATENCY.labels(result).observe(time.perf_counter() - began)

    async def _bind(self, q: Queued, placement: Placement) -> None:
        pod = pb.Pod()
        pod.CopyFrom(q.pod)
        pod.spec.node_name = placement.node
        pod.status.ClearField("scheduling_details")
        _set_condition(pod, "True", "", "", now_rfc3339())
        ops = [Op(self.store.key_of(pod), pod, int(q.pod.metadata.resource_version))]
        provisioned = self._provision(placement)
        if provisioned is None:
            # A claim or its class went away since the decision: decide again.
            self._unassume(q, INITIAL_BACKOFF_SECONDS)
            return
        try:
            for pv, claim, expect in provisioned:
                ops.append(Op(self.store.key_of(pv), pv, ABSENT))
                ops.append(Op(self.store.key_of(claim), claim, expect))
            if self.events:
                ops.append(await self.events.op(
                    pod, NORMAL, "Scheduled",
                    f"Successfully assigned {_key(pod)} to {placement.node}"))
                for pv, claim, _ in provisioned:
                    ops.append(await self.events.op(
                        claim, NORMAL, "ProvisioningSucceeded",
                        f"Successfully provisioned volume {pv.metadata.name} on "
                        f"{placement.node}"))
            ok, revision, current = await self.store.commit(ops)
        except NotLeader:
            raise  # deposed: the run loop must end, the new leader takes over
        except StoreError as err:
            log.log(self.store.health.retry_level(), "binding %s failed: %s", _key(pod), err)
            SCHEDULE_ATTEMPTS.labels("error").inc()
            self._observe_attempt("error")
            # etcd trouble: retry later, not in a tight loop against a store that is down.
            self._unassume(q, INITIAL_BACKOFF_SECONDS)
            return
        if ok:
            self.seen_rv[_key(pod)] = max(self.seen_rv.get(_key(pod), 0), revision)
            for pv, claim, _ in provisioned:
                pv.metadata.resource_version = claim.metadata.resource_version = str(revision)
                self.volumes[pv.metadata.name] = pv
                self.claims[_key(claim)] = claim
            self.bindings += 1
            SCHEDULE_ATTEMPTS.labels("scheduled").inc()
            self._observe_attempt("scheduled")
            SCHEDULING_LATENCY.observe(self.clock() - q.first_seen)
            return
        SCHEDULE_ATTEMPTS.labels("conflict").inc()
        self._observe_attempt("conflict")
        self.conflicts += 1
        for _, claim, _ in provisioned:
            kv = current.get(self.store.key_of(claim))
            if kv is not None:   # changed meanwhile (a finalizer, a resize): take it
                self.claims[_key(claim)] = self.store.decode(CLAIM, kv)
        self._unassume(q)
        self._refresh(q, current.get(ops[0].key))

    def _provision(self, placement: Placement) -> list[tuple[
            pb.PersistentVolume, pb.PersistentVolumeClaim, int]] | None:
        """For each claim that binds with this pod: its new PV on the chosen node and the
        claim Bound to it (with the claim's revision to compare); None when one cannot be."""
        vol = placement.pod.volumes
        out = []
        for key in vol.unbound if vol is not None else ():
            claim = self.claims.get(key)
            sc = self.classes.get(storage.class_name(claim, self.classes)) if claim else None
            if claim is None or sc is None or claim.spec.volume_name:
                return None
            pv = storage.new_volume(claim, sc, placement.node, now_rfc3339())
            pv.metadata.uid = str(uuid.uuid4())
            out.append((pv, storage.bind_claim(claim, pv, sc.metadata.name),
                        int(claim.metadata.resource_version)))
        return out

    def _unassume(self, q: Queued, delay: float = 0.0) -> None:
        key = _key(q.pod)
        self._forget(key)
        q.next_try = self.clock() + delay
        self.queue[key] = q
        self.runner.wake()

    def _refresh(self, q: Queued, kv) -> None:
        """After a lost race: drop the pod if it is gone, or take the stored version."""
        key = _key(q.pod)
        if kv is None:
            self.queue.pop(key, None)
            return
        fresh = self.store.decode(POD, kv)
        self.seen_rv[key] = max(self.seen_rv.get(key, 0), kv.mod_revision)
        if fresh.spec.node_name or fresh.status.phase in TERMINAL_PHASES:
            # Someone else bound it (or it finished): never queue a bound pod again.
            self.queue.pop(key, None)
            self._forget(key)
            if fresh.spec.node_name and fresh.status.phase not in TERMINAL_PHASES:
                self.pod_node[key] = fresh.spec.node_name
                self.bound.setdefault(fresh.spec.node_name, {})[key] = pod_info(fresh)
            return
        q.pod, q.info = fresh, pod_info(fresh)
        self.queue[key] = q

    async def _mark_unschedulable(self, q: Queued, verdict: Unschedulable) -> None:
        pod = pb.Pod()
        pod.CopyFrom(q.pod)
        _set_condition(pod, "False", "Unschedulable", verdict.message, now_rfc3339())
        pod.status.ClearField("scheduling_details")
        for node, detail in verdict.details[:MAX_DETAILS]:
            pod.status.scheduling_details.add(node=node, reason=detail)
        if len(verdict.details) > MAX_DETAILS:
            pod.status.scheduling_details.add(
                node="...", reason=f"and {len(verdict.details) - MAX_DETAILS} more nodes")
        ops = [Op(self.store.key_of(pod), pod, int(q.pod.metadata.resource_version))]
        try:
            if self.events:
                ops.append(await self.events.op(pod, WARNING, "FailedScheduling",
                                                verdict.message))
            ok, revision, current = await self.store.commit(ops)
        except NotLeader:
            raise
        except StoreError as err:
            log.log(self.store.health.retry_level(),
                    "recording why %s is unschedulable failed: %s", _key(pod), err)
            return
        if ok:
            q.last_message = verdict.message
            pod.metadata.resource_version = str(revision)
            q.pod = pod
            self.seen_rv[_key(pod)] = max(self.seen_rv.get(_key(pod), 0), revision)
        else:
            self._refresh(q, current.get(ops[0].key))

    # ---- the loop ----

    def _resync_nodes(self, nodes) -> None:
        self.nodes = {n.metadata.name: n for n in nodes}
        self._node_base.clear()
        self._cluster_changed()

    async def step(self) -> float | None:
        """One batch; returns when the next is due (0: at once, the queue has more)."""
        if await self.schedule_once():
            return 0.0
        waits = [q.next_try for q in self.queue.values()]
        return max(0.0, min(waits) - self.clock()) if waits else None

    async def run(self) -> None:
        """Runs until cancelled (controllers/runner.py)."""
        await self.runner.run()
