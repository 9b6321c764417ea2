"""Runs containers' probes off the sync thread: one thread per probed container instance,
which runs its probes on their schedules and keeps their verdicts (nodeagent/pods/probes.py).

The pod worker tells it which instances run (`sync`) and asks for verdicts (`ready`,
`unhealthy`); a verdict that changes wakes the sync loop, and every failure is an Unhealthy
Event. httpGet and tcpSocket connect from a short-lived thread that has entered the pod's
network namespace (namespaces are per thread, and that thread is never reused), so they work
with or without an overlay address; exec probes go through the runtime's exec.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import probes as p
from nodeagent.runtime.netns import on_thread

log = logging.getLogger(__name__)

MAX_OUTPUT = 10 * 1024   # the kubelet keeps this much of a probe's output
USER_AGENT = "moor-probe/1.0"
# How long an exec probe that timed out gets to go after SIGTERM, before SIGKILL.
EXEC_KILL_GRACE = 1.0

EventFn = Callable[[pb.Pod, str, str, str], None]
_PROBE_FIELDS = ((p.STARTUP, "startup_probe"), (p.LIVENESS, "liveness_probe"),
                 (p.READINESS, "readiness_probe"))


# ---- from the API ----

def _port(ref: pb.IntOrString, c: pb.Container) -> int:
    if ref.WhichOneof("value") == "str_val":
        for port in c.ports:
            if port.name == ref.str_val:
                return port.container_port
        if ref.str_val.isdigit():
            return int(ref.str_val)
        raise ValueError(f"container {c.name} has no port named {ref.str_val!r}")
    return ref.int_val


def probe_spec(kind: str, probe: pb.Probe, c: pb.Container) -> p.ProbeSpec:
    """The probe as nodeagent/pods/probes.py knows it, with defaults and named ports resolved."""
    if probe.HasField("http_get"):
        get = probe.http_get
        action: p.Action = p.HTTPGet(_port(get.port, c), get.path or "/", get.host,
                                     get.scheme or "HTTP",
                                     tuple((h.name, h.value) for h in get.http_headers))
    elif probe.HasField("tcp_socket"):
        action = p.TCPSocket(_port(probe.tcp_socket.port, c), probe.tcp_socket.host)
    elif probe.HasField("exec"):
        action = p.Exec(tuple(probe.exec.command))
    else:
        raise ValueError(f"container {c.name}: {kind.lower()} probe has no handler")
    return p.ProbeSpec.of(kind, action, probe.initial_delay_seconds, probe.period_seconds,
                          probe.timeout_seconds, probe.success_threshold,
                          probe.failure_threshold)


def probe_specs(c: pb.Container) -> dict[str, p.ProbeSpec]:
    return {kind: probe_spec(kind, getattr(c, name), c)
            for kind, name in _PROBE_FIELDS if c.HasField(name)}


# ---- running one probe ----

def in_netns(netns_path: str, fn: Callable[[], object], timeout: float) -> object:
    """fn() on a new thread inside the network namespace at netns_path."""
    return on_thread(fn, netns_path, timeout)


def tcp_check(action: p.TCPSocket, host: str, timeout: float) -> tuple[bool, str]:
    try:
        socket.create_connection((host, action.port), timeout=timeout).close()
    except OSError as err:
        return False, f"dial tcp {host}:{action.port}: {_oserror(err)}"
    return True, ""


def http_check(action: p.HTTPGet, host: str, timeout: float) -> tuple[bool, str]:
    if action.scheme == "HTTPS":
        # The kubelet does not verify probe certificates either.
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, action.port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, action.port, timeout=timeout)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    headers.update(dict(action.headers))
    url = f"{action.scheme.lower()}://{host}:{action.port}{action.path}"
    try:
        conn.request("GET", action.path or "/", headers=headers)
        resp = conn.getresponse()
        body = resp.read(MAX_OUTPUT)
    except (OSError, http.client.HTTPException) as err:
        return False, f'Get "{url}": {_oserror(err) if isinstance(err, OSError) else err}'
    finally:
        conn.close()
    if 200 <= resp.status < 400:
        return True, ""
    text = body.decode(errors="replace").strip()
    return False, f"HTTP probe failed with statuscode: {resp.status}" + (
        f" ({text[:200]})" if text else "")


def exec_check(runtime, cid: str, action: p.Exec, timeout: float) -> tuple[bool, str]:
    try:
        proc = runtime.exec(cid, list(action.command), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    except (RuntimeError, OSError) as err:
        return False, str(err)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()   # nsexec passes it on to the command
        try:
            proc.communicate(timeout=EXEC_KILL_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return False, f"command {list(action.command)} timed out after {timeout:g}s"
    text = out[:MAX_OUTPUT].decode(errors="replace").strip()
    if proc.returncode == 0:
        return True, text
    return False, text or f"command {list(action.command)} exited with {proc.returncode}"


def _oserror(err: OSError) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "i/o timeout"
    return "connect: " + (err.strerror or str(err)).lower()


# ---- the prober ----

@dataclass
class _Instance:
    """One running container instance and its probes' verdicts."""

    pod: pb.Pod
    cid: str
    name: str
    started_at: float
    netns_path: str
    pod_ip: str
    specs: dict[str, p.ProbeSpec]
    states: dict[str, p.ProbeState]
    stop: threading.Event = field(default_factory=threading.Event)


class Prober:
    def __init__(self, runtime, wake: Callable[[str], None] = lambda uid: None,
                 event: EventFn | None = None, clock=time.time):
        self.runtime = runtime
        self.wake = wake          # called with the pod's uid when a verdict changes
        self.event = event        # Session.event, or None (static pods: log only)
        self.clock = clock
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}

    # -- the pod worker's side --

    def sync(self, pod: pb.Pod, netns_path: str, pod_ip: str,
             running: Sequence[tuple[str, str, float]]) -> None:
        """The pod's running container instances, as (container id, name, started_at): probes
        start for new ones and stop for those gone."""
        containers = {c.name: c for c in pod.spec.containers}
        live = {cid for cid, _, _ in running}
        with self._lock:
            for cid, inst in list(self._instances.items()):
                if inst.pod.metadata.uid == pod.metadata.uid and cid not in live:
                    inst.stop.set()
                    del self._instances[cid]
            for cid, name, started_at in running:
                inst = self._instances.get(cid)
                if inst is not None:
                    inst.pod, inst.pod_ip = pod, pod_ip
                    continue
                c = containers.get(name)
                if c is None:
                    continue
                try:
                    specs = probe_specs(c)
                except ValueError as err:
                    log.warning("pod %s: %s", _name(pod), err)
                    continue
                if not specs:
                    continue
                inst = _Instance(pod, cid, name, started_at, netns_path, pod_ip, specs,
                                 {k: p.initial(k) for k in specs})
                self._instances[cid] = inst
                threading.Thread(target=self._loop, args=(inst,), daemon=True,
                                 name=f"probe-{cid}").start()

    def ready(self, cid: str, c: pb.Container | None) -> bool:
        """Whether a running instance is ready; one not yet probed counts as its probes'
        starting verdicts say (not ready if it has a readiness or startup probe)."""
        with self._lock:
            inst = self._instances.get(cid)
            if inst is not None:
                return p.is_ready(dict(inst.states))
        if c is None:
            return True
        return p.is_ready({kind: p.initial(kind) for kind, name in _PROBE_FIELDS
                           if c.HasField(name)})

    def unhealthy(self, pod_uid: str) -> dict[str, str]:
        """The pod's instances to kill (container id -> StopContainer.why)."""
        out = {}
        with self._lock:
            for cid, inst in self._instances.items():
                if inst.pod.metadata.uid == pod_uid:
                    why = p.kill_reason(inst.states)
                    if why:
                        out[cid] = why
        return out

    def killing(self, pod: pb.Pod, cid: str, why: str, restarts: bool) -> None:
        """The pod worker is about to kill an instance for `why`: say so, and stop probing."""
        with self._lock:
            inst = self._instances.pop(cid, None)
        if inst is None:
            return
        inst.stop.set()
        self._emit(pod, "Normal", p.KILLING, p.killing_message(inst.name, why, restarts))

    def forget(self, pod_uid: str) -> None:
        with self._lock:
            for cid, inst in list(self._instances.items()):
                if inst.pod.metadata.uid == pod_uid:
                    inst.stop.set()
                    del self._instances[cid]

    def close(self) -> None:
        with self._lock:
            for inst in self._instances.values():
                inst.stop.set()
            self._instances.clear()

    # -- the probing thread --

    def _loop(self, inst: _Instance) -> None:
        due = {kind: p.first_due(spec, inst.started_at) for kind, spec in inst.specs.items()}
        while not inst.stop.is_set():
            with self._lock:
                states = dict(inst.states)
            runnable = [k for k in p.KINDS if k in inst.specs and p.should_run(k, states)]
            if not runnable:
                return   # started with nothing else to probe, or waiting to be killed
            kind = min(runnable, key=lambda k: due[k])
            delay = due[kind] - self.clock()
            if delay > 0:
                inst.stop.wait(delay)
                continue
            spec = inst.specs[kind]
            began = self.clock()
            try:
                ok, output = self.run_once(inst, spec)
            except Exception:
                # A bug, not a probe result: say so with its traceback and stop probing this
                # instance, so it is neither killed nor marked unready because of it.
                log.exception("pod %s container %s: the %s probe crashed", _name(inst.pod),
                              inst.name, kind.lower())
                return
            due[kind] = p.next_due(spec, began)
            if inst.stop.is_set():
                return
            with self._lock:
                before = inst.states[kind]
                after = inst.states[kind] = p.observe(spec, before, ok)
            if not ok:
                log.info("pod %s container %s: %s", _name(inst.pod), inst.name,
                         p.unhealthy_message(kind, output))
                self._emit(inst.pod, "Warning", p.UNHEALTHY, p.unhealthy_message(kind, output))
            if p.transition(before, after):
                self.wake(inst.pod.metadata.uid)

    def run_once(self, inst: _Instance, spec: p.ProbeSpec) -> tuple[bool, str]:
        action, timeout = spec.action, float(spec.timeout)
        try:
            if isinstance(action, p.Exec):
                return exec_check(self.runtime, inst.cid, action, timeout)
            host = action.host or inst.pod_ip or "127.0.0.1"
            check = tcp_check if isinstance(action, p.TCPSocket) else http_check
            # A little longer than the socket's own timeout, which reports the failure first.
            return in_netns(inst.netns_path, lambda: check(action, host, timeout),
                            timeout + 1.0)
        except (OSError, TimeoutError, ValueError, RuntimeError,
                subprocess.SubprocessError) as err:   # what a probe can meet: a failure
            return False, str(err) or type(err).__name__

    def _emit(self, pod: pb.Pod, type_: str, reason: str, message: str) -> None:
        if self.event is not None:
            self.event(pod, type_, reason, message)   # queued; dropped without a session


def _name(pod: pb.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"
