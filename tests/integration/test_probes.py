"""Readiness, liveness and startup probes against a real control plane and a real agent: pod
Ready conditions, restarts, and the Unhealthy and Killing events, as `moor` shows them.

The agent runs with `--pod-network none`, so each pod has only loopback in its own network
namespace: httpGet and tcpSocket probes must connect from inside it."""

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
from tests.integration.test_streams import phases, ready_nodes, restart_count, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODE = "moortest-probe-node"
FAST = {"periodSeconds": 1, "timeoutSeconds": 2}


def pod(name: str, script: str, **probes) -> dict:
    container = {"name": "app", "image": "busybox:test", "imagePullPolicy": "Never",
                 "command": ["sh", "-c", script], **probes}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": NODE, "restartPolicy": "Always",
                     "terminationGracePeriodSeconds": 1, "containers": [container]}}


def exec_probe(*argv, **kw) -> dict:
    return {"exec": {"command": list(argv)}, **FAST, **kw}


HTTPD = "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"

PODS = [
    pod("moortest-ready", "exec sleep 3600",
        readinessProbe=exec_probe("test", "-f", "/tmp/ready", failureThreshold=1)),
    pod("moortest-live", "exec sleep 3600",
        livenessProbe={"tcpSocket": {"port": 9}, **FAST, "failureThreshold": 2}),
    pod("moortest-http", HTTPD,
        readinessProbe={"httpGet": {"path": "/", "port": 8080}, **FAST}),
    pod("moortest-http404", HTTPD,
        readinessProbe={"httpGet": {"path": "/missing", "port": 8080}, **FAST}),
    pod("moortest-startup", "exec sleep 3600",
        startupProbe=exec_probe("test", "-f", "/tmp/started", failureThreshold=1000),
        livenessProbe=exec_probe("false", failureThreshold=1)),
]


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "probes-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    tar = imagebuild.busybox_tar(root)
    agents = start_agents(cp, root, [NODE], tar)
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)

    try:
        wait_for(lambda: ready_nodes(moor) == [NODE], what="a Ready node", agents=agents)
        out = moor("apply", "-f", "-", stdin="\n---\n".join(json.dumps(p) for p in PODS))
        assert out.returncode == 0, out.stderr
        wait_for(lambda: all(phases(moor).get(p["metadata"]["name"]) == "Running"
                             for p in PODS), what="pods running", agents=agents)
        yield moor, agents
    finally:
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


def condition(moor, name: str, type_: str = "Ready") -> str:
    out = moor("get", "pod", name, "-o", "json")
    if out.returncode != 0:
        return ""
    for c in json.loads(out.stdout).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"]
    return ""


def ready_column(moor, name: str) -> str:
    out = moor("get", "pods")
    for line in out.stdout.splitlines()[1:]:
        cols = line.split()
        if cols[0] == name:
            return cols[1]
    return ""


def events(moor, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the pod's events, each as many times as it was seen (a
    repeated event is one Event with a count)."""
    out = moor("get", "events", "-o", "json")
    if out.returncode != 0:
        return []
    return [(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
            for e in json.loads(out.stdout).get("items", [])
            if e.get("involvedObject", {}).get("name") == name
            for _ in range(int(e.get("count", 1)))]


def count(evs, reason: str, text: str) -> int:
    return sum(1 for _, r, m in evs if r == reason and text in m)


def test_failing_readiness_keeps_the_pod_unready_until_it_passes(cluster):
    moor, agents = cluster
    name = "moortest-ready"
    # The probe has run and failed (an event says so), and the pod is not Ready.
    wait_for(lambda: count(events(moor, name), "Unhealthy", "Readiness probe failed") >= 2,
             what="readiness failures", agents=agents)
    assert condition(moor, name) == "False"
    assert ready_column(moor, name) == "0/1"
    assert ("Warning", "Unhealthy") in {(t, r) for t, r, _ in events(moor, name)}
    assert restart_count(moor, name) == 0           # readiness never restarts anything
    out = moor("exec", name, "--", "touch", "/tmp/ready")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: condition(moor, name) == "True", what="Ready", agents=agents)
    assert ready_column(moor, name) == "1/1"
    # And back: failureThreshold 1 takes it out at the next failure.
    assert moor("exec", name, "--", "rm", "/tmp/ready").returncode == 0
    wait_for(lambda: condition(moor, name) == "False", what="unready again", agents=agents)


def test_failing_liveness_restarts_the_container(cluster):
    moor, agents = cluster
    name = "moortest-live"
    wait_for(lambda: restart_count(moor, name) >= 1, what="a restart", agents=agents)
    evs = wait_for(lambda: (e := events(moor, name)) and count(e, "Killing", "") and e,
                   what="Killing event", agents=agents)
    assert count(evs, "Unhealthy", "Liveness probe failed: dial tcp") >= 2
    assert count(evs, "Killing", "Container app failed liveness probe, will be restarted")
    # Without a readiness probe a running container is ready.
    wait_for(lambda: condition(moor, name) == "True" or restart_count(moor, name) >= 2,
             what="ready while running", agents=agents)
    out = moor("get", "events")
    assert "Killing" in out.stdout and "Unhealthy" in out.stdout


def test_http_readiness_probe(cluster):
    moor, agents = cluster
    wait_for(lambda: condition(moor, "moortest-http") == "True", what="httpd Ready",
             agents=agents)
    assert ready_column(moor, "moortest-http") == "1/1"
    evs = wait_for(lambda: count(e := events(moor, "moortest-http404"), "Unhealthy",
                                 "HTTP probe failed with statuscode: 404") and e,
                   what="a 404 readiness failure", agents=agents)
    assert evs
    assert condition(moor, "moortest-http404") == "False"


def test_startup_probe_holds_liveness_back(cluster):
    moor, agents = cluster
    name = "moortest-startup"
    # Several startup failures (period 1s, threshold 1000): liveness (`false`, threshold 1)
    # would have killed the container by now if it ran.
    wait_for(lambda: count(events(moor, name), "Unhealthy", "Startup probe failed") >= 3,
             what="startup failures", agents=agents)
    evs = events(moor, name)
    assert count(evs, "Unhealthy", "Liveness probe failed") == 0
    assert count(evs, "Killing", "") == 0
    assert restart_count(moor, name) == 0
    assert condition(moor, name) == "False"         # not started, so not ready
    assert moor("exec", name, "--", "touch", "/tmp/started").returncode == 0
    # Started: now liveness runs, fails and the container is restarted.
    wait_for(lambda: restart_count(moor, name) >= 1, what="a liveness restart", agents=agents)
    evs = events(moor, name)
    assert count(evs, "Unhealthy", "Liveness probe failed") >= 1
    assert count(evs, "Killing", "failed liveness probe")
