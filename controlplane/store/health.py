"""Whether etcd answers, as every store call finds out: one WARNING when it stops answering,
one line when it is back, a gauge (`moorage_etcd_up`) and listeners (the gRPC health service).

Background loops that retry through an outage log their retries at DEBUG, so an hour without
etcd costs two log lines, not thousands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from controlplane.metrics import ETCD_UP

log = logging.getLogger("controlplane.etcd")


class EtcdHealth:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.up = True
        self.down_since = 0.0
        self.reason = ""
        self.listeners: list[Callable[[bool], None]] = []
        ETCD_UP.set(1)

    def ok(self) -> None:
        if self.up:
            return
        self.up = True
        ETCD_UP.set(1)
        log.info("etcd is answering again (unavailable for %.1fs)",
                 self.clock() - self.down_since)
        self._tell(True)

    def failed(self, reason: str) -> None:
        if not self.up:
            return
        self.up, self.down_since, self.reason = False, self.clock(), reason
        ETCD_UP.set(0)
        log.warning("%s; requests fail with UNAVAILABLE until it answers again", reason)
        self._tell(False)

    def retry_level(self) -> int:
        """The level for a background loop's retry message: DEBUG while an outage is known."""
        return logging.WARNING if self.up else logging.DEBUG

    def _tell(self, up: bool) -> None:
        for listener in list(self.listeners):
            listener(up)
