"""Churn on a real cluster (a control plane and three agents running real containers): pods stop
in parallel and stay visible as Terminating until their containers are gone, new pods start
meanwhile, a rolling update never runs more than replicas + maxSurge containers, a terminating
pod keeps its node's memory until gone, and preStop hooks run before SIGTERM.

Busybox `sleep` as PID 1 has no SIGTERM handler, so, as in Docker, it ignores SIGTERM and
every stop waits the whole grace period before SIGKILL: the worst case for churn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.agents import start_agents
from tests.builders import deployment_yaml as deployment
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until as wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODES = ("churn-1", "churn-2", "churn-3")




@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "churn-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"), extra_args=(
        "--controllers",))
    tar = imagebuild.busybox_tar(root, ("busybox:test", "busybox:v2"))
    agents = start_agents(cp, root, list(NODES), tar)
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)
    moor.cp, moor.agents = cp, agents
    moor.runtimes = [Runtime(os.path.join(a.state, "containers"), cgroup_root=a.cgroup_root)
                     for a in agents]
    wait_for(lambda: ready_nodes(moor) == set(NODES), 60, "three Ready nodes")
    yield moor
    for a in agents:
        a.cleanup()
    stop_process(cp.proc)
    shutil.rmtree(root, ignore_errors=True)




def ready_nodes(moor) -> set[str]:
    out = moor("get", "nodes").stdout.splitlines()[1:]
    return {line.split()[0] for line in out if line.split()[1] == "Ready"}


def pods(moor, app: str) -> list[dict]:
    out = moor("get", "pods", "-l", f"app={app}", "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["items"]


def running(moor, app: str) -> list[dict]:
    return [p for p in pods(moor, app) if p.get("status", {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def containers_running(moor, prefixes: set[str] | None = None) -> int:
    """Running containers on every agent, counted from the runtimes themselves (optionally
    only those of pods whose uid starts with one of `prefixes`)."""
    count = 0
    for rt in moor.runtimes:
        for info in rt.list():
            if info.status.state == "running" and (
                    prefixes is None or info.id.split("-", 1)[0] in prefixes):
                count += 1
    return count


def phase(moor, pod: str) -> str:
    out = moor("get", "pod", pod, "-o", "json")
    return json.loads(out.stdout).get("status", {}).get("phase", "") if out.returncode == 0 \
        else ""


def uid_prefixes(items: list[dict]) -> set[str]:
    return {p["metadata"]["uid"].replace("-", "")[:12] for p in items}


def test_scale_down_stops_pods_in_parallel_while_new_pods_start(cluster):
    moor = cluster
    grace = 5
    assert moor("apply", "-f", "-", stdin=deployment("sleepers", 60, grace=grace)).returncode == 0
    wait_for(lambda: len(running(moor, "sleepers")) == 60, 120, "60 sleepers Running")
    old = uid_prefixes(pods(moor, "sleepers"))
    assert containers_running(moor, old) == 60

    begun = time.monotonic()
    assert moor("scale", "deployment/sleepers", "--replicas", "0").returncode == 0
    assert moor("apply", "-f", "-", stdin=deployment("fresh", 3, grace=1)).returncode == 0

    # The deleted pods stay in the API, Terminating, with their deletion timestamp.
    def terminating():
        items = pods(moor, "sleepers")
        marked = [p for p in items if p["metadata"].get("deletionTimestamp")]
        return items if items and len(marked) == len(items) else None
    items = wait_for(terminating, 10, "the sleepers to be Terminating")
    assert all(p["metadata"]["deletionGracePeriodSeconds"] == grace for p in items)
    table = moor("get", "pods", "-l", "app=sleepers").stdout
    assert "Terminating" in table, table

    # A Deployment applied meanwhile runs before the old containers are gone.
    wait_for(lambda: len(running(moor, "fresh")) == 3, 30, "the new Deployment Running")
    assert containers_running(moor, old) > 0, "the old pods were gone before the new ran"

    # Every old container goes within two grace periods (serially it would be 60 of them).
    wait_for(lambda: containers_running(moor, old) == 0, 60, "the old containers to stop")
    took = time.monotonic() - begun
    assert took <= 2 * grace, f"stopping 60 pods took {took:.1f}s, over 2 x {grace}s"
    # And once they are gone, so are their pods.
    wait_for(lambda: not pods(moor, "sleepers"), 10, "the terminated pods to be removed")
    assert moor("delete", "deployment", "fresh", "sleepers").returncode == 0
    wait_for(lambda: containers_running(moor) == 0, 30, "the fresh pods to stop")


def test_rolling_update_never_runs_more_than_replicas_plus_surge(cluster):
    moor = cluster
    replicas = 2
    strategy = ("  strategy:\n    type: RollingUpdate\n"
                "    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n")
    manifest = deployment("roll", replicas, grace=10, strategy=strategy)
    assert moor("apply", "-f", "-", stdin=manifest).returncode == 0
    wait_for(lambda: len(running(moor, "roll")) == replicas, 60, "the first revision")
    # Nothing else runs on the nodes, so every container counted below is the rollout's.
    wait_for(lambda: containers_running(moor) == replicas, 30, "only the first revision")

    samples: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(containers_running(moor))
            stop.wait(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        updated = manifest.replace("image: busybox:test", "image: busybox:v2")
        assert moor("apply", "-f", "-", stdin=updated).returncode == 0
        status = moor("rollout", "status", "deployment/roll", "--timeout", "120s",
                      timeout=150)
        assert status.returncode == 0, status.stderr

        def only_new():
            items = pods(moor, "roll")
            return (len(items) == replicas and all(
                p["spec"]["containers"][0]["image"] == "busybox:v2" for p in items))
        wait_for(only_new, 60, "the old pods to be gone")
        wait_for(lambda: containers_running(moor) == replicas, 30, "only the new containers")
    finally:
        stop.set()
        sampler.join()
    assert len(samples) > 20
    assert max(samples) <= replicas + 1, f"up to {max(samples)} containers ran: {samples}"
    assert moor("delete", "deployment", "roll").returncode == 0
    wait_for(lambda: containers_running(moor) == 0, 30, "the roll pods to stop")


def test_terminating_pod_holds_its_nodes_memory_until_gone(cluster):
    moor = cluster
    node = NODES[0]
    info = json.loads(moor("get", "node", node, "-o", "json").stdout)
    memory_gib = int(info["status"]["allocatable"]["memory"]) // 2**30
    big = f"{max(1, memory_gib * 3 // 4)}Gi"     # most of the node: two never fit at once
    assert moor("apply", "-f", "-", stdin=deployment(
        "hog", 1, grace=4, memory=big, node=node)).returncode == 0
    wait_for(lambda: len(running(moor, "hog")) == 1, 60, "the first hog Running")
    old = uid_prefixes(pods(moor, "hog"))
    assert moor("delete", "deployment", "hog").returncode == 0
    wait_for(lambda: all(p["metadata"].get("deletionTimestamp") for p in pods(moor, "hog")),
             10, "the hog to be Terminating")
    assert moor("apply", "-f", "-", stdin=deployment(
        "hog2", 1, grace=1, memory=big, node=node)).returncode == 0

    # While the old one stops, the new one cannot fit: the scheduler says so (a barrier: the
    # scheduler has looked at it) and the old containers still run.
    def unschedulable():
        for p in pods(moor, "hog2"):
            for c in p.get("status", {}).get("conditions", []):
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return c
        return None
    cond = wait_for(unschedulable, 10, "the new hog to be found unschedulable")
    assert "Insufficient memory" in cond.get("message", ""), cond
    assert containers_running(moor, old) == 1
    # Once the old pod is gone, the new one lands.
    wait_for(lambda: len(running(moor, "hog2")) == 1, 30, "the new hog Running")
    assert containers_running(moor, old) == 0
    assert moor("delete", "deployment", "hog2", "--grace-period", "1").returncode == 0


PRESTOP_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: hooked, namespace: default}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'echo term >> /tmp/order; sleep 1; exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      preStop:
        exec:
          command: ["sh", "-c", "echo prestop >> /tmp/order; sleep 0.5"]
"""


def test_pre_stop_runs_before_sigterm(cluster):
    moor = cluster
    node = NODES[1]
    assert moor("apply", "-f", "-", stdin=PRESTOP_POD % node).returncode == 0
    wait_for(lambda: phase(moor, "hooked") == "Running", 30, "the hooked pod Running")
    runtime = moor.runtimes[NODES.index(node)]
    cid = next(i.id for i in runtime.list() if i.status.state == "running")
    order = os.path.join(runtime.state_dir, cid, "upper", "tmp", "order")
    deleted = subprocess.Popen([sys.executable, "-m", "moorage.cli.main", "delete", "pod",
                                "hooked"], env=moor.cp.env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def written():
        try:
            with open(order) as f:
                text = f.read()
        except OSError:
            return None
        return text if "term" in text else None
    text = wait_for(written, 20, "the container's SIGTERM trap", interval=0.05)
    assert text.split() == ["prestop", "term"], text
    out, errs = deleted.communicate(timeout=60)
    assert deleted.returncode == 0, errs      # --wait: returns once the pod is gone
    assert 'pod "hooked" deleted' in out
    assert moor("get", "pod", "hooked").returncode != 0


def test_force_delete_removes_at_once_and_the_node_kills_the_container(cluster):
    moor = cluster
    node = NODES[2]
    pod = PRESTOP_POD.replace("name: hooked", "name: forced") % node
    assert moor("apply", "-f", "-", stdin=pod).returncode == 0
    runtime = moor.runtimes[NODES.index(node)]
    wait_for(lambda: any(i.status.state == "running" for i in runtime.list()), 30,
             "the forced pod's container")
    out = moor("delete", "pod", "forced", "--force", "--grace-period", "0")
    assert out.returncode == 0, out.stderr
    assert "Immediate deletion does not wait" in out.stderr
    assert moor("get", "pod", "forced").returncode != 0     # gone from the API at once
    wait_for(lambda: not any(i.status.state == "running" for i in runtime.list()), 10,
             "the container to be killed")


def test_namespace_delete_is_graceful_and_blocks_new_content(cluster):
    moor = cluster
    ns = "churn-ns"
    manifest = (f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n" +
                deployment("inner", 2, grace=3, namespace=ns))
    assert moor("apply", "-f", "-", stdin=manifest).returncode == 0

    def inner(phase_only=True):
        out = moor("get", "pods", "-n", ns, "-o", "json")
        return json.loads(out.stdout)["items"] if out.returncode == 0 else []
    wait_for(lambda: sum(1 for p in inner() if p.get("status", {}).get("phase") == "Running")
             == 2, 60, "the namespace's pods Running")
    old = uid_prefixes(inner())
    out = moor("delete", "namespace", ns, "--wait=false")
    assert out.returncode == 0, out.stderr
    # The namespace is Terminating while its pods stop; nothing new may be created in it.
    assert "Terminating" in moor("get", "namespace", ns).stdout
    refused = moor("apply", "-f", "-", stdin=deployment("late", 1, grace=1, namespace=ns))
    assert refused.returncode == 1
    assert f"unable to create new content in namespace {ns} because it is being terminated" \
        in refused.stderr, refused.stderr
    wait_for(lambda: all(p["metadata"].get("deletionTimestamp") for p in inner()), 10,
             "its pods to be Terminating")
    assert containers_running(moor, old) == 2
    # Once the containers stopped, the pods and then the namespace go.
    wait_for(lambda: moor("get", "namespace", ns).returncode != 0, 30, "the namespace gone")
    assert containers_running(moor, old) == 0


def test_delete_flags_follow_kubectl(cluster):
    moor = cluster
    out = moor("delete", "pod", "nothing", "--force", "--grace-period", "5")
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: --force and --grace-period greater than 0 cannot be "
                                  "specified together")
    out = moor("delete", "pod", "nothing", "--now", "--grace-period", "3")
    assert out.stderr.strip() == "error: --now and --grace-period cannot be specified together"
