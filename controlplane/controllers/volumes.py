"""The volume controller: the lifecycle of claims and their local volumes after binding (the
scheduler binds, in the pod's own Txn).

`decide` is pure: from the claims, volumes, classes and the claims pods use, it returns the
writes to make, each a Txn with its Events:

- every claim carries `kubernetes.io/pvc-protection` (and a class: the default one when it
  names none, for claims made without the apply path);
- a deleted claim keeps it while a pod that is not Succeeded or Failed names the claim; then the
  finalizer goes and, with it the last one, the claim, and its volume turns Released in the
  same Txn;
- a Bound volume whose claim is gone (a namespace deleted) turns Released; Released with
  reclaimPolicy Delete is the dispatcher's cue to tell the node (VolumeData.deleted), whose
  report removes the PersistentVolume; Retain keeps it, Released, with its data;
- a Bound claim whose volume is gone turns Lost;
- a Bound claim asking for more storage than its volume has grows the volume (when its class
  allows expansion): the node resizes on the next VolumeData;
- a Pending claim of a WaitForFirstConsumer class gets one `WaitForFirstConsumer` Event.

Data is never removed here: only the reclaim policy, carried out by the node, removes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from controlplane.controllers.runner import Runner, Watch
from controlplane.events import NORMAL, WARNING, EventRecorder
from controlplane.store import ABSENT, NotLeader, Op, Store, StoreError
from moorage.model import kinds, storage
from moorage.model.pods import TERMINAL_PHASES
from moorage.model.quantities import format_bytes
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

POD = kinds.BY_NAME["Pod"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
VOLUME = kinds.BY_NAME["PersistentVolume"]
STORAGE_CLASS = kinds.BY_NAME["StorageClass"]
PERIOD_SECONDS = 30.0
WAITING = "waiting for first consumer to be created before binding"


@dataclass(slots=True)
class Write:
    """Objects to put (None value: delete) with the revision each must still be at, and
    Events (object, type, reason, message) committed with them."""

    what: str
    puts: list[tuple[object, int, bool]] = field(default_factory=list)   # (obj, expect, delete)
    events: list[tuple[object, str, str, str]] = field(default_factory=list)
    # Objects that must not exist when it commits (the caches follow separate watches, so a
    # claim may be seen Bound before its new volume is): compared in the same Txn.
    absent: list[tuple[kinds.Kind, str, str]] = field(default_factory=list)


def _copy(obj):
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def _key(obj) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def _rev(obj) -> int:
    return int(obj.metadata.resource_version or 0)


def _release(pv: pb.PersistentVolume, why: str) -> tuple[pb.PersistentVolume, tuple]:
    out = _copy(pv)
    out.status.phase = storage.RELEASED
    policy = pv.spec.persistent_volume_reclaim_policy or "Delete"
    if policy == "Delete":
        out.status.message = f"{why}; reclaim policy Delete: its data is removed on " \
                             f"{storage.pv_node(pv) or 'its node'}"
        event = (out, NORMAL, "VolumeReleased", out.status.message)
    else:
        out.status.message = f"{why}; reclaim policy Retain: the volume and its data stay"
        event = (out, NORMAL, "VolumeRetained", out.status.message)
    return out, event


def decide(claims: dict[str, pb.PersistentVolumeClaim], volumes: dict[str, pb.PersistentVolume],
           classes: dict[str, pb.StorageClass], used: dict[str, set[str]],
           announced: set[str] = frozenset()) -> list[Write]:
    """The writes that bring claims and volumes to where they should be. `used` maps a claim
    key to the pods (namespace/name, not terminal) naming it; `announced` holds the uids of
    claims whose WaitForFirstConsumer Event was recorded."""
    out: list[Write] = []
    claimed_volumes = set()
    for key, claim in sorted(claims.items()):
        pv = volumes.get(claim.spec.volume_name) if claim.spec.volume_name else None
        if pv is not None and pv.spec.claim_ref.uid == claim.metadata.uid:
            claimed_volumes.add(pv.metadata.name)
        meta = claim.metadata
        if meta.deletion_timestamp:
            if storage.PVC_PROTECTION not in meta.finalizers or used.get(key):
                continue
            gone = _copy(claim)
            gone.metadata.finalizers.remove(storage.PVC_PROTECTION)
            write = Write(f"remove claim {key}")
            write.puts.append((gone, _rev(claim), not gone.metadata.finalizers))
            if pv is not None and pv.status.phase == storage.BOUND and \
                    pv.spec.claim_ref.uid == meta.uid:
                released, event = _release(pv, f"claim {key} was deleted")
                write.puts.append((released, _rev(pv), False))
                write.events.append(event)
                claimed_volumes.discard(pv.metadata.name)
            out.append(write)
            continue
        fixed = None
        if storage.PVC_PROTECTION not in meta.finalizers:
            fixed = _copy(claim)
            fixed.metadata.finalizers.append(storage.PVC_PROTECTION)
        if not claim.spec.HasField("storage_class_name"):
            default = storage.pick_default(classes.values())
            if default is not None:
                fixed = fixed or _copy(claim)
                fixed.spec.storage_class_name = default.metadata.name
        if fixed is not None:
            out.append(Write(f"protect claim {key}", [(fixed, _rev(claim), False)]))
            continue
        phase = claim.status.phase
        if phase == storage.BOUND and (pv is None or pv.spec.claim_ref.uid != meta.uid):
            lost = _copy(claim)
            lost.status.phase = storage.LOST
            out.append(Write(f"claim {key} lost", [(lost, _rev(claim), False)], [(
                lost, WARNING, "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is "
                "lost!")], [(VOLUME, "", claim.spec.volume_name)]))
            continue
        if phase == storage.BOUND and pv is not None:
            want = storage.requested_bytes(claim)
            have = storage.capacity_bytes(pv.spec.capacity)
            if want > have:
                sc = classes.get(claim.spec.storage_class_name)
                if sc is None or not sc.allow_volume_expansion:
                    continue
                size = claim.spec.resources.requests["storage"]
                grown = _copy(pv)
                grown.spec.capacity["storage"] = size
                resized = _copy(claim)
                resized.status.capacity["storage"] = size
                out.append(Write(f"expand {key}", [(grown, _rev(pv), False),
                                                   (resized, _rev(claim), False)], [(
                    resized, NORMAL, "VolumeResizeSuccessful",
                    f"volume {pv.metadata.name} grew from {format_bytes(have)} to "
                    f"{format_bytes(want)}")]))
                continue
        if not phase or (phase == storage.PENDING and not claim.spec.volume_name):
            if meta.uid in announced:
                continue
            sc = classes.get(claim.spec.storage_class_name)
            if sc is not None and sc.volume_binding_mode == storage.WAIT_FOR_FIRST_CONSUMER:
                pending = claim
                if not phase:
                    pending = _copy(claim)
                    pending.status.phase = storage.PENDING
                write = Write(f"announce {key}", [(pending, _rev(claim), False)] if not phase
                              else [], [(pending, NORMAL, "WaitForFirstConsumer", WAITING)])
                out.append(write)
    for name, pv in sorted(volumes.items()):
        if pv.status.phase != storage.BOUND or name in claimed_volumes:
            continue
        ref = pv.spec.claim_ref
        claim = claims.get(f"{ref.namespace}/{ref.name}")
        if claim is not None and claim.metadata.uid == ref.uid:
            continue   # its claim binds it (its volumeName is set in the same Txn)
        released, event = _release(pv, f"claim {ref.namespace}/{ref.name} is gone")
        out.append(Write(f"release {name}", [(released, _rev(pv), False)], [event],
                         [(CLAIM, ref.namespace, ref.name)]))
    return out


class VolumeController:
    def __init__(self, store: Store, *, clock=time.time, period: float = PERIOD_SECONDS,
                 record_events: bool = True):
        self.store = store
        self.clock = clock
        self.events = EventRecorder(store, "persistentvolume-controller", clock) \
            if record_events else None
        self.claims: dict[str, pb.PersistentVolumeClaim] = {}
        self.volumes: dict[str, pb.PersistentVolume] = {}
        self.classes: dict[str, pb.StorageClass] = {}
        # pod key -> the claim keys it names (pods not in a terminal phase)
        self.pod_claims: dict[str, tuple[str, ...]] = {}
        self.announced: set[str] = set()
        self.runner = Runner(self.step, store, [
            Watch(CLAIM, self._resync(self.claims, _key), self._put(self.claims, _key),
                  self._delete(self.claims, _key)),
            Watch(VOLUME, self._resync(self.volumes, _name), self._put(self.volumes, _name),
                  self._delete(self.volumes, _name)),
            Watch(STORAGE_CLASS, self._resync(self.classes, _name),
                  self._put(self.classes, _name), self._delete(self.classes, _name)),
            Watch(POD, self._resync_pods, self._put_pod, self._delete_pod)], period=period)
        self.synced = self.runner.synced

    @staticmethod
    def _resync(cache: dict, key_of):
        def resync(items) -> None:
            cache.clear()
            cache.update((key_of(o), o) for o in items)
        return resync

    @staticmethod
    def _put(cache: dict, key_of):
        def put(obj) -> None:
            cache[key_of(obj)] = obj
        return put

    @staticmethod
    def _delete(cache: dict, key_of):
        def delete(obj) -> None:
            cache.pop(key_of(obj), None)
        return delete

    def _resync_pods(self, pods) -> None:
        self.pod_claims.clear()
        for pod in pods:
            self._put_pod(pod)

    def _put_pod(self, pod: pb.Pod) -> None:
        names = storage.claim_names(pod.spec)
        if names and pod.status.phase not in TERMINAL_PHASES:
            ns = pod.metadata.namespace
            self.pod_claims[_key(pod)] = tuple(f"{ns}/{n}" for n in names)
        else:
            self.pod_claims.pop(_key(pod), None)

    def _delete_pod(self, pod: pb.Pod) -> None:
        self.pod_claims.pop(_key(pod), None)

    def used(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for pod, keys in self.pod_claims.items():
            for key in keys:
                out.setdefault(key, set()).add(pod)
        return out

    async def step(self) -> float | None:
        writes = decide(self.claims, self.volumes, self.classes, self.used(), self.announced)
        for write in writes:
            await self._commit(write)
        return None

    async def _commit(self, write: Write) -> None:
        ops = [Op(self.store.key(kind, ns, name), None, ABSENT, guard_only=True)
               for kind, ns, name in write.absent]
        for obj, expect, delete in write.puts:
            ops.append(Op(self.store.key_of(obj), None if delete else obj, expect))
        announces = [e[0].metadata.uid for e in write.events if e[2] == "WaitForFirstConsumer"]
        if not write.puts and not self.events:
            self.announced.update(announces)
            return
        try:
            if self.events:
                for obj, type_, reason, message in write.events:
                    ops.append(await self.events.op(obj, type_, reason, message))
            ok, revision, _ = await self.store.commit(ops)
        except NotLeader:
            raise
        except StoreError as err:
            log.log(self.store.health.retry_level(), "%s failed: %s", write.what, err)
            return
        if not ok:
            return   # something changed meanwhile: its watch event brings the next step
        self.announced.update(announces)
        for obj, _, delete in write.puts:
            cache, key = ((self.claims, _key(obj)) if kinds.kind_of(obj) is CLAIM
                          else (self.volumes, obj.metadata.name))
            if delete:
                cache.pop(key, None)
            else:
                stamped = _copy(obj)
                stamped.metadata.resource_version = str(revision)
                cache[key] = stamped
        log.info("%s", write.what)

    async def run(self) -> None:
        await self.runner.run()


def _name(obj) -> str:
    return obj.metadata.name
