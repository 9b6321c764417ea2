"""Builders for test objects: short calls that make valid scheduler pods, nodes and clusters.

Quantities accept human strings (`"500m"`, `"4"`, `"512Mi"`, `"8Gi"`) or plain ints
(millicores, bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlplane.scheduler import (
    HOSTNAME_LABEL,
    ZONE_LABEL,
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

_MEMORY_SUFFIXES = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
}  # fmt: skip


def parse_cpu(value: str | int) -> int:
    """`"500m"` -> 500, `"2"` / `"1.5"` -> 2000 / 1500 millicores; ints are millicores."""
    if isinstance(value, int):
        return value
    if value.endswith("m"):
        return int(value[:-1])
    return round(float(value) * 1000)


def parse_memory(value: str | int) -> int:
    """`"512Mi"` -> 536870912 bytes; ints are bytes."""
    if isinstance(value, int):
        return value
    for suffix in sorted(_MEMORY_SUFFIXES, key=len, reverse=True):
        if value.endswith(suffix):
            return round(float(value[: -len(suffix)]) * _MEMORY_SUFFIXES[suffix])
    return int(value)


def parse_taint(value: str | Taint) -> Taint:
    """`"key=value:NoSchedule"` or `"key:NoExecute"`."""
    if isinstance(value, Taint):
        return value
    key_value, effect = value.rsplit(":", 1)
    key, _, val = key_value.partition("=")
    return Taint(key, val, effect)


def make_node(
    name: str = "node-1",
    cpu: str | int = "4",
    mem: str | int = "8Gi",
    pods: int = 110,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
    taints: Iterable[str | Taint] = (),
    zone: str | None = None,
    bound: Iterable[PodInfo] = (),
) -> NodeInfo:
    """A node with a hostname label (and zone label if given), `bound` pods already on it."""
    all_labels = {HOSTNAME_LABEL: name}
    if zone is not None:
        all_labels[ZONE_LABEL] = zone
    all_labels.update(labels or {})
    node = NodeInfo(
        name,
        all_labels,
        ready=ready,
        unschedulable=unschedulable,
        taints=tuple(parse_taint(t) for t in taints),
        allocatable=Resources(parse_cpu(cpu), parse_memory(mem), pods),
    )
    for pod in bound:
        node = node.with_pod(pod)
    return node


def make_pod(
    name: str = "pod-1",
    namespace: str = "default",
    cpu: str | int = "100m",
    mem: str | int = "128Mi",
    labels: Mapping[str, str] | None = None,
    node_selector: Mapping[str, str] | None = None,
    required_affinity: Iterable[NodeSelectorTerm] = (),
    preferred_affinity: Iterable[PreferredTerm] = (),
    tolerations: Iterable[Toleration] = (),
    host_ports: Iterable[HostPort | int | tuple] = (),
    anti_affinity: Iterable[PodAntiAffinityTerm] = (),
    spread_key: str | None = None,
    priority: int = 0,
    creation_index: int = 0,
) -> PodInfo:
    return PodInfo(
        namespace,
        name,
        labels or {},
        Resources(parse_cpu(cpu), parse_memory(mem), 1),
        node_selector or {},
        tuple(required_affinity),
        tuple(preferred_affinity),
        tuple(tolerations),
        tuple(host_ports),
        tuple(anti_affinity),
        spread_key,
        priority,
        creation_index,
    )


def make_deployment(
    name: str, replicas: int, namespace: str = "default", first_index: int = 0, **pod_fields
) -> list[PodInfo]:
    """`replicas` pods `name-0..`, labelled app=name and sharing the spread key ns/name."""
    labels = {"app": name, **pod_fields.pop("labels", {})}
    return [
        make_pod(
            f"{name}-{i}",
            namespace,
            labels=labels,
            spread_key=f"{namespace}/{name}",
            creation_index=first_index + i,
            **pod_fields,
        )
        for i in range(replicas)
    ]


def make_cluster(
    n: int, cpu: str | int = "4", mem: str | int = "8Gi", pods: int = 110, zones: int = 0, **node
) -> list[NodeInfo]:
    """`n` identical nodes `node-01..`, names zero-padded so name order is index order; with
    `zones` > 0 they go round-robin into zones `zone-a`, `zone-b`, ..."""
    width = len(str(n))
    return [
        make_node(
            f"node-{i + 1:0{width}d}",
            cpu,
            mem,
            pods,
            zone=f"zone-{chr(ord('a') + i % zones)}" if zones else None,
            **node,
        )
        for i in range(n)
    ]


def anti_affinity_to(app: str, topology_key: str = HOSTNAME_LABEL) -> PodAntiAffinityTerm:
    """Required anti-affinity against pods labelled app=`app`."""
    return PodAntiAffinityTerm((Requirement("app", "In", (app,)),), topology_key)


# ---- API objects (protobuf), as stored and streamed ----

def pb_pod(name: str = "web", namespace: str = "default", *, uid: str = "", node: str = "",
           image: str = "busybox", phase: str = "", grace: int | None = None,
           labels: Mapping[str, str] | None = None, container: str = "app"):
    """A Pod with one container; unset fields stay unset (no uid, no node, no phase)."""
    from moorage.v1 import objects_pb2 as pb

    p = pb.Pod(api_version="v1", kind="Pod")
    p.metadata.name, p.metadata.namespace = name, namespace
    if uid:
        p.metadata.uid = uid
    p.metadata.labels.update(labels or {})
    p.spec.node_name = node
    if grace is not None:
        p.spec.termination_grace_period_seconds = grace
    p.spec.containers.add(name=container, image=image)
    if phase:
        p.status.phase = phase
    return p


def pb_node(name: str, *, ready: str | None = "True", reason: str = "AgentReady",
            capacity: Mapping[str, str] | None = None):
    """A Node with a Ready condition (None: no condition at all)."""
    from moorage.v1 import objects_pb2 as pb

    n = pb.Node(api_version="v1", kind="Node")
    n.metadata.name = name
    n.status.allocatable.update(capacity or {})
    n.status.capacity.update(capacity or {})
    if ready is not None:
        n.status.conditions.add(type="Ready", status=ready, reason=reason,
                                last_transition_time="2026-01-01T00:00:00Z")
    return n


# ---- manifests (YAML text), as operators write them ----

def deployment_yaml(name: str, replicas: int = 1, *, namespace: str = "default",
                    image: str = "busybox:test", command: str = "sleep 3600",
                    grace: int = 1, memory: str = "4Mi", node: str = "",
                    strategy: str = "") -> str:
    """A Deployment of one busybox container (imagePullPolicy Never: images are imported),
    `command` run by sh as PID 1 (exec'd, so `sleep` ignores SIGTERM as in Docker)."""
    selector = f"      nodeSelector: {{kubernetes.io/hostname: {node}}}\n" if node else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
{strategy}  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: {grace}
{selector}      containers:
      - name: app
        image: {image}
        imagePullPolicy: Never
        command: ["sh", "-c", "exec {command}"]
        resources: {{requests: {{cpu: 1m, memory: {memory}}}}}
"""
