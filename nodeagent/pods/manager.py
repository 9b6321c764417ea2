"""Runs this node's pods side by side, so that no pod ever waits for another.

Each pod has a lane: its sync passes (which may pull an image, start containers or restart one)
run one at a time on a thread pool, and its termination runs on a thread of its own (preStop,
SIGTERM, the grace period, SIGKILL), so a hundred pods stopping take one grace period, not a
hundred, and pods keep starting meanwhile. A pod deleted while its image is still pulling is
stopped at once; it never starts.

The control loop (`step`) is called from one thread: it hands out passes when they are due,
collects their results (statuses to report), starts terminations for pods no longer wanted or
being deleted, confirms to the control plane when a deleted pod's containers have all stopped,
and forgets a pod once it is torn down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from moorage.model.pods import is_terminating, stop_grace
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.plan import Plan, StartContainer

log = logging.getLogger("moorage.agent")

SYNC_SECONDS = 1.0
# Containers just started: look again soon, so they are reported Running at once.
QUICK_RESYNC_SECONDS = 0.1
# Sync passes running at once (a pass may wait on an image pull for long).
MAX_LANES = 32
# A confirmation that a deleted pod's containers stopped is repeated this often until the pod
# leaves the node's assignments (the first may have been lost with a session).
CONFIRM_EVERY_SECONDS = 2.0
# After a termination failed (its teardown raised), it is tried again this much later.
RETRY_SECONDS = 1.0
STATIC_SOURCE_ANNOTATION = "kubernetes.io/config.source"


class Wakeup:
    """The control loop's doorbell, shaped like a threading.Event: `set()` says that something
    changed (new assignments, the network, a signal, a pass or termination that progressed);
    `poke(uid)` that one pod needs a pass now (a probe verdict changed)."""

    def __init__(self) -> None:
        # Reentrant: a signal handler (SIGTERM -> set) may run while this thread holds it.
        self._cond = threading.Condition(threading.RLock())
        self._flag = False
        self._uids: set[str] = set()

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def poke(self, uid: str) -> None:
        with self._cond:
            self._flag = True
            self._uids.add(uid)
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag

    def take(self) -> set[str]:
        """Clears the bell; the pods poked since the last take."""
        with self._cond:
            self._flag = False
            uids, self._uids = self._uids, set()
            return uids


@dataclass
class _Termination:
    deadline: float                      # monotonic; only ever moved closer
    stopped: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    confirmed_at: float = float("-inf")


class PodManager:
    def __init__(self, make_worker: Callable[[pb.Pod], object], wake: Wakeup, *,
                 report: Callable[[pb.Pod, pb.PodStatus], None] | None = None,
                 removed: Callable[[pb.Pod], None] | None = None,
                 confirm: Callable[[pb.Pod], None] | None = None,
                 removal_grace: Callable[[pb.Pod], int | None] = lambda pod: None,
                 clock=time.monotonic, lanes: int = MAX_LANES):
        self.make_worker = make_worker
        self.wake = wake
        self.report, self.removed, self.confirm = report, removed, confirm
        # Seconds to give a pod that vanished from the desired set without a graceful
        # deletion (None: its own grace).
        self.removal_grace = removal_grace
        self.clock = clock
        self.pool = ThreadPoolExecutor(lanes, thread_name_prefix="pod")
        self.workers: dict[str, object] = {}
        self.inflight: dict[str, Future] = {}
        self.due: dict[str, float] = {}
        self.terminations: dict[str, _Termination] = {}
        self.retry_at: dict[str, float] = {}
        self.last_phase: dict[str, str] = {}

    def uids(self) -> set[str]:
        """Every pod with something on this node: desired, or still being torn down."""
        return set(self.workers)

    def step(self, want: dict[str, pb.Pod], poked: set[str] = frozenset()) -> float:
        """One pass of the control loop; returns the seconds until the next one is due."""
        now = self.clock()
        for uid in poked:
            if uid in self.due:
                self.due[uid] = now
        self._collect(now)
        for uid in [u for u in self.workers if u not in want]:
            if uid not in self.terminations and uid not in self.retry_at:
                pod = self.workers[uid].pod
                grace = self.removal_grace(pod)
                log.info("pod %s is no longer wanted here: stopping it", _name(pod))
                self._terminate(uid, stop_grace(pod) if grace is None else grace, now)
        for uid, pod in want.items():
            self._want(uid, pod, now)
        self._follow_terminations(want, now)
        waits = [d - now for u, d in self.due.items() if u not in self.inflight]
        waits += [t - now for t in self.retry_at.values()]
        return max(0.0, min([SYNC_SECONDS, *waits]))

    def _want(self, uid: str, pod: pb.Pod, now: float) -> None:
        worker = self.workers.get(uid)
        if is_terminating(pod):
            if worker is None:   # never ran here, or run before a restart: stop what is left
                worker = self.workers[uid] = self.make_worker(pod)
            worker.pod = pod
            term = self.terminations.get(uid)
            if term is None:
                if uid not in self.retry_at:
                    log.info("pod %s is being deleted: stopping it (grace %ds)", _name(pod),
                             stop_grace(pod))
                    self._terminate(uid, stop_grace(pod), now)
            else:
                term.deadline = min(term.deadline, now + stop_grace(pod))
            return
        if uid in self.terminations:
            return   # a pod of the same uid (a static pod put back) waits for the old to go
        if worker is None:
            worker = self.workers[uid] = self.make_worker(pod)
            self.due[uid] = now
        if worker.pod is not pod:
            worker.pod = pod
            self.due[uid] = now
        if uid not in self.inflight and self.due.get(uid, now) <= now:
            self.due[uid] = now + SYNC_SECONDS
            future = self.pool.submit(self._pass, worker)
            self.inflight[uid] = future
            # Wakes the loop to collect the result; the pod's next pass stays as due.
            future.add_done_callback(lambda _f: self.wake.set())

    @staticmethod
    def _pass(worker) -> tuple[Plan, pb.PodStatus]:
        plan = worker.sync()
        return plan, worker.status(plan)

    def _collect(self, now: float) -> None:
        for uid, future in list(self.inflight.items()):
            if not future.done():
                continue
            del self.inflight[uid]
            worker = self.workers.get(uid)
            if worker is None or uid in self.terminations:
                continue
            try:
                plan, status = future.result()
            except Exception:  # noqa: BLE001 - one pod's failure must not stop the rest
                log.exception("pod %s: its sync pass failed", _name(worker.pod))
                continue
            if any(isinstance(a, StartContainer) for a in plan.actions):
                self.due[uid] = min(self.due.get(uid, now), now + QUICK_RESYNC_SECONDS)
            if plan.wake_at is not None:
                # plan.wake_at is wall-clock time (the pod worker's clock).
                self.due[uid] = min(self.due.get(uid, now),
                                    now + max(0.0, plan.wake_at - time.time()))
            if self.last_phase.get(uid) != plan.phase:
                log.info("pod %s is %s", _name(worker.pod), plan.phase)
                self.last_phase[uid] = plan.phase
            if self.report:
                self.report(worker.pod, status)

    def _terminate(self, uid: str, grace: int, now: float) -> None:
        worker = self.workers[uid]
        term = _Termination(deadline=now + max(0, grace))
        self.terminations[uid] = term
        self.retry_at.pop(uid, None)
        self.due.pop(uid, None)

        def run() -> None:
            try:
                worker.terminate(lambda: term.deadline,
                                 lambda: (term.stopped.set(), self.wake.set()))
            except Exception as err:  # noqa: BLE001 - logged by the loop, then retried
                term.error = err
            finally:
                term.done.set()
                self.wake.set()

        threading.Thread(target=run, name=f"terminate-{uid[:8]}", daemon=True).start()

    def _follow_terminations(self, want: dict[str, pb.Pod], now: float) -> None:
        for uid, at in list(self.retry_at.items()):
            if at <= now and uid in self.workers and uid not in self.terminations:
                pod = want.get(uid, self.workers[uid].pod)
                self._terminate(uid, 0 if uid not in want else stop_grace(pod), now)
        for uid, term in list(self.terminations.items()):
            pod = want.get(uid)
            if term.stopped.is_set() and pod is not None and is_terminating(pod) and \
                    self.confirm is not None and now - term.confirmed_at >= \
                    CONFIRM_EVERY_SECONDS:
                term.confirmed_at = now
                self.confirm(pod)
            if not term.done.is_set():
                continue
            worker = self.workers[uid]
            if term.error is not None:
                log.error("pod %s: tearing it down: %s", _name(worker.pod), term.error,
                          exc_info=term.error)
                del self.terminations[uid]
                self.retry_at[uid] = now + RETRY_SECONDS
                continue
            if pod is not None and is_terminating(pod):
                continue   # gone here; kept until the control plane has removed it
            del self.terminations[uid]
            del self.workers[uid]
            self.last_phase.pop(uid, None)
            if self.removed:
                self.removed(worker.pod)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _name(pod: pb.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"
