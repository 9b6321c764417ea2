"""The StatefulSet controller shell: watches StatefulSets, pods, claims and Services,
reconciles (controllers/statefulset.py), and writes each step in one Txn.

Every write for a StatefulSet compares its revision and that of each pod and claim it changes;
creates compare the key as absent, so even two controllers racing could never make a second
`<name>-<i>`. Its own writes go into the cache at once (older watch events for those keys are
then ignored by revision), so the next pass never plans again what is already written.
"""

from __future__ import annotations

import logging
import time
import uuid

from controlplane.controllers.runner import DirtyKeys, Runner, Watch
from controlplane.controllers.statefulset import Plan, reconcile
from controlplane.events import WARNING, EventRecorder
from controlplane.store import ABSENT, NotLeader, Op, Store, StoreError
from moorage.manifest import defaults
from moorage.model import kinds, storage
from moorage.model import statefulsets as sts_model
from moorage.model.pods import graceful_delete, is_terminating
from moorage.model.timestamps import rfc3339
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

POD = kinds.BY_NAME["Pod"]
STATEFULSET = kinds.BY_NAME["StatefulSet"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
SERVICE = kinds.BY_NAME["Service"]
STORAGE_CLASS = kinds.BY_NAME["StorageClass"]
# Objects written per Txn: each also carries an Event, and etcd caps a Txn at 128 ops.
BURST = 40
RETRY_SECONDS = 0.5
SWEEP_SECONDS = 15.0
NO_SERVICE = "FailedToFindService"


def _key(obj) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def owner_key(pod: pb.Pod) -> str | None:
    for ref in pod.metadata.owner_references:
        if ref.controller and ref.kind == sts_model.KIND:
            return f"{pod.metadata.namespace}/{ref.name}"
    return None


class StatefulSetController:
    def __init__(self, store: Store, *, clock=time.time, record_events: bool = True):
        self.store = store
        self.clock = clock
        self.events = EventRecorder(store, "statefulset-controller") if record_events else None
        self.sets: dict[str, pb.StatefulSet] = {}
        # The last version of each deleted StatefulSet, until its pods (and, with
        # whenDeleted: Delete, its claims) are gone.
        self.deleted: dict[str, pb.StatefulSet] = {}
        self.pods: dict[str, dict[str, pb.Pod]] = {}          # namespace -> name -> pod
        self.claims: dict[str, dict[str, pb.PersistentVolumeClaim]] = {}
        self.services: dict[str, pb.Service] = {}
        self.classes: dict[str, pb.StorageClass] = {}
        self.seen_rv: dict[str, int] = {}
        self.warned: set[str] = set()
        self.keys = DirtyKeys(time.monotonic)
        self.next_sweep = 0.0
        self.runner = Runner(self.step, store, [
            Watch(POD, self._resync_pods, self.put_pod, self.drop_pod),
            Watch(CLAIM, self._resync_claims, self.put_claim, self.drop_claim),
            Watch(SERVICE, self._resync_services, self.put_service, self.drop_service),
            Watch(STORAGE_CLASS, self._resync_classes, self.put_class, self.drop_class),
            Watch(STATEFULSET, self._resync_sets, self.put_set, self.drop_set)])
        self.synced = self.runner.synced

    # ---- cache ----

    def _newer(self, key: str, rv: int) -> bool:
        if rv <= self.seen_rv.get(key, 0):
            return False
        self.seen_rv[key] = rv
        return True

    def _mark_ns_name(self, namespace: str, name: str) -> None:
        """Marks the StatefulSet a pod or claim name may belong to (`<set>-<i>` or
        `<template>-<set>-<i>`)."""
        for key, sts in list(self.sets.items()) + list(self.deleted.items()):
            if sts.metadata.namespace != namespace:
                continue
            set_name = sts.metadata.name
            if name.startswith(set_name + "-") or f"-{set_name}-" in name:
                self.keys.mark(key)

    def put_pod(self, pod: pb.Pod) -> None:
        if not self._newer("pod:" + _key(pod), int(pod.metadata.resource_version or 0)):
            return
        self.pods.setdefault(pod.metadata.namespace, {})[pod.metadata.name] = pod
        owner = owner_key(pod)
        if owner is not None:
            self.keys.mark(owner)
        else:
            self._mark_ns_name(pod.metadata.namespace, pod.metadata.name)

    def drop_pod(self, pod: pb.Pod, forget: bool = True) -> None:
        self.pods.get(pod.metadata.namespace, {}).pop(pod.metadata.name, None)
        if forget:
            self.seen_rv.pop("pod:" + _key(pod), None)
        owner = owner_key(pod)
        if owner is not None:
            self.keys.mark(owner)
        else:
            self._mark_ns_name(pod.metadata.namespace, pod.metadata.name)

    def put_claim(self, claim: pb.PersistentVolumeClaim) -> None:
        if not self._newer("pvc:" + _key(claim), int(claim.metadata.resource_version or 0)):
            return
        self.claims.setdefault(claim.metadata.namespace, {})[claim.metadata.name] = claim
        self._mark_ns_name(claim.metadata.namespace, claim.metadata.name)

    def drop_claim(self, claim: pb.PersistentVolumeClaim, forget: bool = True) -> None:
        self.claims.get(claim.metadata.namespace, {}).pop(claim.metadata.name, None)
        if forget:
            self.seen_rv.pop("pvc:" + _key(claim), None)
        self._mark_ns_name(claim.metadata.namespace, claim.metadata.name)

    def put_service(self, svc: pb.Service) -> None:
        self.services[_key(svc)] = svc
        self.warned.discard(_key(svc))

    def drop_service(self, svc: pb.Service) -> None:
        self.services.pop(_key(svc), None)

    def put_class(self, sc: pb.StorageClass) -> None:
        self.classes[sc.metadata.name] = sc

    def drop_class(self, sc: pb.StorageClass) -> None:
        self.classes.pop(sc.metadata.name, None)

    def _resync_classes(self, items) -> None:
        self.classes = {sc.metadata.name: sc for sc in items}

    def put_set(self, sts: pb.StatefulSet) -> None:
        if not self._newer("sts:" + _key(sts), int(sts.metadata.resource_version or 0)):
            return
        self.sets[_key(sts)] = sts
        self.deleted.pop(_key(sts), None)
        self.keys.mark(_key(sts))

    def drop_set(self, sts: pb.StatefulSet) -> None:
        old = self.sets.pop(_key(sts), None)
        self.seen_rv.pop("sts:" + _key(sts), None)
        self.deleted[_key(sts)] = old if old is not None else sts
        self.keys.mark(_key(sts))

    def _resync_pods(self, items) -> None:
        self.pods = {}
        self.seen_rv = {k: v for k, v in self.seen_rv.items() if not k.startswith("pod:")}
        for pod in items:
            self.put_pod(pod)
        for key in self.sets:
            self.keys.mark(key)

    def _resync_claims(self, items) -> None:
        self.claims = {}
        self.seen_rv = {k: v for k, v in self.seen_rv.items() if not k.startswith("pvc:")}
        for claim in items:
            self.put_claim(claim)

    def _resync_services(self, items) -> None:
        self.services = {_key(s): s for s in items}

    def _resync_sets(self, items) -> None:
        listed = {_key(s) for s in items}
        for key, sts in list(self.sets.items()):
            if key not in listed:
                self.drop_set(sts)
        for sts in items:
            self.put_set(sts)

    # ---- one pass for one StatefulSet ----

    def _namespace_pods(self, ns: str) -> list[pb.Pod]:
        return [self.pods[ns][n] for n in sorted(self.pods.get(ns, {}))]

    def _namespace_claims(self, ns: str) -> list[pb.PersistentVolumeClaim]:
        return [self.claims[ns][n] for n in sorted(self.claims.get(ns, {}))]

    async def sync(self, key: str) -> None:
        stored = self.sets.get(key)
        if stored is None:
            await self._cascade(key)
            return
        ns = stored.metadata.namespace
        sts = pb.StatefulSet()
        sts.CopyFrom(stored)
        plan = reconcile(sts, self._namespace_pods(ns), self._namespace_claims(ns),
                         self.clock())
        updated = pb.StatefulSet()
        updated.CopyFrom(sts)
        updated.status.CopyFrom(plan.status)
        if plan.annotations:
            updated.metadata.annotations.update(plan.annotations)
        unchanged = updated == stored
        if unchanged and not plan.changes_objects:
            return
        events = list(plan.events)
        if plan.create:
            events += self._service_warning(sts)
        await self._write(key, stored, None if unchanged else updated, plan, events)

    def _service_warning(self, sts: pb.StatefulSet) -> list[tuple[str, str, str]]:
        """Once per missing or non-headless Service: its pods get no stable DNS names."""
        skey = f"{sts.metadata.namespace}/{sts.spec.service_name}"
        svc = self.services.get(skey)
        if svc is not None and svc.spec.cluster_ip == "None":
            return []
        if skey in self.warned:
            return []
        self.warned.add(skey)
        why = (f'service "{sts.spec.service_name}" not found' if svc is None else
               f'service "{sts.spec.service_name}" is not headless (clusterIP: '
               f"{svc.spec.cluster_ip or 'unset'})")
        return [(WARNING, NO_SERVICE, f"{why}: the pods of StatefulSet {sts.metadata.name} "
                 "have no stable DNS names until a headless Service of that name selects "
                 "them")]

    async def _cascade(self, key: str) -> None:
        """A deleted StatefulSet's pods go (gracefully); with whenDeleted: Delete its claims
        follow once no pod of it is left."""
        sts = self.deleted.get(key)
        ns, name = key.split("/", 1)
        pods = [p for p in self._namespace_pods(ns) if owner_key(p) == key]
        going = [p for p in pods if not is_terminating(p)]
        claims: list[pb.PersistentVolumeClaim] = []
        if not pods and sts is not None and sts_model.when_deleted(sts) == sts_model.DELETE:
            for tmpl in sts.spec.volume_claim_templates:
                prefix = f"{tmpl.metadata.name}-"
                for c in self._namespace_claims(ns):
                    if c.metadata.name.startswith(prefix) and not is_terminating(c) and \
                            sts_model.ordinal_of(name, c.metadata.name[len(prefix):]) \
                            is not None:
                        claims.append(c)
        if not going and not claims:
            if not pods:
                self.deleted.pop(key, None)
            return
        plan = Plan((), (), tuple(going), (), tuple(claims), pb.StatefulSetStatus(), None, ())
        await self._write(key, None, None, plan, [])

    async def _write(self, key: str, stored: pb.StatefulSet | None,
                     updated: pb.StatefulSet | None, plan: Plan, events) -> None:
        now = self.clock()
        ops: list[Op] = []
        if stored is not None:
            # Guards every write with the spec it was planned from.
            ops.append(Op(self.store.key_of(stored), updated,
                          int(stored.metadata.resource_version), guard_only=updated is None))
        made_claims = list(plan.create_claims[:BURST])
        made_pods = list(plan.create[:max(0, BURST - len(made_claims))])
        more = len(made_pods) < len(plan.create) or len(made_claims) < len(plan.create_claims)
        default = storage.pick_default(self.classes.values())
        for c in made_claims:
            # As an apply admits a claim: the default class written in, pvc-protection.
            defaults.default_claim(c, default.metadata.name if default else None)
            c.metadata.uid = str(uuid.uuid4())
            ops.append(Op(self.store.key_of(c), c, ABSENT))
        for pod in made_pods:
            pod.metadata.uid = str(uuid.uuid4())
            ops.append(Op(self.store.key_of(pod), pod, ABSENT))
        marked: list[pb.Pod] = []
        removed: list[pb.Pod] = []
        for p in plan.delete[:BURST]:
            rev = int(p.metadata.resource_version)
            mark = graceful_delete(p, None, now)
            if mark is None:
                ops.append(Op(self.store.key_of(p), None, rev))
                removed.append(p)
            else:
                marked.append(mark)
                ops.append(Op(self.store.key_of(p), mark, rev))
        more |= len(plan.delete) > BURST
        claim_puts: list[pb.PersistentVolumeClaim] = []
        claim_gone: list[pb.PersistentVolumeClaim] = []
        for c in plan.resize_claims[:BURST]:
            ops.append(Op(self.store.key_of(c), c, int(c.metadata.resource_version)))
            claim_puts.append(c)
        for c in plan.delete_claims[:BURST]:
            rev = int(c.metadata.resource_version)
            if c.metadata.finalizers:
                # Its finalizers (pvc-protection) remove it once nothing uses it.
                mark = pb.PersistentVolumeClaim()
                mark.CopyFrom(c)
                mark.metadata.deletion_timestamp = rfc3339(now)
                ops.append(Op(self.store.key_of(c), mark, rev))
                claim_puts.append(mark)
            else:
                ops.append(Op(self.store.key_of(c), None, rev))
                claim_gone.append(c)
        subject = stored if stored is not None else self.deleted.get(key)
        if self.events and subject is not None:
            for type_, reason, message in events[:BURST]:
                ops.append(await self.events.op(subject, type_, reason, message))
        try:
            ok, revision, _current = await self.store.commit(ops)
        except NotLeader:
            raise
        except StoreError as err:
            log.log(self.store.health.retry_level(), "syncing statefulset %s failed: %s",
                    key, err)
            self._retry(key)
            return
        if not ok:
            await self._refresh(key)
            self._retry(key)
            return
        if updated is not None:
            updated.metadata.resource_version = str(revision)
            self.put_set(updated)
        for obj in made_pods + marked:
            obj.metadata.resource_version = str(revision)
            self.put_pod(obj)
        for obj in made_claims + claim_puts:
            obj.metadata.resource_version = str(revision)
            self.put_claim(obj)
        for p in removed:
            self.seen_rv["pod:" + _key(p)] = revision
            self.drop_pod(p, forget=False)
        for c in claim_gone:
            self.seen_rv["pvc:" + _key(c)] = revision
            self.drop_claim(c, forget=False)
        if more:
            self.keys.mark(key)

    async def _refresh(self, key: str) -> None:
        """After a lost race: re-read the set, and the namespace's pods and claims."""
        ns, name = key.split("/", 1)
        try:
            sts = await self.store.get(STATEFULSET, ns, name)
            self.seen_rv.pop("sts:" + key, None)
            self.put_set(sts)
        except StoreError:
            pass
        for kind, bucket, put, tag in ((POD, self.pods, self.put_pod, "pod:"),
                                       (CLAIM, self.claims, self.put_claim, "pvc:")):
            try:
                items, _ = await self.store.list(kind, ns)
            except StoreError:
                continue
            bucket[ns] = {}
            self.seen_rv = {k: v for k, v in self.seen_rv.items()
                            if not k.startswith(f"{tag}{ns}/")}
            for obj in items:
                put(obj)

    def _retry(self, key: str) -> None:
        self.keys.mark(key, RETRY_SECONDS)

    # ---- the loop (controllers/runner.py) ----

    async def step(self) -> float | None:
        now = time.monotonic()
        if now >= self.next_sweep:
            for key in list(self.sets) + list(self.deleted):
                self.keys.mark(key)
            self.next_sweep = now + SWEEP_SECONDS
        for key in self.keys.take():
            try:
                await self.sync(key)
            except NotLeader:
                raise
            except Exception:  # noqa: BLE001 - one bad StatefulSet must not stop the rest
                log.exception("syncing statefulset %s failed", key)
                self._retry(key)
        due = self.keys.next_in()
        sweep = max(0.0, self.next_sweep - time.monotonic())
        return sweep if due is None else min(due, sweep)

    async def run(self) -> None:
        """Runs until cancelled."""
        await self.runner.run()

