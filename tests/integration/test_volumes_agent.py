"""A claim's data through a real agent process: a real control plane binds the claim to the
node, the agent makes the volume, a pod writes records with fsync; the records survive an
agent kill -9 and restart (the pod running on), pod deletion, and go only with the claim."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODE = "moortest-vol-a"
RECORDS = 1000
WRITER = (f"i=0; while [ $i -lt {RECORDS} ]; do echo record-$i >> /db/log; "
          "i=$((i+1)); done; sync; echo written; exec sleep 3600")


def claim(name: str, size: str = "32Mi") -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}}}


def pod(name: str, claim_name: str, script: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "db", "image": "busybox:test",
                                     "imagePullPolicy": "Never", "command": ["sh", "-c", script],
                                     "volumeMounts": [{"name": "data", "mountPath": "/db"}]}],
                     "volumes": [{"name": "data",
                                  "persistentVolumeClaim": {"claimName": claim_name}}]}}


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "volagent-")
    allowed = os.path.join(root, "host")
    os.makedirs(allowed)
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    agents = start_agents(cp, root, [NODE], imagebuild.busybox_tar(root),
                          extra_args=("--allowed-host-paths", allowed))
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)
    try:
        wait_until(lambda: get(moor, "node", NODE).get("status", {}).get("capacity"), 60,
                   "the node")
        moor.cp_log = os.path.join(root, "cp", "controlplane.log")
        yield moor, agents[0], allowed
    finally:
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


def apply(moor, *objs):
    out = moor("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objs))
    assert out.returncode == 0, out.stderr
    return out


def get(moor, kind: str, name: str) -> dict:
    out = moor("get", kind, name, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else {}


def container(moor, name: str) -> dict:
    statuses = get(moor, "pod", name).get("status", {}).get("containerStatuses", [])
    return statuses[0] if statuses else {}


def sh(moor, name: str, script: str) -> str:
    out = moor("exec", name, "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_node_tells_its_storage_and_allowed_host_paths(cluster):
    moor, _, allowed = cluster
    node = get(moor, "node", NODE)
    assert int(node["status"]["capacity"]["moorage.io/local-storage"]) > 0
    assert allowed in json.dumps(node["metadata"].get("annotations", {}))


def test_records_survive_agent_kill_and_pod_deletion_and_go_with_the_claim(cluster):
    moor, agent, _ = cluster
    apply(moor, claim("moortest-data"), pod("moortest-db", "moortest-data", WRITER))
    try:
        wait_until(lambda: container(moor, "moortest-db").get("state") == "running", 90,
                   "the writer running")
    except AssertionError:
        with open(moor.cp_log) as f:
            cp_log = f.read()[-3000:]
        raise AssertionError(moor("describe", "pod", "moortest-db").stdout + agent.log() +
                             cp_log) from None
    wait_until(lambda: "written" in moor("logs", "moortest-db").stdout, 60, "the records")
    pvc = get(moor, "pvc", "moortest-data")
    assert pvc["status"]["phase"] == "Bound"
    pv = pvc["spec"]["volumeName"]
    image = os.path.join(agent.state, "local-volumes", pv, "disk.img")
    assert os.path.exists(image)

    # kill -9 and restart: the container runs on, its volume with it.
    started = container(moor, "moortest-db")["startedAt"]
    agent.kill()
    agent.start()
    count = wait_until(lambda: (out := moor("exec", "moortest-db", "--", "sh", "-c",
                                            "wc -l < /db/log")).returncode == 0 and out.stdout,
                       60, "exec once the agent is back")
    assert count.split() == [str(RECORDS)]
    st = container(moor, "moortest-db")
    assert st["startedAt"] == started and st.get("restartCount", 0) == 0

    # The pod deleted: a new pod of the claim reads every record and nothing else.
    assert moor("delete", "pod", "moortest-db").returncode == 0
    wait_until(lambda: not get(moor, "pod", "moortest-db"), 60, "the pod gone")
    assert os.path.exists(image)
    apply(moor, pod("moortest-reader", "moortest-data", "exec sleep 3600"))
    wait_until(lambda: container(moor, "moortest-reader").get("state") == "running", 60,
               "the reader running")
    lines = sh(moor, "moortest-reader", "cat /db/log").split()
    assert lines == [f"record-{i}" for i in range(RECORDS)]

    # The claim deleted (reclaim policy Delete): the agent removes the data.
    assert moor("delete", "pod", "moortest-reader").returncode == 0
    wait_until(lambda: not get(moor, "pod", "moortest-reader"), 60, "the reader gone")
    assert moor("delete", "pvc", "moortest-data").returncode == 0
    wait_until(lambda: not os.path.exists(os.path.dirname(image)), 60, "the volume removed")
    wait_until(lambda: not get(moor, "pv", pv), 60, "the PersistentVolume removed")


def host_pod(name: str, path: str, script: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "busybox:test",
                                     "imagePullPolicy": "Never", "command": ["sh", "-c", script],
                                     "volumeMounts": [{"name": "h", "mountPath": "/h"}]}],
                     "volumes": [{"name": "h", "hostPath": {"path": path,
                                                            "type": "DirectoryOrCreate"}}]}}


def test_host_paths_work_under_the_allowed_prefix_and_wait_outside_it(cluster):
    moor, _, allowed = cluster
    inside = os.path.join(allowed, "web")
    apply(moor, host_pod("moortest-host-ok", inside, "echo hi > /h/out; exec sleep 3600"),
          host_pod("moortest-host-no", "/etc/moortest-nope", "exec sleep 3600"))
    wait_until(lambda: os.path.exists(os.path.join(inside, "out")), 60, "the pod's write")
    st = wait_until(lambda: (c := container(moor, "moortest-host-no")).get("reason") ==
                    "CreateContainerError" and c, 60, "the refused pod waiting")
    assert st["message"] == ('MountVolume.SetUp failed for volume "h": hostPath '
                             '"/etc/moortest-nope" is not under --allowed-host-paths '
                             f"({allowed})")
    assert not os.path.exists("/etc/moortest-nope")
    events = wait_until(lambda: "FailedMount" in (out := moor("describe", "pod",
                                                              "moortest-host-no").stdout)
                        and out, 30, "a FailedMount event")
    assert "is not under --allowed-host-paths" in events
    for name in ("moortest-host-ok", "moortest-host-no"):
        assert moor("delete", "pod", name).returncode == 0
    wait_until(lambda: not get(moor, "pod", "moortest-host-ok"), 60, "the pods gone")
    with open(os.path.join(inside, "out")) as f:
        assert f.read() == "hi\n"   # the host's data stays after the pod
