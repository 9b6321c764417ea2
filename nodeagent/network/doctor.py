"""Overlay diagnosis: what the kernel holds vs what the peer list says, plus an ICMP probe of
every peer's gateway across the overlay. Read-only: it reports and never repairs (reconcile
does that). Returns [] when the node's overlay is healthy.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.network import overlay
from nodeagent.network.datapath import NodeNetwork, Peer

ERROR = "error"
WARNING = "warning"
PROBE_TIMEOUT_SECONDS = 1.0
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str     # ERROR or WARNING
    kind: str         # e.g. "missing-route", "stale-fdb", "mtu-mismatch", "unreachable-peer"
    message: str      # one line


def diagnose(net: NodeNetwork, peers: Iterable[Peer],
             probe_timeout: float = PROBE_TIMEOUT_SECONDS) -> list[Finding]:
    peers = overlay.other_peers(peers, net.config.pod_cidr)
    snap = net.snapshot()
    cfg = net.config
    findings = []
    if snap.bridge_mtu is None:
        findings.append(Finding(ERROR, "missing-device", f"bridge {cfg.bridge} is missing"))
    if snap.vxlan_mtu is None or snap.entries is None:
        findings.append(Finding(ERROR, "missing-device", f"VXLAN device {cfg.vxlan} is missing"))
        return findings
    findings += compare_entries(overlay.peer_entries(peers, cfg.pod_cidr), snap.entries)
    want_mtu = net.mtu
    mtus = {f"bridge {cfg.bridge}": snap.bridge_mtu, f"VXLAN device {cfg.vxlan}": snap.vxlan_mtu}
    mtus.update({f"pod veth {name}": mtu for name, mtu in sorted(snap.veth_mtus.items())})
    for what, mtu in mtus.items():
        if mtu is not None and mtu != want_mtu:
            findings.append(Finding(ERROR, "mtu-mismatch",
                                    f"{what} has MTU {mtu}, expected {want_mtu}"))
    reachable = probe([overlay.gateway_ip(p.pod_cidr) for p in peers], probe_timeout)
    for p in peers:
        gw = overlay.gateway_ip(p.pod_cidr)
        if gw not in reachable:
            findings.append(Finding(
                ERROR, "unreachable-peer",
                f"peer {p.name} ({p.underlay_ip}): no ICMP echo reply from its gateway {gw} "
                f"within {probe_timeout:g}s; check UDP {cfg.port} between the nodes"))
    return findings


def compare_entries(want: overlay.PeerEntries, have: overlay.PeerEntries) -> list[Finding]:
    """Pure: one finding per missing, wrong or stale route, neighbour and FDB entry."""
    plan = overlay.diff_peers(want, have)
    have_routes = {r.dst: r for r in have.routes}
    have_neighs = {n.ip: n for n in have.neighs}
    have_fdbs = {f.mac: f for f in have.fdbs}
    out = []
    for r in plan.add_routes:
        old = have_routes.get(r.dst)
        out.append(Finding(ERROR, "wrong-route", f"route {r.dst} goes via {old.gateway}, "
                                                 f"expected {r.gateway}") if old else
                   Finding(ERROR, "missing-route", f"no route {r.dst} via {r.gateway}"))
    for n in plan.add_neighs:
        old = have_neighs.get(n.ip)
        out.append(Finding(ERROR, "wrong-neigh", f"neighbour {n.ip} is {old.mac or 'unresolved'}"
                                                 f", expected {n.mac}") if old else
                   Finding(ERROR, "missing-neigh", f"no neighbour entry {n.ip} -> {n.mac}"))
    for f in plan.add_fdbs:
        old = have_fdbs.get(f.mac)
        out.append(Finding(ERROR, "wrong-fdb", f"fdb {f.mac} points to {old.dst}, expected "
                                               f"{f.dst}") if old else
                   Finding(ERROR, "missing-fdb", f"no fdb entry {f.mac} -> {f.dst}"))
    out += [Finding(WARNING, "stale-route", f"route {r.dst} via {r.gateway or '(none)'} matches "
                                            f"no peer") for r in plan.del_routes]
    out += [Finding(WARNING, "stale-neigh", f"neighbour {n.ip} -> {n.mac or 'unresolved'} "
                                            f"matches no peer") for n in plan.del_neighs]
    out += [Finding(WARNING, "stale-fdb", f"fdb {f.mac} -> {f.dst} matches no peer")
            for f in plan.del_fdbs]
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"moorage-doctor") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def probe(targets: Sequence[str], timeout: float) -> set[str]:
    """The targets that answered one ICMP echo within `timeout` (all probed at once; raw
    socket, so root is needed)."""
    if not targets:
        return set()
    ident = (os.getpid() ^ int(time.monotonic_ns())) & 0xFFFF
    seqs = {i + 1: ip for i, ip in enumerate(targets)}
    answered: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq, ip in seqs.items():
            try:
                sock.sendto(echo_request(ident, seq), (ip, 0))
            except OSError:
                pass            # no route: it stays unanswered
        deadline = time.monotonic() + timeout
        while len(answered) < len(seqs) and (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            packet, (src, _) = sock.recvfrom(2048)
            ihl = (packet[0] & 0x0F) * 4
            if len(packet) < ihl + 8:
                continue
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
            if kind == ICMP_ECHO_REPLY and rid == ident and seqs.get(rseq) == src:
                answered.add(src)
    return answered
