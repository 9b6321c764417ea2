"""The agent's service rules, rendered without a kernel: the nft text for a table, and the
proxy's skipping of renders and applies that would change nothing."""

from __future__ import annotations

import pytest

from moorage.v1 import agent_pb2
from nodeagent.network.services import (
    Endpoint,
    NodeContext,
    PortRule,
    ServiceProxy,
    render,
    render_delete,
    rules_from_table,
)

NODE = NodeContext(underlay_ip="10.199.1.11", cluster_cidr="10.244.0.0/16",
                   pod_cidr="10.244.1.0/24", bridge="moor0")


def table(*services: agent_pb2.ServiceEntry) -> agent_pb2.ServiceTable:
    return agent_pb2.ServiceTable(services=list(services))


def web(endpoints=(("10.244.1.2", 8080), ("10.244.2.2", 8080), ("10.244.3.2", 8080)),
        node_port=0, cluster_ip="10.96.0.10", protocol="TCP") -> agent_pb2.ServiceEntry:
    entry = agent_pb2.ServiceEntry(namespace="default", name="web",
                                   type="NodePort" if node_port else "ClusterIP",
                                   cluster_ip=cluster_ip)
    entry.ports.add(name="http", protocol=protocol, port=80, node_port=node_port)
    for i, (ip, port) in enumerate(endpoints):
        entry.endpoints.add(ip=ip, pod=f"web-{i}", node=f"n{i}", ports=[port])
    return entry


def test_table_becomes_one_rule_per_service_port():
    rules = rules_from_table(table(web(node_port=30080)))
    assert rules == (PortRule("default", "web", "tcp", "10.96.0.10", 80, 30080, (
        Endpoint("10.244.1.2", 8080), Endpoint("10.244.2.2", 8080),
        Endpoint("10.244.3.2", 8080))),)


@pytest.mark.parametrize("entry, want", [
    pytest.param(web(cluster_ip="None"), (), id="headless-has-no-rules"),
    pytest.param(web(endpoints=(("10.244.1.2", 0),)), (), id="unresolved-named-port-skipped"),
])
def test_rules_leave_out(entry, want):
    assert all(r.endpoints == want for r in rules_from_table(table(entry)))


def test_render_balances_evenly_over_every_endpoint():
    text = render(rules_from_table(table(web())), NODE)
    assert ("10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80" in text)
    assert ("meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.244.1.2 . 8080, "
            "1 : 10.244.2.2 . 8080, 2 : 10.244.3.2 . 8080 }") in text


def test_render_replaces_the_table_atomically():
    text = render((), NODE)
    # Declare, delete, re-add: one transaction that works whether or not the table exists.
    assert text.startswith("table ip moorage-svc {}\ndelete table ip moorage-svc\n"
                           "table ip moorage-svc {\n")
    assert render_delete() == "table ip moorage-svc {}\ndelete table ip moorage-svc\n"


def test_single_endpoint_needs_no_numgen():
    text = render(rules_from_table(table(web(endpoints=(("10.244.2.7", 9000),)))), NODE)
    assert "meta l4proto tcp dnat ip to 10.244.2.7:9000" in text
    assert "numgen" not in text


def test_node_port_answers_on_the_underlay_address_and_is_always_masqueraded():
    text = render(rules_from_table(table(web(node_port=30080))), NODE)
    assert "tcp . 30080 : goto np-default/web/tcp/80" in text
    assert "ip daddr 10.199.1.11 meta l4proto . th dport vmap @node-ports" in text
    assert ("chain np-default/web/tcp/80 {\n    meta mark set meta mark | 0x8000\n"
            "    goto svc-default/web/tcp/80\n  }") in text
    assert "meta mark & 0x8000 != 0 goto masq" in text


def test_masquerade_from_outside_the_pod_network_and_on_the_local_bridge():
    text = render(rules_from_table(table(web())), NODE)
    assert "ip saddr != 10.244.0.0/16 goto masq" in text
    # Pod to pod on this bridge, and a pod reaching itself (hairpin).
    assert 'oifname "moor0" ip saddr 10.244.1.0/24 goto masq' in text
    assert "masquerade fully-random" in text


def test_both_nat_hooks_see_service_traffic():
    text = render((), NODE)
    assert "type nat hook prerouting priority dstnat; policy accept;\n    jump services" in text
    assert "type nat hook output priority -100; policy accept;\n    jump services" in text


def test_service_without_endpoints_is_refused():
    text = render(rules_from_table(table(web(endpoints=(), node_port=30080))), NODE)
    assert "elements = { 10.96.0.10 . tcp . 80 }" in text
    assert "elements = { tcp . 30080 }" in text
    assert "chain svc-" not in text


def test_udp_ports_get_udp_rules():
    text = render(rules_from_table(table(web(protocol="UDP"))), NODE)
    assert "10.96.0.10 . udp . 80 : goto svc-default/web/udp/80" in text
    assert "meta l4proto udp dnat ip to numgen" in text


def test_empty_sets_have_no_elements_line():
    assert "elements" not in render((), NODE)


def test_proxy_skips_renders_and_applies_that_change_nothing():
    applied, now = [], [0.0]
    proxy = ServiceProxy(lambda: NODE, apply=applied.append, clock=lambda: now[0],
                         reapply_seconds=30)
    assert proxy.sync() is False                       # no table yet
    proxy.update(table(web()))
    assert proxy.sync() is True
    proxy.update(table(web()))                          # the same table again
    assert proxy.sync() is False
    proxy.update(table(web(endpoints=(("10.244.1.2", 8080),))))
    assert proxy.sync() is True
    assert "10.244.2.2" not in applied[-1]
    now[0] = 31.0                                       # drift repair
    assert proxy.sync() is True
    assert len(applied) == 3


def test_proxy_waits_for_the_node_network():
    node = [None]
    applied = []
    proxy = ServiceProxy(lambda: node[0], apply=applied.append)
    proxy.update(table(web()))
    assert proxy.sync() is False and applied == []
    node[0] = NODE
    assert proxy.sync() is True


def test_proxy_flushes_udp_conntrack_of_endpoints_that_left():
    applied, flushed = [], []
    proxy = ServiceProxy(lambda: NODE, apply=applied.append,
                         flush=lambda ips: flushed.append(set(ips)) or 0)
    proxy.update(table(web(protocol="UDP")))
    assert proxy.sync() and flushed == []               # nothing left yet
    proxy.update(table(web(protocol="UDP", endpoints=(("10.244.1.2", 8080),))))
    assert proxy.sync()
    assert flushed == [{"10.244.2.2", "10.244.3.2"}]
    # TCP endpoints leaving need nothing: their connections end (or get reset) on their own.
    proxy.update(table(web(), web(protocol="UDP", endpoints=(("10.244.1.2", 8080),))))
    proxy.sync()
    proxy.update(table(web(endpoints=()), web(protocol="UDP",
                                              endpoints=(("10.244.1.2", 8080),))))
    proxy.sync()
    assert flushed == [{"10.244.2.2", "10.244.3.2"}]


def test_stale_udp_endpoints_are_per_service_port():
    from nodeagent.network.services import stale_udp_endpoints

    dns = agent_pb2.ServiceEntry(namespace="kube", name="dns", cluster_ip="10.96.0.53")
    dns.ports.add(name="dns", protocol="UDP", port=53)
    dns.endpoints.add(ip="10.244.1.2", pod="dns-0", node="n0", ports=[53])
    before = rules_from_table(table(web(protocol="UDP"), dns))
    # 10.244.1.2 left web but is still dns's endpoint: its web flows go, all the same.
    after = rules_from_table(table(web(protocol="UDP", endpoints=()), dns))
    assert stale_udp_endpoints(before, after) == {"10.244.1.2", "10.244.2.2", "10.244.3.2"}
    assert stale_udp_endpoints(before, before) == set()
