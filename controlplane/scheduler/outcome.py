"""Decision results: placements, unschedulable verdicts with Kubernetes-style messages, and
per-node explanations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.scheduler.filters import Reason
from controlplane.scheduler.model import NodeInfo, PodInfo


@dataclass(frozen=True, slots=True)
class Placement:
    """Bind `pod` to `node`. `scores` holds each scorer's raw 0..1 value; `score` is the
    weighted total the node won with."""

    pod: PodInfo
    node: str
    score: float
    scores: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """No node fits `pod`: a one-line `message` and one `(node, detail)` per node, by name."""

    pod: PodInfo
    message: str
    details: tuple[tuple[str, str], ...]


Decision = Placement | Unschedulable


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Decisions in the order they were made, the node states after them, and where the next
    batch should start its round-robin search (pass it back as `start`)."""

    decisions: tuple[Decision, ...]
    nodes: tuple[NodeInfo, ...]
    next_start: int

    @property
    def placements(self) -> tuple[Placement, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Placement))

    @property
    def unschedulable(self) -> tuple[Unschedulable, ...]:
        return tuple(d for d in self.decisions if isinstance(d, Unschedulable))


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    """One node in an explanation: the reason it was rejected, or its scores if feasible."""

    node: str
    reason: Reason | None
    scores: tuple[tuple[str, float], ...] = ()
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every node's verdict for one pod (sorted by node name) and the resulting decision."""

    pod: PodInfo
    verdicts: tuple[NodeVerdict, ...]
    outcome: Decision


def summarize(
    total_nodes: int, rejections: Iterable[tuple[str, Reason]]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The `0/5 nodes available: 3 Insufficient memory, 2 ...` message and sorted details.

    Counts run from most to fewest nodes, equal counts alphabetically.
    """
    rejections = list(rejections)
    counts = Counter(reason.aggregate for _, reason in rejections)
    parts = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if parts:
        summary = ", ".join(f"{count} {aggregate}" for aggregate, count in parts)
    else:
        summary = "no nodes in the cluster"
    details = tuple(sorted(((name, r.detail) for name, r in rejections), key=lambda d: d[0]))
    return f"0/{total_nodes} nodes available: {summary}.", details
