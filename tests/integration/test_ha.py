"""Two control-plane replicas, agents joined to one of them: kill -9 that replica and the agents
move their sessions to the other before their nodes go NotReady, so no pod is replaced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.integration.test_lab import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: ha}
spec:
  replicas: 2
  selector: {matchLabels: {app: ha}}
  template:
    metadata: {labels: {app: ha}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "echo hello from $HOSTNAME; while true; do sleep 1; done"]
"""
# Fast failure detection, so a session that failed over late would cost the pods.
FAST = ("--controllers", "--node-not-ready-after", "3", "--pod-eviction-after", "1",
        "--eviction-startup-grace", "0", "--leader-lease-ttl", "2")


def test_agents_fail_over_to_another_replica_and_keep_their_pods(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "ha-")
    cps, agents = [], []
    try:
        cps.append(start_controlplane(etcd_endpoint, os.path.join(root, "cp0"),
                                      extra_args=(*FAST, "--replica-name", "cp0")))
        cps.append(start_controlplane(etcd_endpoint, os.path.join(root, "cp1"),
                                      prefix=cps[0].prefix,
                                      extra_args=(*FAST, "--replica-name", "cp1")))
        tar = imagebuild.busybox_tar(root)
        agents = start_agents(cps[0], root, ["ha-1", "ha-2"], tar)

        def moor(cp, *args, stdin=None):
            return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                                  input=stdin, capture_output=True, text=True, env=cp.env(),
                                  timeout=60)

        def running(cp) -> dict[str, str]:
            out = moor(cp, "get", "pods", "-o", "json")
            if out.returncode != 0:
                return {}
            return {p["metadata"]["uid"]: p["metadata"]["name"]
                    for p in json.loads(out.stdout)["items"]
                    if p.get("status", {}).get("phase") == "Running"}

        assert moor(cps[0], "apply", "-f", "-", stdin=DEPLOYMENT).returncode == 0
        before = wait_for(lambda: (r := running(cps[0])) and len(r) == 2 and r, 90)

        cps[0].proc.kill()
        cps[0].proc.wait(10)
        # Through the survivor: the agents' sessions are there now, since logs reach a node
        # only through the replica holding its session.
        name = next(iter(before.values()))
        out = wait_for(lambda: (o := moor(cps[1], "logs", name)).returncode == 0 and o, 30)
        assert "hello from" in out.stdout
        # Long past NotReady (3 s) and eviction (1 s more), with the survivor leading: the
        # same two pods, still Running, on Ready nodes.
        time.sleep(8)
        assert running(cps[1]) == before
        nodes = moor(cps[1], "get", "nodes").stdout.splitlines()[1:]
        assert sorted(line.split()[1] for line in nodes) == ["Ready", "Ready"], nodes
        events = moor(cps[1], "get", "events").stdout
        assert "NodeNotReady" not in events, events
    finally:
        for a in agents:
            a.cleanup()
        for cp in cps:
            stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)
