"""Container lifecycle hooks: a container's preStop handler (exec, httpGet or sleep), run
before it is sent SIGTERM and within the pod's grace period, as the kubelet runs it.

httpGet connects from inside the pod's network namespace (to the pod's IP unless the hook
names a host), as the probes do; exec runs in the container through the runtime. A failed
hook is reported and the container is stopped anyway.
"""

from __future__ import annotations

import threading

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import probes as p
from nodeagent.pods.prober import exec_check, http_check, in_netns, probe_spec

FAILED_PRE_STOP = "FailedPreStopHook"


def pre_stop_handler(c: pb.Container) -> pb.LifecycleHandler | None:
    if c.HasField("lifecycle") and c.lifecycle.HasField("pre_stop"):
        return c.lifecycle.pre_stop
    return None


def run_pre_stop(runtime, cid: str, c: pb.Container, handler: pb.LifecycleHandler,
                 netns_path: str, pod_ip: str, timeout: float,
                 cancelled: threading.Event | None = None) -> tuple[bool, str]:
    """Runs the hook for at most `timeout` seconds; (succeeded, what went wrong)."""
    if timeout <= 0:
        return False, "no time left in the grace period"
    if handler.HasField("sleep"):
        (cancelled or threading.Event()).wait(min(timeout, max(0, handler.sleep.seconds)))
        return True, ""
    probe = pb.Probe()
    if handler.HasField("exec"):
        probe.exec.CopyFrom(handler.exec)
    elif handler.HasField("http_get"):
        probe.http_get.CopyFrom(handler.http_get)
    else:
        return False, "the preStop hook has no handler"
    try:
        action = probe_spec(p.LIVENESS, probe, c).action
    except ValueError as err:
        return False, str(err)
    if isinstance(action, p.Exec):
        return exec_check(runtime, cid, action, timeout)
    host = action.host or pod_ip or "127.0.0.1"
    try:
        return in_netns(netns_path, lambda: http_check(action, host, timeout), timeout + 1.0)
    except (OSError, TimeoutError) as err:
        return False, str(err)
