"""The Deployment controller shell: watches Deployments and pods, reconciles, writes in Txns.

Its cache is rebuilt from etcd by the watches' initial lists. Every write for a Deployment is
one Txn that compares the Deployment's revision (and each deleted pod's), so a concurrent
change (a scale, an apply) makes it re-read and retry rather than act on a stale spec. Its own
writes are applied to the cache at once, so the next pass never re-creates pods the watch has
not delivered yet; older watch events for those keys are then ignored by revision.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid

from controlplane.controllers.deployment import (
    Plan,
    is_owned_by,
    reconcile,
)
from controlplane.controllers.runner import DirtyKeys, Runner, Watch
from controlplane.events import NORMAL, EventRecorder
from controlplane.store import ABSENT, NotFound, NotLeader, Op, Store, StoreError
from controlplane.store.sealing import SealError
from moorage.model import configs, kinds
from moorage.model.pods import graceful_delete, is_terminating
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

POD = kinds.BY_NAME["Pod"]
DEPLOYMENT = kinds.BY_NAME["Deployment"]
CONFIG_KINDS = (kinds.BY_NAME["ConfigMap"], kinds.BY_NAME["Secret"])
# Pods created or deleted per Txn: each also carries an Event, and etcd caps a Txn at 128 ops.
BURST = 40
RETRY_SECONDS = 0.5
# A periodic pass catches progress deadlines and anything a lost write left undone.
SWEEP_SECONDS = 15.0
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _key(obj) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def restarts_on_change(d: pb.Deployment) -> bool:
    return d.metadata.annotations.get(configs.RESTART_ON_CHANGE, "").lower() == "true"


def owner_key(pod: pb.Pod) -> str | None:
    for ref in pod.metadata.owner_references:
        if ref.controller and ref.kind == "Deployment":
            return f"{pod.metadata.namespace}/{ref.name}"
    return None


class DeploymentController:
    def __init__(self, store: Store, *, clock=time.time, rng: random.Random | None = None,
                 record_events: bool = True):
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.events = EventRecorder(store, "deployment-controller") if record_events else None
        self.deployments: dict[str, pb.Deployment] = {}
        self.pods: dict[str, pb.Pod] = {}
        self.owned: dict[str, set[str]] = {}
        self.seen_rv: dict[str, int] = {}
        self.keys = DirtyKeys(time.monotonic)
        self.next_sweep = 0.0
        # (kind, namespace, name) -> "uid/generation" of every ConfigMap and Secret: what a
        # restart-on-config-change Deployment's pods were made from (never their data).
        self.config_versions: dict[tuple[str, str, str], str] = {}
        self.runner = Runner(self.step, store, [
            Watch(POD, self._resync_pods, self.put_pod, self.drop_pod),
            Watch(DEPLOYMENT, self._resync_deployments, self.put_deployment,
                  self.drop_deployment),
            *(Watch(kind, lambda items, k=kind.name: self._resync_configs(k, items),
                    self.put_config, self.drop_config) for kind in CONFIG_KINDS)])
        self.synced = self.runner.synced

    # ---- cache (from the watches and our own writes) ----

    def _newer(self, key: str, rv: int) -> bool:
        if rv <= self.seen_rv.get(key, 0):
            return False
        self.seen_rv[key] = rv
        return True

    def _mark(self, key: str | None) -> None:
        if key is not None:
            self.keys.mark(key)

    def put_pod(self, pod: pb.Pod) -> None:
        key = "pod:" + _key(pod)
        if not self._newer(key, int(pod.metadata.resource_version or 0)):
            return
        self.pods[_key(pod)] = pod
        owner = owner_key(pod)
        if owner is not None:
            self.owned.setdefault(owner, set()).add(_key(pod))
        self._mark(owner)

    def drop_pod(self, pod: pb.Pod, forget: bool = True) -> None:
        self.pods.pop(_key(pod), None)
        if forget:
            self.seen_rv.pop("pod:" + _key(pod), None)
        owner = owner_key(pod)
        if owner is not None:
            self.owned.get(owner, set()).discard(_key(pod))
        self._mark(owner)

    def put_deployment(self, d: pb.Deployment) -> None:
        key = "deploy:" + _key(d)
        if not self._newer(key, int(d.metadata.resource_version or 0)):
            return
        self.deployments[_key(d)] = d
        self._mark(_key(d))

    def drop_deployment(self, d: pb.Deployment) -> None:
        self.deployments.pop(_key(d), None)
        self.seen_rv.pop("deploy:" + _key(d), None)
        self._mark(_key(d))

    @staticmethod
    def _config_key(obj) -> tuple[str, str, str]:
        return (kinds.kind_of(obj).name, obj.metadata.namespace, obj.metadata.name)

    def put_config(self, obj) -> None:
        key = self._config_key(obj)
        version = f"{obj.metadata.uid}/{obj.metadata.generation}"
        if self.config_versions.get(key) != version:
            self.config_versions[key] = version
            self._mark_users(key)

    def drop_config(self, obj) -> None:
        key = self._config_key(obj)
        if self.config_versions.pop(key, None) is not None:
            self._mark_users(key)

    def _resync_configs(self, kind: str, items) -> None:
        self.config_versions = {k: v for k, v in self.config_versions.items() if k[0] != kind}
        for obj in items:
            self.config_versions[self._config_key(obj)] = \
                f"{obj.metadata.uid}/{obj.metadata.generation}"
        for key, d in self.deployments.items():
            if restarts_on_change(d):
                self._mark(key)

    def _mark_users(self, key: tuple[str, str, str]) -> None:
        ref = configs.Ref(key[0], key[2])
        for dkey, d in self.deployments.items():
            if d.metadata.namespace == key[1] and restarts_on_change(d) and \
                    ref in configs.references(d.spec.template.spec):
                self._mark(dkey)

    def effective(self, d: pb.Deployment) -> pb.Deployment:
        """What to reconcile: `d`, or for a restart-on-config-change Deployment a copy whose
        pod template carries the versions of the ConfigMaps and Secrets it uses (so a change
        to one is a new template, rolled out as any other; the stored spec is untouched)."""
        if not restarts_on_change(d):
            return d
        ns = d.metadata.namespace
        refs = sorted(configs.references(d.spec.template.spec))
        stamp = "|".join(f"{r.kind}/{r.name}={self.config_versions.get((r.kind, ns, r.name), '-')}"
                         for r in refs)
        out = pb.Deployment()
        out.CopyFrom(d)
        out.spec.template.metadata.annotations[configs.CONFIG_HASH] = \
            hashlib.sha256(stamp.encode()).hexdigest()[:16]
        return out

    async def _read_missing_configs(self, d: pb.Deployment) -> None:
        """Reads from the store each ConfigMap or Secret `d` uses that the cache lacks: a
        Deployment applied with its configs in one transaction may be seen before their watch
        delivers them, and stamping "absent" first would roll its pods once for nothing."""
        ns = d.metadata.namespace
        for ref in configs.references(d.spec.template.spec):
            key = (ref.kind, ns, ref.name)
            if key in self.config_versions:
                continue
            try:
                obj = await self.store.get(kinds.BY_NAME[ref.kind], ns, ref.name)
            except (NotFound, SealError):
                continue   # absent (or unreadable here): its pods wait for it
            self.config_versions[key] = f"{obj.metadata.uid}/{obj.metadata.generation}"

    # ---- one pass for one Deployment ----

    def _suffixes(self):
        while True:
            yield "".join(self.rng.choice(_SUFFIX_ALPHABET) for _ in range(5))

    async def sync(self, key: str) -> None:
        pods = [self.pods[k] for k in sorted(self.owned.get(key, ())) if k in self.pods]
        stored = self.deployments.get(key)
        if stored is None:
            # Cascade: a deleted Deployment's pods go too (gracefully: see _write).
            going = [p for p in pods if not is_terminating(p)]
            if going:
                await self._write(key, None, None, [], going, ())
            return
        # Apply keeps the revision annotations this controller owns (moorage.io/,
        # deployment.kubernetes.io/), so the stored object is the whole truth.
        d = pb.Deployment()
        d.CopyFrom(stored)
        if restarts_on_change(d):
            await self._read_missing_configs(d)
        plan = reconcile(self.effective(d), pods, self.clock(), self._suffixes())
        strays = [p for p in pods if not is_owned_by(p, d)]  # from an older same-named one
        updated = pb.Deployment()
        updated.CopyFrom(d)
        updated.status.CopyFrom(plan.status)
        if plan.annotations:
            updated.metadata.annotations.update(plan.annotations)
        unchanged = updated == stored
        if unchanged and not plan.changes_pods and not strays:
            return
        await self._write(key, stored, None if unchanged else updated,
                          list(plan.create), list(plan.delete) + strays, self._events(plan))

    @staticmethod
    def _events(plan: Plan) -> list[tuple[str, str]]:
        out = list(plan.events)
        out += [("SuccessfulCreate", f"Created pod: {p.metadata.name}") for p in plan.create]
        out += [("SuccessfulDelete", f"Deleted pod: {p.metadata.name}") for p in plan.delete]
        return out

    async def _write(self, key: str, stored: pb.Deployment | None,
                     updated: pb.Deployment | None, create: list[pb.Pod], delete: list[pb.Pod],
                     events) -> None:
        more = len(create) > BURST or len(delete) > BURST
        create, delete = create[:BURST], delete[:BURST]
        for pod in create:
            pod.metadata.uid = str(uuid.uuid4())
        ops = []
        if stored is not None:
            # Guards every pod write with the spec it was planned from.
            ops.append(Op(self.store.key_of(stored), updated,
                          int(stored.metadata.resource_version), guard_only=updated is None))
        ops += [Op(self.store.key_of(p), p, ABSENT) for p in create]
        # Deleting is graceful: a running pod is marked Terminating (its agent removes it once
        # its containers stopped), others go at once. A cascade deletes whatever state the pod
        # is in; a planned delete, or a mark, must match the version planned from.
        now = self.clock()
        marked: list[pb.Pod] = []
        for p in delete:
            rev = int(p.metadata.resource_version)
            mark = graceful_delete(p, None, now)
            if mark is None:
                ops.append(Op(self.store.key_of(p), None, rev if stored is not None else None))
            else:
                marked.append(mark)
                ops.append(Op(self.store.key_of(p), mark, rev))
        if self.events and stored is not None:
            for reason, message in events[:BURST]:
                ops.append(await self.events.op(stored, NORMAL, reason, message))
        try:
            ok, revision, current = await self.store.commit(ops)
        except NotLeader:
            raise  # deposed: the run loop must end, the new leader takes over
        except StoreError as err:
            log.log(self.store.health.retry_level(), "syncing deployment %s failed: %s", key,
                    err)
            self._retry(key)
            return
        if not ok:
            self._refresh(ops, current)
            self._retry(key)
            return
        if updated is not None:
            updated.metadata.resource_version = str(revision)
            self.put_deployment(updated)
        for pod in create:
            pod.metadata.resource_version = str(revision)
            self.put_pod(pod)
        kept = {_key(m) for m in marked}
        for pod in marked:
            pod.metadata.resource_version = str(revision)
            self.put_pod(pod)
        for pod in delete:
            if _key(pod) not in kept:
                self.seen_rv["pod:" + _key(pod)] = revision
                self.drop_pod(pod, forget=False)
        if more:
            self._mark(key)

    def _refresh(self, ops: list[Op], current: dict) -> None:
        """After a lost race: take the stored versions of everything the Txn compared."""
        for op in ops:
            text = op.key.decode()
            plural = text[len(self.store.prefix) + 1:].split("/", 1)[0]
            if plural not in (POD.plural, DEPLOYMENT.plural):
                continue
            kind = POD if plural == POD.plural else DEPLOYMENT
            kv = current.get(op.key)
            if kv is not None:
                obj = self.store.decode(kind, kv)
                (self.put_pod if kind is POD else self.put_deployment)(obj)
            elif op.expect != ABSENT:
                ns, name = text.rsplit("/", 2)[-2:]
                cached = (self.pods if kind is POD else self.deployments).get(f"{ns}/{name}")
                if cached is not None:
                    (self.drop_pod if kind is POD else self.drop_deployment)(cached)

    def _retry(self, key: str) -> None:
        self.keys.mark(key, RETRY_SECONDS)

    # ---- the loop (controllers/runner.py) ----

    def _resync_pods(self, pods) -> None:
        for pod in list(self.pods.values()):
            self.drop_pod(pod)
        self.seen_rv = {k: v for k, v in self.seen_rv.items() if not k.startswith("pod:")}
        for pod in pods:
            self.put_pod(pod)

    def _resync_deployments(self, deployments) -> None:
        for d in list(self.deployments.values()):
            self.drop_deployment(d)
        for d in deployments:
            self.put_deployment(d)

    async def step(self) -> float | None:
        """Syncs every due Deployment; a periodic sweep catches progress deadlines and
        anything a lost write left undone. Returns when to step again."""
        now = time.monotonic()
        if now >= self.next_sweep:
            for key in list(self.deployments) + list(self.owned):
                self._mark(key)
            self.next_sweep = now + SWEEP_SECONDS
        for key in self.keys.take():
            try:
                await self.sync(key)
            except NotLeader:
                raise
            except Exception:  # noqa: BLE001 - one bad Deployment must not stop the rest
                log.exception("syncing deployment %s failed", key)
                self._retry(key)
        self.owned = {k: v for k, v in self.owned.items() if v}
        due = self.keys.next_in()
        sweep = max(0.0, self.next_sweep - time.monotonic())
        return sweep if due is None else min(due, sweep)

    async def run(self) -> None:
        """Runs until cancelled."""
        await self.runner.run()
