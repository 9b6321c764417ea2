"""`moor lab`: three hosts, each a network namespace on a bridge, with a control plane in the
first and an agent in each, made by `moor lab up` and gone without a trace after `moor lab down`.

The tests share one lab (it takes a while to start) and run in order; the last takes it down.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from moorage.lab import hosts
from tests import imagebuild
from tests.conftest import TEST_PREFIX
from tests.wait import wait_until as wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root")

NODES = 3
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
        command: ["sh", "-c", "while true; do sleep 1; done"]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
"""


class LabUnderTest:
    def __init__(self, root: str):
        # "moortest" and no "-": other tests' clean-ups remove every netns named "moortest-*".
        # Short, as it is in link names.
        self.name = f"{TEST_PREFIX.rstrip('-')}{uuid.uuid4().hex[:4]}"
        self.root = root
        self.state_dir = os.path.join(root, "lab")
        self.config = os.path.join(root, "config.yaml")
        self.cidr = f"10.199.{random.randint(100, 249)}.0/24"
        # No MOOR_SERVER or MOOR_CREDENTIALS: `moor` must find the lab from the config file.
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("MOOR_SERVER", "MOOR_CREDENTIALS")}
        self.env["MOOR_CONFIG"] = self.config

    def lab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moorage.cli.lab", *args, "--name",
                               self.name, "--state-dir", self.state_dir], env=self.env,
                              capture_output=True, text=True, timeout=180)

    def moor(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def traces(self) -> list[str]:
        """Anything of the lab on this machine, found without the lab's own code."""
        base = hosts.link_base(self.name)
        found = [f"netns {n}" for n in _listdir("/run/netns") if self.name in n]
        found += [f"link {n}" for n in _listdir("/sys/class/net")
                  if n.startswith(base + "-") or self.name in n]
        with open("/proc/mounts") as f:
            found += [f"mount {line.split()[1]}" for line in f
                      if self.name in line or self.state_dir in line]
        for hierarchy in _listdir("/sys/fs/cgroup"):
            found += [f"cgroup {hierarchy}/{d}"
                      for d in _listdir(os.path.join("/sys/fs/cgroup", hierarchy))
                      if self.name in d]
        found += [f"cgroup {d}" for d in _listdir("/sys/fs/cgroup") if self.name in d]
        me = os.getpid()
        for pid in _listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{self.name}-h" in cmd or self.state_dir in cmd:
                found.append(f"process {pid}: {cmd[:100]}")
        found += [f"file {p}" for p in (self.state_dir, self.config,
                                        f"/run/moorage/lab/{self.name}") if os.path.lexists(p)]
        return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "lab-")
    t = LabUnderTest(root)
    tar = imagebuild.busybox_tar(root)
    manifests = os.path.join(root, "manifests")
    os.mkdir(manifests)
    with open(os.path.join(manifests, "web.yaml"), "w") as f:
        f.write(DEPLOYMENT)
    try:
        out = t.lab("up", "--nodes", str(NODES), "--import", tar, "--manifests", manifests,
                    "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        t.up_output = out.stdout
        yield t
    finally:
        t.lab("down")            # a no-op when the last test already took it down
        shutil.rmtree(root, ignore_errors=True)




def test_moor_finds_the_lab_from_its_config_file(lab):
    out = lab.moor("get", "nodes")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert {r[0]: r[1] for r in rows} == {f"{lab.name}-h{i}": "Ready" for i in (1, 2, 3)}
    assert f"moor lab down --name {lab.name}" in lab.up_output


def test_status_lists_hosts_with_live_agents(lab):
    out = lab.lab("status")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:NODES + 1]]
    net = lab.cidr.rsplit(".", 1)[0]
    assert [(r[1], r[2]) for r in rows] == [(f"{lab.name}-h{i}", f"{net}.{10 + i}")
                                            for i in (1, 2, 3)]
    for r in rows:
        assert len(r) == 4 and r[3].isdigit(), r          # a pid, not "dead"
        assert os.path.exists(f"/proc/{r[3]}")
        # The agents joined with a token from a file: it is on no command line (`ps`).
        with open(f"/proc/{r[3]}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"--token-file" in argv and not any(a.startswith(b"MOOR1-") for a in argv)
    assert f"control plane {net}.11:7440" in out.stdout


def test_manifests_run_spread_over_the_hosts(lab):
    def spread():
        out = lab.moor("get", "pods", "-o", "json")
        if out.returncode != 0:
            return None
        running = [p for p in json.loads(out.stdout)["items"]
                   if p.get("status", {}).get("phase") == "Running"]
        nodes = {p["spec"].get("nodeName") for p in running}
        return nodes if len(running) == 3 else None
    assert wait_for(spread) == {f"{lab.name}-h{i}" for i in (1, 2, 3)}


def pods_by_node(lab) -> dict[str, dict]:
    """node -> one Running pod there (with its IP), from `moor get pods -o json`."""
    out = lab.moor("get", "pods", "-o", "json")
    assert out.returncode == 0, out.stderr
    found = {}
    for p in json.loads(out.stdout)["items"]:
        if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"):
            found.setdefault(p["spec"]["nodeName"], p)
    return found


def host(lab, i: int) -> str:
    return f"{lab.name}-h{i}"


def pexec(lab, pod: dict, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "exec", "-n", "default",
                           pod["metadata"]["name"], "--", *cmd], env=lab.env,
                          capture_output=True, text=True, timeout=timeout)


class UnderlayCounter:
    """An nft counter of VXLAN packets (UDP to the lab's VXLAN port) crossing the underlay
    bridge in this namespace."""

    def __init__(self, port: int = 4789):
        self.table = f"{TEST_PREFIX.rstrip('-')}{uuid.uuid4().hex[:6]}"
        script = (f"table bridge {self.table} {{\n chain forward {{\n"
                  f"  type filter hook forward priority 0; policy accept;\n"
                  f"  udp dport {port} counter\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)

    def packets(self) -> int:
        out = subprocess.run(["nft", "-j", "list", "table", "bridge", self.table],
                             capture_output=True, text=True, check=True).stdout
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return expr["counter"]["packets"]
        return 0

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "bridge", self.table], capture_output=True)


def test_pods_on_different_hosts_reach_each_other_over_the_overlay(lab):
    pods = wait_for(lambda: (p := pods_by_node(lab)) and len(p) == NODES and p)
    a, c = pods[host(lab, 1)], pods[host(lab, 3)]
    ip_a, ip_c = a["status"]["podIP"], c["status"]["podIP"]
    assert ip_a.startswith("10.244.") and ip_c.startswith("10.244.")
    assert ip_a.rsplit(".", 1)[0] != ip_c.rsplit(".", 1)[0]      # a /24 per node
    counter = UnderlayCounter()
    try:
        before = counter.packets()
        ping = pexec(lab, a, "ping", "-c", "2", "-W", "2", ip_c)
        assert ping.returncode == 0 and "2 packets received" in ping.stdout, ping.stdout
        serve = pexec(lab, c, "sh", "-c", "mkdir -p /tmp/www && echo hello-from-h3 > "
                      "/tmp/www/index.html && httpd -p 8080 -h /tmp/www")
        assert serve.returncode == 0, serve.stderr
        # busybox's wget is linked statically against glibc and crashes resolving the "http"
        # service in a rootfs without NSS modules; nc speaks HTTP just as well here.
        got = wait_for(lambda: "hello-from-h3" in (r := pexec(
            lab, a, "sh", "-c", f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | "
            f"nc {ip_c} 8080")).stdout and r, 20)
        assert got.stdout.startswith("HTTP/1.")
        # Both the pings and the TCP exchange went over VXLAN on the underlay.
        assert counter.packets() - before >= 4
    finally:
        counter.close()
    # The pod's MTU leaves room for VXLAN: the underlay veths' 1500 - 50.
    mtu = pexec(lab, a, "cat", "/sys/class/net/eth0/mtu")
    assert mtu.stdout.strip() == "1450"
    doctor = lab.moor("net", "doctor")
    assert doctor.returncode == 0 and "overlay healthy: 3 nodes" in doctor.stdout, doctor.stdout


def test_pod_egress_outside_the_cluster_is_masqueraded(lab):
    """A pod calling an underlay address (this namespace's end of the lab bridge) is seen
    coming from its host's underlay address, not from its pod IP."""
    import socket
    import threading

    pods = pods_by_node(lab)
    pod = pods[host(lab, 2)]
    gateway = lab.cidr.rsplit(".", 1)[0] + ".1"
    seen = []
    srv = socket.create_server((gateway, 0))
    srv.settimeout(20)
    port = srv.getsockname()[1]

    def accept():
        try:
            conn, addr = srv.accept()
            seen.append(addr[0])
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nok\n")
            conn.close()
        except OSError:
            pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        out = pexec(lab, pod, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "
                    f"nc {gateway} {port}")
        t.join(20)
    finally:
        srv.close()
    assert out.stdout.strip().endswith("ok"), out.stderr
    assert seen == [lab.cidr.rsplit(".", 1)[0] + ".12"]     # host 2's underlay address


def test_agent_restart_keeps_pod_ips_and_connections(lab):
    from moorage.lab import cluster

    pods = pods_by_node(lab)
    server, client = pods[host(lab, 1)], pods[host(lab, 2)]
    ip = server["status"]["podIP"]
    before = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods.values()}
    # busybox nc ends when its stdin does: keep the listener's stdin open.
    listen = pexec(lab, server, "sh", "-c",
                   "(sleep 600 | nc -l -p 9000 > /tmp/got &) ; sleep 0.2")
    assert listen.returncode == 0, listen.stderr
    conn = subprocess.Popen(
        [sys.executable, "-m", "moorage.cli.main", "exec", "-i", "-n", "default",
         client["metadata"]["name"], "--", "nc", ip, "9000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lab.env)
    try:
        conn.stdin.write(b"before\n")
        conn.stdin.flush()
        wait_for(lambda: "before" in pexec(lab, server, "cat", "/tmp/got").stdout, 20)
        # kill -9 host 1's agent, start it again: its pod keeps its veth, IP and connections.
        cluster.restart_agent(cluster.Lab.load(lab.state_dir), host(lab, 1))
        h1_log = pathlib.Path(lab.state_dir, "h1.log")
        wait_for(lambda: h1_log.read_text().count("assignments (full)") == 2, 30)
        # Plugged in again from its saved network settings: the pod never flapped to Pending.
        assert "is Pending" not in h1_log.read_text().split("connecting to")[-1]
        conn.stdin.write(b"after\n")
        conn.stdin.flush()
        wait_for(lambda: "after" in pexec(lab, server, "cat", "/tmp/got").stdout, 20)
    finally:
        conn.stdin.close()
        conn.wait(20)
    after = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods_by_node(lab).values()}
    assert after == before


def overlay_entries(netns: str) -> dict[str, set[str]]:
    """Routes, neighbours and FDB destinations on the VXLAN device in a host netns."""
    from pyroute2 import NetNS

    with NetNS(netns) as ns:
        idx = ns.link_lookup(ifname="moor.vx")[0]
        routes = {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ns.route("dump")
                  if r.get_attr("RTA_OIF") == idx and r.get_attr("RTA_DST")}
        neigh = {n.get_attr("NDA_DST") for n in ns.neigh("dump", ifindex=idx)}
        fdb = {n.get_attr("NDA_DST") for n in ns.fdb("dump", ifindex=idx)
               if n.get_attr("NDA_DST")}
    return {"routes": routes, "neigh": neigh, "fdb": fdb}


def test_removing_a_host_removes_its_overlay_entries_everywhere(lab):
    from moorage.lab import cluster

    out = lab.moor("get", "nodes", "-o", "json")
    cidr3 = next(n["spec"]["podCIDR"] for n in json.loads(out.stdout)["items"]
                 if n["metadata"]["name"] == host(lab, 3))
    ip3 = lab.cidr.rsplit(".", 1)[0] + ".13"
    for i in (1, 2):
        have = overlay_entries(host(lab, i))
        assert cidr3 in have["routes"] and ip3 in have["fdb"]
    state = cluster.Lab.load(lab.state_dir)
    os.kill(next(h.agent_pid for h in state.hosts if h.name == host(lab, 3)), 9)
    deleted = lab.moor("delete", "node", host(lab, 3))
    assert deleted.returncode == 0, deleted.stderr

    def gone():
        for i in (1, 2):
            have = overlay_entries(host(lab, i))
            if cidr3 in have["routes"] or ip3 in have["fdb"] or cidr3.replace(
                    ".0/24", ".0") in have["neigh"]:
                return False
        return True
    wait_for(gone, 20)
    doctor = lab.moor("net", "doctor")
    assert "overlay healthy: 2 nodes" in doctor.stdout, doctor.stdout


def test_down_leaves_nothing(lab):
    assert lab.traces() != []                          # the scan does see a live lab
    out = lab.lab("down")
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert f"lab {lab.name} is gone" in out.stdout
    assert lab.traces() == []
    again = lab.lab("down")
    assert again.returncode == 0 and "nothing of lab" in again.stdout
