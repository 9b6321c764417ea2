"""A real cluster on one machine: a control plane (scheduler, controllers, node lifecycle) and
two agents as processes running real containers. A Deployment's pods run spread over the
agents; kill -9 one agent and its pods are replaced on the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from nodeagent import sandbox
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "echo up; while true; do sleep 1; done"]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
"""


class Agent:
    def __init__(self, root: str, name: str, address: str, image_tar: str):
        self.name = name
        self.state = os.path.join(root, name)
        self.cgroup_root = f"{TEST_PREFIX}{name}"
        self.base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", self.state,
                     "--cgroup-root", self.cgroup_root, "--netns-prefix", TEST_PREFIX]
        subprocess.run([*self.base, "import", image_tar], check=True, capture_output=True)
        self.address = address
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.base, "run", "--join", self.address, "--node-name", self.name,
             "--advertise-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop_process(self.proc)
        Runtime(os.path.join(self.state, "containers"), cgroup_root=self.cgroup_root).remove_all()


@pytest.fixture
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "cluster-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"), extra_args=(
        "--controllers", "--node-not-ready-after", "3", "--pod-eviction-after", "1",
        "--eviction-startup-grace", "0"))
    tar = os.path.join(root, "busybox.tar")
    imagebuild.write_docker_save(tar, imagebuild.make_image(), ["busybox:test"])
    agents = [Agent(root, f"node-{i}", cp.address, tar) for i in (1, 2)]
    for a in agents:
        a.start()
    env = dict(os.environ, MOOR_SERVER=cp.address)

    def moor(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)
    yield moor, agents
    for a in agents:
        a.cleanup()
    stop_process(cp.proc)
    for name in sandbox.existing(TEST_PREFIX):
        sandbox.remove(name)
    shutil.rmtree(root, ignore_errors=True)


def pods(moor) -> list[dict]:
    out = moor("get", "pods", "-o", "json")
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def wait_for(fn, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError("timed out")


def running_on(moor) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "")
            for p in pods(moor) if p.get("status", {}).get("phase") == "Running"}


def node_states(moor) -> dict[str, str]:
    return {line.split()[0]: line.split()[1]
            for line in moor("get", "nodes").stdout.splitlines()[1:]}


def test_deployment_runs_on_agents_and_survives_losing_one(cluster):
    moor, agents = cluster
    wait_for(lambda: node_states(moor) == {"node-1": "Ready", "node-2": "Ready"})
    assert moor("apply", "-f", "-", stdin=DEPLOYMENT).returncode == 0

    def three_running():
        r = running_on(moor)
        return r if len(r) == 3 else None
    placed = wait_for(three_running)
    assert set(placed.values()) == {"node-1", "node-2"}        # spread over both agents
    wait_for(lambda: moor("get", "deploy", "web").stdout.splitlines()[1].split()[1] == "3/3")

    victim = agents[0]
    victim.kill()
    # Its node goes NotReady, its pods are deleted and replaced on the other agent.
    wait_for(lambda: node_states(moor).get(victim.name) == "NotReady")

    def all_on_survivor():
        r = running_on(moor)
        return r if len(r) == 3 and set(r.values()) == {"node-2"} else None
    wait_for(all_on_survivor)

    # The lost agent returns: its stale pods are stopped, so the count stays at 3.
    victim.start()
    wait_for(lambda: node_states(moor).get(victim.name) == "Ready")
    runtime = Runtime(os.path.join(victim.state, "containers"), cgroup_root=victim.cgroup_root)
    wait_for(lambda: not any(i.status.state == "running" for i in runtime.list()))
    assert len(running_on(moor)) == 3

    # Drain the survivor: it is cordoned, its pods go, and the replacements land on node-1.
    drained = moor("drain", "node-2")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.splitlines()[0] == "node/node-2 cordoned"
    assert drained.stdout.splitlines()[-1] == "node/node-2 drained"
    assert node_states(moor)["node-2"] == "Ready,SchedulingDisabled"

    def all_on_node_1():
        r = running_on(moor)
        return r if len(r) == 3 and set(r.values()) == {"node-1"} else None
    wait_for(all_on_node_1)
    assert moor("uncordon", "node-2").stdout.strip() == "node/node-2 uncordoned"
    assert node_states(moor)["node-2"] == "Ready"
