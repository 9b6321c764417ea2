"""The batch engine: decides pods one after another against running per-node counters.

Private to the package (`core.schedule_batch` drives it). It is mutable inside for speed, but it
copies what it is given and hands back fresh frozen results, so callers see a pure function.
Its verdicts agree exactly with `filters` and `scores` (the property tests check this):

- static filter verdicts come from the reference filters themselves, cached per pod shape
  (node selector, required affinity, tolerations) and node signature (its static facts plus
  the label values the shape reads), since one Deployment's pods share a shape;
- free resources, used host ports, spread counts per node and zone, and anti-affinity domains
  are kept as counters, updated after every placement, and checked with the same arithmetic;
- like kube-scheduler's percentageOfNodesToScore, the search stops once `k` feasible nodes are
  found and the next search resumes where it stopped, so nodes are visited round-robin. A pod
  found unschedulable has been checked against every node, and its explanation covers them all.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from random import Random

from controlplane.scheduler.config import SchedulerConfig, feasible_nodes_to_find
from controlplane.scheduler.filters import (
    DYNAMIC_FILTERS,
    STATIC_FILTERS,
    FilterContext,
    Reason,
    first_failure,
    ports_conflict,
    used_host_ports,
)
from controlplane.scheduler.model import ZONE_LABEL, HostPort, NodeInfo, PodInfo
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
    prefer_node_affinity,
    score_node,
)

_NEG_INF = float("-inf")


class _Shape:
    """Static-filter verdicts for every node, for pods sharing one shape."""

    __slots__ = ("ok", "rejected")

    def __init__(self, ok: list[int], rejected: dict[int, Reason]) -> None:
        self.ok = ok  # indices of nodes passing every static filter, ascending
        self.rejected = rejected


class BatchEngine:
    """Running state of one `schedule_batch` call."""

    def __init__(self, nodes: Sequence[NodeInfo], config: SchedulerConfig, start: int) -> None:
        self.config = config
        self.weights = config.resolved_weights
        self.binpack = config.strategy == BINPACK
        self.rng = Random(config.seed) if config.seed is not None else None
        self.nodes: list[NodeInfo] = list(nodes)
        n = self.n = len(self.nodes)
        self.k = feasible_nodes_to_find(n, config)
        self.cursor = start % n if n else 0
        self.rank = [0] * n
        for position, i in enumerate(sorted(range(n), key=lambda i: self.nodes[i].name)):
            self.rank[i] = position
        self.alloc_cpu = [node.allocatable.cpu for node in self.nodes]
        self.alloc_mem = [node.allocatable.memory for node in self.nodes]
        self.free_cpu = [node.allocatable.cpu - node.requested.cpu for node in self.nodes]
        self.free_mem = [node.allocatable.memory - node.requested.memory for node in self.nodes]
        self.free_pods = [node.allocatable.pods - node.requested.pods for node in self.nodes]
        # Placements keep free >= 0, so with sane nodes the score needs no clamping.
        self.exact = all(
            a > 0 and 0 <= f <= a
            for alloc, free in ((self.alloc_cpu, self.free_cpu), (self.alloc_mem, self.free_mem))
            for a, f in zip(alloc, free)
        )
        static_ids: dict[tuple, int] = {}
        self.static_id = [
            static_ids.setdefault((node.ready, node.unschedulable, node.taints), len(static_ids))
            for node in self.nodes
        ]
        self.topology: dict[str, list[str | None]] = {}
        self.zone = self._topology(ZONE_LABEL)
        self.zone_values = set(self.zone)
        self.shapes: dict[tuple, _Shape] = {}
        self.affinity: dict[tuple, list[float]] = {}
        self.ones = [NO_PREFERENCE] * n
        self.zeros = [0] * n
        self.spread: dict[str, list[int]] = {}
        self.zone_counts: dict[str, dict[str, int]] = {}
        self.own_terms: dict[tuple, Counter[str]] = {}
        self.holders: dict[tuple, Counter[str]] = {}
        self.ports: dict[int, tuple[HostPort, ...]] = {}
        self.generation = 0
        self.memo_generation = 0
        self.memo: dict[tuple, tuple[str, tuple[tuple[str, str], ...]]] = {}
        for i, node in enumerate(self.nodes):
            for pod in node.pods:
                self._count(pod, i)

    # -- indexes -------------------------------------------------------------------------

    def _topology(self, key: str) -> list[str | None]:
        values = self.topology.get(key)
        if values is None:
            values = self.topology[key] = [node.labels.get(key) for node in self.nodes]
        return values

    def _spread_counts(self, key: str) -> list[int]:
        counts = self.spread.get(key)
        if counts is None:
            counts = self.spread[key] = [0] * self.n
        return counts

    def _count(self, pod: PodInfo, i: int) -> None:
        """Add a pod bound to node i to the spread and anti-affinity counters."""
        key = pod.spread_key
        if key is not None:
            self._spread_counts(key)[i] += 1
            zone = self.zone[i]
            if zone is not None:
                per_zone = self.zone_counts.setdefault(key, {})
                per_zone[zone] = per_zone.get(zone, 0) + 1
        for term in pod.anti_affinity:
            domain = self._topology(term.topology_key)[i]
            if domain is not None:
                self.holders.setdefault((term, pod.namespace), Counter())[domain] += 1

    def _shape(self, pod: PodInfo) -> tuple[tuple, _Shape]:
        key = (pod.node_selector, pod.required_affinity, pod.tolerations)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = self._build_shape(pod)
        return key, shape

    def _build_shape(self, pod: PodInfo) -> _Shape:
        # The static filters read only these label keys and the node's static facts, so
        # nodes with the same signature share a verdict (and a detail text).
        keys = set(pod.node_selector)
        keys.update(r.key for term in pod.required_affinity for r in term.requirements)
        columns = [self._topology(key) for key in sorted(keys)]
        verdicts: dict[tuple, Reason | None] = {}
        ok: list[int] = []
        rejected: dict[int, Reason] = {}
        for i, signature in enumerate(zip(self.static_id, *columns)):
            if signature in verdicts:
                reason = verdicts[signature]
            else:
                reason = verdicts[signature] = first_failure(
                    pod, self.nodes[i], None, STATIC_FILTERS
                )
            if reason is None:
                ok.append(i)
            else:
                rejected[i] = reason
        return _Shape(ok, rejected)

    def _affinity_scores(self, pod: PodInfo) -> list[float]:
        terms = pod.preferred_affinity
        if not terms:
            return self.ones
        scores = self.affinity.get(terms)
        if scores is None:
            keys = sorted({r.key for p in terms for r in p.term.requirements})
            columns = [self._topology(key) for key in keys]
            by_signature: dict[tuple, float] = {}
            ctx = ScoreContext()
            scores = []
            for i, signature in enumerate(zip(*columns) if columns else ((),) * self.n):
                value = by_signature.get(signature)
                if value is None:
                    value = by_signature[signature] = prefer_node_affinity(pod, self.nodes[i], ctx)
                scores.append(value)
            self.affinity[terms] = scores
        return scores

    def _own_term_counts(self, term, namespace: str) -> Counter[str]:
        """Pods selected by `term` (held in `namespace`) per domain of its topology key."""
        counts = self.own_terms.get((term, namespace))
        if counts is None:
            counts = self.own_terms[(term, namespace)] = Counter()
            domains = self._topology(term.topology_key)
            for i, node in enumerate(self.nodes):
                if domains[i] is not None:
                    for other in node.pods:
                        if term.selects(namespace, other):
                            counts[domains[i]] += 1
        return counts

    def _blocked_domains(self, pod: PodInfo) -> list[tuple[list[str | None], set[str]]]:
        """(domain of each node, forbidden domains) per anti-affinity rule touching `pod`."""
        blocked = []
        for term in pod.anti_affinity:
            counts = self._own_term_counts(term, pod.namespace)
            forbidden = {domain for domain, count in counts.items() if count}
            if forbidden:
                blocked.append((self._topology(term.topology_key), forbidden))
        for (term, namespace), counts in self.holders.items():
            if term.selects(namespace, pod):
                forbidden = {domain for domain, count in counts.items() if count}
                if forbidden:
                    blocked.append((self._topology(term.topology_key), forbidden))
        return blocked

    def _ports_taken(self, ports: tuple[HostPort, ...], i: int) -> bool:
        used = self.ports.get(i)
        if used is None:
            used = self.ports[i] = used_host_ports(self.nodes[i])
        return ports_conflict(ports, used) is not None

    # -- one decision --------------------------------------------------------------------

    def decide(self, pod: PodInfo) -> Decision:
        shape_key, shape = self._shape(pod)
        feasible = self._find_feasible(pod, shape)
        if not feasible:
            return self._unschedulable(pod, shape_key, shape)
        i, ctx = self._choose(pod, feasible)
        score, breakdown = score_node(pod, self.nodes[i], ctx, self.weights)
        self._bind(pod, i)
        return Placement(pod, self.nodes[i].name, score, breakdown)

    def _find_feasible(self, pod: PodInfo, shape: _Shape) -> list[int]:
        ok = shape.ok
        if not ok:
            return []
        k = self.k
        if k >= len(ok):
            order = ok
        else:
            split = bisect_left(ok, self.cursor)
            order = ok[split:] + ok[:split]
        need = pod.requests
        # A zero request fits anywhere, even on an overcommitted node.
        need_cpu = need.cpu if need.cpu > 0 else _NEG_INF
        need_mem = need.memory if need.memory > 0 else _NEG_INF
        need_pods = need.pods
        free_cpu, free_mem, free_pods = self.free_cpu, self.free_mem, self.free_pods
        ports = pod.host_ports
        blocked = self._blocked_domains(pod) if pod.anti_affinity or self.holders else []
        found: list[int] = []
        remaining = k
        i = -1
        for i in order:
            if free_cpu[i] < need_cpu or free_mem[i] < need_mem or free_pods[i] < need_pods:
                continue
            if ports and self._ports_taken(ports, i):
                continue
            if blocked and any(domains[i] in forbidden for domains, forbidden in blocked):
                continue
            found.append(i)
            remaining -= 1
            if not remaining:
                self.cursor = (i + 1) % self.n
                break
        return found

    def _choose(self, pod: PodInfo, feasible: list[int]) -> tuple[int, ScoreContext]:
        need = pod.requests
        need_cpu, need_mem = need.cpu, need.memory
        w = self.weights
        w_res, w_spread, w_zone, w_aff = (
            w.resources,
            w.prefer_spread,
            w.prefer_zone_spread,
            w.prefer_node_affinity,
        )
        zone = self.zone
        key = pod.spread_key
        if key is None:
            counts, top, zone_counts, zone_top = self.zeros, 0, {}, 0
            by_count = [NO_PREFERENCE]
            by_zone = dict.fromkeys(self.zone_values, NO_PREFERENCE)
        else:
            counts = self._spread_counts(key)
            top = max(map(counts.__getitem__, feasible))
            by_count = [(top - c) / top for c in range(top + 1)] if top else [NO_PREFERENCE]
            zone_counts = self.zone_counts.get(key, {})
            zones = set(map(zone.__getitem__, feasible))
            zones.discard(None)
            zone_top = max((zone_counts.get(z, 0) for z in zones), default=0)
            by_zone = {
                z: (zone_top - zone_counts.get(z, 0)) / zone_top if zone_top else NO_PREFERENCE
                for z in self.zone_values
            }
            by_zone[None] = UNKNOWN_ZONE_SCORE
        affinity = self._affinity_scores(pod)
        free_cpu, free_mem = self.free_cpu, self.free_mem
        alloc_cpu, alloc_mem = self.alloc_cpu, self.alloc_mem
        exact, binpack = self.exact, self.binpack
        best = _NEG_INF
        ties: list[int] = []
        for i in feasible:
            # Same operations, in the same order, as scores.least_allocated and score_node.
            if exact:
                res = (
                    (free_cpu[i] - need_cpu) / alloc_cpu[i]
                    + (free_mem[i] - need_mem) / alloc_mem[i]
                ) / 2
            else:
                res = (
                    free_fraction(alloc_cpu[i], free_cpu[i] - need_cpu)
                    + free_fraction(alloc_mem[i], free_mem[i] - need_mem)
                ) / 2
            if binpack:
                res = 1.0 - res
            total = (
                w_res * res
                + w_spread * by_count[counts[i]]
                + w_zone * by_zone[zone[i]]
                + w_aff * affinity[i]
            )
            if total > best:
                best = total
                ties = [i]
            elif total == best:
                ties.append(i)
        rank = self.rank
        if self.rng is None or len(ties) == 1:
            chosen = min(ties, key=rank.__getitem__)
        else:
            chosen = self.rng.choice(sorted(ties, key=rank.__getitem__))
        return chosen, ScoreContext(self.config.strategy, top, dict(zone_counts), zone_top)

    def _bind(self, pod: PodInfo, i: int) -> None:
        self.nodes[i] = self.nodes[i].with_pod(pod)
        need = pod.requests
        self.free_cpu[i] -= need.cpu
        self.free_mem[i] -= need.memory
        self.free_pods[i] -= need.pods
        if pod.host_ports:
            self.ports.pop(i, None)
        for (term, namespace), counts in self.own_terms.items():
            if term.selects(namespace, pod):
                domain = self._topology(term.topology_key)[i]
                if domain is not None:
                    counts[domain] += 1
        self._count(pod, i)
        self.generation += 1

    def _unschedulable(self, pod: PodInfo, shape_key: tuple, shape: _Shape) -> Unschedulable:
        # Same pod constraints, same cluster state (no bind since): same verdict.
        if self.memo_generation != self.generation:
            self.memo.clear()
            self.memo_generation = self.generation
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
            ctx = FilterContext(self.nodes)
            rejections = []
            for i, node in enumerate(self.nodes):
                reason = shape.rejected.get(i) or first_failure(pod, node, ctx, DYNAMIC_FILTERS)
                if reason is None:
                    raise AssertionError(f"engine missed feasible node {node.name} for {pod.key}")
                rejections.append((node.name, reason))
            known = self.memo[memo_key] = summarize(self.n, rejections)
        return Unschedulable(pod, *known)

    def result(self, decisions: list[Decision]) -> BatchResult:
        return BatchResult(tuple(decisions), tuple(self.nodes), self.cursor)
