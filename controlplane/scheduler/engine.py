"""The batch engine: decides pods one after another against running per-node counters.

Private to the package (`core.schedule_batch` drives it). It is mutable inside for speed, but it
copies what it is given and hands back fresh frozen results, so callers see a pure function.
Its verdicts agree exactly with `filters` and `scores` (the property tests check this):

- static filter verdicts come from the reference filters themselves, cached per pod shape
  (node selector, required affinity, tolerations) and node signature (`index.Shape`);
- per (shape, request) it keeps the sorted list of nodes that also have room, and per request
  the weighted resource score of every node; both are brought up to date lazily from a log
  of the nodes bound since they were last used, because one Deployment's pods arrive together;
- used host ports, spread counts per node and zone, and anti-affinity domains are counters
  updated after every placement;
- like kube-scheduler's percentageOfNodesToScore, a decision scores only `k` feasible nodes and
  the next one resumes after the last node it looked at, so nodes are visited round-robin. A
  pod found unschedulable has been checked against every node, and its explanation covers
  them all.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from random import Random

from controlplane.scheduler.config import SchedulerConfig, feasible_nodes_to_find
from controlplane.scheduler.filters import DYNAMIC_FILTERS, FilterContext, first_failure
from controlplane.scheduler.index import ClusterIndex, Shape
from controlplane.scheduler.model import NodeInfo, PodInfo
from controlplane.scheduler.outcome import (
    BatchResult,
    Decision,
    Placement,
    Unschedulable,
    summarize,
)
from controlplane.scheduler.scores import (
    BINPACK,
    NO_PREFERENCE,
    UNKNOWN_ZONE_SCORE,
    ScoreContext,
    free_fraction,
    score_node,
)

_NEG_INF = float("-inf")
# Caches keyed by pod request are dropped oldest-first beyond this many, bounding memory.
_MAX_REQUEST_CACHES = 256


class BatchEngine:
    """Running state of one `schedule_batch` call."""

    def __init__(self, nodes: Sequence[NodeInfo], config: SchedulerConfig, start: int) -> None:
        self.config = config
        self.weights = config.resolved_weights
        self.binpack = config.strategy == BINPACK
        self.rng = Random(config.seed) if config.seed is not None else None
        # Node positions follow node names: ties go to the first name, and round-robin
        # windows walk the nodes in name order.
        self.order = sorted(range(len(nodes)), key=lambda i: nodes[i].name)
        self.index = index = ClusterIndex([nodes[i] for i in self.order])
        n = self.n = index.n
        self.k = feasible_nodes_to_find(n, config)
        self.cursor = start % n if n else 0
        # Placements keep free >= 0, so with sane nodes the resource score needs no clamping.
        self.exact = all(
            a > 0 and 0 <= f <= a
            for alloc, free in (
                (index.alloc_cpu, index.free_cpu),
                (index.alloc_mem, index.free_mem),
            )
            for a, f in zip(alloc, free, strict=True)
        )
        self.bound: list[int] = []  # node index of every bind, in order
        self.fits: dict[tuple, list] = {}  # (shape, request) -> [sorted node indices, synced]
        self.resource_scores: dict[tuple, list] = {}  # request -> [weighted score, synced]
        self.affinity_scores: dict[tuple, list[float]] = {}
        self.no_affinity = [self.weights.prefer_node_affinity * NO_PREFERENCE] * n
        self.zeros = [0] * n
        self.memo_synced = 0
        self.memo: dict[tuple, tuple[str, tuple[tuple[str, str], ...]]] = {}

    def decide(self, pod: PodInfo) -> Decision:
        shape_key, shape = self.index.shape(pod)
        feasible = self._find_feasible(pod, shape_key, shape)
        if not feasible:
            return self._unschedulable(pod, shape_key, shape)
        i, ctx = self._choose(pod, feasible)
        node = self.index.nodes[i]
        score, breakdown = score_node(pod, node, ctx, self.weights)
        self.index.bind(pod, i)
        self.bound.append(i)
        return Placement(pod, node.name, score, breakdown)

    def result(self, decisions: list[Decision]) -> BatchResult:
        nodes = dict(zip(self.order, self.index.nodes, strict=True))
        return BatchResult(tuple(decisions), tuple(nodes[i] for i in range(self.n)), self.cursor)

    # -- filtering -----------------------------------------------------------------------

    def _fitting(self, shape_key: tuple, shape: Shape, pod: PodInfo) -> list[int]:
        """Sorted indices of nodes passing the static filters with room for `pod`."""
        need = pod.requests
        key = (shape_key, need.cpu, need.memory, need.pods)
        entry = self.fits.get(key)
        if entry is None:
            if len(self.fits) >= _MAX_REQUEST_CACHES:
                del self.fits[next(iter(self.fits))]
            entry = self.fits[key] = [self._room_for(pod)(shape.ok), len(self.bound)]
        elif entry[1] < len(self.bound):
            # Binds only take room away, so the list only ever loses nodes.
            nodes, changed = entry[0], sorted(set(self.bound[entry[1] :]))
            still = set(self._room_for(pod)(changed))
            for j in changed:
                if j not in still:
                    at = bisect_left(nodes, j)
                    if at < len(nodes) and nodes[at] == j:
                        del nodes[at]
            entry[1] = len(self.bound)
        return entry[0]

    def _room_for(self, pod: PodInfo) -> Callable[[list[int]], list[int]]:
        """Keeps the nodes (of a list of indices) with free cpu, memory and a pod slot."""
        need = pod.requests
        # A zero request fits anywhere, even on an overcommitted node.
        cpu = need.cpu if need.cpu > 0 else _NEG_INF
        mem = need.memory if need.memory > 0 else _NEG_INF
        slots = need.pods
        free_cpu, free_mem, free_pods = (
            self.index.free_cpu,
            self.index.free_mem,
            self.index.free_pods,
        )
        return lambda nodes: [
            i for i in nodes if free_cpu[i] >= cpu and free_mem[i] >= mem and free_pods[i] >= slots
        ]

    def _find_feasible(self, pod: PodInfo, shape_key: tuple, shape: Shape) -> list[int]:
        """Up to `k` feasible node indices, searching round-robin from the cursor."""
        fitting = self._fitting(shape_key, shape, pod)
        size = len(fitting)
        if not size:
            return []
        excluded = self.index.excluded_nodes(pod)
        k = self.k
        if not excluded:
            if k >= size:
                return list(fitting)
            at = bisect_left(fitting, self.cursor)
            window = fitting[at : at + k]
            if len(window) < k:
                window += fitting[: k - len(window)]
            self.cursor = (window[-1] + 1) % self.n
            return window

        def passes(nodes: list[int]) -> list[int]:
            return [i for i in nodes if i not in excluded]

        if k >= size:
            return passes(fitting)
        found: list[int] = []
        pos = bisect_left(fitting, self.cursor) % size
        scanned = 0
        while scanned < size:
            # Chunks a little larger than what is missing: a comprehension costs much less
            # per node than a loop that stops at exactly the k-th feasible node.
            want = k - len(found)
            step = min(max(want + want // 4, 64), size - scanned)
            end = pos + step
            chunk = fitting[pos:end] if end <= size else fitting[pos:] + fitting[: end - size]
            passed = passes(chunk)
            if len(passed) >= want:
                del passed[want:]
                found += passed
                self.cursor = (passed[-1] + 1) % self.n
                return found
            found += passed
            scanned += step
            pos = end % size
        return found

    # -- scoring -------------------------------------------------------------------------

    def _resource_value(self, i: int, cpu: int, mem: int) -> float:
        """Weighted resource score of node i; the operations of `scores.least_allocated`."""
        index = self.index
        if self.exact:
            res = (
                (index.free_cpu[i] - cpu) / index.alloc_cpu[i]
                + (index.free_mem[i] - mem) / index.alloc_mem[i]
            ) / 2
        else:
            res = (
                free_fraction(index.alloc_cpu[i], index.free_cpu[i] - cpu)
                + free_fraction(index.alloc_mem[i], index.free_mem[i] - mem)
            ) / 2
        if self.binpack:
            res = 1.0 - res
        return self.weights.resources * res

    def _resource_scores(self, pod: PodInfo) -> list[float]:
        """Weighted resource score of every node for `pod`'s request, kept up to date."""
        key = (pod.requests.cpu, pod.requests.memory)
        entry = self.resource_scores.get(key)
        if entry is None:
            if len(self.resource_scores) >= _MAX_REQUEST_CACHES:
                del self.resource_scores[next(iter(self.resource_scores))]
            values = [self._resource_value(i, *key) for i in range(self.n)]
            entry = self.resource_scores[key] = [values, len(self.bound)]
        elif entry[1] < len(self.bound):
            values = entry[0]
            for j in set(self.bound[entry[1] :]):
                values[j] = self._resource_value(j, *key)
            entry[1] = len(self.bound)
        return entry[0]

    def _affinity(self, pod: PodInfo) -> list[float]:
        terms = pod.preferred_affinity
        if not terms:
            return self.no_affinity
        scores = self.affinity_scores.get(terms)
        if scores is None:
            weight = self.weights.prefer_node_affinity
            raw = self.index.affinity_scores(pod)
            scores = self.affinity_scores[terms] = [weight * value for value in raw]
        return scores

    def _choose(self, pod: PodInfo, feasible: list[int]) -> tuple[int, ScoreContext]:
        """The best-scoring feasible node (ties by name, or a seeded draw) and its context.

        Every term is weighted before it is summed, in `scores.score_node`'s order, so the
        totals are bit-for-bit the reference ones and ties are the same ties.
        """
        index, w = self.index, self.weights
        zone = index.zone
        key = pod.spread_key
        if key is None:
            counts, top, zone_counts, zone_top = self.zeros, 0, {}, 0
            by_count = [w.prefer_spread * NO_PREFERENCE]
            by_zone = dict.fromkeys(index.zone_values, w.prefer_zone_spread * NO_PREFERENCE)
        else:
            counts = index.spread_counts(key)
            top = max(map(counts.__getitem__, feasible))
            by_count = [
                w.prefer_spread * ((top - c) / top if top else NO_PREFERENCE)
                for c in range(top + 1)
            ]
            zone_counts = index.zone_counts.get(key, {})
            zones = set(map(zone.__getitem__, feasible))
            zones.discard(None)
            zone_top = max((zone_counts.get(z, 0) for z in zones), default=0)
            by_zone = {
                z: w.prefer_zone_spread
                * ((zone_top - zone_counts.get(z, 0)) / zone_top if zone_top else NO_PREFERENCE)
                for z in index.zone_values
            }
            by_zone[None] = w.prefer_zone_spread * UNKNOWN_ZONE_SCORE
        res, aff = self._resource_scores(pod), self._affinity(pod)
        totals = [res[i] + by_count[counts[i]] + by_zone[zone[i]] + aff[i] for i in feasible]
        best = max(totals)
        # `feasible` is in window order, so the first tie is the first node by name at or
        # after the round-robin cursor. Unlike a global first-by-name, this keeps one
        # Deployment's pods within one of each other per node even when sampling.
        if self.rng is None:
            chosen = feasible[totals.index(best)]
        else:
            ties = [i for i, total in zip(feasible, totals, strict=True) if total == best]
            chosen = self.rng.choice(ties)
        return chosen, ScoreContext(self.config.strategy, top, dict(zone_counts), zone_top)

    # -- no node fits --------------------------------------------------------------------

    def _unschedulable(self, pod: PodInfo, shape_key: tuple, shape: Shape) -> Unschedulable:
        # Same constraints against the same cluster state (nothing bound since): same verdict.
        if self.memo_synced != len(self.bound):
            self.memo.clear()
            self.memo_synced = len(self.bound)
        memo_key = (
            pod.namespace,
            pod.labels,
            pod.requests,
            shape_key,
            pod.host_ports,
            pod.anti_affinity,
        )
        known = self.memo.get(memo_key)
        if known is None:
            nodes = self.index.nodes
            ctx = FilterContext(nodes)
            rejections = []
            for i, node in enumerate(nodes):
                reason = shape.rejected.get(i) or first_failure(pod, node, ctx, DYNAMIC_FILTERS)
                if reason is None:
                    raise AssertionError(f"engine missed feasible node {node.name} for {pod.key}")
                rejections.append((node.name, reason))
            known = self.memo[memo_key] = summarize(self.n, rejections)
        return Unschedulable(pod, *known)
