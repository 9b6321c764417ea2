"""The agent's pod manager with fake pod workers: terminations run side by side and never hold
up other pods, a pod deleted while it is still starting is stopped without waiting for the
start, a deleted pod is confirmed once its containers stopped (and again until it is gone), and
a pod that vanished without a graceful deletion gets the removal grace."""

from __future__ import annotations

import threading
import time

from moorage.model.pods import graceful_delete
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.manager import PodManager, Wakeup
from nodeagent.pods.plan import Plan
from tests.builders import pb_pod

WAIT = 10.0


def make_pod(uid: str, grace: int = 30) -> pb.Pod:
    return pb_pod(uid, uid=uid, node="n1", grace=grace, phase="Running")


def deleting(p: pb.Pod, grace: int | None = None) -> pb.Pod:
    return graceful_delete(p, grace, time.time())


class FakeWorker:
    def __init__(self, pod: pb.Pod, gates: dict):
        self.pod = pod
        self.syncs = 0
        self.sync_gate = gates.get(("sync", pod.metadata.uid))
        self.stop_gate = gates.get(("stop", pod.metadata.uid))
        self.syncing = threading.Event()
        self.stopped_at: float | None = None
        self.grace_seen: float | None = None
        self.torn_down = threading.Event()
        self.pass_lock = threading.Lock()

    def sync(self) -> Plan:
        with self.pass_lock:
            self.syncs += 1
            self.syncing.set()
            if self.sync_gate is not None:
                assert self.sync_gate.wait(WAIT)
            return Plan((), "Running", ())

    def status(self, plan: Plan) -> pb.PodStatus:
        return pb.PodStatus(phase=plan.phase)

    def terminate(self, deadline, stopped) -> None:
        self.grace_seen = deadline() - time.monotonic()
        if self.stop_gate is not None:
            assert self.stop_gate.wait(WAIT)
        self.stopped_at = time.monotonic()
        stopped()
        with self.pass_lock:      # teardown waits for a pass still running
            self.torn_down.set()


class Harness:
    def __init__(self, removal_grace=lambda pod: None):
        self.gates: dict = {}
        self.workers: dict[str, FakeWorker] = {}
        self.reports: list[str] = []
        self.confirmed: list[str] = []
        self.removed: list[str] = []
        self.wake = Wakeup()

        def make(pod):
            w = FakeWorker(pod, self.gates)
            self.workers[pod.metadata.uid] = w
            return w
        self.manager = PodManager(
            make, self.wake, report=lambda pod, st: self.reports.append(pod.metadata.uid),
            confirm=lambda pod: self.confirmed.append(pod.metadata.uid),
            removed=lambda pod: self.removed.append(pod.metadata.uid),
            removal_grace=removal_grace)

    def gate(self, what: str, uid: str) -> threading.Event:
        self.gates[(what, uid)] = threading.Event()
        return self.gates[(what, uid)]

    def until(self, want: dict, fn, what: str):
        deadline = time.monotonic() + WAIT
        while not fn():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {what}")
            self.manager.step(want, self.wake.take())
            self.wake.wait(0.05)


def test_terminations_run_side_by_side_and_new_pods_start_meanwhile():
    h = Harness()
    old = {f"old{i}": make_pod(f"old{i}") for i in range(5)}
    gates = [h.gate("stop", uid) for uid in old]
    h.until(old, lambda: all(w.syncs for w in h.workers.values()), "first syncs")
    want = {uid: deleting(p) for uid, p in old.items()}
    want["new"] = make_pod("new")
    # Every termination has begun and blocks; the new pod still gets its pass and a report.
    h.until(want, lambda: "new" in h.reports and all(
        w.grace_seen is not None for uid, w in h.workers.items() if uid != "new"),
        "the new pod's pass while five terminations wait")
    assert not h.confirmed
    for g in gates:
        g.set()
    h.until(want, lambda: set(h.confirmed) >= set(old), "confirmations")
    # Until the control plane removes them, they stay (and are confirmed again later).
    assert not h.removed
    h.until({"new": want["new"]}, lambda: set(h.removed) == set(old), "removal")
    h.manager.close()


def test_a_pod_deleted_while_starting_is_stopped_without_waiting_for_the_start():
    h = Harness()
    pull = h.gate("sync", "slow")
    p = make_pod("slow")
    h.until({"slow": p}, lambda: "slow" in h.workers and h.workers["slow"].syncing.is_set(),
            "the pass to begin (an image pull)")
    gone = deleting(p, grace=3)
    # Its containers are reported stopped (confirmed) while the pull still runs...
    h.until({"slow": gone}, lambda: h.confirmed == ["slow"], "the confirmation")
    worker = h.workers["slow"]
    assert not worker.torn_down.is_set()
    assert 2.5 < worker.grace_seen <= 3.0
    # ...and the teardown follows once the pull ends.
    pull.set()
    h.until({}, lambda: h.removed == ["slow"], "the teardown")
    assert worker.torn_down.is_set()
    h.manager.close()


def test_a_vanished_pod_gets_the_removal_grace():
    h = Harness(removal_grace=lambda pod: 0)
    p = make_pod("x", grace=30)
    h.until({"x": p}, lambda: "x" in h.reports, "first pass")
    h.until({}, lambda: h.removed == ["x"], "removal")
    assert h.workers["x"].grace_seen <= 0
    assert not h.confirmed            # nothing to confirm: the API has no such pod any more
    h.manager.close()


def test_a_shorter_grace_moves_the_deadline_closer():
    h = Harness()
    gate = h.gate("stop", "p")
    p = make_pod("p", grace=30)
    h.until({"p": p}, lambda: "p" in h.reports, "first pass")
    h.until({"p": deleting(p)}, lambda: h.workers["p"].grace_seen is not None, "termination")
    term = h.manager.terminations["p"]
    before = term.deadline
    h.manager.step({"p": deleting(p, grace=1)})
    assert term.deadline < before - 20
    gate.set()
    h.until({}, lambda: h.removed == ["p"], "removal")
    h.manager.close()
