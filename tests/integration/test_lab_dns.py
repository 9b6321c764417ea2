"""Cluster DNS and Compose stacks in a 3-host `moor lab`: each overlay pod's resolv.conf and
hosts, names resolved by the node-local DNS server from inside pods, and a Compose stack whose
two services call each other by name."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import imagebuild
from tests.conftest import TEST_PREFIX
from tests.integration.test_lab import LabUnderTest, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root")

CLUSTER_IP = "10.96.0.50"
APP = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: moortest-dns, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: moortest-dns}}}}
  template:
    metadata: {{labels: {{app: moortest-dns}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "while true; do sleep 1; done"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: moortest-dns}}
  clusterIP: {CLUSTER_IP}
  ports: [{{port: 80, targetPort: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: moortest-headless, namespace: default}}
spec:
  selector: {{app: moortest-dns}}
  clusterIP: None
"""


def _service_table_broadcast() -> bool:
    """Whether the control plane streams the service table to agents yet."""
    here = os.path.dirname(__file__)
    for path in glob.glob(os.path.join(here, "..", "..", "controlplane", "**", "*.py"),
                          recursive=True):
        with open(path) as f:
            if "ServiceTable(" in f.read():
                return True
    return False


needs_table = pytest.mark.skipif(not _service_table_broadcast(),
                                 reason="the control plane does not stream services yet")


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "dns-")
    t = LabUnderTest(root)
    tar = imagebuild.busybox_tar(root)
    try:
        out = t.lab("up", "--nodes", "3", "--import", tar, "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        app = os.path.join(root, "app.yaml")
        with open(app, "w") as f:
            f.write(APP)
        out = t.moor("apply", "-f", app)
        assert out.returncode == 0, out.stderr
        yield t
    finally:
        t.lab("down")
        shutil.rmtree(root, ignore_errors=True)


def pexec(lab, pod: dict, *cmd: str, ns: str = "default") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "exec", "-n", ns,
                           pod["metadata"]["name"], "--", *cmd], env=lab.env,
                          capture_output=True, text=True, timeout=30)


def running(lab, namespace: str = "default", label: str = "app=moortest-dns") -> list[dict]:
    out = lab.moor("get", "pods", "-n", namespace, "-l", label, "-o", "json")
    if out.returncode != 0:
        return []
    return [p for p in json.loads(out.stdout)["items"]
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]


@pytest.fixture(scope="module")
def pods(lab):
    return wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(running(lab)), 120)


def test_resolv_conf_and_hosts_are_written(lab, pods):
    pod = pods[0]
    out = pexec(lab, pod, "cat", "/etc/resolv.conf")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("nameserver ") and lines[0].endswith(".1")
    assert lines[1:] == ["search default.svc.cluster.local svc.cluster.local cluster.local",
                         "options ndots:5"]
    out = pexec(lab, pod, "cat", "/etc/hosts")
    assert out.stdout.splitlines()[-1] == f"{pod['status']['podIP']}\t{pod['metadata']['name']}"
    # Read-only, as the kubelet's.
    assert pexec(lab, pod, "sh", "-c", "echo x >> /etc/hosts").returncode != 0


def test_unknown_cluster_name_is_nxdomain(lab, pods):
    out = pexec(lab, pods[0], "nslookup", "moortest-nosuch.default.svc.cluster.local")
    assert out.returncode != 0
    assert "NXDOMAIN" in out.stdout + out.stderr, (out.stdout, out.stderr)


def _addresses(text: str) -> set[str]:
    """The answers' addresses in nslookup's output (after the server's own lines)."""
    body = text.split("Name:", 1)[1] if "Name:" in text else ""
    return {line.split()[-1] for line in body.splitlines() if line.startswith("Address")}


@needs_table
@pytest.mark.parametrize("name", ["web.default.svc.cluster.local", "web"])
def test_service_names_resolve_to_the_cluster_ip(lab, pods, name):
    def resolved():
        # busybox's nslookup asks every search domain at once and exits 1 if any is
        # NXDOMAIN, so for `web` only the answer counts, not the exit status.
        out = pexec(lab, pods[0], "nslookup", name)
        return CLUSTER_IP in _addresses(out.stdout)
    wait_for(resolved, 30)


@needs_table
def test_namespace_qualified_name_resolves_through_search_domains(lab, pods):
    # busybox's nslookup only searches dotless names; its ping resolves with libc rules.
    def resolved():
        out = pexec(lab, pods[0], "ping", "-c", "1", "-W", "1", "web.default")
        return f"({CLUSTER_IP})" in out.stdout
    wait_for(resolved, 30)


@needs_table
def test_headless_service_resolves_to_pod_ips(lab, pods):
    want = {p["status"]["podIP"] for p in pods}

    def resolved():
        out = pexec(lab, pods[0], "nslookup", "moortest-headless.default.svc.cluster.local")
        return _addresses(out.stdout) == want
    wait_for(resolved, 30)


COMPOSE = """\
services:
  front:
    image: busybox:test
    command: ["sh", "-c", "while true; do nc back 8080 </dev/null > /tmp/got 2>/dev/null; \
{ printf 'HTTP/1.0 200 OK\\\\r\\\\n\\\\r\\\\n'; cat /tmp/got; } | nc -l -p 8080; done"]
    ports: ["8080"]
    depends_on: [back]
  back:
    image: busybox:test
    command: ["sh", "-c", "while true; do echo from-back-$(hostname) | nc -l -p 8080; done"]
    ports: ["8080"]
"""


@needs_table
def test_compose_services_call_each_other_by_name(lab, pods):
    stack = f"{TEST_PREFIX}stack"
    path = os.path.join(lab.root, "compose.yaml")
    with open(path, "w") as f:
        f.write(COMPOSE)
    out = lab.moor("stack", "deploy", "-c", path, stack)
    assert out.returncode == 0, out.stderr
    front = wait_for(lambda: running(lab, stack, "moorage.io/service=front"), 120)[0]
    wait_for(lambda: running(lab, stack, "moorage.io/service=back"), 120)

    def fetched():
        out = pexec(lab, front, "sh", "-c", "nc front 8080 </dev/null", ns=stack)
        return "from-back-back-" in out.stdout
    try:
        wait_for(fetched, 60)
    finally:
        assert lab.moor("stack", "rm", stack).returncode == 0
