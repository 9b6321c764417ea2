"""Table tests for the pure probe logic: defaults, thresholds, startup gating, readiness, and
the restart decision in pods.reconcile."""

from __future__ import annotations

import pytest

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import probes as p
from nodeagent.pods.plan import (
    DesiredContainer,
    DesiredPod,
    ObservedContainer,
    StopContainer,
    reconcile,
)
from nodeagent.pods.prober import probe_spec

EXEC = p.Exec(("true",))


def spec(kind=p.READINESS, **kw):
    return p.ProbeSpec.of(kind, EXEC, **kw)


def run(s: p.ProbeSpec, results: str) -> p.ProbeState:
    """Feeds results ("+" success, "-" failure) from the probe's starting verdict."""
    state = p.initial(s.kind)
    for r in results:
        state = p.observe(s, state, r == "+")
    return state


def test_defaults_are_kubernetes():
    s = spec()
    assert (s.initial_delay, s.period, s.timeout, s.success_threshold,
            s.failure_threshold) == (0, 10, 1, 1, 3)


def test_liveness_and_startup_need_one_success():
    assert spec(p.LIVENESS, success_threshold=3).success_threshold == 1
    assert spec(p.STARTUP, success_threshold=3).success_threshold == 1
    assert spec(p.READINESS, success_threshold=3).success_threshold == 3


def test_probe_spec_from_the_api_resolves_named_ports():
    c = pb.Container(name="web", ports=[pb.ContainerPort(name="http", container_port=8080)])
    probe = pb.Probe(http_get=pb.HTTPGetAction(port=pb.IntOrString(str_val="http")),
                     period_seconds=2)
    got = probe_spec(p.READINESS, probe, c)
    assert got.action == p.HTTPGet(8080, "/", "", "HTTP", ())
    assert (got.period, got.timeout, got.failure_threshold) == (2, 1, 3)
    with pytest.raises(ValueError, match="no port named 'metrics'"):
        probe_spec(p.LIVENESS, pb.Probe(tcp_socket=pb.TCPSocketAction(
            port=pb.IntOrString(str_val="metrics"))), c)


@pytest.mark.parametrize("kind, kw, results, want", [
    pytest.param(p.READINESS, {}, "", False, id="readiness-starts-unready"),
    pytest.param(p.LIVENESS, {}, "", True, id="liveness-starts-alive"),
    pytest.param(p.STARTUP, {}, "", None, id="startup-starts-unknown"),
    pytest.param(p.READINESS, {}, "+", True, id="one-success-is-ready"),
    pytest.param(p.READINESS, {"success_threshold": 2}, "+", False, id="needs-two-successes"),
    pytest.param(p.READINESS, {"success_threshold": 2}, "+-+", False,
                 id="successes-must-be-in-a-row"),
    pytest.param(p.READINESS, {"success_threshold": 2}, "++", True, id="two-in-a-row"),
    # failureThreshold 3: two failures keep the verdict, the third flips it.
    pytest.param(p.LIVENESS, {}, "--", True, id="two-failures-still-alive"),
    pytest.param(p.LIVENESS, {}, "---", False, id="third-failure-dead"),
    pytest.param(p.LIVENESS, {}, "--+--", True, id="a-success-resets-the-count"),
    pytest.param(p.READINESS, {}, "+--", True, id="ready-until-threshold"),
    pytest.param(p.READINESS, {}, "+---", False, id="unready-at-threshold"),
    pytest.param(p.READINESS, {"failure_threshold": 1}, "+-", False, id="threshold-one"),
    pytest.param(p.READINESS, {}, "+---+", True, id="ready-again-after-one-success"),
    pytest.param(p.STARTUP, {"failure_threshold": 2}, "-", None, id="startup-still-waiting"),
    pytest.param(p.STARTUP, {"failure_threshold": 2}, "--", False, id="startup-failed"),
    pytest.param(p.STARTUP, {"failure_threshold": 2}, "-+", True, id="startup-done"),
])
def test_thresholds(kind, kw, results, want):
    assert run(spec(kind, **kw), results).result is want


def test_transition_only_when_the_verdict_moves():
    s = spec(p.LIVENESS)
    assert not p.transition(run(s, "-"), run(s, "--"))
    assert p.transition(run(s, "--"), run(s, "---"))


def states(**kw) -> dict[str, p.ProbeState]:
    return {getattr(p, k.upper()): run(spec(getattr(p, k.upper())), r) for k, r in kw.items()}


@pytest.mark.parametrize("st, runs", [
    pytest.param(states(startup="", liveness="", readiness=""), {p.STARTUP},
                 id="startup-gates-the-others"),
    pytest.param(states(startup="-+", liveness="", readiness=""), {p.LIVENESS, p.READINESS},
                 id="startup-done-others-run"),
    pytest.param(states(liveness="", readiness=""), {p.LIVENESS, p.READINESS},
                 id="no-startup-probe"),
    pytest.param(states(liveness="---", readiness="+"), set(), id="dead-waits-to-be-killed"),
    pytest.param(states(startup="---", liveness=""), set(), id="startup-failed-waits"),
])
def test_should_run(st, runs):
    assert {k for k in st if p.should_run(k, st)} == runs


@pytest.mark.parametrize("st, ready", [
    pytest.param({}, True, id="no-probes-ready-when-running"),
    pytest.param(states(liveness=""), True, id="liveness-only"),
    pytest.param(states(readiness=""), False, id="readiness-not-yet-probed"),
    pytest.param(states(readiness="+"), True, id="readiness-passed"),
    pytest.param(states(readiness="+---"), False, id="readiness-failed"),
    pytest.param(states(startup="-"), False, id="not-started"),
    pytest.param(states(startup="+"), True, id="started-no-readiness"),
    pytest.param(states(startup="-", readiness="+"), False, id="started-gates-readiness"),
])
def test_is_ready(st, ready):
    assert p.is_ready(st) is ready


@pytest.mark.parametrize("st, why", [
    pytest.param(states(liveness="--"), None, id="below-threshold"),
    pytest.param(states(liveness="---"), p.KILL_LIVENESS, id="liveness"),
    pytest.param(states(startup="---"), p.KILL_STARTUP, id="startup"),
    pytest.param(states(readiness="----"), None, id="readiness-never-kills"),
])
def test_kill_reason(st, why):
    assert p.kill_reason(st) == why


def test_schedule_counts_from_the_container_start():
    s = spec(initial_delay=5, period=3)
    assert p.first_due(s, 100.0) == 105.0
    assert p.next_due(s, 105.0) == 108.0


def test_messages_are_the_kubelets():
    assert p.unhealthy_message(p.READINESS, "nope") == "Readiness probe failed: nope"
    assert p.killing_message("app", p.KILL_LIVENESS, True) == \
        "Container app failed liveness probe, will be restarted"
    assert p.killing_message("app", p.KILL_LIVENESS, False) == \
        "Container app failed liveness probe"


# ---- the restart decision (pods.reconcile with unhealthy containers) ----

NOW = 1000.0


def desired(policy="Always"):
    return DesiredPod("default", "p", "uid-1", policy, 5,
                      (DesiredContainer("app", "busybox", "h"),))


def test_unhealthy_running_container_is_stopped():
    c = ObservedContainer("app-0", "app", "h", 0, True, started_at=NOW - 50)
    plan = reconcile(desired(), [c], NOW, {"app-0": p.KILL_LIVENESS})
    assert plan.actions == (StopContainer("app-0", 5, p.KILL_LIVENESS),)
    assert plan.containers[0].id == "app-0"


def test_unhealthy_verdict_of_an_old_instance_is_ignored():
    c = ObservedContainer("app-1", "app", "h", 1, True, started_at=NOW - 5)
    assert reconcile(desired(), [c], NOW, {"app-0": p.KILL_LIVENESS}).actions == ()


@pytest.mark.parametrize("policy, restarts", [
    pytest.param("Always", True, id="always"),
    pytest.param("OnFailure", True, id="on-failure-killed-is-a-failure"),
    pytest.param("Never", False, id="never"),
])
def test_killed_container_restarts_per_policy(policy, restarts):
    # After the kill the instance has exited 137; restart counts and back-off are as usual.
    killed = ObservedContainer("app-0", "app", "h", 0, False, 137, "Error", NOW - 50, NOW - 1)
    plan = reconcile(desired(policy), [killed], NOW)
    assert bool(plan.actions) is restarts
