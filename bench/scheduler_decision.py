"""Benchmark of scheduler decisions: throughput at 100/1,000/5,000 nodes and placement quality.

Run `.venv/bin/python bench/scheduler_decision.py` from the project root. Times only
`schedule_batch` (inputs are built beforehand). Prints, per cluster size, decisions per second
against the target and against a naive peer in the same run (every reference filter and scorer
over every node, as `explain` does), then bin-packing and spreading quality on homogeneous
nodes. Deterministic: fixed seeds throughout.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.scheduler import (  # noqa: E402
    BINPACK,
    HOSTNAME_LABEL,
    ZONE_LABEL,
    NodeInfo,
    NodeSelectorTerm,
    PodAntiAffinityTerm,
    PodInfo,
    PreferredTerm,
    Requirement,
    Resources,
    SchedulerConfig,
    Taint,
    Toleration,
    Unschedulable,
    explain,
    schedule_batch,
)

GI, MI = 1 << 30, 1 << 20
NODE = Resources(cpu=64_000, memory=256 * GI, pods=110)
ZONES = ("zone-a", "zone-b", "zone-c")
DEPLOYMENTS, REPLICAS = 100, 100
TARGET = 1000  # placements/s at 5,000 nodes
KUBE_FLOOR = 680  # kube-scheduler's CI floor, pods/s, in Go
PEER_PODS = 20


def make_nodes(n: int, rng: random.Random, *, varied: bool = True) -> list[NodeInfo]:
    """`n` nodes over 3 zones; with `varied`, ~10% GPU-tainted, 2% cordoned, 2% NotReady,
    5% PreferNoSchedule and half labelled disktype=ssd."""
    nodes = []
    for i in range(n):
        name = f"node-{i:05d}"
        labels = {HOSTNAME_LABEL: name}
        taints: tuple[Taint, ...] = ()
        ready, cordoned = True, False
        if varied:
            labels[ZONE_LABEL] = ZONES[i % 3]
            labels["disktype"] = "ssd" if rng.random() < 0.5 else "hdd"
            gpu = rng.random() < 0.1
            labels["pool"] = "gpu" if gpu else "general"
            if gpu:
                taints = (Taint("gpu", "true", "NoSchedule"),)
            elif rng.random() < 0.05:
                taints = (Taint("maintenance", "soon", "PreferNoSchedule"),)
            roll = rng.random()
            ready, cordoned = roll >= 0.02, 0.02 <= roll < 0.04
        nodes.append(NodeInfo(name, labels, ready, cordoned, taints, NODE))
    return nodes


def make_pods(rng: random.Random, *, constrained: bool = True) -> list[PodInfo]:
    """100 Deployments x 100 replicas with varied requests; with `constrained`, every 5th has
    a node selector, every 10th tolerates the GPU taint and requires the GPU pool, every 7th
    prefers ssd, every 20th has hostname anti-affinity and every 25th a host port."""
    pods = []
    for d in range(DEPLOYMENTS):
        name = f"app-{d:03d}"
        cpu = rng.choice((100, 250, 500, 1000))
        memory = rng.choice((128, 256, 512, 1024)) * MI
        fields: dict = {}
        if constrained:
            if d % 5 == 1:
                fields["node_selector"] = {"disktype": "ssd"}
            if d % 10 == 3:
                fields["tolerations"] = (Toleration("gpu", "Exists"),)
                fields["required_affinity"] = (
                    NodeSelectorTerm((Requirement("pool", "In", ("gpu",)),)),
                )
            if d % 7 == 2:
                prefer = NodeSelectorTerm((Requirement("disktype", "In", ("ssd",)),))
                fields["preferred_affinity"] = (PreferredTerm(50, prefer),)
            if d % 20 == 4:
                self_term = (Requirement("app", "In", (name,)),)
                fields["anti_affinity"] = (PodAntiAffinityTerm(self_term, HOSTNAME_LABEL),)
            if d % 25 == 6:
                fields["host_ports"] = ((8000 + d, "TCP", ""),)
        for r in range(REPLICAS):
            pods.append(
                PodInfo(
                    "bench",
                    f"{name}-{r}",
                    {"app": name},
                    Resources(cpu, memory),
                    spread_key=f"bench/{name}",
                    priority=d % 3,
                    creation_index=d * REPLICAS + r,
                    **fields,
                )
            )
    return pods


def naive_rate(pods: list[PodInfo], nodes: list[NodeInfo]) -> float:
    """Decisions/s of the naive peer: reference filters and scorers over every node."""
    sample = pods[:: len(pods) // PEER_PODS][:PEER_PODS]
    began = time.perf_counter()
    for pod in sample:
        explain(pod, nodes)
    return len(sample) / (time.perf_counter() - began)


def throughput(n: int) -> None:
    rng = random.Random(n)
    nodes, pods = make_nodes(n, rng), make_pods(rng)
    began = time.perf_counter()
    result = schedule_batch(pods, nodes, config=SchedulerConfig())
    elapsed = time.perf_counter() - began
    rate = len(pods) / elapsed
    unschedulable = len(result.unschedulable)
    peer = naive_rate(pods, nodes)
    print(
        f"decision-only nodes={n} pods={len(pods)}: {rate:.0f} placements/s "
        f"(target >= {TARGET}; kube-scheduler CI floor {KUBE_FLOOR} pods/s in Go); "
        f"{len(pods) - unschedulable} placed, {unschedulable} unschedulable; "
        f"{rate / peer:.0f}x the naive full scan ({peer:.0f}/s)",
        flush=True,
    )


def homogeneous_batch(strategy: str, n: int):
    rng = random.Random(7)
    nodes = make_nodes(n, rng, varied=False)
    pods = make_pods(rng, constrained=False)
    return pods, schedule_batch(pods, nodes, config=SchedulerConfig(strategy=strategy))


def binpack_quality(n: int) -> None:
    pods, result = homogeneous_batch(BINPACK, n)
    used = sum(1 for node in result.nodes if node.pods)
    total = Resources()
    for pod in pods:
        total = total + pod.requests
    bound = max(
        math.ceil(total.cpu / NODE.cpu),
        math.ceil(total.memory / NODE.memory),
        math.ceil(total.pods / NODE.pods),
    )
    print(
        f"binpack nodes={n}: used {used} nodes, lower bound {bound} "
        f"(ceil(total requests / node capacity)); {len(result.unschedulable)} unschedulable"
    )


def spread_quality(n: int) -> None:
    _, result = homogeneous_batch("spread", n)
    per_node = [len(node.pods) for node in result.nodes]
    worst = 0
    for key in {pod.spread_key for node in result.nodes for pod in node.pods}:
        on_node = [sum(1 for pod in node.pods if pod.spread_key == key) for node in result.nodes]
        worst = max(worst, max(on_node) - min(on_node))
    print(
        f"spread nodes={n}: max-min pods per node = {max(per_node) - min(per_node)}; "
        f"worst Deployment max-min per node = {worst}; "
        f"{sum(isinstance(d, Unschedulable) for d in result.decisions)} unschedulable"
    )


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [100, 1000, 5000]
    for n in sizes:
        throughput(n)
    binpack_quality(1000)
    spread_quality(1000)


if __name__ == "__main__":
    main()
