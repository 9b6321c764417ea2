"""Apply: turns validated manifest documents into one all-or-nothing etcd transaction.

Semantics follow `kubectl apply` for a single writer: the manifest replaces spec, labels and
annotations; uid, creationTimestamp and status are kept; fields the cluster owns (a pod's
nodeName, a service's clusterIP, a scaled Deployment's replicas when the manifest omits them)
are preserved. Every object's key, and the namespace each lives in, is compared in the same
Txn, so a concurrent writer makes the apply retry from fresh state instead of clobbering.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from controlplane.allocators.serviceips import DEFAULT_SERVICE_CIDR, ServiceAllocator
from controlplane.store import ABSENT, AlreadyExists, Conflict, Op, Store
from moorage.manifest import (
    Document,
    ManifestError,
    defaults,
    located,
    statefulsetchecks,
    storagechecks,
)
from moorage.manifest.convert import FieldError
from moorage.model import kinds, storage
from moorage.model.timestamps import now_rfc3339
from moorage.v1 import objects_pb2 as pb

MAX_APPLY_BYTES = 3 * 1024 * 1024
MAX_APPLY_OBJECTS = 1000
MAX_ATTEMPTS = 5
# Last known (mod_revision, bytes) per key: lets an apply go straight to its Txn. Only a hint:
# the Txn compares every revision, and a miss refreshes from the failure branch.
CACHE_LIMIT = 50_000

NAMESPACE = kinds.BY_NAME["Namespace"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
STORAGE_CLASS = kinds.BY_NAME["StorageClass"]
SERVICE = kinds.BY_NAME["Service"]
STATEFULSET = kinds.BY_NAME["StatefulSet"]


class Invalid(ValueError):
    """An update the manifest asks for that the object's rules forbid."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.error = FieldError(path, message)


@dataclass(slots=True)
class Planned:
    doc: Document
    key: bytes
    action: str                  # created, configured, unchanged, deleted
    obj: object
    previous: object | None
    expect: int                  # mod_revision to compare (ABSENT for a create)


class Applier:
    def __init__(self, store: Store, service_cidr: str = DEFAULT_SERVICE_CIDR):
        self.store = store
        self.cache: dict[bytes, tuple[int, bytes]] = {}
        # Services' virtual IPs and node ports, leased in the apply's own Txn.
        self.services = ServiceAllocator(store, service_cidr)

    def _remember(self, key: bytes, rev: int, value: bytes | None) -> None:
        if value is None:
            self.cache.pop(key, None)
            return
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = (rev, value)

    async def apply(self, docs: list[Document], dry_run: bool = False,
                    create_only: bool = False) -> tuple[list[Planned], int]:
        """With `create_only` (`kubectl create`), an object that exists already fails the
        whole apply with AlreadyExists and nothing is written."""
        if len(docs) > MAX_APPLY_OBJECTS:
            raise ManifestError([f"{len(docs)} objects in one apply is over the limit of "
                                 f"{MAX_APPLY_OBJECTS}; split them into several applies"])
        keys = [self.store.key_of(d.obj) for d in docs]
        in_request = {d.obj.metadata.name for d in docs if kinds.kind_of(d.obj) is NAMESPACE}
        ns_keys = sorted({self.store.key(NAMESPACE, "", d.obj.metadata.namespace)
                          for d in docs if kinds.kind_of(d.obj).namespaced
                          and d.obj.metadata.namespace not in in_request})
        # A manifest's resourceVersion is compared with the stored one, so it must be read,
        # not taken from the hint cache, or a stale entry would fail the apply every time.
        # So must a create's key: a stale entry for an object deleted since would refuse it.
        # So must a claim's: whether it may change depends on what the cluster wrote into it
        # (Bound, its volume), which the hint cache may not have seen.
        pinned = [k for d, k in zip(docs, keys)
                  if create_only or d.obj.metadata.resource_version
                  or kinds.kind_of(d.obj) is CLAIM]
        if dry_run:
            # No Txn will check the answer, so read the truth rather than the hint cache.
            found, _ = await self.store.get_many(keys + ns_keys)
            for key in keys + ns_keys:
                kv = found.get(key)
                self._remember(key, kv.mod_revision if kv else 0, kv.value if kv else None)
        else:
            missing = [k for k in ns_keys if k not in self.cache] + pinned
            if missing:
                found, _ = await self.store.get_many(missing)
                for key in missing:
                    kv = found.get(key)
                    self._remember(key, kv.mod_revision if kv else 0, kv.value if kv else None)
        classes = await self._classes(docs)
        await self._check_service_names(docs)
        for _ in range(MAX_ATTEMPTS):
            plans = self._plan(docs, keys, ns_keys, create_only, classes)
            leases = await self.services.allocate(plans)
            if dry_run:
                return plans, 0
            ops = [Op(p.key, None if p.action == "deleted" else p.obj, p.expect,
                      guard_only=p.action == "unchanged") for p in plans]
            ops += leases
            ops += [Op(k, None, self.cache[k][0], guard_only=True) for k in ns_keys]
            # The classes the claims use must still be there as they were read.
            in_request = set(keys)
            ops += [Op(k, None, rev, guard_only=True)
                    for k, rev in self._class_guards(plans, classes).items()
                    if k not in in_request]
            ok, revision, current = await self.store.commit(ops)
            if ok:
                for p in plans:
                    if p.action == "deleted":
                        self._remember(p.key, revision, None)
                    elif p.action != "unchanged":
                        encoded = self.store.encode(p.obj, p.key)
                        self._remember(p.key, revision, encoded)
                        p.obj.metadata.resource_version = str(revision)
                changed = any(p.action != "unchanged" for p in plans)
                return plans, revision if changed else 0
            for op in ops:
                kv = current.get(op.key)
                self._remember(op.key, kv.mod_revision if kv else 0,
                               kv.value if kv else None)
        raise Conflict("the objects kept changing while applying; try again")

    async def _classes(self, docs: list[Document]) -> dict[str, object] | None:
        """The StorageClasses the request's claims may use (stored, then the request's own);
        None when the request holds no claim."""
        if not any(kinds.kind_of(d.obj) is CLAIM for d in docs):
            return None
        stored, _ = await self.store.list(STORAGE_CLASS)
        out = {sc.metadata.name: sc for sc in stored}
        out.update({d.obj.metadata.name: d.obj for d in docs
                    if kinds.kind_of(d.obj) is STORAGE_CLASS})
        return out

    def _class_guards(self, plans: list[Planned], classes) -> dict[bytes, int]:
        out = {}
        for p in plans:
            if kinds.kind_of(p.obj) is CLAIM and p.action != "unchanged":
                sc = (classes or {}).get(p.obj.spec.storage_class_name)
                if sc is not None and sc.metadata.resource_version:
                    out[self.store.key_of(sc)] = int(sc.metadata.resource_version)
        return out
    async def _check_service_names(self, docs: list[Document]) -> None:
        """A StatefulSet's serviceName must name a headless Service: one that exists (stored,
        or in this request) with another clusterIP is refused. One that does not exist yet is
        fine (the controller records a Warning Event until it does)."""
        sets = [d for d in docs if kinds.kind_of(d.obj) is STATEFULSET]
        if not sets:
            return
        in_request = {(d.obj.metadata.namespace, d.obj.metadata.name): d.obj for d in docs
                      if kinds.kind_of(d.obj) is SERVICE}
        wanted = {self.store.key(SERVICE, d.obj.metadata.namespace, d.obj.spec.service_name): d
                  for d in sets if d.obj.spec.service_name}
        found, _ = await self.store.get_many(list(wanted))
        problems = []
        for key, doc in wanted.items():
            sts = doc.obj
            svc = in_request.get((sts.metadata.namespace, sts.spec.service_name))
            if svc is None and found.get(key) is not None:
                svc = self.store.decode(SERVICE, found[key])
            if svc is not None and svc.spec.cluster_ip != "None":
                problems.append(located(doc.source, doc.index, FieldError(
                    "spec.serviceName", f'service "{sts.spec.service_name}" is not headless '
                    f"(its clusterIP is {svc.spec.cluster_ip or 'unset'}, not None): a "
                    "StatefulSet's pods get their DNS names from a headless Service")))
        if problems:
            raise ManifestError(problems)

    def _current(self, kind, key: bytes):
        hit = self.cache.get(key)
        if hit is None:
            return None, ABSENT
        return self.store.decode_value(kind, key, hit[1], hit[0]), hit[0]

    def _terminating_namespaces(self, ns_keys: list[bytes]) -> set[str]:
        out = set()
        for key in ns_keys:
            ns, _ = self._current(NAMESPACE, key)
            if ns is not None and ns.metadata.deletion_timestamp:
                out.add(ns.metadata.name)
        return out

    def _plan(self, docs: list[Document], keys: list[bytes], ns_keys: list[bytes],
              create_only: bool = False, classes=None) -> list[Planned]:
        problems = []
        for key in ns_keys:
            if key not in self.cache:
                name = key.decode().rsplit("/", 1)[1]
                for d in docs:
                    if d.obj.metadata.namespace == name and kinds.kind_of(d.obj).namespaced:
                        problems.append(located(d.source, d.index, FieldError(
                            "metadata.namespace", f'namespace "{name}" not found (create it '
                            "first, or apply its Namespace in the same request)")))
        terminating = self._terminating_namespaces(ns_keys + [
            k for d, k in zip(docs, keys) if kinds.kind_of(d.obj) is NAMESPACE])
        plans = []
        for doc, key in zip(docs, keys):
            kind = kinds.kind_of(doc.obj)
            current, rev = self._current(kind, key)
            if create_only and current is not None:
                # The Txn compares this key too, so a create never overwrites what another
                # writer made between this read and the write.
                raise AlreadyExists(f'{_resource(kind)} "{doc.obj.metadata.name}" already '
                                    "exists")
            try:
                obj, action = merge(doc, current)
                if kind is CLAIM:
                    action = _admit_claim(obj, current, classes or {}, action)
            except Invalid as err:
                problems.append(located(doc.source, doc.index, err.error))
                continue
            except Conflict as err:
                raise Conflict(f"{doc.where}: {err}", err.current) from None
            ns = doc.obj.metadata.namespace
            if action == "created" and kind.namespaced and ns in terminating:
                problems.append(located(doc.source, doc.index, FieldError(
                    "metadata.namespace", f"unable to create new content in namespace {ns} "
                    "because it is being terminated (wait until it is gone)")))
                continue
            if current is not None and current.metadata.deletion_timestamp and \
                    current.metadata.finalizers and not obj.metadata.finalizers:
                # The last finalizer of an object being deleted is gone: so is the object.
                action = "deleted"
            plans.append(Planned(doc, key, action, obj, current, rev))
        if problems:
            raise ManifestError(problems)
        return plans


def _admit_claim(claim, current, classes: dict, action: str) -> str:
    """The default class written into a new claim that names none, the class checked to
    exist, and Kubernetes' rules for changing a stored claim."""
    if current is None:
        default = storage.pick_default(classes.values())
        defaults.default_claim(claim, default.metadata.name if default else None)
        claim.status.phase = storage.PENDING
    name = claim.spec.storage_class_name
    if claim.spec.HasField("storage_class_name") and name and name not in classes:
        raise Invalid("spec.storageClassName",
                      f'storageclass.storage.k8s.io "{name}" not found')
    if current is not None:
        err = storagechecks.claim_update(claim, current, classes.get(name))
        if err is not None:
            raise Invalid(err.path, err.message)
    return action


def _resource(kind: kinds.Kind) -> str:
    """`configmaps`, `deployments.apps`: how Kubernetes names a resource in its errors."""
    group = kind.api_version.split("/")[0] if "/" in kind.api_version else ""
    return f"{kind.plural}.{group}" if group else kind.plural


def merge(doc: Document, current) -> tuple[object, str]:
    """The object to store for `doc` given what is stored, and the apply action."""
    new = type(doc.obj)()
    new.CopyFrom(doc.obj)
    kind = kinds.kind_of(new)
    wanted_rv = new.metadata.resource_version
    new.metadata.ClearField("resource_version")
    has_status = "status" in new.DESCRIPTOR.fields_by_name
    if has_status:
        new.ClearField("status")  # status is the cluster's to report, never the manifest's
    if current is None:
        if wanted_rv:
            raise Conflict(f'{kind.plural} "{new.metadata.name}" does not exist, but the '
                           f"manifest expects resourceVersion {wanted_rv}")
        new.metadata.uid = str(uuid.uuid4())
        new.metadata.creation_timestamp = now_rfc3339()
        new.metadata.generation = 1
        if kind.name == "Pod":
            new.status.phase = "Pending"
        elif kind.name == "Namespace":
            new.status.phase = "Active"
        return new, "created"
    if wanted_rv and wanted_rv != current.metadata.resource_version:
        raise Conflict(
            f'Operation cannot be fulfilled on {kind.plural} "{new.metadata.name}": the manifest '
            f"has resourceVersion {wanted_rv} but the object is now at "
            f"{current.metadata.resource_version}; read it again",
            int(current.metadata.resource_version))
    _preserve_owned_fields(new, current, doc.raw)
    meta = new.metadata
    meta.uid = current.metadata.uid
    meta.creation_timestamp = current.metadata.creation_timestamp
    # An apply never undoes a deletion in progress.
    meta.deletion_timestamp = current.metadata.deletion_timestamp
    if current.metadata.HasField("deletion_grace_period_seconds"):
        meta.deletion_grace_period_seconds = current.metadata.deletion_grace_period_seconds
    if not meta.owner_references:
        meta.owner_references.extend(current.metadata.owner_references)
    if has_status and current.HasField("status"):
        new.status.CopyFrom(current.status)
    spec_changed = hasattr(new, "spec") and new.spec != current.spec
    if kind.name in ("ConfigMap", "Secret"):
        # Their generation counts data changes: what restart-on-config-change Deployments
        # follow (a reseal under a new key changes the revision, not the generation).
        spec_changed = new.data != current.data or (
            kind.name == "ConfigMap" and new.binary_data != current.binary_data)
    meta.generation = current.metadata.generation + (1 if spec_changed else 0)
    stored = type(current)()
    stored.CopyFrom(current)
    stored.metadata.ClearField("resource_version")
    return new, ("unchanged" if new == stored else "configured")


# Annotations the cluster writes (a Deployment's revision and history); a manifest that does
# not mention them leaves them alone, as kubectl apply leaves keys it never set.
SYSTEM_ANNOTATION_PREFIXES = ("deployment.kubernetes.io/", "moorage.io/", "pv.kubernetes.io/",
                              "volume.kubernetes.io/")


def _preserve_owned_fields(new, current, raw: dict) -> None:
    for key, value in current.metadata.annotations.items():
        if key.startswith(SYSTEM_ANNOTATION_PREFIXES) and key not in new.metadata.annotations:
            new.metadata.annotations[key] = value
    kind = kinds.kind_of(new).name
    spec_raw = raw.get("spec") if isinstance(raw.get("spec"), dict) else {}
    if kind in ("Deployment", "StatefulSet") and "replicas" not in spec_raw:
        new.spec.replicas = current.spec.replicas
    if kind == "StatefulSet":
        problem = statefulsetchecks.update_problem(new, current)
        if problem is not None:
            raise Invalid(*problem)
    elif kind == "Pod":
        if not new.spec.node_name:
            new.spec.node_name = current.spec.node_name
        _check_pod_update(new.spec, current.spec)
    elif kind == "Service":
        if not new.spec.cluster_ip:
            new.spec.cluster_ip = current.spec.cluster_ip
        elif current.spec.cluster_ip and new.spec.cluster_ip != current.spec.cluster_ip:
            raise Invalid("spec.clusterIP", f"is immutable (it is {current.spec.cluster_ip})")
        for port, old in zip(new.spec.ports, current.spec.ports):
            if not port.node_port and port.port == old.port and new.spec.type == "NodePort":
                port.node_port = old.node_port
    elif kind == "Node" and not new.spec.pod_cidr:
        new.spec.pod_cidr = current.spec.pod_cidr
    elif kind in ("ConfigMap", "Secret"):
        _check_config_update(new, current)
    elif kind == "PersistentVolumeClaim":
        # What the cluster wrote: the class admission chose, the volume it bound to.
        if not new.spec.HasField("storage_class_name") and \
                current.spec.HasField("storage_class_name"):
            new.spec.storage_class_name = current.spec.storage_class_name
        new.spec.volume_name = new.spec.volume_name or current.spec.volume_name
    elif kind == "PersistentVolume":
        if not new.spec.HasField("claim_ref"):
            new.spec.claim_ref.CopyFrom(current.spec.claim_ref)
        err = storagechecks.volume_update(new, current)
        if err is not None:
            raise Invalid(err.path, err.message)
    elif kind == "StorageClass":
        err = storagechecks.class_update(new, current)
        if err is not None:
            raise Invalid(err.path, err.message)
    meta_raw = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    if "finalizers" not in meta_raw:
        # Finalizers belong to whoever put them there; a manifest that does not list them
        # leaves them alone.
        del new.metadata.finalizers[:]
        new.metadata.finalizers.extend(current.metadata.finalizers)


_FROZEN = "field is immutable when `immutable` is set"


def _check_config_update(new, current) -> None:
    """Kubernetes' rules: a Secret's type never changes; once `immutable` is true, neither
    the data nor `immutable` itself may change."""
    if kinds.kind_of(new).name == "Secret" and new.type != current.type:
        raise Invalid("type", f"field is immutable (it is {current.type})")
    if not current.immutable:
        return
    if not new.immutable:
        raise Invalid("immutable", _FROZEN)
    if new.data != current.data:
        raise Invalid("data", _FROZEN)
    if kinds.kind_of(new).name == "ConfigMap" and new.binary_data != current.binary_data:
        raise Invalid("binaryData", _FROZEN)


def _check_pod_update(new: pb.PodSpec, current: pb.PodSpec) -> None:
    """As in Kubernetes, a pod's spec is fixed once created, except its containers' images."""
    probe = pb.PodSpec()
    probe.CopyFrom(new)
    if len(probe.containers) == len(current.containers):
        for c, old in zip(probe.containers, current.containers):
            # The pull policy's default follows the tag, so it may change with the image.
            c.image, c.image_pull_policy = old.image, old.image_pull_policy
    if probe != current:
        raise Invalid("spec", "a pod's spec cannot change after creation except "
                              "spec.containers[*].image; delete and re-create the pod, or use "
                              "a Deployment")
