"""Feasibility filters: each answers "may this pod run on this node?" with None or a `Reason`.

Pure: filters never mutate their inputs. `FILTERS` fixes the order, and a node that fails is
reported under the first filter it fails. The `STATIC_FILTERS` read only the pod's placement
constraints (node selector, required node affinity, tolerations, volumes) and the node's fixed
facts (ready, cordoned, labels, taints, local storage, allowed host paths), never its pods; the
batch engine relies on that to cache their verdicts per pod shape (a pod with volumes is checked
on every node: its shape holds its claims). The shell puts at most one pod that binds new
claims in a batch, so a node's free storage cannot change under a cached verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.scheduler.model import (
    PREFER_NO_SCHEDULE,
    WILDCARD_IPS,
    HostPort,
    NodeInfo,
    NodeSelectorTerm,
    PodAntiAffinityTerm,
    PodInfo,
)
from controlplane.scheduler.units import format_cpu, format_memory
from moorage.model.storage import path_allowed


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a node was rejected: `aggregate` is counted in the summary, `detail` is per node."""

    aggregate: str
    detail: str


NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
INSUFFICIENT = "Insufficient {resource}"
TOO_MANY_PODS = "Too many pods"
NODE_SELECTOR_MISMATCH = "node(s) didn't match node selector"
UNTOLERATED_TAINT = "node(s) had untolerated taint {{{taint}}}"
HOST_PORTS_TAKEN = "node(s) didn't have free ports for the requested pod ports"
ANTI_AFFINITY_CONFLICT = "node(s) didn't match pod anti-affinity rules"

_NOT_READY = Reason(NOT_READY, "node is NotReady")
_CORDONED = Reason(UNSCHEDULABLE, "node is cordoned (unschedulable)")


class FilterContext:
    """Cluster-wide facts for filters that look past one node (pod anti-affinity).

    Built from the node snapshot the filters are asked about. Indexes are computed lazily on
    first use and never change afterwards, so one context serves every node of a decision.
    They walk the nodes by name, so a reason names the same pod whatever the input order.
    """

    __slots__ = ("_domains", "_holders", "nodes")

    def __init__(self, nodes: Iterable[NodeInfo]) -> None:
        self.nodes: tuple[NodeInfo, ...] = tuple(sorted(nodes, key=lambda node: node.name))
        self._domains: dict[str, dict[str, list[PodInfo]]] = {}
        self._holders: tuple[tuple[PodInfo, PodAntiAffinityTerm, str], ...] | None = None

    def pods_in_domain(self, topology_key: str, value: str) -> Sequence[PodInfo]:
        """Pods on nodes whose label `topology_key` equals `value`."""
        index = self._domains.get(topology_key)
        if index is None:
            index = {}
            for node in self.nodes:
                domain = node.labels.get(topology_key)
                if domain is not None and node.pods:
                    index.setdefault(domain, []).extend(node.pods)
            self._domains[topology_key] = index
        return index.get(value, ())

    def anti_affinity_holders(self) -> tuple[tuple[PodInfo, PodAntiAffinityTerm, str], ...]:
        """(pod, term, domain value) for every anti-affinity term of every bound pod."""
        if self._holders is None:
            self._holders = tuple(
                (pod, term, domain)
                for node in self.nodes
                for pod in node.pods
                for term in pod.anti_affinity
                if (domain := node.labels.get(term.topology_key)) is not None
            )
        return self._holders


FilterFn = Callable[[PodInfo, NodeInfo, "FilterContext | None"], "Reason | None"]


def node_is_ready(pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None) -> Reason | None:
    return None if node.ready else _NOT_READY


def node_is_schedulable(
    pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None
) -> Reason | None:
    return _CORDONED if node.unschedulable else None


def fits_resources(pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None) -> Reason | None:
    # Like Kubernetes, a zero request always fits, even on an overcommitted node.
    need, alloc, used = pod.requests, node.allocatable, node.requested
    short: list[tuple[str, str]] = []
    free_pods = alloc.pods - used.pods
    if need.pods > free_pods:
        short.append((TOO_MANY_PODS, f"needs {need.pods} pod slot, {free_pods} free"))
    free_cpu = alloc.cpu - used.cpu
    if need.cpu > 0 and need.cpu > free_cpu:
        detail = f"needs {format_cpu(need.cpu)} cpu, {format_cpu(free_cpu)} free"
        short.append((INSUFFICIENT.format(resource="cpu"), detail))
    free_memory = alloc.memory - used.memory
    if need.memory > 0 and need.memory > free_memory:
        detail = f"needs {format_memory(need.memory)} memory, {format_memory(free_memory)} free"
        short.append((INSUFFICIENT.format(resource="memory"), detail))
    if not short:
        return None
    return Reason(short[0][0], "; ".join(detail for _, detail in short))


def _label_text(labels: Mapping[str, str], key: str) -> str:
    value = labels.get(key)
    return f"node has no label {key}" if value is None else f"node has {key}={value}"


def _affinity_detail(terms: tuple[NodeSelectorTerm, ...], labels: Mapping[str, str]) -> str:
    first = terms[0]
    if not first.requirements:
        why = "the first term is empty and matches no node"
    else:
        failing = next(r for r in first.requirements if not r.matches(labels))
        why = f"first term needs {failing}, {_label_text(labels, failing.key)}"
    return f"required node affinity: none of {len(terms)} term(s) matched; {why}"


def matches_node_selector(
    pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None
) -> Reason | None:
    labels = node.labels
    for key, want in pod.node_selector.items():
        if labels.get(key) != want:
            detail = f"nodeSelector {key}={want}: {_label_text(labels, key)}"
            return Reason(NODE_SELECTOR_MISMATCH, detail)
    terms = pod.required_affinity
    if terms and not any(term.matches(labels) for term in terms):
        return Reason(NODE_SELECTOR_MISMATCH, _affinity_detail(terms, labels))
    return None


def tolerates_taints(
    pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None
) -> Reason | None:
    tolerations = pod.tolerations
    for taint in node.taints:
        if taint.effect == PREFER_NO_SCHEDULE:
            continue
        if not any(t.tolerates(taint) for t in tolerations):
            return Reason(UNTOLERATED_TAINT.format(taint=taint), f"taint {taint} is not tolerated")
    return None


def ports_conflict(wanted: Iterable[HostPort], used: Sequence[HostPort]) -> HostPort | None:
    """The first wanted port already bound: same port and protocol, overlapping host IPs."""
    for want in wanted:
        for have in used:
            if (
                want.port == have.port
                and want.protocol == have.protocol
                and (
                    want.host_ip in WILDCARD_IPS
                    or have.host_ip in WILDCARD_IPS
                    or want.host_ip == have.host_ip
                )
            ):
                return want
    return None


def used_host_ports(node: NodeInfo) -> tuple[HostPort, ...]:
    return tuple(port for pod in node.pods for port in pod.host_ports)


def host_ports_free(
    pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None
) -> Reason | None:
    if not pod.host_ports:
        return None
    clash = ports_conflict(pod.host_ports, used_host_ports(node))
    if clash is None:
        return None
    return Reason(HOST_PORTS_TAKEN, f"host port {clash} is already in use")


def satisfies_pod_anti_affinity(
    pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None
) -> Reason | None:
    """Required anti-affinity, both ways: the pod's own terms and bound pods' terms against it.

    Without `ctx` only the pods on `node` itself are considered, which is exact for the
    hostname topology key only; `place` and `explain` always pass the whole cluster.
    """
    if ctx is None:
        ctx = FilterContext((node,))
    labels = node.labels
    for term in pod.anti_affinity:
        domain = labels.get(term.topology_key)
        if domain is None:
            continue
        for other in ctx.pods_in_domain(term.topology_key, domain):
            if term.selects(pod.namespace, other):
                where = f"{term.topology_key}={domain}"
                detail = f"pod {other.key} in {where} matches this pod's anti-affinity"
                return Reason(ANTI_AFFINITY_CONFLICT, detail)
    for holder, term, domain in ctx.anti_affinity_holders():
        if labels.get(term.topology_key) == domain and term.selects(holder.namespace, pod):
            where = f"{term.topology_key}={domain}"
            detail = f"pod {holder.key} in {where} has anti-affinity against this pod"
            return Reason(ANTI_AFFINITY_CONFLICT, detail)
    return None


VOLUME_NODE_CONFLICT = "node(s) had volume node affinity conflict"
NOT_ENOUGH_STORAGE = "node(s) did not have enough free storage"
HOST_PATH_NOT_ALLOWED = "node(s) didn't allow the pod's hostPath volumes"


def volumes_fit(pod: PodInfo, node: NodeInfo, ctx: FilterContext | None = None) -> Reason | None:
    """A bound claim's pods go only to its volume's node; a claim that binds with this pod
    needs room on the node; a hostPath must be under the node's allowed prefixes."""
    needs = pod.volumes
    if needs is None:
        return None
    if needs.blocked is not None:
        return Reason(*needs.blocked)
    for claim, where in needs.pinned:
        if where != node.name:
            return Reason(VOLUME_NODE_CONFLICT, f"volume {claim} is on {where}")
    if needs.new_bytes and needs.new_bytes > node.local_storage_free:
        free = max(node.local_storage_free, 0)
        return Reason(NOT_ENOUGH_STORAGE, f"needs {format_memory(needs.new_bytes)} local "
                                          f"storage, {format_memory(free)} free")
    for path in needs.host_paths:
        if not path_allowed(path, node.allowed_host_paths):
            allowed = ", ".join(node.allowed_host_paths) or "none"
            return Reason(HOST_PATH_NOT_ALLOWED,
                          f"hostPath {path} is not allowed here (allowed: {allowed})")
    return None


STATIC_FILTERS: tuple[FilterFn, ...] = (
    node_is_ready,
    node_is_schedulable,
    matches_node_selector,
    tolerates_taints,
    volumes_fit,
)
DYNAMIC_FILTERS: tuple[FilterFn, ...] = (
    fits_resources,
    host_ports_free,
    satisfies_pod_anti_affinity,
)
FILTERS: tuple[FilterFn, ...] = STATIC_FILTERS + DYNAMIC_FILTERS


def first_failure(
    pod: PodInfo,
    node: NodeInfo,
    ctx: FilterContext | None = None,
    filters: Sequence[FilterFn] = FILTERS,
) -> Reason | None:
    """The reason from the first filter `node` fails, or None when it passes them all."""
    for check in filters:
        reason = check(pod, node, ctx)
        if reason is not None:
            return reason
    return None
