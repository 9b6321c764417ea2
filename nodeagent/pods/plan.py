"""The agent's pod logic, pure: desired pod + observed containers + now -> actions and status.

No I/O and no clock: the shell observes the runtime, calls `reconcile`, applies the actions and
sleeps until `wake_at`. It follows the kubelet: restart per policy with CrashLoopBackOff
delays, restart a container whose spec changed, keep one previous instance for
`logs --previous`, and derive the pod phase from its containers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moorage.model.pods import FAILED, PENDING, RUNNING, SUCCEEDED
from nodeagent.runtime.restart import ALWAYS, NEVER, ON_FAILURE, next_restart

CRASH_LOOP = "CrashLoopBackOff"
CREATING = "ContainerCreating"
COMPLETED, ERROR = "Completed", "Error"


@dataclass(frozen=True, slots=True)
class DesiredContainer:
    name: str
    image: str
    # Any change to the container's spec changes this, and restarts the container.
    spec_hash: str


@dataclass(frozen=True, slots=True)
class DesiredPod:
    namespace: str
    name: str
    uid: str
    restart_policy: str
    grace_seconds: int
    containers: tuple[DesiredContainer, ...]


@dataclass(frozen=True, slots=True)
class ObservedContainer:
    id: str
    name: str
    spec_hash: str
    attempt: int              # 0 for the first run; restarts = attempt
    running: bool
    exit_code: int | None = None
    reason: str = ""          # OOMKilled, Error, Completed...
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StartContainer:
    name: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StopContainer:
    id: str
    grace_seconds: int
    why: str


@dataclass(frozen=True, slots=True)
class RemoveContainer:
    id: str


Action = StartContainer | StopContainer | RemoveContainer


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    name: str
    state: str                # waiting, running, terminated
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    id: str = ""              # the running instance's container id, for its probe results


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    phase: str
    containers: tuple[ContainerStatus, ...]
    # When to reconcile again even if nothing changes (a back-off ending); None: no need.
    wake_at: float | None = None


def _exit_reason(c: ObservedContainer) -> str:
    return c.reason or (COMPLETED if c.exit_code == 0 else ERROR)


def reconcile(desired: DesiredPod | None, observed: Sequence[ObservedContainer],
              now: float, unhealthy: Mapping[str, str] | None = None) -> Plan:
    """What to do next for one pod. `desired` None means the pod is gone from this node.
    `unhealthy` maps running container ids to why they must be killed (a failed liveness or
    startup probe): they are stopped, and then restarted as the restart policy says."""
    unhealthy = unhealthy or {}
    by_name: dict[str, list[ObservedContainer]] = {}
    for c in observed:
        by_name.setdefault(c.name, []).append(c)
    for instances in by_name.values():
        instances.sort(key=lambda c: c.attempt)
    actions: list[Action] = []
    wanted = {c.name for c in desired.containers} if desired else set()
    for name, instances in sorted(by_name.items()):
        if name in wanted:
            continue
        for c in instances:
            if c.running:
                grace = desired.grace_seconds if desired else 0
                actions.append(StopContainer(c.id, grace, "not in the pod spec"))
            else:
                actions.append(RemoveContainer(c.id))
    if desired is None:
        return Plan(tuple(actions), SUCCEEDED, ())
    statuses: list[ContainerStatus] = []
    wake: list[float] = []
    for want in desired.containers:
        instances = by_name.get(want.name, [])
        latest = instances[-1] if instances else None
        # Keep the latest instance and the one before it (for `logs --previous`).
        actions += [RemoveContainer(c.id) for c in instances[:-2] if not c.running]
        if latest is None:
            actions.append(StartContainer(want.name, 0))
            statuses.append(ContainerStatus(want.name, "waiting", CREATING))
            continue
        if latest.running:
            if latest.spec_hash != want.spec_hash:
                actions.append(StopContainer(latest.id, desired.grace_seconds, "spec changed"))
            elif latest.id in unhealthy:
                actions.append(StopContainer(latest.id, desired.grace_seconds,
                                             unhealthy[latest.id]))
            statuses.append(ContainerStatus(want.name, "running", restarts=latest.attempt,
                                            started_at=latest.started_at, id=latest.id))
            continue
        exit_code = latest.exit_code if latest.exit_code is not None else -1
        if latest.spec_hash != want.spec_hash:
            at: float | None = now
        else:
            at = next_restart(desired.restart_policy, exit_code, latest.attempt,
                              latest.finished_at, now)
        if at is None:
            statuses.append(ContainerStatus(
                want.name, "terminated", _exit_reason(latest), exit_code, latest.attempt,
                latest.started_at, latest.finished_at))
        elif at <= now:
            actions.append(StartContainer(want.name, latest.attempt + 1))
            statuses.append(ContainerStatus(want.name, "waiting", CREATING,
                                            restarts=latest.attempt + 1))
        else:
            wake.append(at)
            statuses.append(ContainerStatus(want.name, "waiting", CRASH_LOOP, exit_code,
                                            latest.attempt, latest.started_at,
                                            latest.finished_at))
    return Plan(tuple(actions), _phase(desired, statuses), tuple(statuses),
                min(wake) if wake else None)


def _phase(desired: DesiredPod, statuses: list[ContainerStatus]) -> str:
    """Kubernetes' pod phase from container states and the restart policy."""
    states = [s.state for s in statuses]
    if any(s == "running" for s in states):
        return RUNNING
    if statuses and all(s == "terminated" for s in states):
        failed = any(s.exit_code != 0 for s in statuses)
        return FAILED if failed else SUCCEEDED
    if any(s.reason == CRASH_LOOP or s.restarts for s in statuses):
        return RUNNING  # it has run and will run again
    return PENDING


__all__ = ["ALWAYS", "NEVER", "ON_FAILURE", "Action", "ContainerStatus", "DesiredContainer",
           "DesiredPod", "ObservedContainer", "Plan", "RemoveContainer", "StartContainer",
           "StopContainer", "reconcile"]
