"""UDP conntrack entries DNATed to a gone endpoint are deleted; direct flows are not."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from moorage.lab.hosts import in_netns
from nodeagent.network.services import flush_udp_conntrack
from nodeagent.pods import sandbox
from nodeagent.runtime.netns import on_thread
from nodeagent.runtime.syscalls import LibcSyscalls
from tests.conftest import unique

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes a netns and nft rules: root")

ENDPOINT, VIP = "10.99.0.1", "10.96.0.1"

SANDBOXES = sandbox.Sandboxes(LibcSyscalls())


NFT = f"""
table ip t {{
  chain out {{
    type nat hook output priority -100; policy accept;
    ip daddr {VIP} udp dport 9999 dnat to {ENDPOINT}:9999
  }}
}}
"""


def sh(ns: str, *cmd: str, stdin: str | None = None) -> None:
    subprocess.run(in_netns(ns, list(cmd)), input=stdin, text=True, check=True,
                   capture_output=True)


def udp_entries(ns: str) -> list[tuple[str, str]]:
    """(original destination, reply source) of the namespace's UDP conntrack entries."""
    def dump():
        from pyroute2 import Conntrack
        from pyroute2.conntrack import NFCTAttrTuple

        with Conntrack() as ct:
            return [(e.tuple_orig.daddr, e.tuple_reply.saddr) for e in ct.dump_entries(
                tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))]
    return on_thread(dump, sandbox.path(ns))


def test_flush_deletes_only_dnated_udp_entries_to_the_endpoint():
    ns = unique("ct")
    SANDBOXES.ensure(ns)
    try:
        # No dummy driver on every kernel: a veth pair with both ends in the namespace.
        sh(ns, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh(ns, "ip", "addr", "add", f"{ENDPOINT}/24", "dev", "v0")
        sh(ns, "ip", "link", "set", "v0", "up")
        sh(ns, "ip", "link", "set", "v1", "up")
        sh(ns, "ip", "route", "add", "10.96.0.0/16", "dev", "v0")
        sh(ns, "nft", "-f", "-", stdin=NFT)

        def send():
            for dst, port in ((VIP, 9999), (ENDPOINT, 7777)):   # through the VIP; direct
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"x", (dst, port))
        on_thread(send, sandbox.path(ns))
        before = udp_entries(ns)
        assert (VIP, ENDPOINT) in before and (ENDPOINT, ENDPOINT) in before, before

        deleted = on_thread(lambda: flush_udp_conntrack([ENDPOINT]), sandbox.path(ns))
        after = udp_entries(ns)
        assert deleted == 1
        assert (VIP, ENDPOINT) not in after and (ENDPOINT, ENDPOINT) in after, after
    finally:
        SANDBOXES.remove(ns)
