"""Kubernetes' defaults for decoded objects, filled in place (protocol TCP, restartPolicy
Always, 25% surge, probe timings...), so stored objects read back as they would there."""

from __future__ import annotations

from moorage.model import images, storage
from moorage.model import statefulsets as sts
from moorage.model.configs import OPAQUE
from moorage.model.deployments import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_SURGE,
    DEFAULT_MAX_UNAVAILABLE,
    DEFAULT_PROGRESS_DEADLINE_SECONDS,
)
from moorage.model.kinds import kind_of
from moorage.model.pods import DEFAULT_GRACE_SECONDS, PROBE_DEFAULTS


def default(obj) -> None:
    """Fills Kubernetes' defaults in place, so stored objects read back as they would there."""
    kind = kind_of(obj).name
    if kind == "Pod":
        _default_pod_spec(obj.spec)
        if not obj.status.phase:
            obj.status.phase = "Pending"
    elif kind == "Deployment":
        spec = obj.spec
        if not spec.HasField("replicas"):
            spec.replicas = 1
        if not spec.strategy.type:
            spec.strategy.type = "RollingUpdate"
        if spec.strategy.type == "RollingUpdate":
            ru = spec.strategy.rolling_update
            if ru.max_surge.WhichOneof("value") is None:
                ru.max_surge.str_val = DEFAULT_MAX_SURGE
            if ru.max_unavailable.WhichOneof("value") is None:
                ru.max_unavailable.str_val = DEFAULT_MAX_UNAVAILABLE
        if not spec.HasField("revision_history_limit"):
            spec.revision_history_limit = DEFAULT_HISTORY_LIMIT
        if not spec.HasField("progress_deadline_seconds"):
            spec.progress_deadline_seconds = DEFAULT_PROGRESS_DEADLINE_SECONDS
        _default_pod_spec(spec.template.spec)
    elif kind == "StatefulSet":
        _default_stateful_set(obj.spec)
    elif kind == "Service":
        if not obj.spec.type:
            obj.spec.type = "ClusterIP"
        for p in obj.spec.ports:
            p.protocol = p.protocol or "TCP"
            if not p.HasField("target_port"):
                p.target_port.int_val = p.port
    elif kind == "Namespace":
        obj.status.phase = obj.status.phase or "Active"
    elif kind == "Event":
        obj.type = obj.type or "Normal"
        obj.count = obj.count or 1
    elif kind == "PersistentVolumeClaim":
        default_claim(obj)
    elif kind == "PersistentVolume":
        obj.spec.persistent_volume_reclaim_policy = \
            obj.spec.persistent_volume_reclaim_policy or "Retain"
        obj.spec.volume_mode = obj.spec.volume_mode or "Filesystem"
    elif kind == "StorageClass":
        obj.reclaim_policy = obj.reclaim_policy or "Delete"
        obj.volume_binding_mode = obj.volume_binding_mode or storage.WAIT_FOR_FIRST_CONSUMER
    elif kind == "Secret":
        obj.type = obj.type or OPAQUE
        # stringData is write-only: merged into data (its keys win) and never stored.
        for key, value in obj.string_data.items():
            obj.data[key] = value.encode()
        obj.ClearField("string_data")


def _default_stateful_set(spec) -> None:
    if not spec.HasField("replicas"):
        spec.replicas = 1
    spec.pod_management_policy = spec.pod_management_policy or sts.ORDERED_READY
    st = spec.update_strategy
    st.type = st.type or sts.ROLLING_UPDATE
    if st.type == sts.ROLLING_UPDATE and not st.rolling_update.HasField("partition"):
        st.rolling_update.partition = 0
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = sts.DEFAULT_HISTORY_LIMIT
    policy = spec.persistent_volume_claim_retention_policy
    policy.when_deleted = policy.when_deleted or sts.RETAIN
    policy.when_scaled = policy.when_scaled or sts.RETAIN
    for claim in spec.volume_claim_templates:
        claim.api_version = claim.api_version or "v1"
        claim.kind = claim.kind or "PersistentVolumeClaim"
        claim.spec.volume_mode = claim.spec.volume_mode or "Filesystem"
        claim.status.phase = claim.status.phase or "Pending"
    _default_pod_spec(spec.template.spec)


def _default_pod_spec(spec) -> None:
    spec.restart_policy = spec.restart_policy or "Always"
    if not spec.HasField("termination_grace_period_seconds"):
        spec.termination_grace_period_seconds = DEFAULT_GRACE_SECONDS
    for c in spec.containers:
        if not c.image_pull_policy:
            _, _, tag, digest = images.parse_image_reference(c.image)
            c.image_pull_policy = "Always" if tag == "latest" and not digest else "IfNotPresent"
        for p in c.ports:
            p.protocol = p.protocol or "TCP"
        for probe_name in ("liveness_probe", "readiness_probe", "startup_probe"):
            if c.HasField(probe_name):
                probe = getattr(c, probe_name)
                for field, value in PROBE_DEFAULTS.items():
                    setattr(probe, field, getattr(probe, field) or value)
                if probe.HasField("http_get"):
                    probe.http_get.path = probe.http_get.path or "/"
                    probe.http_get.scheme = probe.http_get.scheme or "HTTP"


def default_claim(claim, default_class: str | None = None) -> None:
    """A claim's defaults: Filesystem mode and the pvc-protection finalizer; with
    `default_class` (the cluster's default StorageClass, which only the control plane knows), a
    claim that names no class gets it written in, as Kubernetes' admission does."""
    claim.spec.volume_mode = claim.spec.volume_mode or "Filesystem"
    if storage.PVC_PROTECTION not in claim.metadata.finalizers:
        claim.metadata.finalizers.append(storage.PVC_PROTECTION)
    if default_class and not claim.spec.HasField("storage_class_name"):
        claim.spec.storage_class_name = default_class
