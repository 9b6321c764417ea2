"""An in-memory etcd, for unit tests of controller shells: `Store(MemoryEtcd())` behaves as a
Store on a real etcd, down to revisions, compares, nested Txns, leases and watches, which
tests/integration/test_store.py checks by running the same cases against both.

It speaks the slice of aetcd's client the store uses (kvstub.Range/Txn, lease calls, watch,
status) with etcd's own protobuf messages. Lease expiry follows `clock`; `fail(True)` makes
every call fail as an unreachable etcd does. No compaction: history is kept whole.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aetcd
from aetcd import rpc

_EQUAL, _GREATER, _LESS, _NOT_EQUAL = (rpc.Compare.EQUAL, rpc.Compare.GREATER, rpc.Compare.LESS,
                                       rpc.Compare.NOT_EQUAL)


@dataclass(slots=True)
class _Lease:
    id: int
    ttl: int
    expires: float


@dataclass(slots=True)
class _Reply:
    TTL: int
    id: int = 0


@dataclass(slots=True)
class _Event:
    kind: str            # PUT or DELETE
    kv: rpc.KeyValue
    prev_kv: rpc.KeyValue | None


class _Watch:
    def __init__(self, etcd: MemoryEtcd, key: bytes, range_end: bytes | None,
                 start_revision: int):
        self.etcd, self.key, self.range_end = etcd, key, range_end
        self.queue: asyncio.Queue = asyncio.Queue()
        for revision, ev in etcd.history:
            if revision >= start_revision and self.wants(ev.kv.key):
                self.queue.put_nowait(ev)

    def wants(self, key: bytes) -> bool:
        return _in_range(key, self.key, self.range_end)

    def __aiter__(self):
        return self

    async def __anext__(self) -> _Event:
        ev = await self.queue.get()
        if ev is None:
            raise StopAsyncIteration
        if isinstance(ev, Exception):
            raise ev
        return ev

    async def cancel(self) -> None:
        self.etcd.watches.discard(self)
        self.queue.put_nowait(None)


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


class _KV:
    def __init__(self, etcd: MemoryEtcd):
        self.etcd = etcd

    async def Range(self, request, timeout=None, metadata=None):  # noqa: N802 - etcd's name
        self.etcd._check()
        return self.etcd._range(request)

    async def Txn(self, request, timeout=None, metadata=None):  # noqa: N802 - etcd's name
        self.etcd._check()
        self.etcd._expire()
        writes: list = []
        resp = self.etcd._txn(request, writes)
        if writes:
            self.etcd._apply(writes)
        resp.header.revision = self.etcd.revision
        return resp


class MemoryEtcd:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.data: dict[bytes, rpc.KeyValue] = {}
        self.revision = 1
        self.history: list[tuple[int, _Event]] = []
        self.leases: dict[int, _Lease] = {}
        self.next_lease = 1000
        self.watches: set[_Watch] = set()
        self.kvstub = _KV(self)
        self._timeout = 10
        self.metadata = None
        self.down = False

    # ---- the client's surface ----

    async def connect(self) -> None:
        self._check()

    async def close(self) -> None:
        for w in list(self.watches):
            await w.cancel()

    def fail(self, down: bool) -> None:
        """Makes every call fail as with an etcd that does not answer (or answer again);
        open watches break."""
        self.down = down
        if down:
            for w in list(self.watches):
                self.watches.discard(w)
                w.queue.put_nowait(aetcd.exceptions.ConnectionFailedError("etcd is down"))

    async def lease(self, ttl: int):
        self._check()
        self.next_lease += 1
        self.leases[self.next_lease] = _Lease(self.next_lease, ttl, self.clock() + ttl)
        return _Reply(TTL=ttl, id=self.next_lease)

    async def refresh_lease(self, lease_id: int):
        self._check()
        self._expire()
        lease = self.leases.get(lease_id)
        if lease is None:
            raise aetcd.exceptions.ClientError("etcdserver: requested lease not found")
        lease.expires = self.clock() + lease.ttl
        return _Reply(TTL=lease.ttl, id=lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        self._check()
        self._expire()
        if self.leases.pop(lease_id, None) is None:
            raise aetcd.exceptions.ClientError("etcdserver: requested lease not found")
        self._drop_leased({lease_id})

    async def watch(self, key: bytes, range_end: bytes | None = None,
                    start_revision: int | None = None, prev_kv: bool = False, **_):
        self._check()
        w = _Watch(self, key, range_end, start_revision or self.revision + 1)
        self.watches.add(w)
        return w

    async def status(self):
        self._check()
        return _Reply(TTL=0)

    # ---- etcd's rules ----

    def _check(self) -> None:
        if self.down:
            raise aetcd.exceptions.ConnectionFailedError("failed to connect: etcd is down")

    def _expire(self) -> None:
        now = self.clock()
        gone = {i for i, lease in self.leases.items() if lease.expires <= now}
        for i in gone:
            del self.leases[i]
        if gone:
            self._drop_leased(gone)

    def _drop_leased(self, lease_ids: set[int]) -> None:
        keys = [k for k, kv in self.data.items() if kv.lease in lease_ids]
        if keys:
            self._apply([("delete", k) for k in keys])

    def _select(self, key: bytes, range_end: bytes, data=None) -> list[rpc.KeyValue]:
        data = self.data if data is None else data
        return [data[k] for k in sorted(data) if _in_range(k, key, range_end)]

    def _at(self, revision: int) -> dict[bytes, rpc.KeyValue]:
        """The keys as they were at `revision`, replayed from the history."""
        data: dict[bytes, rpc.KeyValue] = {}
        for rev, ev in self.history:
            if rev > revision:
                break
            if ev.kind == "PUT":
                data[ev.kv.key] = ev.kv
            else:
                data.pop(ev.kv.key, None)
        return data

    def _range(self, req) -> rpc.RangeResponse:
        self._expire()
        data = self._at(req.revision) if req.revision else None
        kvs = self._select(req.key, req.range_end, data)
        resp = rpc.RangeResponse(count=len(kvs))
        resp.header.revision = self.revision
        if req.count_only:
            return resp
        if req.limit:
            kvs = kvs[:req.limit]
        for kv in kvs:
            out = resp.kvs.add()
            out.CopyFrom(kv)
            if req.keys_only:
                out.ClearField("value")
        return resp

    def _holds(self, c) -> bool:
        kvs = self._select(c.key, c.range_end)
        if not kvs:
            if c.target == rpc.Compare.VALUE:
                return False
            kvs = [rpc.KeyValue()]
        field = {rpc.Compare.VERSION: ("version", "version"),
                 rpc.Compare.CREATE: ("create_revision", "create_revision"),
                 rpc.Compare.MOD: ("mod_revision", "mod_revision"),
                 rpc.Compare.VALUE: ("value", "value"),
                 rpc.Compare.LEASE: ("lease", "lease")}[c.target]
        want = getattr(c, field[1])
        for kv in kvs:
            have = getattr(kv, field[0])
            ok = {_EQUAL: have == want, _GREATER: have > want, _LESS: have < want,
                  _NOT_EQUAL: have != want}[c.result]
            if not ok:
                return False
        return True

    def _txn(self, req, writes: list) -> rpc.TxnResponse:
        succeeded = all(self._holds(c) for c in req.compare)
        resp = rpc.TxnResponse(succeeded=succeeded)
        for op in (req.success if succeeded else req.failure):
            out = resp.responses.add()
            which = op.WhichOneof("request")
            if which == "request_range":
                out.response_range.CopyFrom(self._range(op.request_range))
            elif which == "request_put":
                if op.request_put.lease and op.request_put.lease not in self.leases:
                    raise aetcd.exceptions.ClientError("etcdserver: requested lease not found")
                writes.append(("put", op.request_put.key, op.request_put.value,
                               op.request_put.lease))
                out.response_put.SetInParent()
            elif which == "request_delete_range":
                d = op.request_delete_range
                gone = self._select(d.key, d.range_end)
                writes += [("delete", kv.key) for kv in gone]
                out.response_delete_range.deleted = len(gone)
                if d.prev_kv:
                    out.response_delete_range.prev_kvs.extend(gone)
            elif which == "request_txn":
                out.response_txn.CopyFrom(self._txn(op.request_txn, writes))
        return resp

    def _apply(self, writes: list) -> None:
        """Applies a Txn's writes at one new revision, and tells the watches."""
        self.revision += 1
        rev = self.revision
        for write in writes:
            key = write[1]
            prev = self.data.get(key)
            if write[0] == "put":
                kv = rpc.KeyValue(key=key, value=write[2], lease=write[3], mod_revision=rev,
                                  create_revision=prev.create_revision if prev else rev,
                                  version=(prev.version + 1) if prev else 1)
                self.data[key] = kv
                ev = _Event("PUT", kv, prev)
            else:
                if prev is None:
                    continue
                del self.data[key]
                ev = _Event("DELETE", rpc.KeyValue(key=key, mod_revision=rev), prev)
            self.history.append((rev, ev))
            for w in list(self.watches):
                if w.wants(key):
                    w.queue.put_nowait(ev)
