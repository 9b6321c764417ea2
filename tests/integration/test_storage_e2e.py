"""Storage end to end: two control-plane replicas on a real etcd, two real agents, real
containers writing to real loop-mounted volumes. A database-like writer appends 10,000 records,
each fsynced, to its claim while its container is killed, its pod deleted, its StatefulSet
rolled, its agent killed with SIGKILL and restarted, and the control plane's leader moved;
afterwards the claim holds exactly records 1..10000, in order, and the pod never left the node
its volume is on. A small claim fills up: the writer gets ENOSPC and nothing outside grows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODES = ("moortest-st-a", "moortest-st-b")
RECORDS = 10_000
# Resumes from the records on disk: a line is written with one write(2) and fsynced before
# the next, so a killed writer leaves whole records only.
# A pause every 100 records spreads the writes over the disruptions below.
WRITER = (
    "i=$(wc -l < /data/log 2>/dev/null || echo 0); "
    f"while [ $i -lt {RECORDS} ]; do i=$((i+1)); "
    "echo rec-$i | dd of=/data/log oflag=append conv=notrunc,fsync 2>/dev/null || exit 1; "
    "[ $((i % 100)) = 0 ] && sleep 1; "
    "done; exec sleep 3600")
CHECK = "awk '$0 != \"rec-\" NR { bad++ } END { print NR, bad+0 }' /data/log"
FAST = ("--controllers", "--node-not-ready-after", "3", "--pod-eviction-after", "1",
        "--eviction-startup-grace", "0", "--leader-lease-ttl", "2")


def statefulset(round_: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db", "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "db", "image": "busybox:test", "imagePullPolicy": "Never",
                    "env": [{"name": "ROUND", "value": str(round_)}],
                    "command": ["sh", "-c", WRITER],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "64Mi"}}}}]}}


def writer_pid() -> int:
    """The writer's process (the container's first), found from the host: inside its PID
    namespace it is init, which ignores SIGKILL sent from there."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.startswith(b"sh\0-c\0") and b"oflag=append" in cmd:
            return int(pid)
    raise AssertionError("no writer process")


HEADLESS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"},
                     "ports": [{"port": 5432}]}}


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "storage-")
    cps, agents = [], []
    try:
        cps.append(start_controlplane(etcd_endpoint, os.path.join(root, "cp0"),
                                      extra_args=(*FAST, "--replica-name", "cp0")))
        cps.append(start_controlplane(etcd_endpoint, os.path.join(root, "cp1"),
                                      prefix=cps[0].prefix,
                                      extra_args=(*FAST, "--replica-name", "cp1")))
        agents = start_agents(cps[0], root, NODES, imagebuild.busybox_tar(root))
        yield Cluster(cps, agents)
    finally:
        for a in agents:
            a.cleanup()
        for cp in cps:
            stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


class Cluster:
    def __init__(self, cps, agents):
        self.cps, self.agents = cps, agents
        self.cp = cps[0]

    def moor(self, *args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=self.cp.env(),
                              timeout=timeout)

    def apply(self, *objs):
        out = self.moor("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objs))
        assert out.returncode == 0, out.stderr
        return out

    def get(self, kind: str, name: str) -> dict:
        out = self.moor("get", kind, name, "-o", "json")
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def running(self, name: str) -> dict:
        pod = self.get("pod", name)
        ok = (pod.get("status", {}).get("phase") == "Running"
              and not pod["metadata"].get("deletionTimestamp")
              and all(c.get("ready") for c in pod["status"].get("containerStatuses", [])))
        return pod if ok else {}

    def sh(self, pod: str, script: str) -> str:
        out = self.moor("exec", pod, "--", "sh", "-c", script)
        return out.stdout if out.returncode == 0 else ""

    def records(self, pod: str) -> tuple[int, int]:
        """(records on the claim, records out of order or missing)"""
        out = wait_until(lambda: self.sh(pod, CHECK).split(), 30, "the records' check")
        return int(out[0]), int(out[1])


def test_every_fsynced_record_survives_restarts_moves_and_failover(cluster):
    c = cluster
    wait_until(lambda: len([n for n in c.moor("get", "nodes").stdout.splitlines()[1:]
                            if " Ready " in f" {n} "]) == 2, 60, "two Ready nodes")
    c.apply(HEADLESS, statefulset(1))
    pod = wait_until(lambda: c.running("db-0"), 90, "db-0 Running")
    node = pod["spec"]["nodeName"]
    claim = wait_until(lambda: (p := c.get("pvc", "data-db-0")) and
                       p.get("status", {}).get("phase") == "Bound" and p, 30, "claim Bound")
    volume = c.get("pv", claim["spec"]["volumeName"])
    terms = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [node]
    progress = []

    def advanced():
        n, bad = c.records("db-0")
        assert bad == 0, f"{bad} records out of order after {progress}"
        return n > (progress[-1][1] if progress else 0) and n

    def step(what):
        n = wait_until(advanced, 60, f"records written after {what}")
        progress.append((what, n))
        uid = c.running("db-0") and c.get("pod", "db-0")["metadata"]["uid"]
        return uid

    step("start")
    # 1. The container dies (its process killed): restarted in place.
    os.kill(writer_pid(), signal.SIGKILL)
    wait_until(lambda: (p := c.get("pod", "db-0")) and
               p["status"].get("containerStatuses", [{}])[0].get("restartCount", 0) >= 1,
               60, "the container restarted")
    step("container restart")
    # 2. The pod is deleted: the StatefulSet makes it again, on the volume's node.
    old = c.get("pod", "db-0")["metadata"]["uid"]
    assert c.moor("delete", "pod", "db-0").returncode == 0
    wait_until(lambda: (p := c.running("db-0")) and p["metadata"]["uid"] != old, 90,
               "db-0 recreated")
    assert c.get("pod", "db-0")["spec"]["nodeName"] == node
    step("pod deletion")
    # 3. A rolling update.
    old = c.get("pod", "db-0")["metadata"]["uid"]
    c.apply(statefulset(2))
    wait_until(lambda: (p := c.running("db-0")) and p["metadata"]["uid"] != old and
               p["spec"]["containers"][0]["env"][0]["value"] == "2", 90, "db-0 rolled")
    assert c.get("pod", "db-0")["spec"]["nodeName"] == node
    step("rolling update")
    # 4. The volume's agent is killed with SIGKILL and started again.
    agent = next(a for a in c.agents if a.name == node)
    agent.kill()
    agent.start()
    wait_until(lambda: c.running("db-0"), 90, "db-0 Running after the agent's restart")
    step("agent kill -9 and restart")
    # 5. The leader moves: the first replica is killed, the second takes over.
    c.cps[0].proc.kill()
    c.cps[0].proc.wait(10)
    c.cp = c.cps[1]
    wait_until(lambda: c.running("db-0"), 90, "db-0 Running through the second replica")
    step("leader moved")

    wait_until(lambda: c.records("db-0")[0] == RECORDS, 300, "all records written")
    assert c.records("db-0") == (RECORDS, 0), progress
    assert c.get("pod", "db-0")["spec"]["nodeName"] == node
    assert c.get("pvc", "data-db-0")["spec"]["volumeName"] == claim["spec"]["volumeName"]


def test_a_full_volume_gives_the_writer_enospc_and_nothing_outside_fills(cluster):
    c = cluster
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "small"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "16Mi"}}}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "filler"},
           "spec": {"terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                    "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "small"}}],
                    "containers": [{
                        "name": "f", "image": "busybox:test", "imagePullPolicy": "Never",
                        "command": ["sh", "-c",
                                    "dd if=/dev/zero of=/d/fill bs=1M count=64 2>/tmp/err; "
                                    "echo rc=$? > /tmp/rc; exec sleep 3600"],
                        "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]}}
    c.apply(claim, pod)
    wait_until(lambda: c.running("filler"), 90, "filler Running")
    out = wait_until(lambda: c.sh("filler", "cat /tmp/rc /tmp/err"), 60, "dd's result")
    assert "rc=1" in out and "No space left on device" in out, out
    node = c.get("pod", "filler")["spec"]["nodeName"]
    agent = next(a for a in c.agents if a.name == node)
    # The claim's data is an image file of the claimed size: the node's disk gave no more.
    sizes = [os.lstat(os.path.join(top, n)).st_blocks * 512
             for top, _, names in os.walk(agent.state) for n in names
             if n.endswith(".img") and os.path.isfile(os.path.join(top, n))]
    assert sizes and max(sizes) <= 17 * 2**20, sizes
    assert c.moor("delete", "pod", "filler").returncode == 0
    assert c.moor("delete", "pvc", "small").returncode == 0
