"""Container probes, pure: what a probe is, how results add up to a verdict, and what the
verdicts mean for a container (ready, started, to be killed), as the kubelet decides.

No I/O and no clock: nodeagent/pods/prober.py runs the probes on its own threads and feeds each
result to `observe`; the pod worker asks `is_ready` and `kill_reason`. Results belong to one
container instance (its id): a restarted container starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

from moorage.model.pods import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_PROBE_PERIOD,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_SUCCESS_THRESHOLD,
)

LIVENESS, READINESS, STARTUP = "Liveness", "Readiness", "Startup"
KINDS = (STARTUP, LIVENESS, READINESS)

# Kubernetes' defaults (the server fills the same ones in).
DEFAULT_PERIOD, DEFAULT_TIMEOUT = DEFAULT_PROBE_PERIOD, DEFAULT_PROBE_TIMEOUT

# Why the pod worker stops a container (StopContainer.why), and the kubelet's Event messages.
KILL_LIVENESS = "failed liveness probe"
KILL_STARTUP = "failed startup probe"
KILL_REASONS = (KILL_LIVENESS, KILL_STARTUP)
UNHEALTHY, KILLING = "Unhealthy", "Killing"


@dataclass(frozen=True, slots=True)
class HTTPGet:
    port: int
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocket:
    port: int
    host: str = ""


@dataclass(frozen=True, slots=True)
class Exec:
    command: tuple[str, ...]


Action = HTTPGet | TCPSocket | Exec


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    kind: str                 # LIVENESS, READINESS or STARTUP
    action: Action
    initial_delay: int = 0
    period: int = DEFAULT_PERIOD
    timeout: int = DEFAULT_TIMEOUT
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD

    @classmethod
    def of(cls, kind: str, action: Action, initial_delay: int = 0, period: int = 0,
           timeout: int = 0, success_threshold: int = 0,
           failure_threshold: int = 0) -> ProbeSpec:
        """Zero means "not set", as in the API: each such field gets Kubernetes' default.
        Liveness and startup probes always need just one success (the API insists on 1)."""
        success = success_threshold or DEFAULT_SUCCESS_THRESHOLD
        if kind != READINESS:
            success = 1
        return cls(kind, action, max(0, initial_delay), period or DEFAULT_PERIOD,
                   timeout or DEFAULT_TIMEOUT, success,
                   failure_threshold or DEFAULT_FAILURE_THRESHOLD)


@dataclass(frozen=True, slots=True)
class ProbeState:
    """A probe's verdict so far. `result` None: no verdict yet (a startup probe that has not
    succeeded). `run` counts the latest results that agree with each other."""

    result: bool | None
    last_ok: bool | None = None
    run: int = 0
    probes: int = 0


def initial(kind: str) -> ProbeState:
    """The kubelet's starting verdicts: alive until proven dead, not ready until proven ready,
    not started (unknown) until the startup probe succeeds."""
    return ProbeState({LIVENESS: True, READINESS: False, STARTUP: None}[kind])


def observe(spec: ProbeSpec, state: ProbeState, ok: bool) -> ProbeState:
    """The state after one probe result: the verdict moves only after `successThreshold`
    successes or `failureThreshold` failures in a row."""
    run = state.run + 1 if state.last_ok is ok else 1
    result = state.result
    if ok and run >= spec.success_threshold:
        result = True
    elif not ok and run >= spec.failure_threshold:
        result = False
    return ProbeState(result, ok, run, state.probes + 1)


def first_due(spec: ProbeSpec, started_at: float) -> float:
    """When to probe first: initialDelaySeconds after the container started."""
    return started_at + spec.initial_delay


def next_due(spec: ProbeSpec, last_run: float) -> float:
    return last_run + spec.period


def is_started(states: dict[str, ProbeState]) -> bool:
    """Started: no startup probe, or it has succeeded."""
    startup = states.get(STARTUP)
    return startup is None or startup.result is True


def should_run(kind: str, states: dict[str, ProbeState]) -> bool:
    """The startup probe gates the others, and runs no more once it has succeeded; a probe
    whose failure killed the container waits for the next instance (the kubelet's onHold)."""
    if kill_reason(states):
        return False
    if kind == STARTUP:
        return not is_started(states)
    return is_started(states)


def is_ready(states: dict[str, ProbeState]) -> bool:
    """Ready (for a running container): started, and its readiness probe, if any, passes."""
    if not is_started(states):
        return False
    readiness = states.get(READINESS)
    return readiness is None or readiness.result is True


def kill_reason(states: dict[str, ProbeState]) -> str | None:
    """Why to kill the container (a StopContainer.why), or None to leave it running."""
    startup = states.get(STARTUP)
    if startup is not None and startup.result is False:
        return KILL_STARTUP
    liveness = states.get(LIVENESS)
    if liveness is not None and liveness.result is False:
        return KILL_LIVENESS
    return None


def unhealthy_message(kind: str, output: str) -> str:
    """The kubelet's Unhealthy event text, e.g. "Readiness probe failed: ..."."""
    return f"{kind} probe failed: {output}".rstrip()


def killing_message(container: str, why: str, restarts: bool) -> str:
    """The kubelet's Killing event text."""
    tail = ", will be restarted" if restarts else ""
    return f"Container {container} {why}{tail}"


def transition(before: ProbeState, after: ProbeState) -> bool:
    """Whether the verdict changed (the pod's status or plan may change with it)."""
    return before.result is not after.result


__all__ = ["DEFAULT_FAILURE_THRESHOLD", "DEFAULT_PERIOD", "DEFAULT_SUCCESS_THRESHOLD",
           "DEFAULT_TIMEOUT", "KILLING", "KILL_LIVENESS", "KILL_REASONS", "KILL_STARTUP",
           "KINDS", "LIVENESS", "READINESS", "STARTUP", "UNHEALTHY", "Exec", "HTTPGet",
           "ProbeSpec", "ProbeState", "TCPSocket", "first_due", "initial", "is_ready",
           "is_started", "kill_reason", "killing_message", "next_due", "observe",
           "should_run", "transition", "unhealthy_message"]
