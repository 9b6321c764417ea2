"""Mutable per-node counters and caches behind the batch engine.

Private to the package. `ClusterIndex` copies the node snapshot it is given, and `bind` keeps
every counter (free resources, spread counts per node and zone, anti-affinity domains, used
host ports) equal to what recomputing it from the updated `nodes` would give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from controlplane.scheduler.filters import (
    STATIC_FILTERS,
    Reason,
    first_failure,
    ports_conflict,
)
from controlplane.scheduler.model import (
    ZONE_LABEL,
    HostPort,
    NodeInfo,
    PodAntiAffinityTerm,
    PodInfo,
)
from controlplane.scheduler.scores import ScoreContext, prefer_node_affinity


class Shape:
    """Static-filter verdicts on every node, for the pods sharing one shape."""

    __slots__ = ("ok", "rejected")

    def __init__(self, ok: list[int], rejected: dict[int, Reason]) -> None:
        self.ok = ok  # indices of nodes passing every static filter, ascending
        self.rejected = rejected


def shape_key(pod: PodInfo) -> tuple:
    """What the static filters read from a pod."""
    return (pod.node_selector, pod.required_affinity, pod.tolerations, pod.volumes)


class ClusterIndex:
    """The nodes as placements change them, with counters indexed by node position."""

    def __init__(self, nodes: Sequence[NodeInfo]) -> None:
        self.nodes: list[NodeInfo] = list(nodes)
        self.n = len(self.nodes)
        self.alloc_cpu = [node.allocatable.cpu for node in self.nodes]
        self.alloc_mem = [node.allocatable.memory for node in self.nodes]
        self.free_cpu = [node.allocatable.cpu - node.requested.cpu for node in self.nodes]
        self.free_mem = [node.allocatable.memory - node.requested.memory for node in self.nodes]
        self.free_pods = [node.allocatable.pods - node.requested.pods for node in self.nodes]
        static_ids: dict[tuple, int] = {}
        self.static_id = [
            static_ids.setdefault((node.ready, node.unschedulable, node.taints), len(static_ids))
            for node in self.nodes
        ]
        self.topology: dict[str, list[str | None]] = {}
        self.zone = self.domains(ZONE_LABEL)
        self.zone_values = set(self.zone)
        self.shapes: dict[tuple, Shape] = {}
        self.spread: dict[str, list[int]] = {}
        self.zone_counts: dict[str, dict[str, int]] = {}
        self.own_terms: dict[tuple[PodAntiAffinityTerm, str], Counter[str]] = {}
        self.holders: dict[tuple[PodAntiAffinityTerm, str], Counter[str]] = {}
        self.members: dict[str, dict[str, list[int]]] = {}
        # (port, protocol) -> node -> ports bound there; built when a pod first wants one.
        self.port_users: dict[tuple[int, str], dict[int, list[HostPort]]] | None = None
        for i, node in enumerate(self.nodes):
            for pod in node.pods:
                self._count(pod, i)

    def domains(self, key: str) -> list[str | None]:
        """Each node's value of label `key` (None when unlabelled)."""
        values = self.topology.get(key)
        if values is None:
            values = self.topology[key] = [node.labels.get(key) for node in self.nodes]
        return values

    def spread_counts(self, key: str) -> list[int]:
        """Pods with spread key `key` on each node."""
        counts = self.spread.get(key)
        if counts is None:
            counts = self.spread[key] = [0] * self.n
        return counts

    def bind(self, pod: PodInfo, i: int) -> None:
        """Record `pod` as bound to node i."""
        self.nodes[i] = self.nodes[i].with_pod(pod)
        need = pod.requests
        self.free_cpu[i] -= need.cpu
        self.free_mem[i] -= need.memory
        self.free_pods[i] -= need.pods
        if pod.host_ports and self.port_users is not None:
            self._use_ports((pod,), i)
        for (term, namespace), counts in self.own_terms.items():
            if term.selects(namespace, pod):
                domain = self.domains(term.topology_key)[i]
                if domain is not None:
                    counts[domain] += 1
        self._count(pod, i)

    def _count(self, pod: PodInfo, i: int) -> None:
        key = pod.spread_key
        if key is not None:
            self.spread_counts(key)[i] += 1
            zone = self.zone[i]
            if zone is not None:
                per_zone = self.zone_counts.setdefault(key, {})
                per_zone[zone] = per_zone.get(zone, 0) + 1
        for term in pod.anti_affinity:
            domain = self.domains(term.topology_key)[i]
            if domain is not None:
                self.holders.setdefault((term, pod.namespace), Counter())[domain] += 1

    # -- static verdicts -----------------------------------------------------------------

    def shape(self, pod: PodInfo) -> tuple[tuple, Shape]:
        key = shape_key(pod)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = self._build_shape(pod)
        return key, shape

    def _signatures(self, keys: set[str], with_static: bool) -> zip:
        """Per node, what a static check reading label `keys` can see of it."""
        columns = [self.domains(key) for key in sorted(keys)]
        if with_static:
            return zip(self.static_id, *columns, strict=True)
        return zip(*columns, strict=True) if columns else zip([()] * self.n)

    def _build_shape(self, pod: PodInfo) -> Shape:
        # Static filters read only these labels and the node's static facts, so nodes with
        # the same signature share a verdict (and its detail text).
        keys = set(pod.node_selector)
        keys.update(r.key for term in pod.required_affinity for r in term.requirements)
        verdicts: dict[tuple, Reason | None] = {}
        ok: list[int] = []
        rejected: dict[int, Reason] = {}
        for i, signature in enumerate(self._signatures(keys, True)):
            if pod.volumes is not None:
                # Volumes read the node's name, storage and allowed paths: no sharing.
                signature = (i,)
            if signature in verdicts:
                reason = verdicts[signature]
            else:
                reason = first_failure(pod, self.nodes[i], None, STATIC_FILTERS)
                verdicts[signature] = reason
            if reason is None:
                ok.append(i)
            else:
                rejected[i] = reason
        return Shape(ok, rejected)

    def affinity_scores(self, pod: PodInfo) -> list[float]:
        """`prefer_node_affinity` for every node, computed once per label signature."""
        keys = {r.key for p in pod.preferred_affinity for r in p.term.requirements}
        by_signature: dict[tuple, float] = {}
        ctx = ScoreContext()
        scores = []
        for i, signature in enumerate(self._signatures(keys, False)):
            value = by_signature.get(signature)
            if value is None:
                value = by_signature[signature] = prefer_node_affinity(pod, self.nodes[i], ctx)
            scores.append(value)
        return scores

    # -- anti-affinity and ports ---------------------------------------------------------

    def _own_term_counts(self, term: PodAntiAffinityTerm, namespace: str) -> Counter[str]:
        """Pods selected by `term` (held in `namespace`) per domain of its topology key."""
        counts = self.own_terms.get((term, namespace))
        if counts is None:
            counts = self.own_terms[(term, namespace)] = Counter()
            domains = self.domains(term.topology_key)
            for i, node in enumerate(self.nodes):
                if domains[i] is not None:
                    for other in node.pods:
                        if term.selects(namespace, other):
                            counts[domains[i]] += 1
        return counts

    def _nodes_in(self, key: str, domain: str) -> list[int]:
        by_domain = self.members.get(key)
        if by_domain is None:
            by_domain = self.members[key] = {}
            for i, value in enumerate(self.domains(key)):
                if value is not None:
                    by_domain.setdefault(value, []).append(i)
        return by_domain.get(domain, [])

    def excluded_nodes(self, pod: PodInfo) -> set[int]:
        """Nodes `pod` may not use because of host ports or anti-affinity (either way)."""
        excluded: set[int] = set()
        if pod.host_ports:
            self._add_port_conflicts(pod.host_ports, excluded)
        if not pod.anti_affinity and not self.holders:
            return excluded
        rules = [
            (term.topology_key, self._own_term_counts(term, pod.namespace))
            for term in pod.anti_affinity
        ]
        rules += [
            (term.topology_key, counts)
            for (term, namespace), counts in self.holders.items()
            if term.selects(namespace, pod)
        ]
        for key, counts in rules:
            for domain, count in counts.items():
                if count:
                    excluded.update(self._nodes_in(key, domain))
        return excluded

    def _add_port_conflicts(self, wanted: tuple[HostPort, ...], into: set[int]) -> None:
        if self.port_users is None:
            self.port_users = {}
            for i, node in enumerate(self.nodes):
                self._use_ports(node.pods, i)
        for want in wanted:
            users = self.port_users.get((want.port, want.protocol), {})
            for i, used in users.items():
                if ports_conflict((want,), used) is not None:
                    into.add(i)

    def _use_ports(self, pods: Sequence[PodInfo], i: int) -> None:
        assert self.port_users is not None
        for pod in pods:
            for port in pod.host_ports:
                self.port_users.setdefault((port.port, port.protocol), {}).setdefault(i, []).append(
                    port
                )
