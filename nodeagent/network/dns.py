"""The node-local cluster DNS server: names of Services under cluster.local answered from the
service table the control plane streams to the agent, every other name forwarded to the
host's resolvers.

`zone()` and `answer()` are pure (a table in, a name map out; a query in, a reply or "forward"
out); `ClusterDNS` is the thin shell around sockets, threads and the upstream resolvers.
Answers always come from the last whole table: `update` swaps one immutable map.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from moorage.v1 import agent_pb2

log = logging.getLogger("moorage.agent.dns")

CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 53
# Short, so a changed endpoint set is seen quickly (kube-dns uses 30 s; CoreDNS 5 s).
TTL = 5
HEADLESS = "None"
FORWARD_TIMEOUT_SECONDS = 2.0
HOST_RESOLV_CONF = "/etc/resolv.conf"

# name (lowercase, no trailing dot) -> the A records it has; () for a name that exists with
# no address (an empty non-terminal such as `default.svc.cluster.local`).
Zone = Mapping[str, tuple[str, ...]]


def zone(table: agent_pb2.ServiceTable, domain: str = CLUSTER_DOMAIN) -> dict[str, tuple]:
    """The names the table defines: `<svc>.<ns>.svc.<domain>` -> its ClusterIP, or for a
    headless service its ready endpoints' IPs, plus `<hostname>.<svc>.<ns>.svc.<domain>` for
    each endpoint with a hostname; every parent name under the domain exists with no address."""
    names: dict[str, list[str]] = {}
    for s in table.services:
        base = f"{s.name}.{s.namespace}.svc.{domain}".lower()
        ips = names.setdefault(base, [])
        if s.cluster_ip == HEADLESS:
            for e in s.endpoints:
                if e.ip and e.ip not in ips:
                    ips.append(e.ip)
                if e.hostname and e.ip:
                    names.setdefault(f"{e.hostname}.{base}".lower(), []).append(e.ip)
        elif s.cluster_ip:
            ips.append(s.cluster_ip)
    for name in list(names):
        parent = name
        while parent != domain:
            parent = parent.split(".", 1)[1]
            names.setdefault(parent, [])
    names.setdefault(domain, [])
    return {k: tuple(v) for k, v in names.items()}


def _soa(domain: str) -> RR:
    return RR(domain, QTYPE.SOA, ttl=TTL, rdata=SOA(
        f"ns.dns.{domain}", f"hostmaster.{domain}", (1, 7200, 1800, 86400, TTL)))


def answer(request: DNSRecord, names: Zone, domain: str = CLUSTER_DOMAIN) -> DNSRecord | None:
    """The reply to `request`, or None when its name is outside the cluster domain (forward it).

    A known name answers its A records (none for other types: NODATA, so a resolver asking A
    and AAAA does not take the missing AAAA for a missing name); an unknown one under the
    domain is NXDOMAIN, with the SOA so resolvers cache the miss only briefly.
    """
    q = request.q
    name = str(q.qname).rstrip(".").lower()
    if name != domain and not name.endswith("." + domain):
        return None
    reply = request.reply()   # aa=1, ra=1
    ips = names.get(name)
    if ips is None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(_soa(domain))
    elif q.qtype in (QTYPE.A, QTYPE.ANY) and ips:
        for ip in ips:
            reply.add_answer(RR(q.qname, QTYPE.A, ttl=TTL, rdata=A(ip)))
    else:
        reply.add_auth(_soa(domain))
    return reply


def servfail(request: DNSRecord) -> DNSRecord:
    reply = request.reply()
    reply.header.rcode = RCODE.SERVFAIL
    return reply


def host_nameservers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            out.append(fields[1])
    return out


def read_host_nameservers(path: str = HOST_RESOLV_CONF) -> list[str]:
    try:
        with open(path) as f:
            return host_nameservers(f.read())
    except OSError:
        return []


class _Resolver:
    """dnslib's resolver interface: the cluster zone first, then the upstreams."""

    def __init__(self, dns: ClusterDNS):
        self.dns = dns

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = answer(request, self.dns.names, self.dns.domain)
        if reply is not None:
            return reply
        return self.dns.forward(request, tcp=handler.protocol == "tcp")


class _QuietLogger(DNSLogger):
    def __init__(self):
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-data", prefix=False)

    def log_error(self, handler, e):
        log.debug("dns: bad request from %s: %s", handler.client_address, e)


class ClusterDNS:
    """Serves the zone on one address (UDP and TCP); `update` is a service-table consumer."""

    def __init__(self, domain: str = CLUSTER_DOMAIN, port: int = DNS_PORT,
                 upstreams: Callable[[], list[str]] = read_host_nameservers,
                 timeout: float = FORWARD_TIMEOUT_SECONDS, upstream_port: int = DNS_PORT):
        self.domain, self.port, self.upstreams, self.timeout = domain, port, upstreams, timeout
        self.upstream_port = upstream_port
        self.names: Zone = zone(agent_pb2.ServiceTable(), domain)
        self.address: str | None = None
        self._servers: list[DNSServer] = []
        self._lock = threading.Lock()

    def update(self, table: agent_pb2.ServiceTable) -> None:
        self.names = zone(table, self.domain)

    def forward(self, request: DNSRecord, tcp: bool = False) -> DNSRecord:
        """Asks each upstream in turn, all within `timeout`; SERVFAIL if none answers."""
        deadline = time.monotonic() + self.timeout
        for server in self.upstreams():
            if server == self.address and self.upstream_port == self.port:
                continue        # never forward to ourselves
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                raw = request.send(server, self.upstream_port, tcp=tcp, timeout=left)
                reply = DNSRecord.parse(raw)
            except (OSError, ValueError, DNSError) as err:   # socket errors, timeouts, bad replies
                log.debug("dns: upstream %s: %s", server, err)
                continue
            if reply.header.id == request.header.id:
                return reply
        return servfail(request)

    def serve(self, address: str) -> None:
        """Listens on `address` (again, if it changed); idempotent."""
        with self._lock:
            if address == self.address:
                return
            self._stop_servers()
            servers: list[DNSServer] = []
            port = self.port
            try:
                for tcp in (False, True):
                    s = DNSServer(_Resolver(self), address=address, port=port, tcp=tcp,
                                  logger=_QuietLogger())
                    servers.append(s)
                    port = s.server.socket.getsockname()[1]   # port 0: TCP takes UDP's
            except OSError:
                for s in servers:
                    s.server.server_close()
                raise
            for s in servers:
                s.start_thread()
            self._servers, self.address = servers, address
            log.info("cluster DNS: serving %s on %s:%d", self.domain, address, port)

    def serve_when(self, address: Callable[[], str | None], stop: threading.Event,
                   period: float = 0.5) -> threading.Thread:
        """A thread that serves on `address()` once it is known (the pod network's gateway,
        once the overlay is set up), follows it if it changes, and stops with `stop`."""
        def loop() -> None:
            while not stop.is_set():
                want = address()
                if want and want != self.address:
                    try:
                        self.serve(want)
                    except OSError as err:
                        log.error("cluster DNS: cannot listen on %s:%d: %s", want, self.port,
                                  err)
                stop.wait(period)
            self.close()
        thread = threading.Thread(target=loop, name="dns", daemon=True)
        thread.start()
        return thread

    def _stop_servers(self) -> None:
        for s in self._servers:
            s.server.shutdown()
            s.server.server_close()
        self._servers, self.address = [], None

    def listening(self) -> tuple[str, int] | None:
        """Where the servers listen (the real port when made with port 0), or None."""
        with self._lock:
            return self._servers[0].server.socket.getsockname()[:2] if self._servers else None

    def close(self) -> None:
        with self._lock:
            self._stop_servers()
