"""The storage loop: makes, grows and removes the node's local volumes as VolumeData asks,
and tells the control plane what they hold (a VolumeReport on change, at most every
REPORT_SECONDS, and at once after a removal) and how much disk the node has left."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from moorage.v1 import agent_pb2
from nodeagent.storage.localvolumes import LocalVolumes

log = logging.getLogger(__name__)

REPORT_SECONDS = 3.0
LOCAL_STORAGE = "moorage.io/local-storage"


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_hello(hello: agent_pb2.Hello, state_dir: str, allowed: tuple[str, ...]) -> None:
    """The storage parts of Hello: free local storage (a quantity, as other capacities are)
    and the hostPath prefixes this agent allows."""
    try:
        hello.capacity[LOCAL_STORAGE] = str(free_bytes(state_dir))
    except OSError as err:
        log.warning("local storage of %s: %s", state_dir, err)
    del hello.allowed_host_paths[:]
    hello.allowed_host_paths.extend(allowed)


class StorageLoop:
    """`send(report)` queues a VolumeReport (False when no session is open); `session()` is
    the session's generation (a new one gets the report again)."""

    def __init__(self, volumes: LocalVolumes, send: Callable[[agent_pb2.VolumeReport], bool],
                 session: Callable[[], int] = lambda: 0):
        self.volumes, self.send, self.session = volumes, send, session
        self._kick = threading.Event()
        self._sent: tuple[bytes, int] | None = None
        # Passes completed: a test's barrier that a VolumeData was acted on.
        self.passes = 0

    def kick(self) -> None:
        self._kick.set()

    def step(self) -> None:
        try:
            self.volumes.sync()
        except Exception:   # noqa: BLE001 - one volume's bug must not stop the others
            log.exception("local volumes")
        report = self.volumes.report()
        key = (report.SerializeToString(deterministic=True), self.session())
        if key != self._sent and self.send(report):
            self._sent = key
        self.passes += 1

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            self._kick.wait(REPORT_SECONDS)
            self._kick.clear()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="storage", daemon=True)
        thread.start()
        return thread
