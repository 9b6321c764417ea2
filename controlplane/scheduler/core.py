"""The scheduler's entry points: place one pod, schedule a batch, explain a decision.

Pure: no I/O, no clock; inputs are never mutated and every result is a fresh frozen value.
Given the same inputs (and `config.seed`), every decision is the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from random import Random

from controlplane.scheduler.config import SchedulerConfig
from controlplane.scheduler.engine import BatchEngine
from controlplane.scheduler.filters import FilterContext, first_failure
from controlplane.scheduler.model import NodeInfo, PodInfo
from controlplane.scheduler.outcome import (
    BatchResult,
    Decision,
    Explanation,
    NodeVerdict,
    Placement,
    Unschedulable,
    summarize,
)
from controlplane.scheduler.scores import ScoreContext, score_node

DEFAULT_CONFIG = SchedulerConfig()


def batch_order(pod: PodInfo) -> tuple:
    """Sort key for a batch: higher priority first, then creation order, then name."""
    return (-pod.priority, pod.creation_index, pod.namespace, pod.name)


def schedule_batch(
    pods: Iterable[PodInfo],
    nodes: Sequence[NodeInfo],
    *,
    config: SchedulerConfig = DEFAULT_CONFIG,
    start: int = 0,
) -> BatchResult:
    """Decide `pods` in `batch_order`, each against the nodes as earlier decisions left them.

    `start` is where the round-robin search begins (a position in the nodes sorted by
    name); pass the previous result's `next_start` so successive batches keep visiting
    every node.
    """
    engine = BatchEngine(nodes, config, start)
    decisions = [engine.decide(pod) for pod in sorted(pods, key=batch_order)]
    return engine.result(decisions)


def place(
    pod: PodInfo,
    nodes: Sequence[NodeInfo],
    *,
    config: SchedulerConfig = DEFAULT_CONFIG,
    start: int = 0,
) -> Placement | Unschedulable:
    """Decide one pod: the best feasible node, or why none fits (a batch of one, so node
    sampling applies as in `schedule_batch`)."""
    return schedule_batch((pod,), nodes, config=config, start=start).decisions[0]


def explain(
    pod: PodInfo, nodes: Sequence[NodeInfo], config: SchedulerConfig = DEFAULT_CONFIG
) -> Explanation:
    """Every node's verdict for `pod`, computed with the reference filters and scorers.

    Always considers every node (no sampling), so with `percentage_of_nodes_to_score=100`
    its outcome is exactly what `place` decides.
    """
    nodes = tuple(nodes)
    ctx = FilterContext(nodes)
    reasons = [(node, first_failure(pod, node, ctx)) for node in nodes]
    feasible = [node for node, reason in reasons if reason is None]
    outcome: Decision
    if not feasible:
        message, details = summarize(len(nodes), ((n.name, r) for n, r in reasons if r))
        outcome = Unschedulable(pod, message, details)
        scored = {}
    else:
        score_ctx = ScoreContext.build(pod, feasible, nodes, config.strategy)
        weights = config.resolved_weights
        scored = {node.name: score_node(pod, node, score_ctx, weights) for node in feasible}
        best = max(total for total, _ in scored.values())
        ties = sorted(name for name, (total, _) in scored.items() if total == best)
        chosen = ties[0] if config.seed is None else Random(config.seed).choice(ties)
        outcome = Placement(pod, chosen, *scored[chosen])
    verdicts = []
    for node, reason in reasons:
        if reason is None:
            total, breakdown = scored[node.name]
            verdicts.append(NodeVerdict(node.name, None, breakdown, total))
        else:
            verdicts.append(NodeVerdict(node.name, reason))
    verdicts.sort(key=lambda v: v.node)
    return Explanation(pod, tuple(verdicts), outcome)
