"""Builds the scheduler's frozen model from API objects (pure; the only protobuf it reads).

A container's request defaults to its limit, as in Kubernetes; a node offers its allocatable
resources (else its capacity, else nothing) and carries its name as `kubernetes.io/hostname`.
"""

from __future__ import annotations

from controlplane.scheduler.model import (
    HOSTNAME_LABEL,
    HostPort,
    NodeInfo,
    NodeSelectorTerm,
    PodAntiAffinityTerm,
    PodInfo,
    PreferredTerm,
    Requirement,
    Resources,
    Taint,
    Toleration,
)
from moorage.model import quantities, storage
from moorage.model.network import DEFAULT_MAX_PODS
from moorage.v1 import objects_pb2 as pb


def pod_requests(spec: pb.PodSpec) -> Resources:
    cpu = memory = 0
    for c in spec.containers:
        req, lim = c.resources.requests, c.resources.limits
        cpu_q = req.get("cpu") or lim.get("cpu")
        mem_q = req.get("memory") or lim.get("memory")
        cpu += quantities.cpu_millicores(cpu_q) if cpu_q else 0
        memory += quantities.memory_bytes(mem_q) if mem_q else 0
    return Resources(cpu, memory, 1)


def _requirements(exprs) -> tuple[Requirement, ...]:
    return tuple(Requirement(e.key, e.operator, tuple(e.values)) for e in exprs)


def _selector(sel: pb.LabelSelector) -> tuple[Requirement, ...]:
    reqs = [Requirement(k, "In", (val,)) for k, val in sorted(sel.match_labels.items())]
    return (*reqs, *_requirements(sel.match_expressions))


def spread_key(pod: pb.Pod) -> str | None:
    """Pods of one controller (a Deployment) are spread as a group."""
    for ref in pod.metadata.owner_references:
        if ref.controller:
            return f"{pod.metadata.namespace}/{ref.kind}/{ref.name}"
    return None


def pod_info(pod: pb.Pod) -> PodInfo:
    spec = pod.spec
    na = spec.affinity.node_affinity
    required = tuple(
        NodeSelectorTerm(_requirements(t.match_expressions))
        for t in na.required_during_scheduling_ignored_during_execution.node_selector_terms)
    preferred = tuple(
        PreferredTerm(p.weight, NodeSelectorTerm(_requirements(p.preference.match_expressions)))
        for p in na.preferred_during_scheduling_ignored_during_execution)
    anti_terms = spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution
    anti = tuple(
        PodAntiAffinityTerm(_selector(t.label_selector), t.topology_key, tuple(t.namespaces))
        for t in anti_terms)
    tolerations = tuple(
        Toleration(t.key, t.operator or "Equal", t.value, t.effect) for t in spec.tolerations)
    ports = tuple(HostPort(p.host_port, p.protocol or "TCP", p.host_ip)
                  for c in spec.containers for p in c.ports if p.host_port)
    return PodInfo(
        namespace=pod.metadata.namespace, name=pod.metadata.name,
        labels=dict(pod.metadata.labels), requests=pod_requests(spec),
        node_selector=dict(spec.node_selector), required_affinity=required,
        preferred_affinity=preferred, tolerations=tolerations, host_ports=ports,
        anti_affinity=anti, spread_key=spread_key(pod), priority=spec.priority,
        creation_index=int(pod.metadata.resource_version or 0))


def node_ready(node: pb.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def node_resources(node: pb.Node) -> Resources:
    offered = node.status.allocatable or node.status.capacity
    cpu = offered.get("cpu")
    memory = offered.get("memory")
    pods = offered.get("pods")
    return Resources(
        quantities.cpu_millicores(cpu) if cpu else 0,
        quantities.memory_bytes(memory) if memory else 0,
        quantities.parse_resource("pods", pods) if pods else DEFAULT_MAX_PODS)


def local_storage(node: pb.Node) -> int:
    """The node's moorage.io/local-storage capacity in bytes (0 when it reports none)."""
    raw = node.status.capacity.get(storage.LOCAL_STORAGE, "")
    try:
        return quantities.memory_bytes(raw) if raw else 0
    except quantities.QuantityError:
        return 0


def node_info(node: pb.Node, pods: tuple[PodInfo, ...] = (), storage_used: int = 0) -> NodeInfo:
    labels = dict(node.metadata.labels)
    labels.setdefault(HOSTNAME_LABEL, node.metadata.name)
    requested = Resources()
    for p in pods:
        requested = requested + p.requests
    return NodeInfo(
        name=node.metadata.name, labels=labels, ready=node_ready(node),
        unschedulable=node.spec.unschedulable,
        taints=tuple(Taint(t.key, t.value, t.effect) for t in node.spec.taints),
        allocatable=node_resources(node), requested=requested, pods=pods,
        local_storage_free=local_storage(node) - storage_used,
        allowed_host_paths=tuple(storage.allowed_host_paths(node)))
