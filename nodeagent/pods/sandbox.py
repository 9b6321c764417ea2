"""Pod sandboxes: the network namespace a pod's containers share, made before any of them.

It outlives container restarts, so a restarted container keeps the pod's address; it goes when
the pod goes. Namespaces are named `<prefix><pod uid>` and pinned under /run/netns, where
`ip netns` also finds them.

A namespace is made on a short-lived thread that unshares its own network namespace and
bind-mounts it, as `ip netns add` does; pyroute2's own helpers fork a process for each call,
which made starting many pods cost a fork per pod per pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from pyroute2 import IPRoute, netns

from nodeagent.runtime.syscalls import (
    CLONE_NEWNET,
    MNT_DETACH,
    MS_BIND,
    MS_REC,
    MS_SHARED,
    LibcSyscalls,
)

DEFAULT_PREFIX = "moorage-"
NETNS_DIR = netns.NETNS_RUN_DIR

_syscalls: LibcSyscalls | None = None
_dir_ready = threading.Lock()
_dir_shared = False


def _sysc() -> LibcSyscalls:
    global _syscalls
    if _syscalls is None:
        _syscalls = LibcSyscalls()
    return _syscalls


def sandbox_name(pod_uid: str, prefix: str = DEFAULT_PREFIX) -> str:
    # The pod uid is already unique; its first 12 hex digits keep names short in `ip netns`.
    return prefix + pod_uid.replace("-", "")[:12]


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def on_thread(fn: Callable[[], object], netns_path: str | None = None,
              timeout: float = 30.0) -> object:
    """fn() on a new thread that first enters the namespace at `netns_path` (or, with None, a
    new network namespace of its own); the thread ends with fn, so no other work ever runs in
    that namespace by mistake. The result or exception is handed back."""
    sysc = _sysc()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            if netns_path is None:
                sysc.unshare(CLONE_NEWNET)
            else:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    sysc.setns(fd, CLONE_NEWNET)
                finally:
                    os.close(fd)
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    t = threading.Thread(target=target, name="netns", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def _share_dir() -> None:
    """/run/netns as a shared mount, as iproute2 makes it, so pins propagate to mount
    namespaces made later."""
    global _dir_shared
    with _dir_ready:
        if _dir_shared:
            return
        os.makedirs(NETNS_DIR, exist_ok=True)
        sysc = _sysc()
        try:
            sysc.mount("", NETNS_DIR, "none", MS_SHARED | MS_REC)
        except OSError:   # not a mount point yet: bind it onto itself, then share
            sysc.mount(NETNS_DIR, NETNS_DIR, "none", MS_BIND | MS_REC)
            sysc.mount("", NETNS_DIR, "none", MS_SHARED | MS_REC)
        _dir_shared = True


def _loopback_up() -> None:
    # On the calling thread: the netlink socket belongs to that thread's namespace.
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


def _create(name: str) -> None:
    _share_dir()
    pin = path(name)
    os.close(os.open(pin, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make() -> None:
        _sysc().mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", pin, "none",
                      MS_BIND)
        _loopback_up()
    try:
        on_thread(make)
    except BaseException:
        _unpin(pin)
        raise


def _unpin(pin: str) -> None:
    try:
        _sysc().umount2(pin, MNT_DETACH)
    except OSError:
        pass   # never mounted (a failed create)
    try:
        os.unlink(pin)
    except FileNotFoundError:
        pass


def ensure(name: str) -> str:
    """Creates the namespace with loopback up, or returns the existing one with loopback up;
    idempotent. A pin left without its namespace (a create cut short) is made again."""
    pin = path(name)
    if os.path.exists(pin):
        try:
            on_thread(_loopback_up, pin)
            return pin
        except OSError:   # setns refused: a plain file, not a namespace
            _unpin(pin)
    _create(name)
    return pin


def remove(name: str) -> None:
    if os.path.lexists(path(name)):
        _unpin(path(name))


def existing(prefix: str = DEFAULT_PREFIX) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))
