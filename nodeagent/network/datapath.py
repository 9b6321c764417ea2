"""The node's overlay datapath, applied through netlink to the CURRENT network namespace.

A bridge holds the pods' gateway (.1) and their veths; a VXLAN device holds the node's VTEP
address (.0/32) and a MAC derived from its subnet; each peer is one onlink route, one permanent
neighbour entry and one FDB entry on that device (no learning, no multicast). Every method
compares the kernel with the desired state from `overlay` first and changes only what differs,
so all of them are idempotent and a periodic `reconcile` repairs drift.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodeagent.network import nft, overlay
from nodeagent.network.overlay import (  # noqa: F401 - re-exported: callers build Peers here
    FdbEntry,
    NeighEntry,
    Peer,
    PeerEntries,
    RouteEntry,
)

MAIN_TABLE = 254
IFF_UP = 0x1
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x2
POD_IFNAME = "eth0"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


class NetworkError(Exception):
    """The node's network cannot be set up as configured (say why and what to check)."""


@dataclass(frozen=True, slots=True)
class NetConfig:
    pod_cidr: str
    underlay_ip: str
    cluster_cidr: str = overlay.DEFAULT_CLUSTER_CIDR
    vni: int = overlay.DEFAULT_VNI
    port: int = overlay.DEFAULT_PORT
    bridge: str = overlay.DEFAULT_BRIDGE
    vxlan: str = overlay.DEFAULT_VXLAN
    nft_table: str = overlay.DEFAULT_NFT_TABLE
    mtu: int | None = None          # None: the underlay device's MTU minus the VXLAN overhead
    veth_prefix: str = overlay.DEFAULT_VETH_PREFIX


@dataclass(frozen=True, slots=True)
class PodNetwork:
    ip: str
    gateway: str
    mtu: int
    host_ifname: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the kernel holds for this node's overlay (None: the device is missing)."""

    bridge_mtu: int | None
    vxlan_mtu: int | None
    veth_mtus: dict[str, int] = field(default_factory=dict)
    entries: PeerEntries | None = None


def _attr(msg, *path):
    """A nested netlink attribute, e.g. _attr(link, 'IFLA_LINKINFO', 'IFLA_INFO_DATA', ...)."""
    for name in path:
        if msg is None:
            return None
        msg = msg.get_attr(name)
    return msg


class NodeNetwork:
    def __init__(self, config: NetConfig):
        self.config = config
        self.net = overlay.subnet(config.pod_cidr)
        self._ipr: IPRoute | None = None
        self._mtu: int | None = config.mtu

    # ---- plumbing ----

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> NodeNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _link(self, ifname: str):
        idx = self.ipr.link_lookup(ifname=ifname)
        return self.ipr.link("get", index=idx[0])[0] if idx else None

    def _index(self, ifname: str) -> int | None:
        idx = self.ipr.link_lookup(ifname=ifname)
        return idx[0] if idx else None

    def underlay_index(self) -> int:
        found = self.ipr.addr("dump", family=socket.AF_INET, address=self.config.underlay_ip)
        if not found:
            raise NetworkError(
                f"underlay IP {self.config.underlay_ip} is on no interface in this network "
                f"namespace: check the node's --underlay-ip (or its advertised address)")
        return found[0]["index"]

    @property
    def mtu(self) -> int:
        if self._mtu is None:
            underlay = self.ipr.link("get", index=self.underlay_index())[0]
            self._mtu = overlay.default_mtu(underlay.get_attr("IFLA_MTU"))
        return self._mtu

    @property
    def gateway(self) -> str:
        return overlay.gateway_ip(self.config.pod_cidr)

    # ---- setup ----

    def setup(self) -> list[str]:
        """Creates or repairs the bridge, the VXLAN device, forwarding and the nft table.
        Returns what it changed (empty when all was in place)."""
        fixes = self._ensure_bridge()
        fixes += self._ensure_vxlan()
        with open(IP_FORWARD) as f:
            if f.read().strip() != "1":
                with open(IP_FORWARD, "w") as w:
                    w.write("1")
                fixes.append("enabled net.ipv4.ip_forward")
        fixes += self._ensure_nft()
        return fixes

    def _ensure_bridge(self) -> list[str]:
        cfg, fixes = self.config, []
        if self._index(cfg.bridge) is None:
            self.ipr.link("add", ifname=cfg.bridge, kind="bridge", mtu=self.mtu)
            fixes.append(f"created bridge {cfg.bridge}")
        fixes += self._ensure_link(cfg.bridge, self.mtu)
        fixes += self._ensure_addrs(cfg.bridge, self.gateway, self.net.prefixlen)
        return fixes

    def _ensure_vxlan(self) -> list[str]:
        cfg, fixes = self.config, []
        underlay = self.underlay_index()
        want = {"IFLA_VXLAN_ID": cfg.vni, "IFLA_VXLAN_LOCAL": cfg.underlay_ip,
                "IFLA_VXLAN_PORT": cfg.port, "IFLA_VXLAN_LINK": underlay,
                "IFLA_VXLAN_LEARNING": 0, "IFLA_VXLAN_UDP_CSUM": 0}
        link = self._link(cfg.vxlan)
        if link is not None:
            data = _attr(link, "IFLA_LINKINFO", "IFLA_INFO_DATA")
            have = {k: _attr(data, k) for k in want}
            if have != want:
                # VXLAN parameters cannot change in place; the peers' entries go with the device
                # and are re-added by the next set_peers.
                self.ipr.link("del", index=link["index"])
                fixes.append(f"recreated {cfg.vxlan}: had {have}, want {want}")
                link = None
        if link is None:
            self.ipr.link("add", ifname=cfg.vxlan, kind="vxlan", vxlan_id=cfg.vni,
                          vxlan_local=cfg.underlay_ip, vxlan_port=cfg.port, vxlan_learning=0,
                          # As `ip link` does for IPv4: the inner packets carry their own.
                          vxlan_udp_csum=0,
                          vxlan_link=underlay, address=overlay.vtep_mac(cfg.pod_cidr),
                          mtu=self.mtu)
            if not fixes:
                fixes.append(f"created {cfg.vxlan}")
        fixes += self._ensure_link(cfg.vxlan, self.mtu, overlay.vtep_mac(cfg.pod_cidr))
        fixes += self._ensure_addrs(cfg.vxlan, overlay.vtep_ip(cfg.pod_cidr), 32)
        return fixes

    def _ensure_link(self, ifname: str, mtu: int, mac: str | None = None,
                     master: int | None = None) -> list[str]:
        link, fixes, change = self._link(ifname), [], {}
        if link.get_attr("IFLA_MTU") != mtu:
            change["mtu"] = mtu
            fixes.append(f"set {ifname} mtu {link.get_attr('IFLA_MTU')} -> {mtu}")
        if mac is not None and link.get_attr("IFLA_ADDRESS") != mac:
            change["address"] = mac
            fixes.append(f"set {ifname} mac -> {mac}")
        if master is not None and link.get_attr("IFLA_MASTER") != master:
            change["master"] = master
            fixes.append(f"attached {ifname} to {self.config.bridge}")
        if not link["flags"] & IFF_UP:
            change["state"] = "up"
            fixes.append(f"brought {ifname} up")
        if change:
            self.ipr.link("set", index=link["index"], **change)
        return fixes

    def _ensure_addrs(self, ifname: str, address: str, prefixlen: int,
                      ipr: IPRoute | None = None) -> list[str]:
        """Makes `address/prefixlen` the only IPv4 address of the link."""
        ipr = ipr or self.ipr
        idx = ipr.link_lookup(ifname=ifname)[0]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.addr("dump", family=socket.AF_INET, index=idx)}
        fixes = []
        for addr, plen in have - {(address, prefixlen)}:
            ipr.addr("del", index=idx, address=addr, prefixlen=plen)
            fixes.append(f"removed {addr}/{plen} from {ifname}")
        if (address, prefixlen) not in have:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
            fixes.append(f"added {address}/{prefixlen} to {ifname}")
        return fixes

    def _ensure_nft(self) -> list[str]:
        table = self.config.nft_table
        present = _nft(["list", "table", "ip", table], check=False).returncode == 0
        _nft(["-f", "-"], overlay.render_nft(table, self.config.cluster_cidr))
        return [] if present else [f"applied nft table ip {table}"]

    # ---- peers ----

    def observe_peers(self, vx: int | None = None) -> PeerEntries | None:
        """Routes, neighbours and FDB entries on the VXLAN device (None if it is missing)."""
        vx = vx or self._index(self.config.vxlan)
        if vx is None:
            return None
        routes = set()
        for r in self.ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE, oif=vx):
            if r.get_attr("RTA_TABLE") not in (None, MAIN_TABLE):
                continue
            dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            routes.add(RouteEntry(dst, r.get_attr("RTA_GATEWAY") or ""))
        neighs = {NeighEntry(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR") or "")
                  for n in self.ipr.neigh("dump", family=socket.AF_INET, ifindex=vx)
                  if n["ifindex"] == vx}
        fdbs = {FdbEntry(f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST"))
                for f in self.ipr.fdb("dump", ifindex=vx)
                if f["ifindex"] == vx and f.get_attr("NDA_DST")}
        return PeerEntries(frozenset(routes), frozenset(neighs), frozenset(fdbs))

    def set_peers(self, peers: Iterable[Peer]) -> list[str]:
        """Makes the VXLAN device hold exactly the entries for `peers` (this node skipped).
        Returns what it changed."""
        vx = self._index(self.config.vxlan)
        if vx is None:
            raise NetworkError(f"{self.config.vxlan} is missing: call setup() first")
        plan = overlay.diff_peers(overlay.peer_entries(peers, self.config.pod_cidr),
                                  self.observe_peers(vx))
        # Routes go last on the way in and first on the way out, so no packet is routed to a
        # peer whose neighbour or FDB entry is not there.
        for r in plan.del_routes:
            _ignore_missing(self.ipr.route, "del", dst=r.dst, oif=vx, table=MAIN_TABLE)
        for n in plan.del_neighs:
            _ignore_missing(self.ipr.neigh, "del", dst=n.ip, ifindex=vx)
        for f in plan.del_fdbs:
            _ignore_missing(self.ipr.fdb, "del", ifindex=vx, lladdr=f.mac, dst=f.dst)
        for f in plan.add_fdbs:
            # pyroute2 fills in NUD_NOARP and NTF_SELF only for add/del/append, not replace.
            self.ipr.fdb("replace", ifindex=vx, lladdr=f.mac, dst=f.dst,
                         state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
        for n in plan.add_neighs:
            self.ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=vx, state=NUD_PERMANENT)
        for r in plan.add_routes:
            self.ipr.route("replace", dst=r.dst, gateway=r.gateway, oif=vx, flags=["onlink"],
                           table=MAIN_TABLE)
        return plan.describe()

    # ---- pods ----

    def host_veths(self) -> dict[str, object]:
        """Host veth name -> link, for links this node's prefix and naming made."""
        return {name: link for link in self.ipr.link("dump")
                if overlay.owned_veth_tag(self.config.veth_prefix,
                                          name := link.get_attr("IFLA_IFNAME"))}

    def attach_pod(self, netns_name: str, pod_uid: str, ip: str) -> PodNetwork:
        """Plugs the pod's netns into the bridge with `ip`; a repeated call changes nothing."""
        if ipaddress.IPv4Address(ip) not in self.net:
            raise NetworkError(f"pod IP {ip} is outside this node's subnet {self.net}")
        host = overlay.host_ifname(self.config.veth_prefix, pod_uid)
        bridge = self._index(self.config.bridge)
        if bridge is None:
            raise NetworkError(f"bridge {self.config.bridge} is missing: call setup() first")
        try:
            pod_ns = IPRoute(netns=netns_name, flags=0)
        except FileNotFoundError as err:
            raise NetworkError(f"pod {pod_uid}: network namespace {netns_name} does not exist; "
                               f"create the sandbox before attaching it") from err
        with pod_ns as pod:
            if self._index(host) is not None and not pod.link_lookup(ifname=POD_IFNAME):
                # The pod's end is gone (its netns was recreated): start the pair over.
                _ignore_missing(self.ipr.link, "del", ifname=host)
            if self._index(host) is None:
                self.ipr.link("add", ifname=host, kind="veth", mtu=self.mtu,
                              peer={"ifname": POD_IFNAME, "net_ns_fd": netns_name})
            self._ensure_link(host, self.mtu, master=bridge)
            self._hairpin(host)
            lo = pod.link_lookup(ifname="lo")
            if lo:
                pod.link("set", index=lo[0], state="up")
            eth = pod.link("get", index=pod.link_lookup(ifname=POD_IFNAME)[0])[0]
            if eth.get_attr("IFLA_MTU") != self.mtu or not eth["flags"] & IFF_UP:
                pod.link("set", index=eth["index"], mtu=self.mtu, state="up")
            self._ensure_addrs(POD_IFNAME, ip, self.net.prefixlen, ipr=pod)
            default = [r for r in pod.route("dump", family=socket.AF_INET, table=MAIN_TABLE)
                       if r["dst_len"] == 0]
            if [r.get_attr("RTA_GATEWAY") for r in default] != [self.gateway]:
                pod.route("replace", dst="0.0.0.0/0", gateway=self.gateway,
                          oif=eth["index"])
        return PodNetwork(ip, self.gateway, self.mtu, host)

    def _hairpin(self, ifname: str) -> None:
        """Hairpin mode on the pod's bridge port (the CNI bridge plugin's hairpinMode): with
        br_netfilter loaded, a pod reaching itself through a service VIP is bridged back out
        the port it came in on, which a bridge does only in hairpin mode."""
        index = self._index(ifname)
        if index is not None:
            self.ipr.brport("set", index=index, mode=1)

    def detach_pod(self, pod_uid: str) -> bool:
        """Removes the pod's veth pair; False if it was not there."""
        host = overlay.host_ifname(self.config.veth_prefix, pod_uid)
        return _ignore_missing(self.ipr.link, "del", ifname=host)

    # ---- whole node ----

    def reconcile(self, peers: Iterable[Peer], pods: Mapping[str, str]) -> list[str]:
        """Repairs everything this node owns against `peers` and `pods` (uid -> netns name).
        Returns what it fixed."""
        fixes = self.setup()
        fixes += self.set_peers(peers)
        veths = self.host_veths()
        for name in overlay.stale_veths(self.config.veth_prefix, list(veths), pods):
            if _ignore_missing(self.ipr.link, "del", ifname=name):
                fixes.append(f"removed stale veth {name}")
        bridge = self._index(self.config.bridge)
        for uid in pods:
            host = overlay.host_ifname(self.config.veth_prefix, uid)
            if host in veths:
                fixes += self._ensure_link(host, self.mtu, master=bridge)
                self._hairpin(host)
        return fixes

    def snapshot(self) -> Snapshot:
        def mtu(ifname):
            link = self._link(ifname)
            return None if link is None else link.get_attr("IFLA_MTU")

        return Snapshot(
            bridge_mtu=mtu(self.config.bridge), vxlan_mtu=mtu(self.config.vxlan),
            veth_mtus={n: link.get_attr("IFLA_MTU") for n, link in self.host_veths().items()},
            entries=self.observe_peers())

    def teardown(self) -> None:
        """Removes everything setup and attach_pod made; safe to repeat."""
        for name in self.host_veths():
            _ignore_missing(self.ipr.link, "del", ifname=name)
        for name in (self.config.vxlan, self.config.bridge):
            _ignore_missing(self.ipr.link, "del", ifname=name)
        _nft(["-f", "-"], overlay.render_nft_delete(self.config.nft_table))


def _ignore_missing(fn, *args, **kwargs) -> bool:
    """Runs a netlink delete; False when the thing was already gone."""
    try:
        fn(*args, **kwargs)
        return True
    except NetlinkError as err:
        if err.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            return False
        raise


def _nft(args: list[str], script: str | None = None, check: bool = True):
    proc = nft.run(args, script)
    if check and proc.returncode != 0:
        raise NetworkError(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc
