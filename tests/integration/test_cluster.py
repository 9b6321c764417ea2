"""A real cluster on one machine: a control plane (scheduler, controllers, node lifecycle) and
three agents as processes, joined with real tokens over mTLS, running real containers. A
Deployment's pods run spread over the agents; kill -9 one agent and its pods are replaced on the
others; joins with bad credentials are refused without a trace in etcd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until as wait_for

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


@pytest.fixture
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "cluster-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"), extra_args=(
        "--controllers", "--node-not-ready-after", "3", "--pod-eviction-after", "1",
        "--eviction-startup-grace", "0"))
    tar = imagebuild.busybox_tar(root, ("busybox:test", "busybox:v2"))
    agents = start_agents(cp, root, ["node-1", "node-2", "node-3"], tar)
    env = cp.env()

    def moor(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)
    moor.cp, moor.root = cp, root
    yield moor, agents
    for a in agents:
        a.cleanup()
    stop_process(cp.proc)
    shutil.rmtree(root, ignore_errors=True)


def pods(moor) -> list[dict]:
    out = moor("get", "pods", "-o", "json")
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []




def running_on(moor) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "")
            for p in pods(moor) if p.get("status", {}).get("phase") == "Running"}


def node_states(moor) -> dict[str, str]:
    return {line.split()[0]: line.split()[1]
            for line in moor("get", "nodes").stdout.splitlines()[1:]}


def test_deployment_runs_on_agents_and_survives_losing_one(cluster):
    moor, agents = cluster
    names = {a.name for a in agents}
    wait_for(lambda: node_states(moor) == dict.fromkeys(names, "Ready"))
    assert moor("apply", "-f", "-", stdin=DEPLOYMENT).returncode == 0

    def three_running():
        r = running_on(moor)
        return r if len(r) == 3 else None
    placed = wait_for(three_running)
    assert set(placed.values()) == names        # spread: one on each agent
    wait_for(lambda: moor("get", "deploy", "web").stdout.splitlines()[1].split()[1] == "3/3")

    victim = agents[0]
    victim.kill()
    # Its node goes NotReady, its pod is deleted and replaced on the other agents.
    wait_for(lambda: node_states(moor).get(victim.name) == "NotReady")

    def all_on_survivors():
        r = running_on(moor)
        return r if len(r) == 3 and victim.name not in set(r.values()) else None
    wait_for(all_on_survivors)

    # The lost agent returns (with its certificate, no token): its stale pod is stopped.
    victim.start()
    wait_for(lambda: node_states(moor).get(victim.name) == "Ready")
    runtime = Runtime(os.path.join(victim.state, "containers"), cgroup_root=victim.cgroup_root)
    wait_for(lambda: not any(i.status.state == "running" for i in runtime.list()))
    assert len(running_on(moor)) == 3

    # Drain node-2: it is cordoned, its pods go, and the replacements land elsewhere.
    drained = moor("drain", "node-2")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.splitlines()[0] == "node/node-2 cordoned"
    assert drained.stdout.splitlines()[-1] == "node/node-2 drained"
    assert node_states(moor)["node-2"] == "Ready,SchedulingDisabled"

    def none_on_node_2():
        r = running_on(moor)
        return r if len(r) == 3 and "node-2" not in set(r.values()) else None
    wait_for(none_on_node_2)
    assert moor("uncordon", "node-2").stdout.strip() == "node/node-2 uncordoned"
    assert node_states(moor)["node-2"] == "Ready"


class ReadyCounter:
    """Counts the deployment's Running+Ready pods after every watch event, in a thread."""

    def __init__(self, cp):
        import threading

        from moorage.model import kinds
        from moorage.v1 import api_pb2

        self.pods: dict[str, tuple[bool, str]] = {}
        self.samples: list[int] = []
        self.call = cp.stub().Watch(api_pb2.WatchRequest(kind="pods", namespace="default",
                                                         label_selector="app=web"))

        def run():
            try:
                for ev in self.call:
                    if ev.type in ("BOOKMARK", "RESYNC"):
                        continue
                    pod = kinds.unwrap(ev.object)
                    if ev.type == "DELETED":
                        self.pods.pop(pod.metadata.name, None)
                    else:
                        ready = pod.status.phase == "Running" and any(
                            c.type == "Ready" and c.status == "True"
                            for c in pod.status.conditions)
                        self.pods[pod.metadata.name] = (ready, pod.spec.containers[0].image)
                    self.samples.append(sum(r for r, _ in self.pods.values()))
            except Exception:  # noqa: BLE001 - cancelled at the end
                pass
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def images(self) -> set[str]:
        return {image for _, image in self.pods.values()}

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_scale_and_rolling_update_on_real_agents(cluster):
    """Scale 3 -> 6 -> 1 -> 3, then roll to a new image: with maxUnavailable 0 (the default
    25% of 3, rounded down) no watch event ever shows fewer than 3 Ready pods."""
    moor, agents = cluster
    wait_for(lambda: len([s for s in node_states(moor).values() if s == "Ready"]) == 3)
    assert moor("apply", "-f", "-", stdin=DEPLOYMENT).returncode == 0
    for replicas in (3, 6, 1, 3):
        out = moor("scale", "deployment/web", "--replicas", str(replicas))
        assert out.returncode == 0, out.stderr
        wait_for(lambda n=replicas: len(running_on(moor)) == n and len(pods(moor)) == n)
    assert len(set(running_on(moor).values())) == 3    # 3 replicas, spread again
    wait_for(lambda: moor("get", "deploy", "web").stdout.splitlines()[1].split()[1] == "3/3")
    counter = ReadyCounter(moor.cp)
    try:
        wait_for(lambda: counter.samples and counter.samples[-1] == 3)
        start = len(counter.samples)
        rolled = DEPLOYMENT.replace("image: busybox:test", "image: busybox:v2")
        assert moor("apply", "-f", "-", stdin=rolled).returncode == 0
        status = moor("rollout", "status", "deployment/web", "--timeout", "90s")
        assert status.returncode == 0, status.stderr
        wait_for(lambda: counter.images() == {"busybox:v2"} and counter.samples[-1] == 3)
        during = counter.samples[start:]
        assert len(during) > 6          # the rollout was seen, event by event
        assert min(during) >= 3, during
    finally:
        counter.close()


def node_keys(cp) -> list[bytes]:
    return [k for k, _, _ in cp.snapshot() if b"/nodes/" in k or b"node-leases" in k]


def test_bad_credentials_are_refused_without_a_node_record(cluster, tmp_path):
    """A wrong token, an expired token, a token for another cluster and a certificate from a
    foreign CA: each agent exits with a one-line error and etcd holds no record of it."""
    from controlplane.identity import ClusterCA
    from moorage.model.jointoken import format_token
    from tests.agents import Agent

    moor, _ = cluster
    cp = moor.cp
    expired = moor("token", "create", "--ttl", "1s")
    assert expired.returncode == 0, expired.stderr
    good = cp.token()
    digest = ClusterCA.load_or_create(cp.state_dir).ca_digest()
    wrong_secret = format_token(digest, "a" * 26)
    foreign_digest = ClusterCA.load_or_create(str(tmp_path / "foreign")).ca_digest()
    foreign_token = format_token(foreign_digest, good.split("-")[2])
    time.sleep(1.5)
    before = node_keys(cp)
    cases = {"intruder-1": (expired.stdout.strip(), "join token expired"),
             "intruder-2": (wrong_secret, "unknown join token"),
             "intruder-3": (foreign_token, "does not match the join token's CA digest")}
    for name, (token, message) in cases.items():
        agent = Agent(moor.root, name, cp)
        agent.start(token=token)
        assert agent.proc.wait(60) != 0
        assert message in agent.log(), agent.log()
        agent.cleanup()
    # A node certificate issued by another CA: the TLS handshake fails, nothing registers.
    foreign = ClusterCA.load_or_create(str(tmp_path / "foreign"))
    impostor = Agent(moor.root, "intruder-4", cp)
    from nodeagent.session.identity import NodeIdentity

    ident = NodeIdentity.load_or_create(impostor.state, "intruder-4")
    ident.save(foreign.sign_node_csr(ident.csr_pem(), "intruder-4"), foreign.cert_pem)
    impostor.start()
    # A barrier: the impostor's own log shows it tried twice and was turned away.
    wait_for(lambda: impostor.log().count("session to") >= 2)
    impostor.cleanup()
    assert node_keys(cp) == before
    assert not any(n.startswith("intruder") for n in node_states(moor))
    # Revoked tokens stop working too; list shows what is left.
    listed = moor("token", "list")
    assert listed.returncode == 0 and "ID" in listed.stdout
    tid = moor("token", "revoke", good)
    assert tid.returncode == 0 and tid.stdout.strip().endswith("revoked"), tid.stderr
    again = moor("token", "revoke", good)
    assert again.returncode == 1 and "not found" in again.stderr


def test_node_certificate_is_renewed_before_it_expires(etcd_endpoint, tmp_state):
    """With 8-second node certificates the agent renews over its mTLS session, and after the
    first certificate has expired a restarted agent still gets in with the renewed one."""
    import datetime as dt

    from nodeagent.session.identity import NodeIdentity
    from tests.agents import Agent

    cp = start_controlplane(etcd_endpoint, os.path.join(tmp_state, "cp"), extra_args=(
        "--no-scheduler", "--no-node-lifecycle", "--node-cert-validity", "8"))
    agent = Agent(tmp_state, "node-r", cp)
    try:
        agent.start()
        crt = os.path.join(agent.state, "pki", "node.crt")
        wait_for(lambda: os.path.exists(crt))
        first = NodeIdentity.load_or_create(agent.state, "node-r").certificate()
        assert first.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=9)

        def renewed():
            cert = NodeIdentity.load_or_create(agent.state, "node-r").certificate()
            return cert if cert.serial_number != first.serial_number else None
        second = wait_for(renewed, 30)
        assert second.not_valid_after_utc > first.not_valid_after_utc
        wait_for(lambda: dt.datetime.now(dt.UTC) > first.not_valid_after_utc + dt.timedelta(
            seconds=1), 30)
        stop_process(agent.proc)
        sessions = agent.log().count("assignments (full)")
        agent.start()
        wait_for(lambda: agent.log().count("assignments (full)") > sessions, 30)
        assert "renewed the node certificate" in agent.log()
        assert "joining" not in agent.log().split("renewed")[-1]
    finally:
        agent.cleanup()
        stop_process(cp.proc)
