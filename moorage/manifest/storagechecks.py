"""Checks for PersistentVolumeClaims, PersistentVolumes and StorageClasses, and for a pod's
persistentVolumeClaim volumes. Pure; the rules that need the stored objects (an unknown class,
an update to a bound claim) are the applier's (`claim_update`, called from
controlplane/api/apply.py)."""

from __future__ import annotations

from moorage.manifest.convert import FieldError, describe, join
from moorage.model import names as naming
from moorage.model import quantities, storage

_SHARED = ("local volumes live on one node's disk and cannot be shared across nodes; use "
           "ReadWriteOnce or ReadWriteOncePod")


def _one_of(value: str, allowed) -> str:
    return f"{describe(value)} is not one of {', '.join(allowed)}"


def _access_modes(modes, path: str, errs, *, required: bool) -> None:
    if not modes:
        if required:
            errs.add(path, "at least 1 access mode is required")
        return
    seen = set()
    for i, mode in enumerate(modes):
        if mode in storage.SHARED_ACCESS_MODES:
            errs.add(f"{path}[{i}]", f"{describe(mode)}: {_SHARED}")
        elif mode not in storage.ACCESS_MODES:
            errs.add(f"{path}[{i}]", _one_of(mode, storage.ACCESS_MODES))
        if mode in seen:
            errs.add(f"{path}[{i}]", f"{describe(mode)}: duplicate access mode")
        seen.add(mode)
    if storage.RWOP in modes and len(set(modes)) > 1:
        errs.add(path, "may not use ReadWriteOncePod with other access modes")


def _storage_quantity(values, path: str, errs, *, required: bool) -> None:
    for key, raw in values.items():
        if key != "storage":
            errs.add(join(path, key), f"{describe(key)}: only storage may be requested here")
            continue
        try:
            amount = quantities.memory_bytes(raw)
        except quantities.QuantityError as err:
            errs.add(join(path, key), str(err))
            continue
        if amount <= 0:
            errs.add(join(path, key), "must be greater than zero")
    if required and "storage" not in values:
        errs.add(join(path, "storage"), "is required")


def claim_spec(spec, path: str, errs) -> None:
    """A claim's spec (a PersistentVolumeClaim's, or a volumeClaimTemplate's)."""
    _access_modes(spec.access_modes, f"{path}.accessModes", errs, required=True)
    _storage_quantity(spec.resources.requests, f"{path}.resources.requests", errs,
                      required=True)
    _storage_quantity(spec.resources.limits, f"{path}.resources.limits", errs, required=False)
    req = storage.requested_bytes_of(spec.resources.requests)
    lim = storage.requested_bytes_of(spec.resources.limits)
    if req and lim and req > lim:
        errs.add(join(f"{path}.resources.requests", "storage"),
                 f"{describe(spec.resources.requests['storage'])} is more than the limit "
                 f"{describe(spec.resources.limits['storage'])}")
    if spec.HasField("storage_class_name") and spec.storage_class_name:
        reason = naming.dns1123_subdomain(spec.storage_class_name)
        if reason:
            errs.add(f"{path}.storageClassName", reason)
    if spec.volume_mode and spec.volume_mode != "Filesystem":
        errs.add(f"{path}.volumeMode", f"{describe(spec.volume_mode)}: only Filesystem volumes "
                                       "are supported")
    if spec.volume_name:
        reason = naming.dns1123_subdomain(spec.volume_name)
        if reason:
            errs.add(f"{path}.volumeName", reason)


def persistent_volume_claim(obj, errs) -> None:
    claim_spec(obj.spec, "spec", errs)


def persistent_volume(obj, errs) -> None:
    spec = obj.spec
    _access_modes(spec.access_modes, "spec.accessModes", errs, required=True)
    _storage_quantity(spec.capacity, "spec.capacity", errs, required=True)
    policy = spec.persistent_volume_reclaim_policy
    if policy and policy not in storage.RECLAIM_POLICIES:
        errs.add("spec.persistentVolumeReclaimPolicy", _one_of(policy, storage.RECLAIM_POLICIES))
    if not spec.local.path:
        errs.add("spec.local.path", "is required (Moorage's volumes are local)")
    elif not spec.local.path.startswith("/"):
        errs.add("spec.local.path", f"{describe(spec.local.path)}: must be an absolute path")
    if spec.volume_mode and spec.volume_mode != "Filesystem":
        errs.add("spec.volumeMode", f"{describe(spec.volume_mode)}: only Filesystem volumes are "
                                    "supported")
    terms = spec.node_affinity.required.node_selector_terms
    if not terms:
        errs.add("spec.nodeAffinity.required.nodeSelectorTerms",
                 "is required for a local volume (kubernetes.io/hostname In [node])")
    elif not storage.pv_node(obj):
        errs.add("spec.nodeAffinity.required.nodeSelectorTerms",
                 "must name one node: kubernetes.io/hostname In [node]")
    if spec.storage_class_name:
        reason = naming.dns1123_subdomain(spec.storage_class_name)
        if reason:
            errs.add("spec.storageClassName", reason)


def storage_class(obj, errs) -> None:
    if not obj.provisioner:
        errs.add("provisioner", "is required")
    elif obj.provisioner != storage.PROVISIONER:
        errs.add("provisioner", f"{describe(obj.provisioner)} is not supported (Moorage "
                                f"provisions volumes only with {storage.PROVISIONER})")
    if obj.reclaim_policy and obj.reclaim_policy not in storage.RECLAIM_POLICIES:
        errs.add("reclaimPolicy", _one_of(obj.reclaim_policy, storage.RECLAIM_POLICIES))
    mode = obj.volume_binding_mode
    if mode and mode not in storage.BINDING_MODES:
        errs.add("volumeBindingMode", _one_of(mode, storage.BINDING_MODES))
    elif mode == storage.IMMEDIATE:
        errs.add("volumeBindingMode", f'"Immediate" is not supported by {storage.PROVISIONER}: '
                                      "a local volume is made on the node where its first pod "
                                      "is scheduled (use WaitForFirstConsumer)")
    for key in obj.parameters:
        errs.add(join("parameters", key), f"{describe(key)}: {storage.PROVISIONER} takes no "
                                          "parameters")
    if obj.mount_options:
        errs.add("mountOptions", f"{storage.PROVISIONER} takes no mount options")


# ---- in pods ----

def claim_source(src, path: str, errs) -> None:
    """A pod's persistentVolumeClaim volume."""
    if not src.claim_name:
        errs.add(f"{path}.claimName", "is required")
        return
    reason = naming.dns1123_subdomain(src.claim_name)
    if reason:
        errs.add(f"{path}.claimName", reason)


# ---- updates (the applier calls these with the stored object) ----

FIXED_SPEC = "spec is immutable after creation except resources.requests for bound claims"
SHRINK = "field can not be less than previous value"
NO_EXPANSION = ("only dynamically provisioned pvc can be resized and the storageclass that "
                "provisions the pvc must support resize")


def claim_update(new, current, sc) -> FieldError | None:
    """Kubernetes' rules for changing a claim: the spec is fixed, except that a Bound claim's
    storage request may grow when its class allows expansion; it never shrinks."""
    probe = type(new.spec)()
    probe.CopyFrom(new.spec)
    probe.resources.CopyFrom(current.spec.resources)
    if probe != current.spec:
        return FieldError("spec", FIXED_SPEC)
    old, want = (storage.requested_bytes_of(current.spec.resources.requests),
                 storage.requested_bytes_of(new.spec.resources.requests))
    if new.spec.resources == current.spec.resources:
        return None
    path = join("spec.resources.requests", "storage")
    if current.status.phase != storage.BOUND:
        return FieldError("spec", FIXED_SPEC)
    if want < old:
        return FieldError(path, SHRINK)
    if new.spec.resources.limits != current.spec.resources.limits:
        return FieldError("spec", FIXED_SPEC)
    if want > old and (sc is None or not sc.allow_volume_expansion):
        return FieldError(path, f'persistentvolumeclaims "{new.metadata.name}" is forbidden: '
                                f"{NO_EXPANSION}")
    return None


def volume_update(new, current) -> FieldError | None:
    """A PV's source, node and class are fixed; its capacity and reclaim policy may change."""
    for field, path in (("local", "spec.local"), ("node_affinity", "spec.nodeAffinity"),
                        ("storage_class_name", "spec.storageClassName"),
                        ("volume_mode", "spec.volumeMode")):
        if getattr(new.spec, field) != getattr(current.spec, field):
            return FieldError(path, "field is immutable")
    return None


def class_update(new, current) -> FieldError | None:
    """As Kubernetes: only a class's metadata and allowVolumeExpansion may change."""
    for field, path in (("provisioner", "provisioner"), ("parameters", "parameters"),
                        ("reclaim_policy", "reclaimPolicy"),
                        ("volume_binding_mode", "volumeBindingMode")):
        if getattr(new, field) != getattr(current, field):
            return FieldError(path, "Forbidden: updates to " + path + " are forbidden.")
    return None
