"""Restart policy as a pure function: when, if ever, to start an exited container again."""

from __future__ import annotations

ALWAYS, ON_FAILURE, NEVER = "Always", "OnFailure", "Never"
BACKOFF_INITIAL = 10.0   # the kubelet's first back-off, seconds
BACKOFF_MAX = 300.0      # and its cap (5 minutes)


def backoff(restarts: int) -> float:
    """0 for the first restart, then 10s doubling to 5min, as the kubelet's CrashLoopBackOff."""
    if restarts <= 0:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (restarts - 1))


def next_restart(policy: str, exit_code: int, restarts: int, last_finished: float,
                 now: float) -> float | None:
    """The earliest time to restart (>= now), or None when the policy says never."""
    if policy == NEVER or (policy == ON_FAILURE and exit_code == 0):
        return None
    if policy not in (ALWAYS, ON_FAILURE):
        raise ValueError(f"unknown restart policy {policy!r}: use Always, OnFailure or Never")
    return max(now, last_finished + backoff(restarts))
