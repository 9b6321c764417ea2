"""A StatefulSet in a 3-host `moor lab`: its pods come up one after another, and each one
resolves every other by its stable name `<pod>.<service>` (and the full
`<pod>.<service>.<ns>.svc.cluster.local`) through the node-local DNS and the headless Service;
the Service's own name answers every Ready pod."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from tests import imagebuild
from tests.conftest import TEST_PREFIX, unique
from tests.integration.test_lab import LabUnderTest, wait_for
from tests.integration.test_lab_dns import _addresses, pexec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root")

NAME = unique("db")


def manifest(name: str) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {name}}}
  clusterIP: None
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: default}}
spec:
  serviceName: {name}
  replicas: 3
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "while true; do sleep 1; done"]
"""


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "stsdns-")
    t = LabUnderTest(root)
    tar = imagebuild.busybox_tar(root)
    try:
        out = t.lab("up", "--nodes", "3", "--import", tar, "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        path = os.path.join(root, "sts.yaml")
        with open(path, "w") as f:
            f.write(manifest(NAME))
        out = t.moor("apply", "-f", path)
        assert out.returncode == 0, out.stderr
        yield t
    finally:
        t.moor("delete", "statefulset", NAME)
        t.lab("down")
        shutil.rmtree(root, ignore_errors=True)


def ready_pods(lab) -> dict[str, dict]:
    out = lab.moor("get", "pods", "-l", f"app={NAME}", "-o", "json")
    if out.returncode != 0:
        return {}
    return {p["metadata"]["name"]: p for p in json.loads(out.stdout)["items"]
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))}


def test_each_pod_resolves_the_others_by_stable_name(lab):
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 3 else None)(ready_pods(lab)), 180)
    assert sorted(pods) == [f"{NAME}-{i}" for i in range(3)]
    ips = {n: p["status"]["podIP"] for n, p in pods.items()}
    for me in pods.values():
        for other, ip in ips.items():
            def full(me=me, other=other, ip=ip):
                out = pexec(lab, me, "nslookup", f"{other}.{NAME}.default.svc.cluster.local")
                return _addresses(out.stdout) == {ip}

            def short(me=me, other=other, ip=ip):
                # busybox's nslookup only searches dotless names; its ping follows libc's
                # search rules, as an application would.
                out = pexec(lab, me, "ping", "-c", "1", "-W", "1", f"{other}.{NAME}")
                return f"({ip})" in out.stdout
            wait_for(full, 30)
            wait_for(short, 30)
    wait_for(lambda: _addresses(pexec(lab, pods[f"{NAME}-0"], "nslookup",
                                      f"{NAME}.default.svc.cluster.local").stdout)
             == set(ips.values()), 30)
    table = lab.moor("get", "sts").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "AGE"]
    assert any(line.split()[:2] == [NAME, "3/3"] for line in table[1:]), table
