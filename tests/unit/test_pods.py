"""Table tests for the agent's pure pod logic: restarts, back-off, spec changes, phases."""

from __future__ import annotations

import pytest

from nodeagent.pods.plan import (
    DesiredContainer,
    DesiredPod,
    ObservedContainer,
    RemoveContainer,
    StartContainer,
    StopContainer,
    reconcile,
)

NOW = 1000.0


def pod(policy="Always", *names, grace=30):
    names = names or ("app",)
    return DesiredPod("default", "p", "uid-1", policy, grace,
                      tuple(DesiredContainer(n, "busybox", f"h-{n}") for n in names))


def running(name="app", attempt=0, h=None):
    return ObservedContainer(f"{name}-{attempt}", name, h or f"h-{name}", attempt, True,
                             started_at=NOW - 50)


def exited(name="app", attempt=0, code=0, finished=NOW - 1, reason="", h=None):
    return ObservedContainer(f"{name}-{attempt}", name, h or f"h-{name}", attempt, False,
                             code, reason, NOW - 60, finished)


@pytest.mark.parametrize("desired, observed, actions, phase, wake", [
    pytest.param(pod(), [], [StartContainer("app", 0)], "Pending", None, id="first-start"),
    pytest.param(pod(), [running()], [], "Running", None, id="steady"),
    # First restart has no back-off: restarts=0 -> delay 0, so start at once.
    pytest.param(pod(), [exited(code=1)], [StartContainer("app", 1)], "Running", None,
                 id="always-restarts-at-once-first-time"),
    # Third exit: restarts=2 -> 10s * 2**1 = 20s after it finished (NOW-1) -> wake at NOW+19.
    pytest.param(pod(), [exited(attempt=1, finished=NOW - 5), exited(attempt=2, code=1)],
                 [], "Running", NOW + 19, id="crash-loop-back-off"),
    # Back-off of 10s after finishing at NOW-11 has passed -> restart now.
    pytest.param(pod(), [exited(attempt=1, code=1, finished=NOW - 11)],
                 [StartContainer("app", 2)], "Running", None, id="back-off-over"),
    pytest.param(pod("Never"), [exited(code=0)], [], "Succeeded", None, id="never-success"),
    pytest.param(pod("Never"), [exited(code=2)], [], "Failed", None, id="never-failure"),
    pytest.param(pod("OnFailure"), [exited(code=0)], [], "Succeeded", None,
                 id="on-failure-done"),
    pytest.param(pod("OnFailure"), [exited(code=137, reason="OOMKilled")],
                 [StartContainer("app", 1)], "Running", None, id="on-failure-oom-restarts"),
    pytest.param(pod(), [running(h="old")], [StopContainer("app-0", 30, "spec changed")],
                 "Running", None, id="spec-change-stops"),
    pytest.param(pod(), [exited(code=0, h="old", attempt=3)], [StartContainer("app", 4)],
                 "Running", None, id="spec-change-restarts-without-back-off"),
    pytest.param(pod("Always", "a"), [running("b")],
                 [StopContainer("b-0", 30, "not in the pod spec"), StartContainer("a", 0)],
                 "Pending", None, id="extra-container-stopped"),
    pytest.param(None, [running(), exited(attempt=1)],
                 [StopContainer("app-0", 0, "not in the pod spec"), RemoveContainer("app-1")],
                 "Succeeded", None, id="pod-gone"),
    pytest.param(pod(), [exited(attempt=0, code=1, finished=NOW - 900),
                         exited(attempt=1, code=1, finished=NOW - 800), running(attempt=2)],
                 [RemoveContainer("app-0")], "Running", None, id="keeps-one-previous"),
])
def test_reconcile(desired, observed, actions, phase, wake):
    plan = reconcile(desired, observed, NOW)
    assert list(plan.actions) == actions
    assert plan.phase == phase
    assert plan.wake_at == wake


def test_statuses_name_the_reason_for_waiting():
    plan = reconcile(pod(), [exited(attempt=2, code=1)], NOW)
    (status,) = plan.containers
    assert (status.state, status.reason, status.restarts, status.exit_code) == (
        "waiting", "CrashLoopBackOff", 2, 1)
    done = reconcile(pod("Never"), [exited(code=137, reason="OOMKilled")], NOW).containers[0]
    assert (done.state, done.reason, done.exit_code) == ("terminated", "OOMKilled", 137)
