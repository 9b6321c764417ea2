"""The overlay datapath on real namespaces, as root: three simulated hosts on one underlay
bridge, NodeNetwork run inside each host's namespace, pods in their own namespaces."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid

import pytest

from nodeagent.network import doctor
from nodeagent.network.datapath import NodeNetwork, Peer
from tests.netlab import UNDERLAY_GATEWAY, Lab, call_in_netns, in_node

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]


class Cluster:
    """A Lab with the overlay set up on every host and one pod per host."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.pods = []   # (uid, netns, ip) per host
        for i in range(len(lab.hosts)):
            lab.node(i, "setup")
            lab.node(i, "set_peers", lab.peers)
        for i in range(len(lab.hosts)):
            uid = str(uuid.uuid4())
            ns = lab.pod_netns(f"pod{i}-")
            ip = f"10.244.{i + 1}.2"
            lab.node(i, "attach_pod", ns, uid, ip)
            self.pods.append((uid, ns, ip))

    def ping(self, src: int, ip: str) -> bool:
        return self.lab.exec(self.pods[src][1], "/bin/busybox", "ping", "-c1", "-W2", ip,
                             check=False).returncode == 0

    def pod_map(self, host: int) -> dict[str, str]:
        uid, ns, _ = self.pods[host]
        return {uid: ns}


@pytest.fixture(scope="module")
def cluster():
    lab = Lab(3, "dp")
    try:
        lab.build()
        yield Cluster(lab)
    finally:
        lab.close()


def _serve_once(ip: str, port: int) -> tuple[int, str]:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((ip, port))
        srv.listen(1)
        srv.settimeout(15)
        conn, (peer, _) = srv.accept()
        with conn:
            conn.settimeout(15)
            n = 0
            while data := conn.recv(65536):
                n += len(data)
        return n, peer


def _send(ip: str, port: int, size: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection((ip, port), timeout=5) as conn:
                conn.sendall(b"x" * size)
                return
        except ConnectionRefusedError:
            time.sleep(0.05)   # the server is not listening yet
    raise ConnectionRefusedError(f"{ip}:{port}")


def tcp_transfer(client_ns: str, server_ns: str, ip: str, port: int, size: int):
    """Sends `size` bytes from a process in client_ns to one in server_ns listening on ip:port;
    returns (bytes received, the peer address the server saw)."""
    result = {}
    server = threading.Thread(target=lambda: result.update(
        got=call_in_netns(server_ns, _serve_once, ip, port)))
    server.start()
    try:
        call_in_netns(client_ns, _send, ip, port, size)
    finally:
        server.join(30)
    return result.get("got")


def _nft_packets(lab: Lab, host: int, table: str) -> int:
    out = lab.exec(lab.hosts[host], "nft", "list", "table", "ip", table).stdout
    return sum(int(n) for n in re.findall(r"packets (\d+)", out))


def test_setup_and_peers_are_idempotent(cluster):
    lab = cluster.lab
    assert lab.node(0, "setup") == []
    assert lab.node(0, "set_peers", lab.peers) == []
    uid, ns, ip = cluster.pods[0]
    first = lab.node(0, "attach_pod", ns, uid, ip)
    assert lab.node(0, "attach_pod", ns, uid, ip) == first
    assert first.mtu == 1450 and first.gateway == "10.244.1.1"


def test_pods_talk_across_hosts_over_vxlan(cluster):
    lab = cluster.lab
    counter = "moortest_udp"
    script = (f"table ip {counter} {{ chain out {{ type filter hook output priority 0; "
              f"udp dport 4789 ip daddr 10.213.0.13 counter\n}}\n}}\n")
    lab.exec(lab.hosts[0], "nft", "-f", "-", input=script)
    try:
        before = _nft_packets(lab, 0, counter)
        assert cluster.ping(0, cluster.pods[2][2])
        # TCP, with far more data than one MTU, so the pods' MTU must be right. (busybox nc
        # drops the tail of a stream when stdin ends, hence Python on both ends.)
        got = tcp_transfer(cluster.pods[0][1], cluster.pods[2][1], cluster.pods[2][2], 5001,
                           2_000_000)
        assert got == (2_000_000, cluster.pods[0][2])    # no NAT inside the cluster
        assert _nft_packets(lab, 0, counter) - before >= 10
    finally:
        lab.exec(lab.hosts[0], "nft", "delete", "table", "ip", counter, check=False)


def test_pod_mtu_is_underlay_minus_vxlan_overhead(cluster):
    out = cluster.lab.exec(cluster.pods[1][1], "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1450 " in out
    # The largest unfragmented ICMP echo that fits the pod MTU crosses the overlay.
    assert cluster.lab.exec(cluster.pods[1][1], "/bin/busybox", "ping", "-c1", "-W2", "-s",
                            "1422", cluster.pods[0][2], check=False).returncode == 0


def test_egress_outside_the_cluster_is_masqueraded(cluster):
    lab = cluster.lab
    # The server sits in the underlay namespace, outside the cluster CIDR: it must see the
    # host's underlay address, not the pod's.
    got = tcp_transfer(cluster.pods[0][1], lab.underlay, UNDERLAY_GATEWAY, 7001, 1000)
    assert got == (1000, lab.configs[0].underlay_ip)


def test_removed_peer_loses_its_entries(cluster):
    lab = cluster.lab
    try:
        lab.node(0, "set_peers", lab.peers[:2])
        entries = lab.node(0, "observe_peers")
        assert {r.dst for r in entries.routes} == {"10.244.2.0/24"}
        assert {n.ip for n in entries.neighs} == {"10.244.2.0"}
        assert {f.dst for f in entries.fdbs} == {"10.213.0.12"}
        assert not cluster.ping(0, cluster.pods[2][2])
    finally:
        lab.node(0, "set_peers", lab.peers)
    assert cluster.ping(0, cluster.pods[2][2])


def _break_host(net: NodeNetwork):
    ipr, vx = net.ipr, net.ipr.link_lookup(ifname=net.config.vxlan)[0]
    ipr.route("del", dst="10.244.2.0/24", oif=vx)
    ipr.neigh("del", dst="10.244.3.0", ifindex=vx)
    ipr.fdb("add", ifindex=vx, lladdr="0a:58:0a:f4:09:00", dst="10.213.0.99")
    ipr.link("set", index=ipr.link_lookup(ifname=net.config.vxlan)[0], mtu=1400)
    ipr.link("add", ifname="mvdeadbeef", kind="veth", peer="mvdeadbeefp")


def test_reconcile_and_doctor_find_and_fix_drift(cluster):
    lab = cluster.lab
    cfg = lab.configs[0]
    assert lab.call(0, in_node, doctor.diagnose, cfg, lab.peers) == []
    lab.call(0, in_node, _break_host, cfg)
    kinds = {f.kind for f in lab.call(0, in_node, doctor.diagnose, cfg, lab.peers)}
    assert {"missing-route", "missing-neigh", "stale-fdb", "mtu-mismatch"} <= kinds
    fixes = lab.node(0, "reconcile", lab.peers, cluster.pod_map(0))
    text = "\n".join(fixes)
    assert "added route 10.244.2.0/24" in text
    assert "added neighbour 10.244.3.0" in text
    assert "removed fdb 0a:58:0a:f4:09:00" in text
    assert "mtu 1400 -> 1450" in text
    assert "removed stale veth mvdeadbeef" in text
    assert lab.node(0, "reconcile", lab.peers, cluster.pod_map(0)) == []
    assert lab.call(0, in_node, doctor.diagnose, cfg, lab.peers) == []
    assert cluster.ping(0, cluster.pods[1][2]) and cluster.ping(0, cluster.pods[2][2])


def test_doctor_reports_an_unreachable_peer(cluster):
    lab = cluster.lab
    block = "table ip moortest_block { chain in { type filter hook input priority 0; udp dport 4789 drop\n}\n}\n"
    lab.exec(lab.hosts[2], "nft", "-f", "-", input=block)
    try:
        found = lab.call(0, in_node, doctor.diagnose, lab.configs[0], lab.peers, 0.5)
    finally:
        lab.exec(lab.hosts[2], "nft", "delete", "table", "ip", "moortest_block")
    assert [(f.kind, f.severity) for f in found] == [("unreachable-peer", "error")]
    assert lab.hosts[2] in found[0].message


def test_detach_and_teardown_leave_nothing():
    with Lab(1, "td") as lab:
        uid = str(uuid.uuid4())
        ns = lab.pod_netns("pod-")
        lab.node(0, "setup")
        lab.node(0, "set_peers", [*lab.peers, Peer("other", "10.213.0.50", "10.244.9.0/24")])
        net = lab.node(0, "attach_pod", ns, uid, "10.244.1.7")
        assert lab.node(0, "detach_pod", uid) is True
        assert lab.node(0, "detach_pod", uid) is False
        assert "eth0" not in lab.exec(ns, "ip", "-o", "link").stdout
        lab.node(0, "attach_pod", ns, uid, "10.244.1.7")
        lab.node(0, "teardown")
        lab.node(0, "teardown")
        links = lab.exec(lab.hosts[0], "ip", "-o", "link").stdout
        for name in ("moor0", "moor.vx", net.host_ifname):
            assert name not in links
        assert "moorage" not in lab.exec(lab.hosts[0], "nft", "list", "tables").stdout


def test_attach_to_a_missing_netns_is_a_clear_error():
    with Lab(1, "na") as lab:
        lab.node(0, "setup")
        with pytest.raises(RuntimeError, match="does not exist; create the sandbox"):
            lab.node(0, "attach_pod", lab.tag + "nope", str(uuid.uuid4()), "10.244.1.9")
        assert lab.tag + "nope" not in os.listdir("/run/netns")
