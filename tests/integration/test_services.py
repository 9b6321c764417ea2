"""Services in a 3-host `moor lab`: a ClusterIP reached from a pod on every host answers from
every replica, a NodePort answers on every host's underlay address, and a removed endpoint
leaves every host's rules quickly (the time is printed, never asserted)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from moorage.lab.hosts import in_netns
from tests import imagebuild
from tests.conftest import TEST_PREFIX
from tests.integration.test_lab import LabUnderTest, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root")

NODES = 3
APP = "moortest-web"
MANIFESTS = f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {APP}, namespace: default}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: {APP}}}}}
  template:
    metadata: {{labels: {{app: {APP}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{requests: {{cpu: 100m, memory: 16Mi}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {APP}, namespace: default}}
spec:
  selector: {{app: {APP}}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {APP}-np, namespace: default}}
spec:
  type: NodePort
  selector: {{app: {APP}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ip} {port}"


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "svc-")
    t = LabUnderTest(root)
    tar = imagebuild.busybox_tar(root)
    manifests = os.path.join(root, "manifests")
    os.mkdir(manifests)
    with open(os.path.join(manifests, "web.yaml"), "w") as f:
        f.write(MANIFESTS)
    try:
        out = t.lab("up", "--nodes", str(NODES), "--import", tar, "--manifests", manifests,
                    "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        yield t
    finally:
        t.lab("down")
        shutil.rmtree(root, ignore_errors=True)


def host(lab, i: int) -> str:
    return f"{lab.name}-h{i}"


def underlay(lab, i: int) -> str:
    return lab.cidr.rsplit(".", 1)[0] + f".{10 + i}"


def get_json(lab, *args: str) -> dict:
    out = lab.moor("get", *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def ready_pods(lab) -> list[dict]:
    return [p for p in get_json(lab, "pods", "-l", f"app={APP}")["items"]
            if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))]


def pexec(lab, pod: dict, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "exec", "-n", "default",
                           pod["metadata"]["name"], "--", *cmd], env=lab.env,
                          capture_output=True, text=True, timeout=timeout)


def rules(lab, i: int) -> str:
    out = subprocess.run(in_netns(host(lab, i), ["nft", "list", "table", "ip", "moorage-svc"]),
                         capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else ""


def bodies(text: str) -> list[str]:
    """The bodies of the HTTP responses in `text` (httpd serves the hostname)."""
    text = text.replace("\r\n", "\n")
    return [part.split("\n\n", 1)[1].strip() for part in text.split("HTTP/1.")[1:]
            if "\n\n" in part]


def http_get(ip: str, port: int, timeout: float = 3) -> str:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def spread(lab) -> dict[str, dict]:
    """node -> its one ready replica, once the three are up and the VIP is in every host."""
    def up():
        pods = ready_pods(lab)
        nodes = {p["spec"]["nodeName"]: p for p in pods}
        return nodes if len(pods) == 3 and len(nodes) == 3 else None
    nodes = wait_for(up, 120)
    svc = get_json(lab, "service", APP)
    ips = [p["status"]["podIP"] for p in nodes.values()]
    wait_for(lambda: all(svc["spec"]["clusterIP"] in (r := rules(lab, i))
                         and all(ip in r for ip in ips) for i in (1, 2, 3)), 30)
    return nodes


def test_services_get_addresses(lab, spread):
    svc = get_json(lab, "service", APP)
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    # `moor describe` lists the ready endpoints, as the agents' rules have them: the named
    # targetPort "http" resolved to each pod's containerPort.
    out = lab.moor("describe", "service", APP)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Endpoints:"))
    assert sorted(line.split()[1].split(",")) == sorted(
        f"{p['status']['podIP']}:8080" for p in spread.values()), out.stdout
    np = get_json(lab, "service", f"{APP}-np")
    assert 30000 <= np["spec"]["ports"][0]["nodePort"] <= 32767


def test_vip_from_a_pod_on_every_host_reaches_every_replica(lab, spread):
    vip = get_json(lab, "service", APP)["spec"]["clusterIP"]
    names = {pexec(lab, p, "hostname").stdout.strip() for p in spread.values()}
    assert len(names) == 3
    loop = f"for i in $(seq 30); do {GET.format(ip=vip, port=80)}; done"
    for node, pod in sorted(spread.items()):
        seen: set[str] = set()
        for _ in range(4):                    # 30 random picks miss a replica ~1 in 10^5
            out = pexec(lab, pod, "sh", "-c", loop)
            seen |= set(bodies(out.stdout))
            if seen >= names:
                break
        # Includes the pod's own replica: hairpin through the VIP works.
        assert seen == names, f"from {node}: {seen} ({out.stderr})"


def test_node_port_answers_on_every_hosts_underlay_address(lab, spread):
    port = get_json(lab, "service", f"{APP}-np")["spec"]["ports"][0]["nodePort"]
    names = {pexec(lab, p, "hostname").stdout.strip() for p in spread.values()}
    for i in (1, 2, 3):
        seen: set[str] = set()
        for _ in range(60):
            seen |= set(bodies(http_get(underlay(lab, i), port)))
            if seen >= names:
                break
        # Every host forwards to every replica, the ones on other hosts over the overlay.
        assert seen == names, f"host {i}: {seen}"


def _lab_client(lab):
    from moorage.cli import config as cfg
    from moorage.cli.client import Client

    settings = cfg.read_config_file(pathlib.Path(lab.config))
    creds = os.path.join(os.path.dirname(lab.config), settings["credentials"])
    return Client(cfg.Config(server=cfg.normalize_server(settings["server"]),
                             credentials=creds, credentials_source="the lab"), timeout=None)


def test_scaling_down_removes_the_endpoint_from_every_host(lab, spread):
    from moorage.model import kinds

    deleted: list[tuple[float, str]] = []
    client = _lab_client(lab)
    events = client.watch(kinds.BY_NAME["Pod"], "default", label_selector=f"app={APP}")
    started = threading.Event()

    def watch():
        try:
            for ev in events:
                if ev.type == "RESYNC":
                    started.set()
                if ev.type == "DELETED":
                    pod = kinds.unwrap(ev.object)
                    deleted.append((time.monotonic(), pod.status.pod_ip))
                    return
        except Exception:  # noqa: BLE001 - the stream is cancelled at the end of the test
            pass
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        started.wait(10)
        out = lab.moor("scale", "deployment", APP, "--replicas", "2")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: deleted, 60)
        seen_at, ip = deleted[0]
        assert ip
        gone_at = {}
        deadline = time.monotonic() + 30
        while len(gone_at) < 3 and time.monotonic() < deadline:
            for i in (1, 2, 3):
                if i not in gone_at and ip not in rules(lab, i):
                    gone_at[i] = time.monotonic()
            time.sleep(0.01)
        assert len(gone_at) == 3, f"{ip} still in the rules of hosts {set((1, 2, 3)) - set(gone_at)}"
        took = max(gone_at.values()) - seen_at
        print(f"\nendpoint {ip} left every host's rules {took * 1000:.0f} ms after its "
              "deletion was observed (target <= 1000 ms)")
    finally:
        client.close()
    # And the VIP keeps answering, from the two that are left.
    vip = get_json(lab, "service", APP)["spec"]["clusterIP"]
    pods = ready_pods(lab)
    pod = pods[0]
    names = {pexec(lab, p, "hostname").stdout.strip() for p in pods}
    out = pexec(lab, pod, "sh", "-c", f"for i in $(seq 20); do {GET.format(ip=vip, port=80)}; done")
    assert set(bodies(out.stdout)) <= names and bodies(out.stdout)
