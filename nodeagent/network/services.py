"""Service rules: the service table from the control plane rendered as one nftables table and
swapped in atomically with `nft -f -` (delete and re-add in one transaction, as kube-proxy's
nftables mode does), so a packet meets either the old rules or the new ones, never a mix.

`render` is pure (rules and node facts in, nft script out); `ServiceProxy` is the thin shell:
it keeps the latest table, re-renders only when the table or the node changes, skips applies
whose text is what the kernel already has, and re-applies now and then to repair drift.

Datapath, per node:
- nat prerouting (pod traffic arrives routed through the bridge gateway) and nat output
  (the node's own traffic) send VIP:port, and NodePort on the node's underlay address, to one
  endpoint picked by `numgen random` (even in expectation), local or across the overlay;
- nat postrouting masquerades where the reply would otherwise miss this node's conntrack:
  NodePort traffic (the endpoint may be on another node), traffic from outside the pod
  network (the node itself), and pod-to-pod on this bridge, which includes a pod reaching
  itself through its service (hairpin), whose reply would be bridged straight back;
- a filter chain refuses connections to a service port that has no endpoint;
- when a UDP endpoint leaves a service, the conntrack entries DNATed to it are deleted, as
  kube-proxy does: UDP has no end, so a client sending steadily would otherwise keep its
  entry, and keep talking to the gone endpoint, for as long as it sends;
- every port of the pod bridge is in hairpin mode (set by the datapath's attach_pod): with
  br_netfilter loaded (Docker and most distributions load it), a packet DNATed back to the pod
  that sent it is bridged out of the port it came in on, which a bridge does only in hairpin
  mode (the CNI bridge plugin's hairpinMode).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from moorage.v1 import agent_pb2
from nodeagent.network import nft
from nodeagent.runtime.netns import path as sandbox_path

log = logging.getLogger("moorage.agent.services")

TABLE = "moorage-svc"
# Packet marks set in nat prerouting/output and read (and cleared) in postrouting.
MARK_SERVICE = 0x4000        # DNATed to an endpoint: masquerade if the reply needs it
MARK_NODEPORT = 0x8000       # came in on a NodePort: always masquerade
MARKS = MARK_SERVICE | MARK_NODEPORT
# Besides every change, the table is applied again this often (someone may have flushed it).
REAPPLY_SECONDS = 30.0
PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


class ServiceRulesError(Exception):
    """nft refused the service table."""


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What the rules need to know about this node."""

    underlay_ip: str          # NodePorts answer here
    cluster_cidr: str         # every pod's address
    pod_cidr: str             # this node's pods
    bridge: str = "moor0"


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class PortRule:
    """One service port: where its traffic comes in and the endpoints it goes to."""

    namespace: str
    name: str
    protocol: str             # "tcp" or "udp"
    vip: str                  # "" for none (headless)
    port: int
    node_port: int            # 0 for none
    endpoints: tuple[Endpoint, ...]

    @property
    def chain(self) -> str:
        # Chain names allow letters, digits and "/-_."; namespaces and names are DNS labels.
        return f"svc-{self.namespace}/{self.name}/{self.protocol}/{self.port}"

    @property
    def nodeport_chain(self) -> str:
        return f"np-{self.namespace}/{self.name}/{self.protocol}/{self.port}"


def rules_from_table(table: agent_pb2.ServiceTable) -> tuple[PortRule, ...]:
    """The wire table as rules: one per service port that has a VIP or a NodePort."""
    rules = []
    for svc in table.services:
        vip = svc.cluster_ip if svc.cluster_ip not in ("", "None") else ""
        for i, p in enumerate(svc.ports):
            proto = PROTOCOLS.get(p.protocol or "TCP")
            if proto is None or not (vip or p.node_port):
                continue
            eps = tuple(Endpoint(e.ip, e.ports[i]) for e in svc.endpoints
                        if i < len(e.ports) and e.ports[i] > 0 and e.ip)
            rules.append(PortRule(svc.namespace, svc.name, proto, vip, p.port, p.node_port,
                                  eps))
    return tuple(sorted(rules, key=lambda r: (r.namespace, r.name, r.protocol, r.port)))


# ---- rendering (pure) ----

def _dnat(rule: PortRule) -> str:
    eps = rule.endpoints
    if len(eps) == 1:
        return f"meta l4proto {rule.protocol} dnat ip to {eps[0].ip}:{eps[0].port}"
    elements = ", ".join(f"{i} : {e.ip} . {e.port}" for i, e in enumerate(eps))
    return (f"meta l4proto {rule.protocol} dnat ip to numgen random mod {len(eps)} "
            f"map {{ {elements} }}")


def _elements(items: Sequence[str]) -> list[str]:
    return [f"    elements = {{ {', '.join(items)} }}"] if items else []


def render(rules: Iterable[PortRule], node: NodeContext, table: str = TABLE) -> str:
    """The whole table as one `nft -f` script that replaces any previous one atomically."""
    rules = list(rules)
    cluster = str(ipaddress.IPv4Network(node.cluster_cidr, strict=False))
    local = str(ipaddress.IPv4Network(node.pod_cidr, strict=False))
    served = [r for r in rules if r.endpoints]
    vips = [f"{r.vip} . {r.protocol} . {r.port} : goto {r.chain}" for r in served if r.vip]
    node_ports = [f"{r.protocol} . {r.node_port} : goto {r.nodeport_chain}"
                  for r in served if r.node_port]
    dead_vips = [f"{r.vip} . {r.protocol} . {r.port}" for r in rules
                 if r.vip and not r.endpoints]
    dead_ports = [f"{r.protocol} . {r.node_port}" for r in rules
                  if r.node_port and not r.endpoints]
    out = [f"table ip {table} {{}}", f"delete table ip {table}", f"table ip {table} {{"]
    out += ["  map service-ips {",
            "    type ipv4_addr . inet_proto . inet_service : verdict", *_elements(vips),
            "  }",
            "  map node-ports {",
            "    type inet_proto . inet_service : verdict", *_elements(node_ports),
            "  }",
            "  set no-endpoints {",
            "    type ipv4_addr . inet_proto . inet_service", *_elements(dead_vips),
            "  }",
            "  set no-endpoint-node-ports {",
            "    type inet_proto . inet_service", *_elements(dead_ports),
            "  }"]
    for r in served:
        out += [f"  chain {r.chain} {{",
                f"    meta mark set meta mark | {MARK_SERVICE:#x}",
                f"    {_dnat(r)}",
                "  }"]
        if r.node_port:
            out += [f"  chain {r.nodeport_chain} {{",
                    f"    meta mark set meta mark | {MARK_NODEPORT:#x}",
                    f"    goto {r.chain}",
                    "  }"]
    out += ["  chain services {",
            "    ip daddr . meta l4proto . th dport vmap @service-ips",
            f"    ip daddr {node.underlay_ip} meta l4proto . th dport vmap @node-ports",
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            "    jump services",
            "  }",
            "  chain output {",
            "    type nat hook output priority -100; policy accept;",
            "    jump services",
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    meta mark & {MARKS:#x} == 0 return",
            f"    meta mark & {MARK_NODEPORT:#x} != 0 goto masq",
            f"    ip saddr != {cluster} goto masq",
            f'    oifname "{node.bridge}" ip saddr {local} goto masq',
            f"    meta mark set meta mark & {0xFFFFFFFF ^ MARKS:#x}",
            "  }",
            "  chain masq {",
            f"    meta mark set meta mark & {0xFFFFFFFF ^ MARKS:#x}",
            "    masquerade fully-random",
            "  }",
            "  chain refuse {",
            "    ip daddr . meta l4proto . th dport @no-endpoints reject",
            f"    ip daddr {node.underlay_ip} meta l4proto . th dport "
            "@no-endpoint-node-ports reject",
            "  }"]
    for hook in ("input", "forward", "output"):
        out += [f"  chain filter-{hook} {{",
                f"    type filter hook {hook} priority filter - 10; policy accept;",
                "    jump refuse",
                "  }"]
    out += ["}"]
    return "\n".join(out) + "\n"


def render_delete(table: str = TABLE) -> str:
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


def stale_udp_endpoints(before: Iterable[PortRule], after: Iterable[PortRule]) -> set[str]:
    """Addresses that were a UDP endpoint of some service port and no longer are of that one."""
    now = {(r.chain, e.ip) for r in after if r.protocol == "udp" for e in r.endpoints}
    return {e.ip for r in before if r.protocol == "udp" for e in r.endpoints
            if (r.chain, e.ip) not in now}


# ---- applying ----

def flush_udp_conntrack(ips: Iterable[str]) -> int:
    """Deletes the UDP conntrack entries whose replies come from one of `ips` after a DNAT
    (the original destination was something else: a VIP or a NodePort), in this thread's
    network namespace; flows sent to those addresses directly are left alone. Returns how many
    were deleted."""
    from pyroute2 import Conntrack
    from pyroute2.conntrack import NFCTAttrTuple

    deleted = 0
    with Conntrack() as ct:
        for ip in sorted(set(ips)):
            match = NFCTAttrTuple(proto=socket.IPPROTO_UDP, saddr=ip)
            for entry in list(ct.dump_entries(tuple_reply=match)):
                if entry.tuple_reply.saddr != ip or entry.tuple_orig.daddr == ip:
                    continue
                try:
                    ct.delete(entry)
                    deleted += 1
                except OSError:   # it expired meanwhile
                    pass
    return deleted


def apply_script(script: str, netns: str | None = None) -> None:
    """Runs an nft script as one transaction (in a named netns if given)."""
    proc = nft.run(["-f", "-"], script, netns_path=sandbox_path(netns) if netns else None)
    if proc.returncode != 0:
        raise ServiceRulesError(f"nft -f failed: {proc.stderr.strip()[:2000]}")


class ServiceProxy:
    """Keeps the node's service table in the kernel. `update` is called from the session
    thread and never blocks; a thread of its own renders and applies."""

    def __init__(self, context: Callable[[], NodeContext | None],
                 apply: Callable[[str], None] = apply_script,
                 clock: Callable[[], float] = time.monotonic,
                 reapply_seconds: float = REAPPLY_SECONDS,
                 flush: Callable[[Iterable[str]], int] = flush_udp_conntrack):
        self.context = context
        self.apply = apply
        self.flush = flush
        self._rules: tuple[PortRule, ...] = ()     # as last applied
        self.clock = clock
        self.reapply_seconds = reapply_seconds
        self._lock = threading.Lock()
        self._table: agent_pb2.ServiceTable | None = None
        self._wake = threading.Event()
        self._rendered_for: tuple | None = None
        self._pending: tuple[PortRule, ...] = ()   # as last rendered
        self._text: str | None = None
        self.applied: str | None = None          # the text the kernel has, as far as we know
        self._next_reapply = 0.0

    def update(self, table: agent_pb2.ServiceTable) -> None:
        with self._lock:
            self._table = table
        self._wake.set()

    def sync(self) -> bool:
        """Renders (if the input changed) and applies (if the text changed, or a re-apply is
        due); True when it applied."""
        with self._lock:
            table = self._table
        node = self.context()
        if table is None or node is None:
            return False
        key = (table.SerializeToString(deterministic=True), node)
        if key != self._rendered_for:
            self._pending = rules_from_table(table)
            self._text = render(self._pending, node)
            self._rendered_for = key
        due = self.clock() >= self._next_reapply
        if self._text == self.applied and not due:
            return False
        self.apply(self._text)
        self.applied = self._text
        self._next_reapply = self.clock() + self.reapply_seconds
        stale = stale_udp_endpoints(self._rules, self._pending)
        self._rules = self._pending
        if stale:
            try:
                n = self.flush(stale)
                log.info("service rules: %d UDP conntrack entries to %s deleted", n,
                         ", ".join(sorted(stale)))
            except OSError as err:   # the rules are in; old UDP flows just last longer
                log.warning("service rules: deleting UDP conntrack entries: %s", err)
        return True

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        while not stop.is_set():
            self._wake.wait(poll_seconds)
            self._wake.clear()
            try:
                if self.sync():
                    log.debug("service rules applied")
            except (ServiceRulesError, OSError) as err:
                log.error("service rules: %s", err)
                self.applied = None

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="services",
                                  daemon=True)
        thread.start()
        return thread


def node_context(network, underlay_ip: str) -> NodeContext | None:
    """This node's facts from the agent's overlay, once it is set up."""
    net = getattr(network, "net", None)
    if net is None:
        return None
    cfg = net.config
    return NodeContext(underlay_ip=underlay_ip, cluster_cidr=cfg.cluster_cidr,
                       pod_cidr=cfg.pod_cidr, bridge=cfg.bridge)
