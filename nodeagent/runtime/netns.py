"""Doing something inside a network namespace: the one way the agent enters one from its own
process (the container init and `exec` enter theirs through the same Syscalls, in their own
processes). Namespaces belong to threads, so the work runs on a short-lived thread that enters
the namespace first and ends with the work: nothing else ever runs there by mistake."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from nodeagent.runtime.syscalls import CLONE_NEWNET, LibcSyscalls, Syscalls

# Where named network namespaces are pinned (iproute2's `ip netns` directory).
NETNS_DIR = "/var/run/netns"


def path(name: str) -> str:
    """The pin of the named network namespace."""
    return os.path.join(NETNS_DIR, name)


def on_thread(fn: Callable[[], object], netns_path: str | None = None,
              timeout: float = 30.0, sysc: Syscalls | None = None) -> object:
    """fn() on a new thread that first enters the namespace at `netns_path` (or, with None, a
    new network namespace of its own). The result or exception is handed back; a process
    started by fn (an `nft`) is born in that namespace."""
    sysc = sysc or LibcSyscalls()
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
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            box["error"] = err

    t = threading.Thread(target=target, name="netns", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")
