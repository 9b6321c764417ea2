"""Scorers: how much a pod prefers each feasible node, from 0.0 (worst) to 1.0 (best).

Pure. A node's total is the weighted sum of the scorers in `SCORER_NAMES` order. Scorers that
compare nodes with each other (the spread ones) read the comparison from a `ScoreContext`, built
once per decision from the candidate nodes. A scorer with nothing to prefer (no spread key, no
preferred terms) gives every node `NO_PREFERENCE`, so it never sways a decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.scheduler.model import ZONE_LABEL, NodeInfo, PodInfo

SPREAD = "spread"
BINPACK = "binpack"
STRATEGIES = (SPREAD, BINPACK)

NO_PREFERENCE = 1.0
# A node without a zone label neither attracts nor repels zone spreading.
UNKNOWN_ZONE_SCORE = 0.5


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the scorers in a node's total.

    The spread defaults follow kube-scheduler's (resource fit 1, topology spread 2, node
    affinity 2): replicas of one Deployment spreading over nodes matters more than balancing
    load, and zones (1) act as the next level of spreading. `BINPACK_WEIGHTS` lets packing
    dominate instead: a replica only avoids a fuller node when the fill levels are close.
    """

    resources: float = 1.0
    prefer_spread: float = 2.0
    prefer_zone_spread: float = 1.0
    prefer_node_affinity: float = 2.0


SPREAD_WEIGHTS = Weights()
BINPACK_WEIGHTS = Weights(
    resources=10.0, prefer_spread=0.5, prefer_zone_spread=0.25, prefer_node_affinity=2.0
)


@dataclass(frozen=True, slots=True)
class ScoreContext:
    """What the scorers compare a node against, for one pod and one set of candidates.

    `max_spread_count` is the most pods with the pod's spread key on any candidate node;
    `zone_counts` counts those pods per zone over the whole cluster, and `max_zone_count` is
    the largest count among the candidates' zones.
    """

    strategy: str = SPREAD
    max_spread_count: int = 0
    zone_counts: Mapping[str, int] = field(default_factory=dict)
    max_zone_count: int = 0

    @classmethod
    def build(
        cls,
        pod: PodInfo,
        candidates: Sequence[NodeInfo],
        nodes: Sequence[NodeInfo] | None = None,
        strategy: str = SPREAD,
    ) -> ScoreContext:
        """Context for scoring `candidates`; `nodes` (default: candidates) is the cluster."""
        key = pod.spread_key
        if key is None:
            return cls(strategy)
        zone_counts: dict[str, int] = {}
        for node in candidates if nodes is None else nodes:
            zone = node.labels.get(ZONE_LABEL)
            if zone is not None:
                zone_counts[zone] = zone_counts.get(zone, 0) + spread_count(key, node)
        zones = {z for node in candidates if (z := node.labels.get(ZONE_LABEL)) is not None}
        return cls(
            strategy,
            max((spread_count(key, node) for node in candidates), default=0),
            zone_counts,
            max((zone_counts.get(z, 0) for z in zones), default=0),
        )


ScoreFn = Callable[[PodInfo, NodeInfo, ScoreContext], float]


def spread_count(key: str, node: NodeInfo) -> int:
    """Pods on `node` sharing the spread key `key`."""
    return sum(1 for pod in node.pods if pod.spread_key == key)


def free_fraction(allocatable: int, free: int) -> float:
    """`free / allocatable` clamped to 0..1; a node with nothing allocatable has nothing free."""
    if allocatable <= 0:
        return 0.0
    fraction = free / allocatable
    return 0.0 if fraction < 0.0 else min(fraction, 1.0)


def least_allocated(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Average free fraction of cpu and memory after placing the pod (spreads load)."""
    alloc, used, need = node.allocatable, node.requested, pod.requests
    cpu = free_fraction(alloc.cpu, alloc.cpu - used.cpu - need.cpu)
    memory = free_fraction(alloc.memory, alloc.memory - used.memory - need.memory)
    return (cpu + memory) / 2


def most_allocated(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Average used fraction of cpu and memory after placing the pod (bin-packs)."""
    return 1.0 - least_allocated(pod, node, ctx)


def prefer_spread(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Fewer pods with the same spread key on the node is better, relative to the busiest."""
    top = ctx.max_spread_count
    if pod.spread_key is None or top <= 0:
        return NO_PREFERENCE
    return max(0.0, (top - spread_count(pod.spread_key, node)) / top)


def prefer_zone_spread(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Like `prefer_spread`, counted per zone (`topology.kubernetes.io/zone`)."""
    if pod.spread_key is None:
        return NO_PREFERENCE
    zone = node.labels.get(ZONE_LABEL)
    if zone is None:
        return UNKNOWN_ZONE_SCORE
    top = ctx.max_zone_count
    if top <= 0:
        return NO_PREFERENCE
    return max(0.0, (top - ctx.zone_counts.get(zone, 0)) / top)


def prefer_node_affinity(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Weight of the matching preferred node-affinity terms over the weight of all of them."""
    terms = pod.preferred_affinity
    if not terms:
        return NO_PREFERENCE
    labels = node.labels
    matched = sum(p.weight for p in terms if p.term.matches(labels))
    return matched / sum(p.weight for p in terms)


SCORER_NAMES = ("resources", "prefer_spread", "prefer_zone_spread", "prefer_node_affinity")


def scorers_for(strategy: str) -> tuple[tuple[str, ScoreFn], ...]:
    """(name, scorer) in total order; the resource scorer depends on the strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
    resources = most_allocated if strategy == BINPACK else least_allocated
    return (
        (resources.__name__, resources),
        ("prefer_spread", prefer_spread),
        ("prefer_zone_spread", prefer_zone_spread),
        ("prefer_node_affinity", prefer_node_affinity),
    )


def score_node(
    pod: PodInfo, node: NodeInfo, ctx: ScoreContext, weights: Weights
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """(weighted total, per-scorer raw scores) for one feasible node."""
    factors = (
        weights.resources,
        weights.prefer_spread,
        weights.prefer_zone_spread,
        weights.prefer_node_affinity,
    )
    total = 0.0
    breakdown = []
    for (name, scorer), weight in zip(scorers_for(ctx.strategy), factors, strict=True):
        value = scorer(pod, node, ctx)
        total += weight * value
        breakdown.append((name, value))
    return total, tuple(breakdown)
