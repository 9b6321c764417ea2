"""What a pod's claims and hostPath volumes ask of the scheduler, from the claims, volumes and
classes it knows (pure; the shell keeps those caches, explain reads them from the store).

A bound claim pins the pod to its volume's node; a claim bound with the pod's own placement
(WaitForFirstConsumer) needs its request in local storage on the chosen node; a claim no
placement can fix (missing, being deleted, lost, of an unknown class, ReadWriteOncePod and used
by another pod) blocks the pod on every node with one reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controlplane.scheduler.model import VolumeNeeds
from moorage.model import storage
from moorage.v1 import objects_pb2 as pb

RWOP_IN_USE = ("node has pod using PersistentVolumeClaim with the same name and "
               "ReadWriteOncePod access mode")


def claim_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _blocked(reason: str, detail: str | None = None) -> VolumeNeeds:
    return VolumeNeeds(blocked=(reason, detail or reason))


def needs(pod: pb.Pod, claims: Mapping[str, pb.PersistentVolumeClaim],
          volumes: Mapping[str, pb.PersistentVolume],
          classes: Mapping[str, pb.StorageClass],
          users: Callable[[str], list[str]] = lambda key: []) -> VolumeNeeds | None:
    """`users(claim key)` names the other pods (namespace/name) that hold the claim now."""
    names = storage.claim_names(pod.spec)
    paths = tuple(storage.host_paths(pod.spec))
    if not names and not paths:
        return None
    ns = pod.metadata.namespace
    me = claim_key(ns, pod.metadata.name)
    pinned: list[tuple[str, str]] = []
    unbound: list[str] = []
    new_bytes = 0
    for name in names:
        key = claim_key(ns, name)
        claim = claims.get(key)
        if claim is None:
            return _blocked(f'persistentvolumeclaim "{name}" not found')
        if claim.metadata.deletion_timestamp:
            return _blocked(f'persistentvolumeclaim "{name}" is being deleted')
        if storage.RWOP in claim.spec.access_modes:
            others = [u for u in users(key) if u != me]
            if others:
                return _blocked(RWOP_IN_USE, f"claim {name} is ReadWriteOncePod and used by "
                                             f"pod {others[0].split('/', 1)[1]}")
        if claim.spec.volume_name or claim.status.phase in (storage.BOUND, storage.LOST):
            pv = volumes.get(claim.spec.volume_name)
            if pv is None or claim.status.phase == storage.LOST:
                return _blocked(f'persistentvolumeclaim "{name}" bound to non-existent '
                                f'persistentvolume "{claim.spec.volume_name}"')
            node = storage.pv_node(pv)
            if not node:
                return _blocked(f'persistentvolume "{pv.metadata.name}" has no node affinity')
            pinned.append((name, node))
            continue
        class_name = storage.class_name(claim, classes)
        if not class_name:
            return _blocked(f'persistentvolumeclaim "{name}" has no storage class, and Moorage '
                            "binds claims only to volumes its classes provision")
        sc = classes.get(class_name)
        if sc is None:
            return _blocked(f'storageclass.storage.k8s.io "{class_name}" not found')
        if sc.provisioner != storage.PROVISIONER:
            return _blocked(f'storageclass.storage.k8s.io "{class_name}": provisioner '
                            f"{sc.provisioner} is not served here")
        new_bytes += storage.requested_bytes(claim)
        unbound.append(key)
    return VolumeNeeds(pinned=tuple(sorted(set(pinned))), new_bytes=new_bytes,
                       host_paths=paths, unbound=tuple(unbound))


def storage_used(volumes: Mapping[str, pb.PersistentVolume]) -> dict[str, int]:
    """Bytes given to PersistentVolumes on each node (any phase: data stays until it is
    reclaimed)."""
    out: dict[str, int] = {}
    for pv in volumes.values():
        node = storage.pv_node(pv)
        if node:
            out[node] = out.get(node, 0) + storage.capacity_bytes(pv.spec.capacity)
    return out
