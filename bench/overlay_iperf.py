"""Overlay cost on two simulated hosts (needs root and iperf3): pod->pod TCP throughput across
the VXLAN overlay vs host->host over the same underlay veths, pod->pod ping p50 vs host->host,
and the time to program one new peer's route, neighbour and FDB entries."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nodeagent.network.datapath import NodeNetwork, Peer
from tests.netlab import Lab

SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
# Pod and host runs alternate, so drift in the machine's load hits both alike.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PINGS = int(os.environ.get("BENCH_PINGS", "20"))
PEER_REPEATS = int(os.environ.get("BENCH_PEER_REPEATS", "50"))
IPERF_PORT = 5201
TARGET_RATIO = 0.8


def iperf(lab: Lab, server_ns: str, client_ns: str, ip: str) -> float:
    """Gbit/s received by an iperf3 server in server_ns from a client in client_ns."""
    server = lab.spawn(server_ns, "iperf3", "-s", "-B", ip, "-p", str(IPERF_PORT))
    try:
        for _ in range(100):
            out = lab.exec(client_ns, "iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t",
                           str(SECONDS), "-J", timeout=SECONDS + 30, check=False)
            result = json.loads(out.stdout or "{}")
            if out.returncode == 0 and "sum_received" in result.get("end", {}):
                return result["end"]["sum_received"]["bits_per_second"] / 1e9
            time.sleep(0.1)   # the server is not listening yet
        raise RuntimeError(f"iperf3 to {ip} failed: {result.get('error', out.stderr[-500:])}")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def ping_p50_ms(lab: Lab, ns: str, ip: str) -> float:
    out = lab.exec(ns, "/bin/busybox", "ping", "-c", str(PINGS), "-i", "0.05", ip,
                   timeout=PINGS + 10).stdout
    return statistics.median(float(t) for t in re.findall(r"time=([\d.]+) ms", out))


def time_new_peer(cfg, peers: list[Peer], repeats: int) -> list[float]:
    """Seconds for set_peers to add one more peer (then removed again, untimed)."""
    times = []
    with NodeNetwork(cfg) as net:
        net.set_peers(peers)
        for k in range(repeats):
            new = Peer(f"new{k}", f"10.213.1.{k % 250 + 1}", f"10.244.{100 + k % 100}.0/24")
            t0 = time.perf_counter()
            net.set_peers([*peers, new])
            times.append(time.perf_counter() - t0)
            net.set_peers(peers)
    return times


def two_hosts_with_pods(mtu: int) -> tuple[Lab, str, str, str]:
    """A built two-host lab with a pod on each: (lab, pod 1's netns, pod 2's netns, its IP)."""
    lab = Lab(2, "bench", mtu=mtu)
    lab.build()
    for i in range(2):
        lab.node(i, "setup")
        lab.node(i, "set_peers", lab.peers)
    pods = []
    for i in range(2):
        ns = lab.pod_netns(f"pod{i}-")
        pods.append((ns, lab.node(i, "attach_pod", ns, str(uuid.uuid4()),
                                  f"10.244.{i + 1}.2")))
    (pod1, _), (pod2, net2) = pods
    return lab, pod1, pod2, net2.ip


def throughput(lab: Lab, pod1: str, pod2: str, pod2_ip: str) -> tuple[float, float]:
    """Median Gbit/s pod->pod and host->host, runs alternating."""
    host1, host2 = lab.hosts
    pod_runs, host_runs = [], []
    for _ in range(ROUNDS):
        pod_runs.append(iperf(lab, pod2, pod1, pod2_ip))
        host_runs.append(iperf(lab, host2, host1, lab.configs[1].underlay_ip))
    return statistics.median(pod_runs), statistics.median(host_runs)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("overlay_iperf needs root (network namespaces)")
    if not shutil.which("iperf3"):
        sys.exit("overlay_iperf needs iperf3: apt-get install -y iperf3")
    lab, pod1, pod2, pod2_ip = two_hosts_with_pods(1500)
    try:
        host1 = lab.hosts[0]
        under2 = lab.configs[1].underlay_ip
        pod_gbps, host_gbps = throughput(lab, pod1, pod2, pod2_ip)
        print(f"overlay TCP pod->pod: {pod_gbps:.2f} Gbit/s; underlay host->host: "
              f"{host_gbps:.2f} Gbit/s; ratio {pod_gbps / host_gbps:.2f} "
              f"(target >= {TARGET_RATIO}; underlay MTU 1500; median of {ROUNDS} x "
              f"{SECONDS}s runs each)")

        pod_ms, host_ms = ping_p50_ms(lab, pod1, pod2_ip), ping_p50_ms(lab, host1, under2)
        print(f"ping p50 pod->pod: {pod_ms:.3f} ms; host->host: {host_ms:.3f} ms; "
              f"ratio {pod_ms / host_ms:.2f} ({PINGS} pings each)")

        times = lab.call(0, time_new_peer, lab.configs[0], lab.peers, PEER_REPEATS)
        p50 = statistics.median(times) * 1000
        p95 = sorted(times)[int(len(times) * 0.95) - 1] * 1000
        print(f"time to program a new peer (route+neigh+fdb via set_peers): p50 {p50:.2f} ms, "
              f"p95 {p95:.2f} ms ({PEER_REPEATS} repeats)")
    finally:
        lab.close()
    # The same with a jumbo-frame underlay (as cloud VPCs offer): host->host over veths never
    # segments either way, while the overlay's cost is per packet of the pod MTU.
    lab, pod1, pod2, pod2_ip = two_hosts_with_pods(9000)
    try:
        pod_gbps, host_gbps = throughput(lab, pod1, pod2, pod2_ip)
        print(f"with underlay MTU 9000 (pod MTU 8950): overlay {pod_gbps:.2f} Gbit/s; underlay "
              f"{host_gbps:.2f} Gbit/s; ratio {pod_gbps / host_gbps:.2f}")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
