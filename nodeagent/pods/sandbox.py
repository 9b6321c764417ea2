"""Pod sandboxes: the network namespace a pod's containers share, made before any of them.

It outlives container restarts, so a restarted container keeps the pod's address; it goes when
the pod goes. Namespaces are named `<prefix><pod uid>` and pinned under /run/netns, where
`ip netns` also finds them.

A namespace is made on a short-lived thread that unshares its own network namespace and
bind-mounts it, as `ip netns add` does (runtime/netns.py); pyroute2's own helpers fork a
process for each call, which made starting many pods cost a fork per pod per pass. Every
mount goes through the `Syscalls` a `Sandboxes` is given.
"""

from __future__ import annotations

import os
import threading

from pyroute2 import IPRoute, netns

from nodeagent.runtime.netns import NETNS_DIR, on_thread, path
from nodeagent.runtime.syscalls import MNT_DETACH, MS_BIND, MS_REC, MS_SHARED, Syscalls

DEFAULT_PREFIX = "moorage-"


def sandbox_name(pod_uid: str, prefix: str = DEFAULT_PREFIX) -> str:
    # The pod uid is already unique; its first 12 hex digits keep names short in `ip netns`.
    return prefix + pod_uid.replace("-", "")[:12]


def existing(prefix: str = DEFAULT_PREFIX) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def _loopback_up() -> None:
    # On the calling thread: the netlink socket belongs to that thread's namespace.
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


class Sandboxes:
    def __init__(self, sysc: Syscalls):
        self.sysc = sysc
        self._dir_ready = threading.Lock()
        self._dir_shared = False

    def _share_dir(self) -> None:
        """/run/netns as a shared mount, as iproute2 makes it, so pins propagate to mount
        namespaces made later."""
        with self._dir_ready:
            if self._dir_shared:
                return
            os.makedirs(NETNS_DIR, exist_ok=True)
            try:
                self.sysc.mount("", NETNS_DIR, "none", MS_SHARED | MS_REC)
            except OSError:   # not a mount point yet: bind it onto itself, then share
                self.sysc.mount(NETNS_DIR, NETNS_DIR, "none", MS_BIND | MS_REC)
                self.sysc.mount("", NETNS_DIR, "none", MS_SHARED | MS_REC)
            self._dir_shared = True

    def _create(self, name: str) -> None:
        self._share_dir()
        pin = path(name)
        os.close(os.open(pin, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

        def make() -> None:
            self.sysc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", pin, "none",
                            MS_BIND)
            _loopback_up()
        try:
            on_thread(make, sysc=self.sysc)
        except BaseException:
            self._unpin(pin)
            raise

    def _unpin(self, pin: str) -> None:
        try:
            self.sysc.umount2(pin, MNT_DETACH)
        except OSError:
            pass   # never mounted (a failed create)
        try:
            os.unlink(pin)
        except FileNotFoundError:
            pass

    def ensure(self, name: str) -> str:
        """Creates the namespace with loopback up, or returns the existing one with loopback
        up; idempotent. A pin left without its namespace (a create cut short) is made again."""
        pin = path(name)
        if os.path.exists(pin):
            try:
                on_thread(_loopback_up, pin, sysc=self.sysc)
                return pin
            except OSError:   # setns refused: a plain file, not a namespace
                self._unpin(pin)
        self._create(name)
        return pin

    def remove(self, name: str) -> None:
        if os.path.lexists(path(name)):
            self._unpin(path(name))
