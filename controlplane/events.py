"""Records Events (`Scheduled`, `FailedScheduling`, ...) as objects that expire after an hour.

Events ride on an etcd lease that is rotated every few minutes, so each one lives between one
and about 1.2 hours and etcd never fills with them (Kubernetes keeps events for an hour too).
"""

from __future__ import annotations

import time
import uuid

from controlplane.store import Op, Store
from moorage.model import kinds
from moorage.model.timestamps import rfc3339
from moorage.v1 import objects_pb2 as pb

EVENT_TTL_SECONDS = 3600
LEASE_ROTATE_SECONDS = 600
# A repeat of a recorded event (same object, type, reason and message) within this long bumps
# the first one's count and last timestamp instead of adding another, as the kubelet's event
# correlator does; `moor describe` then shows "(x5 over 1m)".
AGGREGATE_SECONDS = 600
AGGREGATE_KEYS = 4096
NORMAL, WARNING = "Normal", "Warning"


class EventRecorder:
    def __init__(self, store: Store, component: str, clock=time.time):
        self.store = store
        self.component = component
        self.clock = clock
        self._lease = 0
        self._lease_at = 0.0
        # (uid, type, reason, message) -> (the stored Event, when it was first recorded);
        # insertion-ordered, so the oldest go first when it is full.
        self._recent: dict[tuple, tuple[pb.Event, float]] = {}

    async def _lease_id(self) -> int:
        now = self.clock()
        if not self._lease or now - self._lease_at > LEASE_ROTATE_SECONDS:
            lease = await self.store.leases.grant(EVENT_TTL_SECONDS + LEASE_ROTATE_SECONDS)
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
        """Records an event on its own (not part of another change); a repeat within
        AGGREGATE_SECONDS updates the earlier Event's count instead of adding one."""
        now = self.clock()
        key = (obj.metadata.uid or kinds.kind_of(obj).name + "/" + obj.metadata.name,
               type_, reason, message)
        seen = self._recent.pop(key, None)
        if seen is not None and now - seen[1] < AGGREGATE_SECONDS:
            ev = pb.Event()
            ev.CopyFrom(seen[0])
            ev.count += 1
            ev.last_timestamp = rfc3339(now)
            first = seen[1]
        else:
            ev, first = self.build(obj, type_, reason, message), now
        await self.store.commit([Op(self.store.key_of(ev), ev, None,
                                    lease=await self._lease_id())])
        self._recent[key] = (ev, first)
        while len(self._recent) > AGGREGATE_KEYS:
            del self._recent[next(iter(self._recent))]
