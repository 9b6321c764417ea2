"""A pod's lifecycle as the API records it: phases, graceful deletion, and what counts as
running. Pure: the clock comes in as an argument.

Deletion follows Kubernetes: a pod bound to a node that may still run containers is not
removed at once but marked (`deletionTimestamp` = now + grace, `deletionGracePeriodSeconds`),
shown as Terminating, and removed when its node's agent confirms that every container stopped.
An unbound or finished pod, or a grace of 0 (a force delete), is removed at once.
"""

from __future__ import annotations

from moorage.model.timestamps import parse_rfc3339, rfc3339
from moorage.v1 import objects_pb2 as pb

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
TERMINAL_PHASES = (SUCCEEDED, FAILED)
DEFAULT_GRACE_SECONDS = 30
# Kubernetes' probe defaults, filled in on the server (moorage/manifest/defaults.py) and
# assumed by the agent's prober for fields left at zero.
DEFAULT_PROBE_PERIOD, DEFAULT_PROBE_TIMEOUT = 10, 1
DEFAULT_SUCCESS_THRESHOLD, DEFAULT_FAILURE_THRESHOLD = 1, 3
PROBE_DEFAULTS = {"timeout_seconds": DEFAULT_PROBE_TIMEOUT,
                  "period_seconds": DEFAULT_PROBE_PERIOD,
                  "success_threshold": DEFAULT_SUCCESS_THRESHOLD,
                  "failure_threshold": DEFAULT_FAILURE_THRESHOLD}
TERMINATING = "Terminating"


def is_terminal(pod: pb.Pod) -> bool:
    return pod.status.phase in TERMINAL_PHASES


def is_terminating(obj) -> bool:
    """A graceful deletion was asked for and the object is not gone yet."""
    return bool(obj.metadata.deletion_timestamp)


def spec_grace(pod: pb.Pod) -> int:
    """terminationGracePeriodSeconds, 30 when unset (Kubernetes' default)."""
    spec = pod.spec
    if spec.HasField("termination_grace_period_seconds"):
        return max(0, spec.termination_grace_period_seconds)
    return DEFAULT_GRACE_SECONDS


def stop_grace(pod: pb.Pod) -> int:
    """Seconds between SIGTERM and SIGKILL for this pod now: the deletion's grace when it is
    being deleted, else its spec's."""
    if pod.metadata.HasField("deletion_grace_period_seconds"):
        return max(0, pod.metadata.deletion_grace_period_seconds)
    return spec_grace(pod)


def graceful_delete(pod: pb.Pod, grace: int | None, now: float) -> pb.Pod | None:
    """What deleting `pod` writes: a marked copy to store, or None to remove it at once.

    `grace` None means the pod's own terminationGracePeriodSeconds. A pod already terminating
    keeps its earlier deadline unless the new grace ends sooner (as Kubernetes shortens, never
    lengthens, a deletion): then the pod itself is returned, unchanged."""
    period = spec_grace(pod) if grace is None else max(0, grace)
    if period == 0 or not pod.spec.node_name or is_terminal(pod):
        return None
    if is_terminating(pod):
        deadline = parse_rfc3339(pod.metadata.deletion_timestamp)
        if deadline is not None and deadline <= now + period:
            return pod
    marked = pb.Pod()
    marked.CopyFrom(pod)
    marked.metadata.deletion_timestamp = rfc3339(now + period)
    marked.metadata.deletion_grace_period_seconds = period
    return marked
