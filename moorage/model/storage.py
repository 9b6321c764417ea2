"""Persistent storage facts both sides share: the built-in local class, the names and keys
Kubernetes uses for claims, volumes and classes, and the pure questions about them (which class
a claim uses, which node a volume lives on, which pods name a claim)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from moorage.model import quantities
from moorage.v1 import objects_pb2 as pb

PROVISIONER = "moorage.io/local"
DEFAULT_CLASS = "local"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# The node's room for local persistent volumes, a quantity in Node.status.capacity.
LOCAL_STORAGE = "moorage.io/local-storage"
# The agent's --allowed-host-paths, comma-joined, on its Node.
ALLOWED_HOST_PATHS_ANNOTATION = "moorage.io/allowed-host-paths"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
HOSTNAME_LABEL = "kubernetes.io/hostname"

RWO, RWOP, ROX, RWX = "ReadWriteOnce", "ReadWriteOncePod", "ReadOnlyMany", "ReadWriteMany"
ACCESS_MODES = (RWO, RWOP)
SHARED_ACCESS_MODES = (ROX, RWX)
RECLAIM_POLICIES = ("Delete", "Retain")
WAIT_FOR_FIRST_CONSUMER, IMMEDIATE = "WaitForFirstConsumer", "Immediate"
BINDING_MODES = (WAIT_FOR_FIRST_CONSUMER, IMMEDIATE)

PENDING, BOUND, LOST, RELEASED, AVAILABLE, FAILED = (
    "Pending", "Bound", "Lost", "Released", "Available", "Failed")


def default_class() -> pb.StorageClass:
    """The class the control plane creates at start when it is absent (uid and timestamps are
    the creator's to set)."""
    sc = pb.StorageClass(api_version="storage.k8s.io/v1", kind="StorageClass",
                         provisioner=PROVISIONER, reclaim_policy="Delete",
                         volume_binding_mode=WAIT_FOR_FIRST_CONSUMER,
                         allow_volume_expansion=True)
    sc.metadata.name = DEFAULT_CLASS
    sc.metadata.annotations[DEFAULT_CLASS_ANNOTATION] = "true"
    return sc


def is_default(sc: pb.StorageClass) -> bool:
    return sc.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION, "").lower() == "true"


def pick_default(classes: Iterable[pb.StorageClass]) -> pb.StorageClass | None:
    """The default class; with several marked default, the newest (as Kubernetes since 1.28),
    ties by name."""
    marked = [sc for sc in classes if is_default(sc) and not sc.metadata.deletion_timestamp]
    if not marked:
        return None
    return max(marked, key=lambda sc: (sc.metadata.creation_timestamp, sc.metadata.name))


def class_name(claim: pb.PersistentVolumeClaim, classes: dict[str, pb.StorageClass]) -> str:
    """The class a claim uses: its own, else the default one ("" when none)."""
    if claim.spec.HasField("storage_class_name"):
        return claim.spec.storage_class_name
    found = pick_default(classes.values())
    return found.metadata.name if found else ""


def requested_bytes_of(values, key: str = "storage") -> int:
    """values[key] (a quantity map: requests, capacity) in bytes; 0 when absent or bad."""
    raw = values.get(key, "")
    try:
        return quantities.memory_bytes(raw) if raw else 0
    except quantities.QuantityError:
        return 0


def requested_bytes(claim: pb.PersistentVolumeClaim) -> int:
    return requested_bytes_of(claim.spec.resources.requests)


def capacity_bytes(capacity) -> int:
    return requested_bytes_of(capacity)


def pv_name(claim: pb.PersistentVolumeClaim) -> str:
    return f"pvc-{claim.metadata.uid}"


def pv_node(pv: pb.PersistentVolume) -> str:
    """The node a local volume lives on (its required kubernetes.io/hostname In [node])."""
    for term in pv.spec.node_affinity.required.node_selector_terms:
        for req in term.match_expressions:
            if req.key == HOSTNAME_LABEL and req.operator == "In" and len(req.values) == 1:
                return req.values[0]
    return ""


def claim_names(spec: pb.PodSpec) -> list[str]:
    """The claims a pod spec names, in order, each once."""
    out: list[str] = []
    for v in spec.volumes:
        if v.HasField("persistent_volume_claim") and v.persistent_volume_claim.claim_name \
                not in out:
            out.append(v.persistent_volume_claim.claim_name)
    return out


def host_paths(spec: pb.PodSpec) -> list[str]:
    return [v.host_path.path for v in spec.volumes if v.HasField("host_path")]


def path_allowed(path: str, prefixes: Iterable[str]) -> bool:
    """Whether `path` (lexically normalised) is one of `prefixes` or under one. Symlinks are
    the agent's to resolve; this is the scheduler's coarse check."""
    norm = posixpath.normpath(path) if path.startswith("/") else ""
    if not norm:
        return False
    for prefix in prefixes:
        p = posixpath.normpath(prefix) if prefix.startswith("/") else ""
        if p and p != "/" and (norm == p or norm.startswith(p.rstrip("/") + "/")):
            return True
    return False


def allowed_host_paths(node: pb.Node) -> list[str]:
    raw = node.metadata.annotations.get(ALLOWED_HOST_PATHS_ANNOTATION, "")
    return [p for p in raw.split(",") if p]


def local_volume_path(pv_name_: str) -> str:
    """Where the PV says its data is: the mount point the agent makes for it under its
    default state dir (<state>/local-volumes/<pv>/mount, the image beside it as disk.img);
    for operators reading `moor describe pv`."""
    return f"/var/lib/moorage/agent/local-volumes/{pv_name_}/mount"


def new_volume(claim: pb.PersistentVolumeClaim, sc: pb.StorageClass, node: str,
               now: str) -> pb.PersistentVolume:
    """The PV the local provisioner makes for `claim` on `node`, already Bound to it."""
    pv = pb.PersistentVolume(api_version="v1", kind="PersistentVolume")
    name = pv_name(claim)
    pv.metadata.name = name
    pv.metadata.creation_timestamp = now
    pv.metadata.generation = 1
    pv.metadata.annotations["pv.kubernetes.io/provisioned-by"] = PROVISIONER
    pv.spec.capacity["storage"] = claim.spec.resources.requests.get("storage", "")
    pv.spec.access_modes.extend(claim.spec.access_modes)
    pv.spec.persistent_volume_reclaim_policy = sc.reclaim_policy or "Delete"
    pv.spec.storage_class_name = sc.metadata.name
    pv.spec.volume_mode = "Filesystem"
    ref = pv.spec.claim_ref
    ref.kind, ref.namespace, ref.name, ref.uid = (
        "PersistentVolumeClaim", claim.metadata.namespace, claim.metadata.name,
        claim.metadata.uid)
    term = pv.spec.node_affinity.required.node_selector_terms.add()
    term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
    pv.spec.local.path = local_volume_path(name)
    pv.status.phase = BOUND
    return pv


def bind_claim(claim: pb.PersistentVolumeClaim, pv: pb.PersistentVolume,
               sc_name: str) -> pb.PersistentVolumeClaim:
    """A copy of `claim` Bound to `pv`."""
    out = pb.PersistentVolumeClaim()
    out.CopyFrom(claim)
    out.spec.volume_name = pv.metadata.name
    if not out.spec.HasField("storage_class_name"):
        out.spec.storage_class_name = sc_name
    out.metadata.annotations["pv.kubernetes.io/bind-completed"] = "yes"
    out.metadata.annotations["volume.kubernetes.io/selected-node"] = pv_node(pv)
    out.status.phase = BOUND
    del out.status.access_modes[:]
    out.status.access_modes.extend(pv.spec.access_modes)
    out.status.capacity.clear()
    out.status.capacity.update(pv.spec.capacity)
    return out
