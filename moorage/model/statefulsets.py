"""A StatefulSet's shapes that the controller, the checks, the CLI and explain share: the labels
it writes on its pods, Kubernetes' defaults, pod and claim names, and revision names.

Its revision history is kept as a Deployment's is (moorage/model/deployments.py's format, in
the `moorage.io/revision-history` annotation), numbered in `moorage.io/revision`.
"""

from __future__ import annotations

import re

from moorage.model.deployments import template_hash
from moorage.v1 import objects_pb2 as pb

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
REVISION_LABEL = "controller-revision-hash"
REVISION_ANNOTATION = "moorage.io/revision"

ORDERED_READY, PARALLEL = "OrderedReady", "Parallel"
ROLLING_UPDATE, ON_DELETE = "RollingUpdate", "OnDelete"
RETAIN, DELETE = "Retain", "Delete"
DEFAULT_HISTORY_LIMIT = 10
DEFAULT_MAX_UNAVAILABLE = 1

KIND = "StatefulSet"


def desired_replicas(sts: pb.StatefulSet) -> int:
    return sts.spec.replicas if sts.spec.HasField("replicas") else 1


def first_ordinal(sts: pb.StatefulSet) -> int:
    return sts.spec.ordinals.start


def ordinals(sts: pb.StatefulSet) -> range:
    start = first_ordinal(sts)
    return range(start, start + desired_replicas(sts))


def pod_name(sts: pb.StatefulSet, ordinal: int) -> str:
    return f"{sts.metadata.name}-{ordinal}"


def claim_name(template: pb.PersistentVolumeClaim, pod: str) -> str:
    return f"{template.metadata.name}-{pod}"


def ordinal_of(sts_name: str, pod: str) -> int | None:
    """The ordinal in a pod name `<sts>-<ordinal>`, or None when it is not of that shape."""
    prefix = sts_name + "-"
    if not pod.startswith(prefix):
        return None
    tail = pod[len(prefix):]
    if not re.fullmatch(r"0|[1-9][0-9]*", tail):
        return None
    return int(tail)


def revision_name(sts: pb.StatefulSet, hash_: str) -> str:
    """The controller-revision-hash label's value, as Kubernetes names ControllerRevisions."""
    return f"{sts.metadata.name}-{hash_}"


def update_hash(sts: pb.StatefulSet) -> str:
    return template_hash(sts.spec.template)


def hash_of_revision(sts: pb.StatefulSet, revision: str) -> str:
    prefix = sts.metadata.name + "-"
    return revision[len(prefix):] if revision.startswith(prefix) else ""


def pod_management_policy(sts: pb.StatefulSet) -> str:
    return sts.spec.pod_management_policy or ORDERED_READY


def update_strategy(sts: pb.StatefulSet) -> str:
    return sts.spec.update_strategy.type or ROLLING_UPDATE


def partition(sts: pb.StatefulSet) -> int:
    ru = sts.spec.update_strategy.rolling_update
    return ru.partition if ru.HasField("partition") else 0


def history_limit(sts: pb.StatefulSet) -> int:
    return (sts.spec.revision_history_limit if sts.spec.HasField("revision_history_limit")
            else DEFAULT_HISTORY_LIMIT)


def when_scaled(sts: pb.StatefulSet) -> str:
    return sts.spec.persistent_volume_claim_retention_policy.when_scaled or RETAIN


def when_deleted(sts: pb.StatefulSet) -> str:
    return sts.spec.persistent_volume_claim_retention_policy.when_deleted or RETAIN
