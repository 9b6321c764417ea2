"""Checks for StatefulSets: the spec on its own (`stateful_set`, from checks.py's table) and an
update against the stored one (`update_problem`, used at apply time).

Pure: problems come back as FieldErrors with their field paths (or one (path, message) pair
for an update); nothing is changed.
"""

from __future__ import annotations

from moorage.manifest.convert import describe, join
from moorage.model import names as naming
from moorage.model import quantities
from moorage.model import statefulsets as model
from moorage.v1 import objects_pb2 as pb

POLICIES = (model.ORDERED_READY, model.PARALLEL)
STRATEGIES = (model.ROLLING_UPDATE, model.ON_DELETE)
RETENTION = (model.RETAIN, model.DELETE)
CLAIM_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")
# Kubernetes' wording; `template` includes the claim templates' storage, which Moorage lets grow.
FORBIDDEN_UPDATE = ("Forbidden: updates to statefulset spec for fields other than 'replicas', "
                    "'ordinals', 'template', 'updateStrategy', "
                    "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")
STORAGE = "storage"


def stateful_set(obj: pb.StatefulSet, errs, *, max_replicas: int, selector_and_template,
                 pod_spec) -> None:
    """The checks every workload shares (the replica bound, selector and template, the pod
    spec) come from checks.py, which names this function in its table."""
    spec = obj.spec
    if spec.HasField("replicas") and not 0 <= spec.replicas <= max_replicas:
        errs.add("spec.replicas", f"{spec.replicas} is not in 0-{max_replicas}")
    errs.required("spec.serviceName", spec.service_name, naming.dns1123_label)
    selector_and_template(spec, errs)
    template_vols = {v.name: i for i, v in enumerate(spec.template.spec.volumes)}
    claims: dict[str, pb.PersistentVolumeClaim] = {}
    for i, claim in enumerate(spec.volume_claim_templates):
        _claim_template(claim, f"spec.volumeClaimTemplates[{i}]", errs)
        name = claim.metadata.name
        np = f"spec.volumeClaimTemplates[{i}].metadata.name"
        if name in claims:
            errs.add(np, f"{describe(name)}: duplicate claim template name")
        elif name in template_vols:
            errs.add(np, f"{describe(name)}: clashes with spec.template.spec.volumes"
                         f"[{template_vols[name]}] (each claim template is a volume of that "
                         "name in every pod)")
        if name:
            claims.setdefault(name, claim)
    pod_spec(spec.template.spec, "spec.template.spec", errs, in_template=True,
             owner="a StatefulSet", claim_volumes=claims)
    if spec.pod_management_policy and spec.pod_management_policy not in POLICIES:
        errs.add("spec.podManagementPolicy", _one_of(spec.pod_management_policy, POLICIES))
    st = spec.update_strategy
    if st.type and st.type not in STRATEGIES:
        errs.add("spec.updateStrategy.type", _one_of(st.type, STRATEGIES))
    if st.HasField("rolling_update"):
        rp = "spec.updateStrategy.rollingUpdate"
        if st.type == model.ON_DELETE:
            errs.add(rp, "only allowed for updateStrategy 'RollingUpdate'")
        ru = st.rolling_update
        if ru.HasField("partition") and ru.partition < 0:
            errs.add(f"{rp}.partition", "must be greater than or equal to 0")
        _max_unavailable(ru.max_unavailable, f"{rp}.maxUnavailable", errs)
    policy = spec.persistent_volume_claim_retention_policy
    for field, value in (("whenDeleted", policy.when_deleted),
                         ("whenScaled", policy.when_scaled)):
        if value and value not in RETENTION:
            errs.add(f"spec.persistentVolumeClaimRetentionPolicy.{field}",
                     _one_of(value, RETENTION))
    if spec.ordinals.start < 0:
        errs.add("spec.ordinals.start", "must be greater than or equal to 0")
    for field, value in (("minReadySeconds", spec.min_ready_seconds),
                         ("revisionHistoryLimit", spec.revision_history_limit)):
        if value < 0:
            errs.add(f"spec.{field}", "must not be negative")


def _claim_template(claim: pb.PersistentVolumeClaim, path: str, errs) -> None:
    errs.required(f"{path}.metadata.name", claim.metadata.name, naming.dns1123_label)
    for key, value in claim.metadata.labels.items():
        reason = naming.label_key(key) or naming.label_value(value)
        if reason:
            errs.add(join(f"{path}.metadata.labels", key), reason)
    sp = f"{path}.spec"
    if not claim.spec.access_modes:
        errs.add(f"{sp}.accessModes", "at least 1 access mode is required")
    for j, mode in enumerate(claim.spec.access_modes):
        if mode not in CLAIM_ACCESS_MODES:
            errs.add(f"{sp}.accessModes[{j}]", _one_of(mode, CLAIM_ACCESS_MODES) +
                     " (volumes are local disks)")
    raw = claim.spec.resources.requests.get(STORAGE)
    rp = join(f"{sp}.resources.requests", STORAGE)
    if raw is None:
        errs.add(rp, "is required")
    else:
        try:
            if quantities.parse_quantity(raw) <= 0:
                errs.add(rp, f"{describe(raw)}: must be greater than zero")
        except quantities.QuantityError as err:
            errs.add(rp, str(err))


def _max_unavailable(value: pb.IntOrString, path: str, errs) -> None:
    which = value.WhichOneof("value")
    if which == "int_val" and value.int_val < 1:
        errs.add(path, "must be greater than 0")
    elif which == "str_val":
        text = value.str_val
        if not (text.endswith("%") and text[:-1].isdigit() and 0 < int(text[:-1]) <= 100):
            errs.add(path, f'{describe(text)} is not an integer or a percentage like "50%" '
                           "(1-100%)")


def _storage(claim: pb.PersistentVolumeClaim):
    try:
        return quantities.parse_quantity(claim.spec.resources.requests.get(STORAGE, "0"))
    except quantities.QuantityError:
        return None


MUTABLE_FIELDS = ("replicas", "ordinals", "template", "update_strategy",
                  "persistent_volume_claim_retention_policy", "min_ready_seconds")


def update_problem(new: pb.StatefulSet, current: pb.StatefulSet) -> tuple[str, str] | None:
    """(path, message) when `new` changes what Kubernetes keeps fixed after creation; a claim
    template's storage request may grow (the controller raises the claims), never shrink."""
    a, b = pb.StatefulSetSpec(), pb.StatefulSetSpec()
    a.CopyFrom(new.spec)
    b.CopyFrom(current.spec)
    for field in MUTABLE_FIELDS:
        a.ClearField(field)
        b.ClearField(field)
    if len(a.volume_claim_templates) == len(b.volume_claim_templates):
        for i, (tmpl, old) in enumerate(zip(a.volume_claim_templates,
                                            b.volume_claim_templates)):
            grown, was = _storage(tmpl), _storage(old)
            if grown is None or was is None or grown == was:
                continue
            if grown < was:
                return (f"spec.volumeClaimTemplates[{i}].spec.resources.requests.storage",
                        f"Forbidden: may only grow "
                        f"({describe(tmpl.spec.resources.requests[STORAGE])} is less than "
                        f"{describe(old.spec.resources.requests[STORAGE])})")
            tmpl.spec.resources.requests[STORAGE] = old.spec.resources.requests[STORAGE]
    if a != b:
        return ("spec", FORBIDDEN_UPDATE)
    return None


def _one_of(value: str, allowed) -> str:
    return f"{describe(value)} is not one of {', '.join(allowed)}"
