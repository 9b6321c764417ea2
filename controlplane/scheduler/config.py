"""Scheduler settings, and how many feasible nodes one decision looks for (node sampling)."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.scheduler.scores import (
    BINPACK,
    BINPACK_WEIGHTS,
    SPREAD,
    SPREAD_WEIGHTS,
    STRATEGIES,
    Weights,
)

# kube-scheduler's minFeasibleNodesToFind: below this many nodes, always look at all of them.
DEFAULT_MIN_FEASIBLE_NODES = 100
# Adaptive percentage, as kube-scheduler: 50% of a small cluster, 1% less per 125 nodes, >= 5%.
ADAPTIVE_BASE_PERCENT = 50
ADAPTIVE_NODES_PER_PERCENT = 125
ADAPTIVE_MIN_PERCENT = 5


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Cluster-wide scheduler settings.

    `percentage_of_nodes_to_score`: None is adaptive (see `feasible_nodes_to_find`); 100 makes
    every decision consider every node. `seed`: None breaks score ties by node name; an int
    breaks them with `random.Random(seed)`, so a batch is still reproducible.
    """

    strategy: str = SPREAD
    weights: Weights | None = None
    percentage_of_nodes_to_score: float | None = None
    min_feasible_nodes: int = DEFAULT_MIN_FEASIBLE_NODES
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
        pct = self.percentage_of_nodes_to_score
        if pct is not None and not 0 < pct <= 100:
            raise ValueError(f"percentage_of_nodes_to_score {pct} is outside (0, 100]")
        if self.min_feasible_nodes < 1:
            raise ValueError(f"min_feasible_nodes {self.min_feasible_nodes} must be >= 1")

    @property
    def resolved_weights(self) -> Weights:
        if self.weights is not None:
            return self.weights
        return BINPACK_WEIGHTS if self.strategy == BINPACK else SPREAD_WEIGHTS


def feasible_nodes_to_find(num_nodes: int, config: SchedulerConfig) -> int:
    """Stop filtering after this many feasible nodes: max(min, n * pct / 100), at most n."""
    pct = config.percentage_of_nodes_to_score
    if pct is None:
        pct = max(
            ADAPTIVE_MIN_PERCENT, ADAPTIVE_BASE_PERCENT - num_nodes / ADAPTIVE_NODES_PER_PERCENT
        )
    if pct >= 100:
        return num_nodes
    return min(num_nodes, max(config.min_feasible_nodes, int(num_nodes * pct / 100)))
