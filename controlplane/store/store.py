"""Typed objects in etcd: `<prefix>/<plural>/[<namespace>/]<name>` -> protobuf bytes.

Invariants: resourceVersion is the key's etcd mod_revision (filled on read, never stored);
every write is one Txn comparing revisions, so a lost race is a `Conflict`, never a silent
overwrite; `list` reads at one revision; `watch` yields events in revision order, never skips
one, and re-lists (RESYNC) when its starting revision was compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aetcd
import grpc
from aetcd import rpc
from aetcd.exceptions import RevisionCompactedError

from controlplane.metrics import ETCD_LATENCY
from controlplane.store.health import EtcdHealth
from moorage.model.kinds import Kind, kind_of

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/moorage"
# Watches ride out an etcd restart, retrying with this back-off.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# An absent key compares as mod_revision 0.
ABSENT = 0


class StoreError(Exception):
    """Base of the errors the API maps to gRPC status codes."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare failed: someone else wrote first. Carries the current version (0 = absent)."""

    def __init__(self, message: str, current: int = 0):
        super().__init__(message)
        self.current = current


class StoreUnavailable(StoreError):
    pass


class NotLeader(StoreError):
    """A guarded write found the leadership key changed: this replica no longer leads."""


@dataclass(frozen=True, slots=True)
class Op:
    """One change in a transaction. `expect` is the mod_revision the key must have (ABSENT for a
    create, None for "any"); `obj` None means delete; `guard_only` checks without writing."""

    key: bytes
    obj: object | None
    expect: int | None
    guard_only: bool = False
    # An etcd lease the key is attached to (it disappears when the lease expires).
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str                # ADDED, MODIFIED, DELETED, RESYNC, BOOKMARK
    obj: object | None
    revision: int
    # For RESYNC: the full current list at `revision`.
    items: Sequence[object] = field(default=())


def _range_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)


def _translate(err: grpc.aio.AioRpcError) -> StoreError:
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return StoreUnavailable(f"etcd is unavailable: {err.details()}")
    return StoreError(f"etcd: {err.code().name}: {err.details()}")


# Group commit: while one Txn is in flight, commits that arrive are sent together as the
# sub-transactions of one outer Txn. Each keeps its own compares and outcome; they share a
# revision. Disjoint keys only, and few enough to stay under etcd's default --max-txn-ops 128.
MAX_GROUP = 64


class _GroupCommit:
    def __init__(self, send):
        self.send = send
        self.queue: list[tuple[rpc.TxnRequest, frozenset, asyncio.Future]] = []
        self.running = False

    async def submit(self, request: rpc.TxnRequest, keys: frozenset):
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((request, keys, fut))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, rest, used = [], [], set()
                for item in self.queue:
                    if len(batch) >= MAX_GROUP or not used.isdisjoint(item[1]):
                        rest.append(item)
                    else:
                        batch.append(item)
                        used |= item[1]
                self.queue = rest
                try:
                    if len(batch) == 1:
                        resp = await self.send(batch[0][0])
                        results = [(resp, resp.header.revision)]
                    else:
                        outer = await self.send(rpc.TxnRequest(success=[
                            rpc.RequestOp(request_txn=req) for req, _, _ in batch]))
                        results = [(r.response_txn, outer.header.revision)
                                   for r in outer.responses]
                except BaseException as err:  # noqa: BLE001 - handed to every waiter
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                for (_, _, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self.running = False


class Store:
    def __init__(self, client: aetcd.Client, prefix: str = DEFAULT_PREFIX):
        self.client = client
        self.prefix = prefix.rstrip("/")
        self._group = _GroupCommit(lambda req: self._call("Txn", req))
        # Shared by every view (`with_guard` copies): whether etcd answers (health.py).
        self.health = EtcdHealth()
        # (key, mod_revision) every commit must also compare; set on views by `with_guard`.
        self.guard: tuple[bytes, int] | None = None

    def with_guard(self, key: bytes, revision: int) -> Store:
        """A view sharing this client whose every `commit` also requires `key` to still be at
        `revision` (the leader's key), failing with NotLeader otherwise."""
        view = copy.copy(self)
        view.guard = (key, revision)
        return view

    # ---- keys ----

    def key(self, kind: Kind, namespace: str, name: str) -> bytes:
        if kind.namespaced:
            return f"{self.prefix}/{kind.plural}/{namespace}/{name}".encode()
        return f"{self.prefix}/{kind.plural}/{name}".encode()

    def key_of(self, obj) -> bytes:
        return self.key(kind_of(obj), obj.metadata.namespace, obj.metadata.name)

    def range_prefix(self, kind: Kind, namespace: str | None = None) -> bytes:
        if kind.namespaced and namespace:
            return f"{self.prefix}/{kind.plural}/{namespace}/".encode()
        return f"{self.prefix}/{kind.plural}/".encode()

    @staticmethod
    def decode(kind: Kind, kv) -> object:
        obj = kind.message.FromString(kv.value)
        obj.metadata.resource_version = str(kv.mod_revision)
        return obj

    @staticmethod
    def encode(obj) -> bytes:
        if isinstance(obj, bytes):      # a raw record in a Txn (a service IP lease)
            return obj
        # resourceVersion is derived from etcd on every read; storing it would let it go stale.
        if obj.metadata.resource_version:
            obj = type(obj).FromString(obj.SerializeToString())
            obj.metadata.ClearField("resource_version")
        return obj.SerializeToString()

    # ---- raw calls ----

    async def _call(self, method: str, request):
        began = time.perf_counter()
        try:
            await self.client.connect()
            resp = await getattr(self.client.kvstub, method)(
                request, timeout=self.client._timeout, metadata=self.client.metadata)
        except grpc.aio.AioRpcError as err:
            error = _translate(err)
            if isinstance(error, StoreUnavailable):
                self.health.failed(str(error))
            raise error from err
        except aetcd.exceptions.ClientError as err:
            self.health.failed(f"etcd is unavailable: {err}")
            raise StoreUnavailable(f"etcd is unavailable: {err}") from err
        finally:
            ETCD_LATENCY.labels(method).observe(time.perf_counter() - began)
        self.health.ok()
        return resp

    async def txn(self, compare, success, failure=()) -> rpc.TxnResponse:
        return await self._call("Txn", rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)))

    # ---- reads ----

    async def get(self, kind: Kind, namespace: str, name: str):
        resp = await self._call("Range", rpc.RangeRequest(key=self.key(kind, namespace, name)))
        if not resp.kvs:
            raise NotFound(_not_found(kind, namespace, name))
        return self.decode(kind, resp.kvs[0])

    async def get_many(self, keys: Sequence[bytes]) -> tuple[dict[bytes, object], int]:
        """Raw (mod_revision, value) for each present key, read at one revision."""
        resp = await self.txn([], [rpc.RequestOp(request_range=rpc.RangeRequest(key=k))
                                   for k in keys])
        found = {}
        for r in resp.responses:
            for kv in r.response_range.kvs:
                found[kv.key] = kv
        return found, resp.header.revision

    async def list(self, kind: Kind, namespace: str | None = None,
                   revision: int = 0) -> tuple[list, int]:
        """Every object of a kind (in one namespace, or all) at one etcd revision."""
        start = self.range_prefix(kind, namespace)
        resp = await self._call("Range", rpc.RangeRequest(
            key=start, range_end=_range_end(start), revision=revision))
        return [self.decode(kind, kv) for kv in resp.kvs], resp.header.revision

    async def lease(self, ttl: int) -> int:
        """A new etcd lease of `ttl` seconds; its id."""
        try:
            await self.client.connect()
            return (await self.client.lease(ttl)).id
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
            raise StoreUnavailable(f"etcd is unavailable: {err}") from err

    async def raw_keys(self, prefix: bytes) -> list[bytes]:
        """Keys under a raw prefix (for records that are not API objects, such as leases)."""
        resp = await self._call("Range", rpc.RangeRequest(
            key=prefix, range_end=_range_end(prefix), keys_only=True))
        return [kv.key for kv in resp.kvs]

    async def revision(self) -> int:
        resp = await self._call("Range", rpc.RangeRequest(key=b"\0", limit=1,
                                                          count_only=True))
        return resp.header.revision

    # ---- writes ----

    async def commit(self, ops: Sequence[Op], guard: tuple[bytes, int] | None = None
                     ) -> tuple[bool, int, dict[bytes, object]]:
        """Applies `ops` in one Txn. Returns (succeeded, revision, current kvs by key); when a
        compare fails nothing is written and the current kvs let the caller retry. With a
        guard (key, mod_revision), or on a `with_guard` view, the Txn also compares that key
        and raises NotLeader when it moved, whatever the other compares found."""
        compare, success, failure = [], [], []
        guard = guard or self.guard
        if guard is not None:
            compare.append(rpc.Compare(key=guard[0], target=rpc.Compare.MOD,
                                       result=rpc.Compare.EQUAL, mod_revision=guard[1]))
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=guard[0])))
        for op in ops:
            if op.expect is not None:
                compare.append(rpc.Compare(key=op.key, target=rpc.Compare.MOD,
                                           result=rpc.Compare.EQUAL, mod_revision=op.expect))
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key)))
            if op.guard_only:
                continue
            if op.obj is None:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                    key=op.key, prev_kv=True)))
            else:
                success.append(rpc.RequestOp(request_put=rpc.PutRequest(
                    key=op.key, value=self.encode(op.obj), lease=op.lease)))
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        resp, revision = await self._group.submit(request, frozenset(op.key for op in ops))
        current = {}
        if not resp.succeeded:
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    current[kv.key] = kv
            if guard is not None:
                held = current.pop(guard[0], None)
                if held is None or held.mod_revision != guard[1]:
                    raise NotLeader(f"not the leader any more: {guard[0].decode()} is at "
                                    f"revision {held.mod_revision if held else 0}, not "
                                    f"{guard[1]}")
        return resp.succeeded, revision, current

    async def create(self, obj):
        key = self.key_of(obj)
        ok, rev, current = await self.commit([Op(key, obj, ABSENT)])
        if not ok:
            kind = kind_of(obj)
            raise AlreadyExists(
                f'{kind.plural} "{obj.metadata.name}" already exists')
        return self._stamped(obj, rev)

    async def update(self, obj, expect: int | None = None):
        """Writes `obj` if the stored one is still at `expect` (default: obj's resourceVersion)."""
        if expect is None:
            expect = int(obj.metadata.resource_version or 0)
        key = self.key_of(obj)
        ok, rev, current = await self.commit([Op(key, obj, expect)])
        if not ok:
            raise _conflict(kind_of(obj), obj.metadata.namespace, obj.metadata.name,
                            expect, current.get(key))
        return self._stamped(obj, rev)

    async def delete(self, kind: Kind, namespace: str, name: str, expect: int | None = None):
        key = self.key(kind, namespace, name)
        compare = []
        if expect is not None:
            compare.append(rpc.Compare(key=key, target=rpc.Compare.MOD,
                                       result=rpc.Compare.EQUAL, mod_revision=expect))
        resp = await self.txn(
            compare,
            [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, prev_kv=True))],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))])
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            if not kvs:
                raise NotFound(_not_found(kind, namespace, name))
            raise _conflict(kind, namespace, name, expect, kvs[0])
        prev = resp.responses[0].response_delete_range.prev_kvs
        if not prev:
            raise NotFound(_not_found(kind, namespace, name))
        return self.decode(kind, prev[0])

    async def delete_namespace(self, key: bytes, expect: int, marked, prefixes: Sequence[bytes],
                               pods_prefix: bytes) -> bool:
        """One Txn, if the namespace at `key` is still at `expect`: deletes every key under
        `prefixes`, then the namespace itself when nothing is under `pods_prefix`, or else stores
        `marked` (its Terminating form) for the namespace controller to finish."""
        no_pods = rpc.Compare(key=pods_prefix, range_end=_range_end(pods_prefix),
                              target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
        finish = rpc.TxnRequest(
            compare=[no_pods],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
            failure=[rpc.RequestOp(request_put=rpc.PutRequest(key=key,
                                                              value=self.encode(marked)))])
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
            key=start, range_end=_range_end(start))) for start in prefixes]
        ops.append(rpc.RequestOp(request_txn=finish))
        resp = await self.txn([rpc.Compare(key=key, target=rpc.Compare.MOD,
                                           result=rpc.Compare.EQUAL, mod_revision=expect)], ops)
        return resp.succeeded

    async def delete_if_empty(self, key: bytes, expect: int, prefix: bytes) -> bool:
        """Deletes `key` if it is still at `expect` and nothing is under `prefix` (a
        Terminating namespace whose last pod is gone)."""
        resp = await self.txn(
            [rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                         mod_revision=expect),
             rpc.Compare(key=prefix, range_end=_range_end(prefix), target=rpc.Compare.VERSION,
                         result=rpc.Compare.EQUAL, version=0)],
            [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))])
        return resp.succeeded

    @staticmethod
    def _stamped(obj, revision: int):
        out = type(obj)()
        out.CopyFrom(obj)
        out.metadata.resource_version = str(revision)
        return out

    # ---- watch ----

    async def watch(self, kind: Kind, namespace: str | None = None,
                    after: int = 0) -> AsyncIterator[WatchEvent]:
        """Changes after revision `after` (0: list first, as one RESYNC), in revision order.

        When `after` has been compacted the events in the gap are gone, so the watcher gets a
        RESYNC carrying the full list at a newer revision, then changes after it. Consumers
        replace their state on RESYNC; nothing is silently skipped.
        """
        start = self.range_prefix(kind, namespace)
        backoff = RETRY_INITIAL_SECONDS
        if after <= 0:
            items, after = await self._list_retrying(kind, namespace)
            yield WatchEvent("RESYNC", None, after, items)
        while True:
            try:
                await self.client.connect()
                watch = await self.client.watch(
                    start, range_end=_range_end(start), start_revision=after + 1, prev_kv=True)
            except RevisionCompactedError:
                items, after = await self._list_retrying(kind, namespace)
                yield WatchEvent("RESYNC", None, after, items)
                continue
            except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
                # etcd is down or restarting: keep trying, then resume where we stopped.
                self.health.failed(f"etcd is unavailable: {_brief(err)}")
                log.log(self.health.retry_level(), "watching %s: %s; retrying in %.1fs",
                        kind.plural, _brief(err), backoff)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_SECONDS, backoff * 2)
                continue
            try:
                async for ev in watch:
                    backoff = RETRY_INITIAL_SECONDS
                    kv = ev.kv
                    after = kv.mod_revision
                    if ev.kind == "DELETE":
                        prev = ev.prev_kv
                        obj = self.decode(kind, prev) if prev is not None else None
                        if obj is not None:
                            obj.metadata.resource_version = str(kv.mod_revision)
                        yield WatchEvent("DELETED", obj, kv.mod_revision)
                    else:
                        typ = "ADDED" if kv.version == 1 else "MODIFIED"
                        yield WatchEvent(typ, self.decode(kind, kv), kv.mod_revision)
            except RevisionCompactedError:
                items, after = await self._list_retrying(kind, namespace)
                yield WatchEvent("RESYNC", None, after, items)
            except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
                # The stream broke (etcd restarted, network): resume from the last revision.
                self.health.failed(f"etcd is unavailable: a watch stream broke: {_brief(err)}")
                log.log(self.health.retry_level(), "watch of %s broke: %s; resuming",
                        kind.plural, _brief(err))
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_SECONDS, backoff * 2)
            finally:
                with contextlib.suppress(Exception):
                    await watch.cancel()

    async def follow(self, kind: Kind, *, resync, put, delete,
                     namespace: str | None = None) -> None:
        """Feeds every change of `kind` to callbacks, until cancelled: `resync(items)` with the
        whole list (first, and again after a compaction), then `put(obj)` and `delete(obj)`."""
        async for ev in self.watch(kind, namespace):
            if ev.type == "RESYNC":
                resync(ev.items)
            elif ev.type == "DELETED":
                if ev.obj is not None:
                    delete(ev.obj)
            else:
                put(ev.obj)

    async def _list_retrying(self, kind: Kind, namespace: str | None) -> tuple[list, int]:
        backoff = RETRY_INITIAL_SECONDS
        while True:
            try:
                return await self.list(kind, namespace)
            except StoreUnavailable as err:
                log.log(self.health.retry_level(), "listing %s: %s; retrying in %.1fs",
                        kind.plural, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_SECONDS, backoff * 2)


def _brief(err: Exception) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)


def _not_found(kind: Kind, namespace: str, name: str) -> str:
    where = f' in namespace "{namespace}"' if kind.namespaced else ""
    return f'{kind.plural} "{name}" not found{where}'


def _conflict(kind: Kind, namespace: str, name: str, expect, kv) -> Conflict:
    if kv is None:
        return Conflict(f'{kind.plural} "{name}" was deleted meanwhile '
                        f"(expected resourceVersion {expect})", 0)
    return Conflict(
        f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
        f"modified (resourceVersion {expect} is stale, current is {kv.mod_revision}); "
        "read it again and retry", kv.mod_revision)
