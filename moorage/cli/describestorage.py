"""`moor describe` sections for PersistentVolumeClaims, PersistentVolumes and StorageClasses,
in kubectl's layout (after the shared metadata lines), with Moorage's used bytes."""

from __future__ import annotations

from moorage.cli import printers as p
from moorage.model import storage


def claim(w, pvc) -> None:
    bound = pvc.status.phase == storage.BOUND
    w.field(0, "StorageClass", pvc.spec.storage_class_name)
    status = "Terminating" if pvc.metadata.deletion_timestamp else (pvc.status.phase or
                                                                     storage.PENDING)
    if pvc.metadata.deletion_timestamp:
        status += f" (since {pvc.metadata.deletion_timestamp})"
    w.field(0, "Status", status)
    w.field(0, "Volume", pvc.spec.volume_name)
    w.field(0, "Finalizers", "[" + ", ".join(pvc.metadata.finalizers) + "]")
    w.field(0, "Requested", pvc.spec.resources.requests.get("storage", ""))
    w.field(0, "Capacity", pvc.status.capacity.get("storage", "") if bound else "")
    if bound:
        w.field(0, "Used", p.human_size(pvc.status.used_bytes))
    w.field(0, "Access Modes", p.access_modes(pvc.status.access_modes if bound
                                              else pvc.spec.access_modes))
    w.field(0, "VolumeMode", pvc.spec.volume_mode or "Filesystem")
    w.field(0, "Node", pvc.metadata.annotations.get("volume.kubernetes.io/selected-node", ""))


def volume(w, pv) -> None:
    w.field(0, "Finalizers", "[" + ", ".join(pv.metadata.finalizers) + "]")
    w.field(0, "StorageClass", pv.spec.storage_class_name)
    w.field(0, "Status", pv.status.phase or storage.PENDING)
    ref = pv.spec.claim_ref
    w.field(0, "Claim", f"{ref.namespace}/{ref.name}" if ref.name else "")
    w.field(0, "Reclaim Policy", pv.spec.persistent_volume_reclaim_policy or "Delete")
    w.field(0, "Access Modes", p.access_modes(pv.spec.access_modes))
    w.field(0, "VolumeMode", pv.spec.volume_mode or "Filesystem")
    w.field(0, "Capacity", pv.spec.capacity.get("storage", ""))
    w.line(0, "Node Affinity:")
    terms = pv.spec.node_affinity.required.node_selector_terms
    if not terms:
        w.line(1, "Required Terms:", p.NONE)
    else:
        w.line(1, "Required Terms:")
        for i, term in enumerate(terms):
            exprs = [f"{e.key} {e.operator.lower()} [{', '.join(e.values)}]"
                     for e in term.match_expressions]
            w.line(2, f"Term {i}:", exprs[0] if exprs else p.NONE)
            for text in exprs[1:]:
                w.line(2, "", text)
    w.field(0, "Message", pv.status.message)
    w.line(0, "Source:")
    w.line(1, "Type:", "LocalVolume (a local persistent volume, its data on the node's disk)")
    w.line(1, "Path:", pv.spec.local.path)


def storage_class(w, sc) -> None:
    w.field(0, "IsDefaultClass", "Yes" if storage.is_default(sc) else "No")
    w.field(0, "Provisioner", sc.provisioner)
    w.field(0, "Parameters", ",".join(f"{k}={v}" for k, v in sorted(sc.parameters.items())))
    w.field(0, "AllowVolumeExpansion", "True" if sc.allow_volume_expansion else
            ("False" if sc.HasField("allow_volume_expansion") else "<unset>"))
    w.field(0, "MountOptions", ",".join(sc.mount_options))
    w.field(0, "ReclaimPolicy", sc.reclaim_policy or "Delete")
    w.field(0, "VolumeBindingMode", sc.volume_binding_mode or "Immediate")
