"""Service rules' cost on two simulated hosts (needs root): HTTP/1.0 requests per second from a
pod on host 1 to two pods on host 2 through a service VIP (the agent's nftables table, DNAT
with `numgen` balancing) against straight to the pod IPs; and the time to render and apply
(`nft -f`, one transaction) a service table with 1,000 endpoints in a scratch netns.

Everything it makes is under one name prefix and removed at the end, also on failure.
"""

from __future__ import annotations

import os
import statistics
import sys
import textwrap
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from moorage.v1 import agent_pb2
from nodeagent.network.services import NodeContext, apply_script, render, rules_from_table
from tests.netlab import Lab

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
# VIP and direct runs alternate, so drift in the machine's load hits both alike.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "2"))
UPDATES = int(os.environ.get("BENCH_UPDATES", "20"))
ENDPOINTS = 1000
VIP, PORT, TARGET_PORT = "10.96.0.10", 80, 8080
TARGET_RATIO = 0.9
TARGET_UPDATE_MS = 200

SERVER = textwrap.dedent("""
    import asyncio, sys
    BODY = b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n"
    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(BODY)
            await writer.drain()
        except Exception:
            pass
        writer.close()
    async def main():
        server = await asyncio.start_server(serve, sys.argv[1], int(sys.argv[2]), backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()
    asyncio.run(main())
""")

# Sequential requests, each on a new connection (the case NAT rules cost most on: every
# request is a new conntrack entry through the nat chains); prints how many succeeded.
CLIENT = textwrap.dedent("""
    import socket, sys, time
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[2:]]
    end = time.monotonic() + float(sys.argv[1])
    done = i = 0
    while time.monotonic() < end:
        i += 1
        with socket.create_connection(targets[i % len(targets)], timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        done += data.endswith(b"ok\\n")
    print(done)
""")


def service_table(endpoints: list[tuple[str, int]]) -> agent_pb2.ServiceTable:
    entry = agent_pb2.ServiceEntry(namespace="default", name="bench", type="ClusterIP",
                                   cluster_ip=VIP)
    entry.ports.add(name="http", protocol="TCP", port=PORT)
    for i, (ip, port) in enumerate(endpoints):
        entry.endpoints.add(ip=ip, pod=f"bench-{i}", node="h2", ports=[port])
    return agent_pb2.ServiceTable(services=[entry])


def node_context(lab: Lab, host: int) -> NodeContext:
    cfg = lab.configs[host]
    return NodeContext(underlay_ip=cfg.underlay_ip, cluster_cidr=cfg.cluster_cidr,
                       pod_cidr=cfg.pod_cidr, bridge=cfg.bridge)


def requests_per_second(lab: Lab, client_ns: str, targets: list[str]) -> float:
    procs = [lab.spawn(client_ns, sys.executable, "-c", CLIENT, str(SECONDS), *targets)
             for _ in range(CLIENTS)]
    total = 0
    for proc in procs:
        out, err = proc.communicate(timeout=SECONDS + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"client failed: {err.decode()[-500:]}")
        total += int(out)
    return total / SECONDS


def update_times(lab: Lab, scratch: str) -> tuple[list[float], list[float]]:
    """Seconds to render, and to render and apply, a 1,000-endpoint table that differs from
    the one applied before it in one endpoint."""
    node = node_context(lab, 0)
    renders, updates = [], []
    for k in range(UPDATES + 1):
        endpoints = [(f"10.244.{2 + (i + k) // 250 % 200}.{(i + k) % 250 + 2}", TARGET_PORT)
                     for i in range(ENDPOINTS)]
        t0 = time.perf_counter()
        text = render(rules_from_table(service_table(endpoints)), node)
        t1 = time.perf_counter()
        apply_script(text, netns=scratch)
        t2 = time.perf_counter()
        if k:                          # the first creates the table; the rest replace it
            renders.append(t1 - t0)
            updates.append(t2 - t0)
    listed = lab.exec(scratch, "nft", "list", "table", "ip", "moorage-svc").stdout
    assert listed.count(" . 8080") == ENDPOINTS, "the table does not hold every endpoint"
    return renders, updates


def wait_ready(proc) -> None:
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-500:]}")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("service_vip needs root (network namespaces, nftables)")
    lab = Lab(2, "svc")
    try:
        lab.build()
        for i in range(2):
            lab.node(i, "setup")
            lab.node(i, "set_peers", lab.peers)
        # One client pod per mode: a 4-tuple reused across modes within conntrack's TIME_WAIT
        # would clash with the other mode's entry (the same reply tuple) and be dropped.
        clients = {}
        for k, mode in enumerate(("vip", "direct")):
            clients[mode] = lab.pod_netns(f"client{mode}-")
            lab.node(0, "attach_pod", clients[mode], str(uuid.uuid4()), f"10.244.1.{k + 2}")
        servers = []
        for k in range(2):
            ns = lab.pod_netns(f"server{k}-")
            ip = f"10.244.2.{k + 2}"
            lab.node(1, "attach_pod", ns, str(uuid.uuid4()), ip)
            wait_ready(lab.spawn(ns, sys.executable, "-c", SERVER, ip, str(TARGET_PORT)))
            servers.append(ip)
        # The client's node holds the VIP, as every agent would.
        table = service_table([(ip, TARGET_PORT) for ip in servers])
        apply_script(render(rules_from_table(table), node_context(lab, 0)), netns=lab.hosts[0])

        direct_targets = [f"{ip}:{TARGET_PORT}" for ip in servers]
        vip_targets = [f"{VIP}:{PORT}"]
        vip_runs, direct_runs = [], []
        for _ in range(ROUNDS):
            vip_runs.append(requests_per_second(lab, clients["vip"], vip_targets))
            direct_runs.append(requests_per_second(lab, clients["direct"], direct_targets))
        vip, direct = statistics.median(vip_runs), statistics.median(direct_runs)
        if os.environ.get("BENCH_VERBOSE"):
            print(f"runs: VIP {[round(r) for r in vip_runs]}, "
                  f"direct {[round(r) for r in direct_runs]}")
        print(f"VIP {vip:.0f} req/s vs direct {direct:.0f} req/s: ratio {vip / direct:.2f} "
              f"(target >= {TARGET_RATIO}; {CLIENTS} clients, a new connection per request, "
              f"median of {ROUNDS} x {SECONDS:g}s runs each, 2 endpoints across the overlay)")

        scratch = lab.pod_netns("scratch-")
        renders, updates = update_times(lab, scratch)
        p50 = statistics.median(updates) * 1000
        p95 = sorted(updates)[max(0, int(len(updates) * 0.95) - 1)] * 1000
        print(f"{ENDPOINTS}-endpoint rule update: p50 {p50:.1f} ms, p95 {p95:.1f} ms "
              f"(target <= {TARGET_UPDATE_MS} ms; render p50 "
              f"{statistics.median(renders) * 1000:.1f} ms + nft -f; {UPDATES} updates)")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
