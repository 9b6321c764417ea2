"""Records Events (`Scheduled`, `FailedScheduling`, ...) as objects that expire after an hour.

Events ride on an etcd lease that is rotated every few minutes, so each one lives between one
and about 1.2 hours and etcd never fills with them (Kubernetes keeps events for an hour too).
"""

from __future__ import annotations

import time
import uuid

from controlplane.store import Op, Store
from moorage import kinds
from moorage.v1 import objects_pb2 as pb

EVENT_TTL_SECONDS = 3600
LEASE_ROTATE_SECONDS = 600
NORMAL, WARNING = "Normal", "Warning"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class EventRecorder:
    def __init__(self, store: Store, component: str, clock=time.time):
        self.store = store
        self.component = component
        self.clock = clock
        self._lease = 0
        self._lease_at = 0.0

    async def _lease_id(self) -> int:
        now = self.clock()
        if not self._lease or now - self._lease_at > LEASE_ROTATE_SECONDS:
            lease = await self.store.lease(EVENT_TTL_SECONDS + LEASE_ROTATE_SECONDS)
            self._lease, self._lease_at = lease, now
        return self._lease

    def build(self, obj, type_: str, reason: str, message: str) -> pb.Event:
        kind = kinds.kind_of(obj)
        now = rfc3339(self.clock())
        ev = pb.Event(api_version="v1", kind="Event", reason=reason, message=message,
                      type=type_, count=1, first_timestamp=now, last_timestamp=now)
        ev.metadata.name = f"{obj.metadata.name}.{uuid.uuid4().hex[:12]}"
        ev.metadata.namespace = obj.metadata.namespace or kinds.DEFAULT_NAMESPACE
        ev.metadata.uid = str(uuid.uuid4())
        ev.metadata.creation_timestamp = now
        ev.involved_object.kind = kind.name
        ev.involved_object.namespace = obj.metadata.namespace
        ev.involved_object.name = obj.metadata.name
        ev.involved_object.uid = obj.metadata.uid
        ev.source.component = self.component
        return ev

    async def op(self, obj, type_: str, reason: str, message: str) -> Op:
        """A put of a new Event, to commit in the same Txn as the change it reports."""
        ev = self.build(obj, type_, reason, message)
        return Op(self.store.key_of(ev), ev, None, lease=await self._lease_id())

    async def record(self, obj, type_: str, reason: str, message: str) -> None:
        await self.store.commit([await self.op(obj, type_, reason, message)])
