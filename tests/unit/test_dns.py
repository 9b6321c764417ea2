"""Cluster DNS: the zone built from a service table and the answers to queries (pure), then the
server on a real UDP socket on 127.0.0.1 queried with dnslib's client, forwarding included."""

from __future__ import annotations

import socket
import threading

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from moorage.v1 import agent_pb2
from nodeagent.network.dns import ClusterDNS, answer, host_nameservers, zone
from nodeagent.pods import files as podfiles
from nodeagent.runtime.rootfs import bind_files
from nodeagent.runtime.syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT, RecordingSyscalls


def table() -> agent_pb2.ServiceTable:
    t = agent_pb2.ServiceTable()
    t.services.add(namespace="default", name="web", type="ClusterIP", cluster_ip="10.96.0.50")
    db = t.services.add(namespace="shop", name="db", type="ClusterIP", cluster_ip="None")
    db.endpoints.add(ip="10.244.1.2", pod="db-0", hostname="db-0")
    db.endpoints.add(ip="10.244.2.2", pod="db-1", hostname="db-1")
    db.endpoints.add(ip="10.244.3.2", pod="db-x")          # no hostname: no name of its own
    return t


NAMES = zone(table())


def ask(name: str, qtype: str = "A") -> DNSRecord | None:
    return answer(DNSRecord.question(name, qtype), NAMES)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


@pytest.mark.parametrize("name, want", [
    pytest.param("web.default.svc.cluster.local", ["10.96.0.50"], id="clusterip"),
    pytest.param("WEB.Default.svc.cluster.local.", ["10.96.0.50"], id="case-and-dot"),
    pytest.param("db.shop.svc.cluster.local", ["10.244.1.2", "10.244.2.2", "10.244.3.2"],
                 id="headless-all-endpoints"),
    pytest.param("db-1.db.shop.svc.cluster.local", ["10.244.2.2"], id="headless-hostname"),
])
def test_a_records(name, want):
    reply = ask(name)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert addresses(reply) == want


@pytest.mark.parametrize("name", [
    "nosuch.default.svc.cluster.local", "web.other.svc.cluster.local",
    "db-x.db.shop.svc.cluster.local", "web.default.cluster.local", "web.cluster.local"])
def test_unknown_names_under_the_domain_are_nxdomain(name):
    reply = ask(name)
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.rr == [] and reply.auth[0].rtype == QTYPE.SOA


@pytest.mark.parametrize("name, qtype", [
    pytest.param("web.default.svc.cluster.local", "AAAA", id="aaaa-of-a-service"),
    pytest.param("default.svc.cluster.local", "A", id="namespace-is-a-parent"),
    pytest.param("svc.cluster.local", "A", id="svc"),
    pytest.param("cluster.local", "A", id="domain"),
])
def test_existing_names_without_such_records_are_nodata(name, qtype):
    reply = ask(name, qtype)
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


@pytest.mark.parametrize("name", ["example.com", "cluster.local.example.com", "localcluster.local"])
def test_names_outside_the_domain_are_forwarded(name):
    assert ask(name) is None


def test_headless_service_without_endpoints_exists_with_no_address():
    t = agent_pb2.ServiceTable()
    t.services.add(namespace="a", name="h", cluster_ip="None")
    reply = answer(DNSRecord.question("h.a.svc.cluster.local"), zone(t))
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_host_nameservers():
    text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  1.1.1.1 \noptions x\n"
    assert host_nameservers(text) == ["10.0.0.2", "1.1.1.1"]


def test_pod_files_render():
    assert podfiles.resolv_conf("10.244.1.1", "shop") == (
        "nameserver 10.244.1.1\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n")
    assert podfiles.hosts("10.244.1.7", "web-1").splitlines() == [
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.244.1.7\tweb-1"]


def test_pod_files_written_and_removed(tmp_path):
    d = tmp_path / "pods" / "uid"
    files = podfiles.write(str(d), nameserver="10.244.1.1", namespace="default",
                           pod_ip="10.244.1.7", hostname="web-1")
    assert files == (("/etc/resolv.conf", str(d / "resolv.conf")),
                     ("/etc/hosts", str(d / "hosts")))
    assert (d / "resolv.conf").read_text().startswith("nameserver 10.244.1.1\n")
    podfiles.remove(str(d))
    assert not d.exists()


def test_bind_files_mounts_read_only_over_the_rootfs():
    fake = RecordingSyscalls()
    bind_files(fake, "/s/c/rootfs", (("/etc/resolv.conf", "/st/pods/u/resolv.conf"),))
    assert [c.args[0] for c in fake.named("mkdir")] == ["/s/c/rootfs/etc"]
    assert [c.args[0] for c in fake.named("touch")] == ["/s/c/rootfs/etc/resolv.conf"]
    (src, dst, _, flags), (src2, dst2, _, flags2) = [c.args[:4] for c in fake.named("mount")]
    assert (src, dst, flags) == ("/st/pods/u/resolv.conf", "/s/c/rootfs/etc/resolv.conf", MS_BIND)
    assert (src2, dst2) == (src, dst) and flags2 & (MS_BIND | MS_REMOUNT | MS_RDONLY) == (
        MS_BIND | MS_REMOUNT | MS_RDONLY)


@pytest.mark.parametrize("path", ["etc/hosts", "/etc/../../host"])
def test_bind_files_refuses_paths_outside_the_root(path):
    with pytest.raises(ValueError, match="absolute path"):
        bind_files(RecordingSyscalls(), "/r", ((path, "/x"),))


# ---- the server, on real sockets ----

@pytest.fixture
def upstream():
    """A stand-in for the host's resolver: answers every name outside cluster.local."""
    names = {"example.com": ("192.0.2.7",), "com": ()}
    up = ClusterDNS(domain="com", port=0, upstreams=list)
    up.names = names
    up.serve("127.0.0.1")
    yield up
    up.close()


@pytest.fixture
def server(upstream):
    host, port = upstream.listening()
    dns = ClusterDNS(port=0, upstreams=lambda: [host], upstream_port=port, timeout=1.0)
    dns.update(table())
    dns.serve("127.0.0.1")
    yield dns
    dns.close()


def query(dns: ClusterDNS, name: str, tcp: bool = False) -> DNSRecord:
    host, port = dns.listening()
    return DNSRecord.parse(DNSRecord.question(name).send(host, port, tcp=tcp, timeout=5))


def test_server_answers_over_udp_and_tcp(server):
    for tcp in (False, True):
        reply = query(server, "web.default.svc.cluster.local", tcp=tcp)
        assert addresses(reply) == ["10.96.0.50"]
    assert query(server, "nope.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN


def test_server_sees_each_new_table(server):
    t = table()
    t.services[0].cluster_ip = "10.96.0.51"
    server.update(t)
    assert addresses(query(server, "web.default.svc.cluster.local")) == ["10.96.0.51"]


def test_server_forwards_other_names(server):
    assert addresses(query(server, "example.com")) == ["192.0.2.7"]


def test_forwarding_failure_is_servfail(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server.upstream_port, server.timeout = silent.getsockname()[1], 0.3
        assert query(server, "example.com").header.rcode == RCODE.SERVFAIL


def test_serve_when_follows_the_address_and_stops():
    stop = threading.Event()
    address = {"now": None}
    dns = ClusterDNS(port=0, upstreams=list)
    thread = dns.serve_when(lambda: address["now"], stop, period=0.01)
    try:
        address["now"] = "127.0.0.1"
        for _ in range(500):
            if dns.listening():
                break
            stop.wait(0.01)
        assert dns.listening()[0] == "127.0.0.1"
    finally:
        stop.set()
        thread.join(5)
    assert dns.listening() is None
