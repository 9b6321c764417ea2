"""Registries that run on the cluster, as both sides see them: a Service annotated
`moorage.io/registry: <name>` (host:port) makes `<name>/...` images pull from that Service on
every node. Pure: `aliases(services)` is what the control plane sends agents.

The alias points at the Service's cluster IP and port, which every agent's service rules
answer from the host itself (nat output), wherever the registry's pod runs. It is plain HTTP:
the registry serves no TLS, so the alias and the address are insecure registries for the
agents' pulls; traffic stays on the cluster's underlay and overlay.
"""

from __future__ import annotations

from collections.abc import Iterable

from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

REGISTRY_ANNOTATION = "moorage.io/registry"
# The name images for the cluster's own registry carry (`moor registry deploy`).
CLUSTER_REGISTRY = "registry.cluster.local:5000"
# The Service port to use when a Service has several: the one of this name, else the first.
PORT_NAME = "registry"


def service_port(svc: pb.Service) -> pb.ServicePort | None:
    ports = [p for p in svc.spec.ports if (p.protocol or "TCP") == "TCP"]
    return next((p for p in ports if p.name == PORT_NAME), ports[0] if ports else None)


def alias_of(svc: pb.Service) -> agent_pb2.RegistryAlias | None:
    """The alias a Service declares, or None (no annotation, no cluster IP yet, no port)."""
    name = svc.metadata.annotations.get(REGISTRY_ANNOTATION, "").strip()
    ip = svc.spec.cluster_ip
    port = service_port(svc)
    if not name or not ip or ip == "None" or port is None:
        return None
    address = f"{ip}:{port.port}"
    return agent_pb2.RegistryAlias(name=name, mirrors=[f"http://{address}"],
                                   insecure=sorted({name, address}))


def aliases(services: Iterable[pb.Service]) -> agent_pb2.ClusterRegistries:
    """Every alias, sorted by name; when two Services claim one name the older one wins
    (then namespace/name), so a second Service cannot take over a registry's images."""
    chosen: dict[str, tuple[tuple, agent_pb2.RegistryAlias]] = {}
    for svc in services:
        alias = alias_of(svc)
        if alias is None:
            continue
        key = (svc.metadata.creation_timestamp, svc.metadata.namespace, svc.metadata.name)
        if alias.name not in chosen or key < chosen[alias.name][0]:
            chosen[alias.name] = (key, alias)
    return agent_pb2.ClusterRegistries(aliases=[chosen[n][1] for n in sorted(chosen)])
