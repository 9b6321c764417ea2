"""A lab's hosts and underlay: one network namespace per host, each joined by a veth pair to a
bridge in the root namespace that holds the underlay's gateway address.

Every name is derived from the lab's name, so a lab's netns and links can be found, and removed,
from its name alone. Link names are kept to the kernel's 15 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass

from pyroute2 import IPRoute, NetNS, netns

IFNAMSIZ = 15
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
# Host addresses start at .11 (host i is .10+i): the low ones stay free for the gateway.
HOST_OFFSET = 10
LINK_BASE_CHARS = 9
SYS_CLASS_NET = "/sys/class/net"
NETNS_DIR = netns.NETNS_RUN_DIR


class LabError(Exception):
    """A one-line error for the operator."""


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-40 lowercase letters, digits and '-', "
                       "starting with a letter")


def link_base(name: str) -> str:
    """The lab's name as it appears in link names: the whole name when it fits, else its start
    and a short hash, so two long names with a common start do not share links."""
    if len(name) <= LINK_BASE_CHARS:
        return name
    return name[:LINK_BASE_CHARS - 3] + hashlib.sha256(name.encode()).hexdigest()[:3]


def bridge_name(name: str) -> str:
    return f"{link_base(name)}-br"


def veth_name(name: str, i: int) -> str:
    """The root end of host i's veth pair (the other end is eth0 inside the host)."""
    return f"{link_base(name)}-h{i}u"


def host_netns(name: str, i: int) -> str:
    return f"{name}-h{i}"


def pod_netns_prefix(name: str, i: int) -> str:
    # The trailing '-' keeps host 1's pods apart from host 10's.
    return f"{host_netns(name, i)}-"


def host_pattern(name: str) -> re.Pattern:
    """Finds this lab's host names (NAME-h<i>) in text, and not those of a lab NAME-hello."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}-h\d+(?![\w])")


def _link_pattern(name: str) -> re.Pattern:
    base = re.escape(link_base(name))
    return re.compile(rf"^{base}-(br|h\d+u|h\d+p)$")


@dataclass(frozen=True, slots=True)
class Underlay:
    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, cidr: str, hosts: int) -> Underlay:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as err:
            raise LabError(f"--underlay-cidr {cidr}: {err}") from None
        if network.version != 4:
            raise LabError(f"--underlay-cidr {cidr}: want an IPv4 network")
        underlay = cls(network)
        if network.num_addresses - 2 < HOST_OFFSET + hosts:
            raise LabError(f"--underlay-cidr {cidr} is too small for {hosts} hosts "
                           f"(hosts use .{HOST_OFFSET + 1} to .{HOST_OFFSET + hosts})")
        return underlay

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def host_ip(self, i: int) -> str:
        return str(self.network.network_address + HOST_OFFSET + i)


def max_hosts() -> int:
    # h<i>u must fit IFNAMSIZ: base + "-h" + digits + "u".
    return 10 ** (IFNAMSIZ - LINK_BASE_CHARS - 3) - 1


# ---- the kernel side ----

def links(name: str) -> list[str]:
    """This lab's links in the root namespace."""
    pattern = _link_pattern(name)
    try:
        return sorted(n for n in os.listdir(SYS_CLASS_NET) if pattern.match(n))
    except FileNotFoundError:
        return []


def host_namespaces(name: str) -> list[str]:
    """This lab's host namespaces and its pods' namespaces (all start with NAME-h<i>)."""
    return sorted(n for n in netns.listnetns() if is_lab_netns(name, n))


def is_lab_netns(name: str, ns: str) -> bool:
    return re.match(rf"^{re.escape(name)}-h\d+(-|$)", ns) is not None


def route_conflicts(underlay: Underlay) -> list[str]:
    """Root-namespace addresses already inside the underlay (another lab, a real network)."""
    found = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=2):
            addr = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            if addr.network.overlaps(underlay.network):
                found.append(f"{addr} on {msg.get('IFA_LABEL')}")
    return found


def in_netns(ns: str, argv: list[str]) -> list[str]:
    """`argv` run inside the namespace `ns` (its network namespace only, as the agent's is)."""
    return ["nsenter", f"--net={os.path.join(NETNS_DIR, ns)}", "--", *argv]


def _netlink(ns: str | None):
    # The namespace that holds the bridge: this one (a lab) or one of its own (the tests'
    # underlay, so that no firewall of this machine sees the hosts' traffic).
    return NetNS(ns) if ns else IPRoute()


def create_bridge(bridge: str, underlay: Underlay, *, netns: str | None = None,
                  mtu: int | None = None) -> None:
    """The underlay's bridge holding its gateway address, in this namespace or `netns`."""
    extra = {"mtu": mtu} if mtu else {}
    with _netlink(netns) as ipr:
        if netns:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname=bridge, kind="bridge", **extra)
        index = ipr.link_lookup(ifname=bridge)[0]
        ipr.addr("add", index=index, address=underlay.gateway, prefixlen=underlay.prefixlen)
        ipr.link("set", index=index, state="up")


def create_netns(ns: str) -> None:
    netns.create(ns)


def plug_host(ns: str, veth: str, bridge: str, address: str, underlay: Underlay, *,
              bridge_netns: str | None = None, mtu: int | None = None) -> None:
    """Joins the host namespace `ns` to the bridge (in this namespace or `bridge_netns`): a
    veth pair whose inner end becomes eth0 with `address`, loopback up, and a default route
    via the gateway."""
    peer = veth[:-1] + "p"  # the inner end's name until it is renamed eth0
    extra = {"mtu": mtu} if mtu else {}
    with _netlink(bridge_netns) as ipr:
        ipr.link("add", ifname=veth, kind="veth", **extra,
                 peer={"ifname": peer, "net_ns_fd": ns, **extra})
        index = ipr.link_lookup(ifname=veth)[0]
        bridge_index = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=index, master=bridge_index, state="up")
    with NetNS(ns) as inner:
        inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
        eth = inner.link_lookup(ifname=peer)[0]
        inner.link("set", index=eth, ifname="eth0")
        inner.addr("add", index=eth, address=address, prefixlen=underlay.prefixlen)
        inner.link("set", index=eth, state="up")
        inner.route("add", dst="0.0.0.0/0", gateway=underlay.gateway)


def remove_netns(ns: str) -> bool:
    if ns in netns.listnetns():
        netns.remove(ns)
        return True
    return False


def remove_link(link: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=link)
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True
