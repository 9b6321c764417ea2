"""A StatefulSet on a real cluster (a control plane and three agents running real containers):
its pods come up in order, and a node whose agent stopped never leads to a second pod of an
ordinal, checked in the store and in every agent's runtime, until the operator says the node
is gone (`moor delete node`) or force-deletes the pod (with kubectl's warning)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from moorage.model.timestamps import parse_rfc3339
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process, unique
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODES = ("sts-1", "sts-2", "sts-3")
WARNING = ("Warning: Immediate deletion does not wait for confirmation that the running "
           "resource has been terminated. The resource may continue to run on the cluster "
           "indefinitely.")


def manifest(name: str, replicas: int = 3) -> str:
    return f"""\
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: default}}
spec:
  serviceName: {name}
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector: {{matchLabels: {{app: {name}}}}}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "exec sleep 3600"]
        resources: {{requests: {{cpu: 1m, memory: 4Mi}}}}
"""


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "sts-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"), extra_args=(
        "--controllers", "--pod-eviction-after", "2", "--eviction-startup-grace", "0"))
    tar = imagebuild.busybox_tar(root, ("busybox:test",))
    agents = start_agents(cp, root, list(NODES), tar)
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)
    moor.cp, moor.agents = cp, agents
    moor.runtimes = {a.name: Runtime(os.path.join(a.state, "containers"),
                                     cgroup_root=a.cgroup_root) for a in agents}
    wait_until(lambda: ready_nodes(moor) == set(NODES), 60, "three Ready nodes")
    yield moor
    for a in agents:
        a.cleanup()
    stop_process(cp.proc)
    shutil.rmtree(root, ignore_errors=True)


def ready_nodes(moor) -> set[str]:
    out = moor("get", "nodes").stdout.splitlines()[1:]
    return {line.split()[0] for line in out if line.split()[1] == "Ready"}


def get_pods(moor, app: str) -> dict[str, dict]:
    out = moor("get", "pods", "-l", f"app={app}", "-o", "json")
    assert out.returncode == 0, out.stderr
    return {p["metadata"]["name"]: p for p in json.loads(out.stdout)["items"]}


def ready(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod["status"].get("conditions", []))


def ready_since(pod: dict) -> float:
    return next(parse_rfc3339(c["lastTransitionTime"]) for c in pod["status"]["conditions"]
                if c["type"] == "Ready")


def running_uids(moor, node: str) -> set[str]:
    """The pod uid prefixes of the containers running on `node`, read from its runtime."""
    return {info.id.split("-", 1)[0] for info in moor.runtimes[node].list()
            if info.status.state == "running"}


def uid_prefix(pod: dict) -> str:
    return pod["metadata"]["uid"].replace("-", "")[:12]


def test_pods_come_up_in_order_and_a_lost_node_never_runs_an_ordinal_twice(cluster):
    moor = cluster
    name = unique("db")
    assert moor("apply", "-f", "-", stdin=manifest(name)).returncode == 0
    pods = wait_until(lambda: (lambda ps: ps if len(ps) == 3 and all(map(ready, ps.values()))
                               else None)(get_pods(moor, name)), 120, "three Ready pods")
    # Each pod was made only once its predecessor was Ready.
    for i in (1, 2):
        made = parse_rfc3339(pods[f"{name}-{i}"]["metadata"]["creationTimestamp"])
        assert made >= int(ready_since(pods[f"{name}-{i - 1}"])), pods
    assert all(pods[f"{name}-{i}"]["spec"]["hostname"] == f"{name}-{i}" for i in range(3))
    where = {n: p["spec"]["nodeName"] for n, p in pods.items()}

    # db-0's agent stops: its node goes NotReady, and its pod stays where it is.
    first, second = f"{name}-0", f"{name}-1"
    lost = where[first]
    agent = next(a for a in moor.agents if a.name == lost)
    agent.kill()
    old_uid = pods[first]["metadata"]["uid"]

    def kept_warning():
        out = moor("get", "events", "--field-selector", f"involvedObject.name={first}",
                   "-o", "json")
        items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
        return any(e["reason"] == "NodeNotReady" and e.get("type") == "Warning"
                   for e in items)
    # The barrier: the node lifecycle passed its eviction point for this node and said why
    # it kept the pod.
    wait_until(kept_warning, 60, "the lifecycle's NodeNotReady warning on the kept pod")
    now = get_pods(moor, name)
    assert now[first]["metadata"]["uid"] == old_uid and now[first]["spec"]["nodeName"] == lost
    others = [n for n in NODES if n != lost]
    for n in others:
        assert uid_prefix(now[first]) not in running_uids(moor, n)

    # The operator confirms the node is gone: only then is the ordinal made again, elsewhere.
    out = moor("delete", "node", lost)
    assert out.returncode == 0, out.stderr
    again = wait_until(lambda: (lambda p: p if p and ready(p) and
                                p["metadata"]["uid"] != old_uid else None)(
        get_pods(moor, name).get(first)), 90, f"a new {first} Ready")
    assert again["spec"]["nodeName"] in others
    on_nodes = [n for n in others if uid_prefix(again) in running_uids(moor, n)]
    assert on_nodes == [again["spec"]["nodeName"]]

    # The other override: force-deleting a pod on a node that stopped answering.
    lost2 = get_pods(moor, name)[second]["spec"]["nodeName"]
    next(a for a in moor.agents if a.name == lost2).kill()
    wait_until(lambda: lost2 not in ready_nodes(moor), 60, f"{lost2} NotReady")
    old2 = get_pods(moor, name)[second]["metadata"]["uid"]
    out = moor("delete", "pod", second, "--force", "--grace-period", "0")
    assert out.returncode == 0, out.stderr
    assert WARNING in out.stderr
    fresh = wait_until(lambda: (lambda p: p if p and ready(p) and
                                p["metadata"]["uid"] != old2 else None)(
        get_pods(moor, name).get(second)), 60, f"a new {second} Ready")
    assert fresh["spec"]["nodeName"] not in (lost, lost2)
    assert moor("delete", "statefulset", name).returncode == 0
