"""A Service's endpoints: the ready pods it selects and the port each service port reaches on
them. Pure functions, shared by the control plane's service table and `moor describe service`."""

from __future__ import annotations

from collections.abc import Iterable

from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb


def pod_is_ready(pod: pb.Pod) -> bool:
    """Running, with an IP, its Ready condition True, and not being deleted: fit to take
    traffic (a terminating pod leaves its services at once, as in Kubernetes)."""
    return (pod.status.phase == "Running" and bool(pod.status.pod_ip)
            and not pod.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions))


def selects(service: pb.Service, pod: pb.Pod) -> bool:
    """A selector-less service has no endpoints (they would be managed by hand)."""
    sel = service.spec.selector
    return (pod.metadata.namespace == service.metadata.namespace and bool(sel)
            and all(pod.metadata.labels.get(k) == v for k, v in sel.items()))


def target_port(port: pb.ServicePort, pod: pb.Pod) -> int:
    """The port on `pod` a service port sends to; 0 when a named one is not declared there."""
    which = port.target_port.WhichOneof("value")
    if which == "int_val":
        return port.target_port.int_val
    if which is None:
        return port.port
    name, proto = port.target_port.str_val, port.protocol or "TCP"
    for c in pod.spec.containers:
        for cp in c.ports:
            if cp.name == name and (cp.protocol or "TCP") == proto:
                return cp.container_port
    return 0


def dns_hostname(service: pb.Service, pod: pb.Pod) -> str:
    """The pod's own name under the service (`<hostname>.<service>.<ns>.svc`), or "" for
    none: Kubernetes' rule, the pod names a hostname and the service as its subdomain."""
    if pod.spec.hostname and pod.spec.subdomain == service.metadata.name and \
            pod.metadata.namespace == service.metadata.namespace:
        return pod.spec.hostname
    return ""


def service_entry(service: pb.Service, pods: Iterable[pb.Pod]) -> agent_pb2.ServiceEntry:
    """The service as agents see it: its ports and its ready endpoints, sorted by pod name."""
    spec = service.spec
    entry = agent_pb2.ServiceEntry(
        namespace=service.metadata.namespace, name=service.metadata.name,
        type=spec.type or "ClusterIP", cluster_ip=spec.cluster_ip)
    for p in spec.ports:
        entry.ports.add(name=p.name, protocol=p.protocol or "TCP", port=p.port,
                        node_port=p.node_port if spec.type == "NodePort" else 0)
    ready = sorted((p for p in pods if selects(service, p) and pod_is_ready(p)),
                   key=lambda p: p.metadata.name)
    for pod in ready:
        entry.endpoints.add(ip=pod.status.pod_ip, node=pod.spec.node_name,
                            pod=pod.metadata.name,
                            hostname=dns_hostname(service, pod),
                            ports=[target_port(p, pod) for p in spec.ports])
    return entry
