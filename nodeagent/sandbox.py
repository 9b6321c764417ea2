"""Pod sandboxes: the network namespace a pod's containers share, made before any of them.

It outlives container restarts, so a restarted container keeps the pod's address; it goes when
the pod goes. Namespaces are named `<prefix><pod uid>` and pinned under /run/netns, where
`ip netns` also finds them.
"""

from __future__ import annotations

import os

from pyroute2 import NetNS, netns

DEFAULT_PREFIX = "moorage-"
NETNS_DIR = netns.NETNS_RUN_DIR


def sandbox_name(pod_uid: str, prefix: str = DEFAULT_PREFIX) -> str:
    # The pod uid is already unique; its first 12 hex digits keep names short in `ip netns`.
    return prefix + pod_uid.replace("-", "")[:12]


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def ensure(name: str) -> str:
    """Creates the namespace with loopback up, or returns the existing one; idempotent."""
    if name not in netns.listnetns():
        netns.create(name)
    with NetNS(name) as ns:
        lo = ns.link_lookup(ifname="lo")
        if lo:
            ns.link("set", index=lo[0], state="up")
    return path(name)


def remove(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def existing(prefix: str = DEFAULT_PREFIX) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))
