"""The control plane's service table: which pods are a service's endpoints, on which port;
and the pure parts of virtual IP and node port allocation."""

from __future__ import annotations

import ipaddress

import pytest

from controlplane.allocators.serviceips import Pool, first_free, leases_of
from moorage.model.endpoints import pod_is_ready, service_entry, target_port
from moorage.v1 import objects_pb2 as pb


def make_service(selector=None, target=None, ns="default", type_="ClusterIP",
                 node_port=0) -> pb.Service:
    svc = pb.Service(api_version="v1", kind="Service")
    svc.metadata.name, svc.metadata.namespace = "web", ns
    svc.spec.type, svc.spec.cluster_ip = type_, "10.96.0.10"
    svc.spec.selector.update({"app": "web"} if selector is None else selector)
    port = svc.spec.ports.add(name="http", protocol="TCP", port=80, node_port=node_port)
    if isinstance(target, str):
        port.target_port.str_val = target
    elif target is not None:
        port.target_port.int_val = target
    return svc


def make_pod(name="web-1", ip="10.244.1.5", ready=True, phase="Running", ns="default",
             labels=None, ports=()) -> pb.Pod:
    pod = pb.Pod(api_version="v1", kind="Pod")
    pod.metadata.name, pod.metadata.namespace = name, ns
    pod.metadata.labels.update({"app": "web"} if labels is None else labels)
    pod.spec.node_name = "n1"
    c = pod.spec.containers.add(name="app", image="busybox")
    for pname, number in ports:
        c.ports.add(name=pname, container_port=number, protocol="TCP")
    pod.status.phase, pod.status.pod_ip = phase, ip
    pod.status.conditions.add(type="Ready", status="True" if ready else "False")
    return pod


@pytest.mark.parametrize("pod, want", [
    pytest.param(make_pod(), True, id="ready"),
    pytest.param(make_pod(ready=False), False, id="not-ready"),
    pytest.param(make_pod(phase="Pending"), False, id="pending"),
    pytest.param(make_pod(ip=""), False, id="no-ip"),
])
def test_pod_is_ready(pod, want):
    assert pod_is_ready(pod) is want


def test_endpoints_are_ready_selected_pods_of_the_namespace_sorted_by_name():
    pods = [make_pod("web-2", "10.244.2.5"), make_pod("web-1", "10.244.1.5"),
            make_pod("web-3", "10.244.3.5", ready=False),
            make_pod("other", "10.244.1.9", labels={"app": "db"}),
            make_pod("elsewhere", "10.244.1.8", ns="prod")]
    entry = service_entry(make_service(target=8080), pods)
    assert [(e.pod, e.ip, list(e.ports)) for e in entry.endpoints] == [
        ("web-1", "10.244.1.5", [8080]), ("web-2", "10.244.2.5", [8080])]
    assert entry.cluster_ip == "10.96.0.10" and entry.ports[0].port == 80


@pytest.mark.parametrize("hostname, subdomain, want", [
    pytest.param("web-1", "web", "web-1", id="hostname-and-subdomain"),
    pytest.param("web-1", "other", "", id="subdomain-of-another-service"),
    pytest.param("", "web", "", id="no-hostname"),
    pytest.param("web-1", "", "", id="no-subdomain"),
])
def test_a_pod_has_its_own_name_only_under_the_service_it_names(hostname, subdomain, want):
    pod = make_pod()
    pod.spec.hostname, pod.spec.subdomain = hostname, subdomain
    svc = make_service()
    svc.spec.cluster_ip = "None"
    assert [e.hostname for e in service_entry(svc, [pod]).endpoints] == [want]


def test_selectorless_service_has_no_endpoints():
    assert not service_entry(make_service(selector={}), [make_pod()]).endpoints


@pytest.mark.parametrize("target, ports, want", [
    pytest.param(None, (), 80, id="defaults-to-port"),
    pytest.param(8080, (), 8080, id="number"),
    pytest.param("http", (("http", 8081),), 8081, id="name-resolved-per-pod"),
    pytest.param("http", (("metrics", 9090),), 0, id="name-missing"),
])
def test_target_port(target, ports, want):
    svc = make_service(target=target)
    assert target_port(svc.spec.ports[0], make_pod(ports=ports)) == want


def test_node_port_only_for_node_port_services():
    entry = service_entry(make_service(type_="NodePort", node_port=30080), [])
    assert entry.ports[0].node_port == 30080


@pytest.mark.parametrize("size, taken, start, want", [
    pytest.param(5, set(), 2, 2, id="free-at-start"),
    pytest.param(5, {2, 3}, 2, 4, id="skips-taken"),
    pytest.param(5, {3, 4}, 3, 0, id="wraps"),
    pytest.param(3, {0, 1, 2}, 1, None, id="full"),
])
def test_first_free(size, taken, start, want):
    assert first_free(size, taken.__contains__, start) == want


def test_pool_of_a_cidr_leaves_out_network_and_broadcast():
    pool = Pool.for_cidr(ipaddress.IPv4Network("10.96.0.0/30"))
    assert [pool.value(i) for i in range(pool.size)] == ["10.96.0.1", "10.96.0.2"]
    assert pool.index("10.96.0.3") is None and pool.index("10.96.0.2") == 1
    assert pool.index("not-an-ip") is None


def test_node_port_pool():
    pool = Pool.node_ports()
    assert (pool.value(0), pool.value(pool.size - 1)) == ("30000", "32767")
    assert pool.index("29999") is None


def test_leases_of_headless_and_node_port_services():
    headless = make_service()
    headless.spec.cluster_ip = "None"
    assert leases_of(headless) == (None, set())
    assert leases_of(make_service(type_="NodePort", node_port=30080)) == (
        "10.96.0.10", {30080})


def test_index_broadcasts_the_whole_table_on_each_endpoint_change_only():
    import asyncio

    from controlplane.dispatcher.servicetable import ServiceIndex

    async def go():
        sent = []
        index = ServiceIndex(store=None, broadcast=sent.append, coalesce_seconds=0)
        index._resync_services([make_service(target=8080)])
        assert not index.synced.is_set()
        index._resync_pods([make_pod("web-1", "10.244.1.5")])
        assert index.synced.is_set() and sent == []          # sessions fetch the first one
        assert [e.ip for e in index.message().services[0].endpoints] == ["10.244.1.5"]

        index._put_pod(make_pod("web-2", "10.244.2.5", ready=False))
        index.flush()    # a barrier: whatever the index would send is sent now
        assert sent == []                                    # not ready: nothing changed
        index._put_pod(make_pod("web-2", "10.244.2.5"))
        index._put_pod(make_pod("db-1", "10.244.2.9", labels={"app": "db"}))
        index.flush()
        assert [[e.ip for e in t.services[0].endpoints] for t in sent] == [
            ["10.244.1.5", "10.244.2.5"]]
        index._delete_pod(make_pod("web-1", "10.244.1.5"))
        index.flush()
        assert [e.ip for e in sent[-1].services[0].endpoints] == ["10.244.2.5"]
        index._delete_service(make_service())
        index.flush()
        assert list(sent[-1].services) == []

    asyncio.run(go())
