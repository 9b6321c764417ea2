"""Pure Deployment reconciler: from a Deployment and its pods, plans pod creates, deletes, status.

Pure: never mutates its inputs, reads no clock or randomness (both come in as arguments). Pods
are owned directly by the Deployment (no ReplicaSets); a pod's template is told by its
`pod-template-hash` label. minReadySeconds is ignored: a pod is available as soon as it is ready.

Pods being deleted (Terminating) are neither available nor replicas, as in Kubernetes, but a
rolling update counts them against maxSurge while they run, so the containers running never
exceed replicas + maxSurge, and Recreate waits until the old ones are gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moorage.model.deployments import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_MAX_SURGE,
    DEFAULT_MAX_UNAVAILABLE,
    DEFAULT_PROGRESS_DEADLINE_SECONDS,
    HISTORY_ANNOTATION,
    RECREATE,
    REVISION_ANNOTATION,
    TEMPLATE_HASH_LABEL,
    desired_replicas,
    format_history,
    history_entry,
    read_history,
    template_hash,
)
from moorage.model.pods import TERMINAL_PHASES, is_terminating
from moorage.model.timestamps import parse_rfc3339, rfc3339
from moorage.v1 import objects_pb2 as pb

AVAILABLE, PROGRESSING = "Available", "Progressing"
SCALING_EVENT = "ScalingReplicaSet"


@dataclass(frozen=True, slots=True)
class Plan:
    create: tuple[pb.Pod, ...]
    delete: tuple[pb.Pod, ...]
    status: pb.DeploymentStatus
    # The Deployment's new revision/history annotations, or None when they are unchanged.
    annotations: dict[str, str] | None
    # (reason, message) pairs worth an Event, e.g. ("ScalingReplicaSet", "Scaled up web to 3").
    events: tuple[tuple[str, str], ...]

    @property
    def changes_pods(self) -> bool:
        return bool(self.create or self.delete)






def _resolve(value: pb.IntOrString, default: str, total: int, round_up: bool) -> int:
    which = value.WhichOneof("value")
    text = default if which is None else (str(value.int_val) if which == "int_val"
                                          else value.str_val)
    if not text.endswith("%"):
        return max(0, int(text))
    scaled = int(text[:-1]) * total
    return max(0, -(-scaled // 100) if round_up else scaled // 100)


def surge_and_unavailable(d: pb.Deployment) -> tuple[int, int]:
    """maxSurge rounds up and maxUnavailable down, as Kubernetes; both 0 would never progress,
    so unavailable becomes 1."""
    replicas = desired_replicas(d)
    ru = d.spec.strategy.rolling_update
    surge = _resolve(ru.max_surge, DEFAULT_MAX_SURGE, replicas, round_up=True)
    unavailable = min(replicas, _resolve(ru.max_unavailable, DEFAULT_MAX_UNAVAILABLE, replicas,
                                         round_up=False))
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def is_owned_by(pod: pb.Pod, d: pb.Deployment) -> bool:
    for ref in pod.metadata.owner_references:
        if ref.controller and ref.kind == "Deployment" and ref.name == d.metadata.name:
            return not ref.uid or not d.metadata.uid or ref.uid == d.metadata.uid
    return False


def is_ready(pod: pb.Pod) -> bool:
    """Ready condition True; without readiness probes a Running pod counts as ready, since
    nothing else would ever report it."""
    if pod.status.phase != "Running":
        return False
    for cond in pod.status.conditions:
        if cond.type == "Ready":
            return cond.status == "True"
    return not any(c.HasField("readiness_probe") for c in pod.spec.containers)


is_available = is_ready  # minReadySeconds is ignored (see the module docstring)


def _newest_first(pods: Iterable[pb.Pod]) -> list[pb.Pod]:
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp,
                                       int(p.metadata.resource_version or 0),
                                       p.metadata.name), reverse=True)


def deletion_order(pods: Iterable[pb.Pod]) -> list[pb.Pod]:
    """Which pods to remove first when scaling down: not ready, then unscheduled, then newest."""
    return sorted(_newest_first(pods), key=lambda p: (is_available(p), bool(p.spec.node_name)))


def new_pod(d: pb.Deployment, hash_: str, suffix: str, now: float) -> pb.Pod:
    """A pod from the template; the shell stamps its uid."""
    tmpl = d.spec.template
    pod = pb.Pod(api_version="v1", kind="Pod")
    meta = pod.metadata
    meta.name = f"{d.metadata.name}-{hash_}-{suffix}"
    meta.namespace = d.metadata.namespace
    meta.labels.update(tmpl.metadata.labels)
    meta.labels[TEMPLATE_HASH_LABEL] = hash_
    meta.annotations.update(tmpl.metadata.annotations)
    meta.creation_timestamp = rfc3339(now)
    meta.generation = 1
    meta.owner_references.add(api_version="apps/v1", kind="Deployment", name=d.metadata.name,
                              uid=d.metadata.uid, controller=True)
    pod.spec.CopyFrom(tmpl.spec)
    pod.status.phase = "Pending"
    return pod


# ---- revision history ----

def _next_history(d: pb.Deployment, hash_: str) -> dict[str, str] | None:
    history = read_history(d)
    current = int(d.metadata.annotations.get(REVISION_ANNOTATION, "0") or 0)
    if current in history and history[current].get("hash") == hash_:
        return None
    # A template seen before (an undo) moves to the new number, as in Kubernetes.
    history = {rev: e for rev, e in history.items() if e.get("hash") != hash_}
    revision = max([current, *history]) + 1
    history[revision] = history_entry(hash_, d.spec.template)
    limit = (d.spec.revision_history_limit if d.spec.HasField("revision_history_limit")
             else DEFAULT_HISTORY_LIMIT)
    keep = sorted(history)[-(limit + 1):]  # the current one plus `limit` old ones
    return {REVISION_ANNOTATION: str(revision),
            HISTORY_ANNOTATION: format_history({r: history[r] for r in keep})}


# ---- reconcile ----

def _take(ordered: Sequence[pb.Pod], count: int) -> list[pb.Pod]:
    return list(ordered[:max(0, count)])


def _plan_rolling(d, new, old, replicas, terminating) -> tuple[int, list[pb.Pod]]:
    """(pods to create, pods to delete) for one RollingUpdate step."""
    if not old:
        if len(new) < replicas:
            return replicas - len(new), []
        return 0, _take(deletion_order(new), len(new) - replicas)
    surge, unavailable = surge_and_unavailable(d)
    # Terminating pods still run their containers: they take surge room until they are gone.
    total = len(new) + len(old) + len(terminating)
    create = max(0, min(replicas + surge - total, replicas - len(new)))
    delete = _take(deletion_order(new), len(new) - replicas)
    min_available = replicas - unavailable
    new_unavailable = sum(1 for p in new if not is_available(p))
    # Kubernetes' budget: never remove more than keeps min_available, counting new pods that
    # are not available yet as already missing.
    budget = total - min_available - new_unavailable - len(delete)
    unhealthy = [p for p in deletion_order(old) if not is_available(p)][:max(0, budget)]
    budget -= len(unhealthy)
    available = sum(1 for p in new + old if is_available(p)) - sum(
        1 for p in delete if is_available(p))
    healthy_old = [p for p in deletion_order(old) if is_available(p)]
    scale_down = min(budget, available - min_available, len(healthy_old))
    return create, delete + unhealthy + _take(healthy_old, scale_down)


def reconcile(d: pb.Deployment, pods: Sequence[pb.Pod], now: float,
              suffixes: Iterable[str]) -> Plan:
    """The next step toward `d`'s desired pods. `pods` may include other owners' pods;
    `suffixes` supplies the random-looking tails of new pod names."""
    replicas = desired_replicas(d)
    hash_ = template_hash(d.spec.template)
    owned = [p for p in pods if is_owned_by(p, d)]
    terminating = [p for p in owned if is_terminating(p)]
    active = [p for p in owned if not is_terminating(p)]
    finished = [p for p in active if p.status.phase in TERMINAL_PHASES]
    live = [p for p in active if p.status.phase not in TERMINAL_PHASES]
    new = [p for p in live if p.metadata.labels.get(TEMPLATE_HASH_LABEL) == hash_]
    old = [p for p in live if p.metadata.labels.get(TEMPLATE_HASH_LABEL) != hash_]

    if d.spec.strategy.type == RECREATE and old:
        # Every old pod goes before any new one starts; the deletes trigger the next step.
        create, delete = 0, old
    elif d.spec.strategy.type == RECREATE and any(
            p.metadata.labels.get(TEMPLATE_HASH_LABEL) != hash_ for p in terminating):
        create, delete = 0, []   # old containers still stopping: new ones wait for them
    elif d.spec.strategy.type == RECREATE:
        create, delete = (max(0, replicas - len(new)),
                          _take(deletion_order(new), len(new) - replicas))
    else:
        create, delete = _plan_rolling(d, new, old, replicas, terminating)

    taken = {p.metadata.name for p in owned}
    made = []
    for suffix in suffixes:
        if len(made) >= create:
            break
        pod = new_pod(d, hash_, suffix, now)
        if pod.metadata.name not in taken:
            taken.add(pod.metadata.name)
            made.append(pod)

    gone = {p.metadata.name for p in delete}
    after = [p for p in live if p.metadata.name not in gone] + made
    events = _scaling_events(d, hash_, new, old, made, delete)
    status = _status(d, after, hash_, replicas, bool(made or delete), now)
    status.terminating_replicas = len(terminating) + sum(
        1 for p in delete if p.spec.node_name and p.status.phase not in TERMINAL_PHASES)
    return Plan(tuple(made), tuple(finished) + tuple(delete), status,
                _next_history(d, hash_), events)


def _scaling_events(d, hash_, new, old, made, delete) -> tuple[tuple[str, str], ...]:
    name = d.metadata.name
    events = []
    if made:
        target = f"{name}-{hash_}" if old else name
        events.append((SCALING_EVENT, f"Scaled up {target} to {len(new) + len(made)}"))
    deleted_new = [p for p in delete if p.metadata.labels.get(TEMPLATE_HASH_LABEL) == hash_]
    if deleted_new:
        events.append((SCALING_EVENT, f"Scaled down {name} to {len(new) - len(deleted_new)}"))
    by_hash: dict[str, int] = {}
    for p in delete:
        h = p.metadata.labels.get(TEMPLATE_HASH_LABEL, "")
        if h != hash_:
            by_hash[h] = by_hash.get(h, 0) + 1
    for h, count in sorted(by_hash.items()):
        left = sum(1 for p in old if p.metadata.labels.get(TEMPLATE_HASH_LABEL, "") == h)
        events.append((SCALING_EVENT, f"Scaled down {name}-{h} to {left - count}"))
    return tuple(events)


def _condition(previous: pb.DeploymentStatus, type_: str, status: str, reason: str,
               message: str, now: str, touch: bool) -> pb.DeploymentCondition:
    for old in previous.conditions:
        if old.type == type_ and old.status == status and old.reason == reason and not touch:
            return pb.DeploymentCondition(type=type_, status=status, reason=reason,
                                          message=message,
                                          last_update_time=old.last_update_time or now)
    return pb.DeploymentCondition(type=type_, status=status, reason=reason, message=message,
                                  last_update_time=now)


def _status(d, pods, hash_, replicas, acted, now) -> pb.DeploymentStatus:
    updated = [p for p in pods if p.metadata.labels.get(TEMPLATE_HASH_LABEL) == hash_]
    ready = sum(1 for p in pods if is_ready(p))
    available = sum(1 for p in pods if is_available(p))
    status = pb.DeploymentStatus(
        observed_generation=d.metadata.generation, replicas=len(pods),
        updated_replicas=len(updated), ready_replicas=ready, available_replicas=available,
        unavailable_replicas=max(0, replicas - available))
    stamp = rfc3339(now)
    _, unavailable = surge_and_unavailable(d)
    if available >= replicas - unavailable:
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        avail = ("False", "MinimumReplicasUnavailable",
                 "Deployment does not have minimum availability.")
    status.conditions.append(_condition(d.status, AVAILABLE, *avail, stamp, False))
    name = d.metadata.name
    complete = (len(updated) == replicas == len(pods)
                and sum(1 for p in updated if is_available(p)) == replicas)
    if complete:
        prog = ("True", "NewPodsAvailable", f'Deployment "{name}" has successfully progressed.')
    else:
        prog = ("True", "PodsUpdating", f'Deployment "{name}" is progressing.')
        deadline = (d.spec.progress_deadline_seconds
                    if d.spec.HasField("progress_deadline_seconds")
                    else DEFAULT_PROGRESS_DEADLINE_SECONDS)
        last = next((parse_rfc3339(c.last_update_time) for c in d.status.conditions
                     if c.type == PROGRESSING and c.status == "True"), None)
        if not acted and last is not None and now - last > deadline:
            prog = ("False", "ProgressDeadlineExceeded",
                    f'Deployment "{name}" has timed out progressing.')
    status.conditions.append(_condition(d.status, PROGRESSING, *prog, stamp, acted))
    return status
