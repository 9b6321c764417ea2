"""Service virtual IPs and node ports against a real etcd: allocated on apply, stable on
re-apply, validated when asked for, never duplicated, released on delete."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from controlplane.allocators.serviceips import ServiceAllocator
from controlplane.api.apply import Applier
from controlplane.server import ensure_namespaces
from moorage import manifest
from moorage.manifest import ManifestError
from moorage.model import kinds
from tests.conftest import run

SERVICE = kinds.BY_NAME["Service"]


def svc_yaml(name="web", type_="ClusterIP", cluster_ip="", node_port=0, ports=(80,)) -> str:
    lines = [f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}",
             "spec:", f"  type: {type_}", "  selector: {app: web}"]
    if cluster_ip:
        lines.append(f"  clusterIP: {cluster_ip}")
    if ports:
        lines.append("  ports:")
    for i, port in enumerate(ports):
        lines.append(f"  - {{name: p{i}, port: {port}, targetPort: 8080"
                     + (f", nodePort: {node_port}" if node_port and i == 0 else "") + "}")
    return "\n".join(lines) + "\n"


async def apply(applier: Applier, text: str):
    plans, _ = await applier.apply(manifest.parse([("svc.yaml", text)]))
    return plans[0].obj


def with_store(store_factory, body, cidr="10.96.0.0/16"):
    async def go():
        store = await store_factory()
        await ensure_namespaces(store)
        try:
            return await body(store, Applier(store, cidr))
        finally:
            await store.client.close()
    return run(go())


def test_cluster_ip_is_allocated_from_the_cidr_and_stable_on_reapply(store_factory):
    async def body(store, applier):
        first = await apply(applier, svc_yaml())
        again = await apply(applier, svc_yaml(ports=(80, 81)))
        fresh = Applier(store)                     # another API replica, empty cache
        third = await apply(fresh, svc_yaml(ports=(80, 81)))
        return first, again, third
    first, again, third = with_store(store_factory, body)
    assert ipaddress.IPv4Address(first.spec.cluster_ip) in ipaddress.IPv4Network("10.96.0.0/16")
    assert first.spec.cluster_ip == again.spec.cluster_ip == third.spec.cluster_ip


def test_node_ports_are_allocated_stable_and_released_when_dropped(store_factory):
    async def body(store, applier):
        a = await apply(applier, svc_yaml(type_="NodePort"))
        b = await apply(applier, svc_yaml(type_="NodePort"))
        await apply(applier, svc_yaml(type_="ClusterIP"))
        # The port it gave up can be asked for by another service.
        c = await apply(applier, svc_yaml(name="other", type_="NodePort",
                                          node_port=a.spec.ports[0].node_port))
        return a, b, c
    a, b, c = with_store(store_factory, body)
    assert 30000 <= a.spec.ports[0].node_port <= 32767
    assert a.spec.ports[0].node_port == b.spec.ports[0].node_port == c.spec.ports[0].node_port


def test_headless_gets_no_address(store_factory):
    async def body(store, applier):
        svc = await apply(applier, svc_yaml(cluster_ip="None"))
        return svc, [rec.key for rec in await store.raw.list(
            f"{store.prefix}/ipam/serviceips/".encode(), keys_only=True)]
    svc, keys = with_store(store_factory, body)
    assert svc.spec.cluster_ip == "None" and keys == []


@pytest.mark.parametrize("first, second, want", [
    pytest.param(svc_yaml("a", cluster_ip="10.96.3.3"), svc_yaml("b", cluster_ip="10.96.3.3"),
                 "svc.yaml[0] spec.clusterIP: 10.96.3.3 is already allocated to service "
                 "default/a", id="ip-taken"),
    pytest.param(svc_yaml("a"), svc_yaml("b", cluster_ip="10.97.0.1"),
                 "svc.yaml[0] spec.clusterIP: 10.97.0.1 is not in the service CIDR "
                 "10.96.0.0/16", id="ip-outside-cidr"),
    pytest.param(svc_yaml("a", type_="NodePort", node_port=30123),
                 svc_yaml("b", type_="NodePort", node_port=30123),
                 "svc.yaml[0] spec.ports[0].nodePort: 30123 is already allocated to service "
                 "default/a", id="node-port-taken"),
])
def test_explicit_addresses_are_validated(store_factory, first, second, want):
    async def body(store, applier):
        await apply(applier, first)
        with pytest.raises(ManifestError) as err:
            await apply(applier, second)
        return str(err.value)
    assert want in with_store(store_factory, body)


def test_delete_releases_the_address(store_factory):
    async def body(store, applier):
        a = await apply(applier, svc_yaml("a", type_="NodePort"))
        await applier.services.delete_service("default", "a")
        b = await apply(applier, svc_yaml("b", type_="NodePort", cluster_ip=a.spec.cluster_ip,
                                          node_port=a.spec.ports[0].node_port))
        return a, b
    a, b = with_store(store_factory, body)
    assert b.spec.cluster_ip == a.spec.cluster_ip


def test_concurrent_applies_never_share_an_address(store_factory):
    async def body(store, applier):
        appliers = [Applier(store, "10.96.0.0/27") for _ in range(4)]
        svcs = await asyncio.gather(*[
            apply(appliers[i % 4], svc_yaml(f"s{i}", type_="NodePort")) for i in range(20)])
        return svcs
    svcs = with_store(store_factory, body)
    ips = [s.spec.cluster_ip for s in svcs]
    ports = [s.spec.ports[0].node_port for s in svcs]
    assert len(set(ips)) == 20 and len(set(ports)) == 20


def test_a_full_range_is_a_clear_error_and_stale_leases_are_taken_over(store_factory):
    async def body(store, applier):
        # A /30 holds two addresses.
        await apply(applier, svc_yaml("a"))
        await apply(applier, svc_yaml("b"))
        with pytest.raises(ManifestError) as err:
            await apply(applier, svc_yaml("c"))
        # A deleted namespace leaves its services' leases behind: delete "a" without them.
        await store.delete(SERVICE, "default", "a")
        applier.cache.clear()
        c = await apply(applier, svc_yaml("c"))
        return str(err.value), c
    message, c = with_store(store_factory, body, cidr="10.96.0.0/30")
    assert ("spec.clusterIP: the service CIDR 10.96.0.0/30 has no free address left"
            in message)
    assert c.spec.cluster_ip in ("10.96.0.1", "10.96.0.2")


def test_allocator_rejects_a_bad_cidr():
    from controlplane.allocators.serviceips import ServiceCIDRError

    with pytest.raises(ServiceCIDRError, match="not an IPv4 network"):
        ServiceAllocator(None, "10.96.0.0/33")
