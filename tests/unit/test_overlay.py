"""The overlay's pure helpers: derived names, addresses and MACs, peer plans, the nft ruleset."""

from __future__ import annotations

import pytest

from nodeagent.network import overlay
from nodeagent.network.overlay import FdbEntry, NeighEntry, Peer, RouteEntry


@pytest.mark.parametrize("cidr, mac", [
    pytest.param("10.244.3.0/24", "0a:58:0a:f4:03:00", id="third"),
    pytest.param("10.244.0.0/24", "0a:58:0a:f4:00:00", id="first"),
    pytest.param("10.244.255.0/24", "0a:58:0a:f4:ff:00", id="last"),
    pytest.param("10.244.3.7/24", "0a:58:0a:f4:03:00", id="host-bits-ignored"),
])
def test_vtep_mac(cidr, mac):
    assert overlay.vtep_mac(cidr) == mac
    first = int(mac[:2], 16)
    assert first & 0b10 and not first & 0b01      # locally administered, unicast


def test_vtep_and_gateway():
    assert overlay.vtep_ip("10.244.3.0/24") == "10.244.3.0"
    assert overlay.gateway_ip("10.244.3.0/24") == "10.244.3.1"
    assert overlay.default_mtu(1500) == 1450


@pytest.mark.parametrize("prefix, uid, want", [
    pytest.param("mv", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "mv0f1e2d3c", id="uuid"),
    pytest.param("mv", "ABCDEF0123", "mvabcdef01", id="upper"),
    pytest.param("moorpodveth", "0f1e2d3c", "moorpodveth0f1e", id="too-long"),
])
def test_host_ifname(prefix, uid, want):
    if want.endswith("0f1e"):
        with pytest.raises(ValueError, match="too long"):
            overlay.host_ifname(prefix, uid)
        return
    assert overlay.host_ifname(prefix, uid) == want
    assert len(want) <= overlay.IFNAMSIZ


def test_owned_veth_tag_and_stale_veths():
    assert overlay.owned_veth_tag("mv", "mv0f1e2d3c") == "0f1e2d3c"
    assert overlay.owned_veth_tag("mv", "mv0f1e2d3") is None     # too short
    assert overlay.owned_veth_tag("mv", "mvlan0") is None
    assert overlay.owned_veth_tag("mv", "eth0") is None
    names = ["mv0f1e2d3c", "mvaaaaaaaa", "moor0", "mvbbbbbbbb"]
    assert overlay.stale_veths("mv", names, ["aaaaaaaa-1111"]) == ["mv0f1e2d3c", "mvbbbbbbbb"]


PEERS = [Peer("n1", "10.213.0.11", "10.244.1.0/24"), Peer("n2", "10.213.0.12", "10.244.2.0/24"),
         Peer("n3", "10.213.0.13", "10.244.3.0/24")]


def test_peer_entries_skip_self():
    e = overlay.peer_entries(PEERS, "10.244.1.0/24")
    assert e.routes == {RouteEntry("10.244.2.0/24", "10.244.2.0"),
                        RouteEntry("10.244.3.0/24", "10.244.3.0")}
    assert e.neighs == {NeighEntry("10.244.2.0", "0a:58:0a:f4:02:00"),
                        NeighEntry("10.244.3.0", "0a:58:0a:f4:03:00")}
    assert e.fdbs == {FdbEntry("0a:58:0a:f4:02:00", "10.213.0.12"),
                      FdbEntry("0a:58:0a:f4:03:00", "10.213.0.13")}


def test_diff_peers():
    want = overlay.peer_entries(PEERS[:2], "10.244.1.0/24")
    have = overlay.peer_entries(PEERS, "10.244.1.0/24")
    assert not overlay.diff_peers(want, want)
    plan = overlay.diff_peers(want, have)                   # n3 left
    assert plan.del_routes == (RouteEntry("10.244.3.0/24", "10.244.3.0"),)
    assert plan.del_fdbs == (FdbEntry("0a:58:0a:f4:03:00", "10.213.0.13"),)
    assert not plan.add_routes and not plan.add_neighs
    moved = overlay.peer_entries([Peer("n2", "10.213.0.99", "10.244.2.0/24")], "10.244.1.0/24")
    plan = overlay.diff_peers(moved, want)                  # n2 changed its underlay IP
    assert plan.add_fdbs == (FdbEntry("0a:58:0a:f4:02:00", "10.213.0.99"),)
    assert plan.del_fdbs == ()                               # replaced in place, not deleted
    assert "added fdb 0a:58:0a:f4:02:00 -> 10.213.0.99" in plan.describe()


def test_render_nft():
    text = overlay.render_nft("moorage", "10.244.0.0/16")
    # Declared, deleted, then defined: one atomic replacement, valid when the table is absent.
    assert text.startswith("table ip moorage {}\ndelete table ip moorage\ntable ip moorage {")
    assert "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade" in text
    assert "type nat hook postrouting priority srcnat" in text
    assert "type filter hook forward priority filter" in text
    assert overlay.render_nft_delete("moorage") == "table ip moorage {}\ndelete table ip moorage\n"


def test_doctor_compare_entries():
    from nodeagent.network.doctor import compare_entries

    want = overlay.peer_entries(PEERS, "10.244.1.0/24")
    assert compare_entries(want, want) == []
    have = overlay.PeerEntries(
        routes=want.routes - {RouteEntry("10.244.2.0/24", "10.244.2.0")},
        neighs=(want.neighs - {NeighEntry("10.244.3.0", "0a:58:0a:f4:03:00")})
        | {NeighEntry("10.244.3.0", "")},
        fdbs=want.fdbs | {FdbEntry("0a:58:0a:f4:09:00", "10.213.0.99")})
    found = {(f.severity, f.kind) for f in compare_entries(want, have)}
    assert found == {("error", "missing-route"), ("error", "wrong-neigh"),
                     ("warning", "stale-fdb")}
