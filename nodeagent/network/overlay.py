"""The overlay's desired state, computed without touching the kernel.

Pure: names, addresses, MACs, the nftables ruleset and the peer entries a node must hold are
functions of the config and the peer list, and `diff_*` turn desired vs observed into a plan.
Every node derives a peer's VTEP address and MAC from the peer's subnet alone, so nothing but
(name, underlay IP, pod CIDR) has to be exchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moorage.model.network import (  # noqa: F401 - re-exported for the datapath
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
    VXLAN_OVERHEAD,
)

DEFAULT_VNI = DEFAULT_VXLAN_VNI
DEFAULT_PORT = DEFAULT_VXLAN_PORT
DEFAULT_BRIDGE = "moor0"
DEFAULT_VXLAN = "moor.vx"
DEFAULT_NFT_TABLE = "moorage"
DEFAULT_VETH_PREFIX = "mv"
IFNAMSIZ = 15
# Hex digits of the pod uid in a host veth name.
UID_DIGITS = 8
# 0a = locally administered unicast; 58 = "X", the same marker CNI uses for pod MACs.
MAC_OUI = (0x0A, 0x58)


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    underlay_ip: str
    pod_cidr: str


@dataclass(frozen=True, slots=True)
class RouteEntry:
    dst: str         # "10.244.5.0/24"
    gateway: str     # the peer's VTEP address, reached onlink over the vxlan device


@dataclass(frozen=True, slots=True)
class NeighEntry:
    ip: str
    mac: str


@dataclass(frozen=True, slots=True)
class FdbEntry:
    mac: str
    dst: str         # the peer's underlay IP


@dataclass(frozen=True, slots=True)
class PeerEntries:
    routes: frozenset[RouteEntry]
    neighs: frozenset[NeighEntry]
    fdbs: frozenset[FdbEntry]


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """Entries to add (or replace) and to delete; empty when kernel and peers agree."""

    add_routes: tuple[RouteEntry, ...] = ()
    del_routes: tuple[RouteEntry, ...] = ()
    add_neighs: tuple[NeighEntry, ...] = ()
    del_neighs: tuple[NeighEntry, ...] = ()
    add_fdbs: tuple[FdbEntry, ...] = ()
    del_fdbs: tuple[FdbEntry, ...] = ()

    def __bool__(self) -> bool:
        return any((self.add_routes, self.del_routes, self.add_neighs, self.del_neighs,
                    self.add_fdbs, self.del_fdbs))

    def describe(self) -> list[str]:
        out = [f"added route {r.dst} via {r.gateway}" for r in self.add_routes]
        out += [f"removed route {r.dst} via {r.gateway}" for r in self.del_routes]
        out += [f"added neighbour {n.ip} -> {n.mac}" for n in self.add_neighs]
        out += [f"removed neighbour {n.ip} -> {n.mac}" for n in self.del_neighs]
        out += [f"added fdb {f.mac} -> {f.dst}" for f in self.add_fdbs]
        out += [f"removed fdb {f.mac} -> {f.dst}" for f in self.del_fdbs]
        return out


def subnet(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr, strict=False)


def vtep_ip(pod_cidr: str) -> str:
    """The node's VXLAN device address: its subnet's network address (.0)."""
    return str(subnet(pod_cidr).network_address)


def gateway_ip(pod_cidr: str) -> str:
    """The bridge's address, the pods' default gateway (.1)."""
    return str(subnet(pod_cidr).network_address + 1)


def vtep_mac(pod_cidr: str) -> str:
    """A locally administered MAC from the subnet's network address: 10.244.3.0/24 ->
    0a:58:0a:f4:03:00. Distinct subnets of one cluster give distinct MACs."""
    octets = (*MAC_OUI, *subnet(pod_cidr).network_address.packed)
    return ":".join(f"{b:02x}" for b in octets)


def default_mtu(underlay_mtu: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD


def uid_tag(pod_uid: str) -> str:
    hexdigits = "".join(c for c in pod_uid.lower() if c in "0123456789abcdef")
    if len(hexdigits) < UID_DIGITS:
        raise ValueError(f"pod uid {pod_uid!r} needs at least {UID_DIGITS} hex digits")
    return hexdigits[:UID_DIGITS]


def host_ifname(prefix: str, pod_uid: str) -> str:
    """The host end of a pod's veth: `<prefix><8 hex of uid>`, within IFNAMSIZ."""
    name = prefix + uid_tag(pod_uid)
    if len(name) > IFNAMSIZ:
        raise ValueError(f"veth prefix {prefix!r} is too long: {name!r} exceeds {IFNAMSIZ} chars")
    return name


def owned_veth_tag(prefix: str, ifname: str) -> str | None:
    """The uid tag of a host veth this node made, or None for any other link."""
    tail = ifname[len(prefix):]
    if ifname.startswith(prefix) and len(tail) == UID_DIGITS and all(
            c in "0123456789abcdef" for c in tail):
        return tail
    return None


def other_peers(peers: Iterable[Peer], pod_cidr: str) -> list[Peer]:
    """Peers minus this node (recognised by its subnet, which is unique in the cluster)."""
    mine = subnet(pod_cidr)
    return [p for p in peers if subnet(p.pod_cidr) != mine]


def peer_entries(peers: Iterable[Peer], pod_cidr: str) -> PeerEntries:
    routes, neighs, fdbs = set(), set(), set()
    for p in other_peers(peers, pod_cidr):
        net = subnet(p.pod_cidr)
        vtep, mac = vtep_ip(p.pod_cidr), vtep_mac(p.pod_cidr)
        routes.add(RouteEntry(str(net), vtep))
        neighs.add(NeighEntry(vtep, mac))
        fdbs.add(FdbEntry(mac, p.underlay_ip))
    return PeerEntries(frozenset(routes), frozenset(neighs), frozenset(fdbs))


def _diff(want: frozenset, have: frozenset, key) -> tuple[tuple, tuple]:
    """Adds are wanted entries not present verbatim; deletes are present entries whose key is
    unwanted (an entry with a wanted key but wrong value is replaced, not deleted)."""
    wanted_keys = {key(e) for e in want}
    add = tuple(sorted(want - have, key=key))
    delete = tuple(sorted((e for e in have if key(e) not in wanted_keys), key=key))
    return add, delete


def diff_peers(want: PeerEntries, have: PeerEntries) -> PeerPlan:
    add_r, del_r = _diff(want.routes, have.routes, lambda r: r.dst)
    add_n, del_n = _diff(want.neighs, have.neighs, lambda n: n.ip)
    add_f, del_f = _diff(want.fdbs, have.fdbs, lambda f: f.mac)
    return PeerPlan(add_r, del_r, add_n, del_n, add_f, del_f)


def render_nft(table: str, cluster_cidr: str) -> str:
    """The whole table, replaced atomically by `nft -f -`: declaring the table first makes the
    delete succeed when it does not exist yet (nft 1.0.6 has no `destroy`).

    The forward accepts are final only within this table: a DROP in another table's forward
    chain (Docker's iptables-nft FORWARD policy) still drops cluster traffic."""
    cidr = str(subnet(cluster_cidr))
    return (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {cidr} ip daddr != {cidr} masquerade\n"
        f"  }}\n"
        f"  chain forward {{\n"
        f"    type filter hook forward priority filter; policy accept;\n"
        f"    ip saddr {cidr} accept\n"
        f"    ip daddr {cidr} accept\n"
        f"  }}\n"
        f"}}\n"
    )


def render_nft_delete(table: str) -> str:
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


def stale_veths(prefix: str, ifnames: Sequence[str], pod_uids: Iterable[str]) -> list[str]:
    """Host veths with our prefix whose pod is not in `pod_uids`."""
    keep = {uid_tag(u) for u in pod_uids}
    return sorted(n for n in ifnames if (tag := owned_veth_tag(prefix, n)) and tag not in keep)
