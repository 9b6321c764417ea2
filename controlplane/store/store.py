"""Typed objects in etcd: `<prefix>/<plural>/[<namespace>/]<name>` -> protobuf bytes.

Invariants: resourceVersion is the key's etcd mod_revision (filled on read, never stored);
every write is one Txn comparing revisions, sent by `_send` (which adds the leader guard of a
`with_guard` view and turns etcd's errors into StoreErrors), so a lost race is a `Conflict`,
never a silent overwrite; `list` reads at one revision; `watch` yields events in revision order,
never skips one, and re-lists (RESYNC) when its starting revision was compacted. Records that
are not API objects and etcd leases go through `raw` and `leases` (records.py), on the same path.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Sequence

import aetcd
import grpc
from aetcd import rpc

from controlplane.metrics import ETCD_LATENCY
from controlplane.store import records, txn
from controlplane.store import watch as watching
from controlplane.store.errors import (
    AlreadyExists,
    NotFound,
    NotLeader,
    StoreUnavailable,
    conflict,
    not_found,
    translate,
)
from controlplane.store.health import EtcdHealth
from controlplane.store.sealing import Sealer, SealError
from controlplane.store.txn import ABSENT, Op, range_end
from moorage.model.kinds import Kind, kind_of

DEFAULT_PREFIX = "/moorage"
# gRPC's reconnect back-off grows to two minutes by default; after an etcd restart the control
# plane should be back within seconds.
CHANNEL_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 200,
                   "grpc.min_reconnect_backoff_ms": 200,
                   "grpc.max_reconnect_backoff_ms": 2000}
REQUEST_TIMEOUT_SECONDS = 10


class Store:
    def __init__(self, client, prefix: str = DEFAULT_PREFIX, sealer: Sealer | None = None):
        self.client = client
        self.prefix = prefix.rstrip("/")
        # Seals Secrets at rest (sealing.py); without one, a Secret can be neither written
        # nor read.
        self.sealer = sealer
        self._group = txn.GroupCommit(lambda req: self._call("Txn", req))
        # Shared by every view (`with_guard` copies): whether etcd answers (health.py).
        self.health = EtcdHealth()
        # (key, mod_revision) every commit must also compare; set on views by `with_guard`.
        self.guard: tuple[bytes, int] | None = None

    @classmethod
    def connect(cls, host: str, port: int, prefix: str = DEFAULT_PREFIX,
                sealer: Sealer | None = None) -> Store:
        """A store on the etcd at host:port (the connection is made on first use)."""
        return cls(aetcd.Client(host=host, port=port, timeout=REQUEST_TIMEOUT_SECONDS,
                                options=CHANNEL_OPTIONS), prefix=prefix, sealer=sealer)

    async def close(self) -> None:
        await self.client.close()

    def with_guard(self, key: bytes, revision: int) -> Store:
        """A view sharing this client whose every write also requires `key` to still be at
        `revision` (the leader's key), failing with NotLeader otherwise."""
        view = copy.copy(self)
        view.guard = (key, revision)
        return view

    @property
    def raw(self) -> records.RawRecords:
        return records.RawRecords(self)

    @property
    def leases(self) -> records.Leases:
        return records.Leases(self)

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

    def decode(self, kind: Kind, kv) -> object:
        return self.decode_value(kind, kv.key, kv.value, kv.mod_revision)

    def decode_value(self, kind: Kind, key: bytes, value: bytes, revision: int) -> object:
        if kind.name == "Secret":
            value = self._sealer().open(key, value)
        obj = kind.message.FromString(value)
        obj.metadata.resource_version = str(revision)
        return obj

    def encode(self, obj, key: bytes = b"") -> bytes:
        if isinstance(obj, bytes):      # a raw record in a Txn (a lease, a token)
            return obj
        # resourceVersion is derived from etcd on every read; storing it would let it go stale.
        if obj.metadata.resource_version:
            obj = type(obj).FromString(obj.SerializeToString())
            obj.metadata.ClearField("resource_version")
        if kind_of(obj).name == "Secret":
            return self._sealer().seal(key or self.key_of(obj), obj.SerializeToString())
        return obj.SerializeToString()

    def _sealer(self) -> Sealer:
        if self.sealer is None:
            raise SealError("Secrets cannot be stored: this control plane has no secrets key "
                            "(--secrets-key-file)")
        return self.sealer

    # ---- the one door ----

    async def _call(self, method: str, request):
        began = time.perf_counter()
        try:
            await self.client.connect()
            resp = await getattr(self.client.kvstub, method)(
                request, timeout=self.client._timeout, metadata=self.client.metadata)
        except grpc.aio.AioRpcError as err:
            error = translate(err)
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

    async def _send(self, compare: list, success: list, failure: list) -> rpc.TxnResponse:
        """A Txn with the guard's compare added; NotLeader when the guard failed."""
        if self.guard is not None:
            compare = [txn.mod_equals(*self.guard), *compare]
            failure = [txn.read(self.guard[0]), *failure]
        resp = await self._call("Txn", rpc.TxnRequest(compare=compare, success=success,
                                                      failure=failure))
        if not resp.succeeded:
            _check_guard(self.guard, _read_back(resp))
        return resp

    async def commit(self, ops: Sequence[Op], guard: tuple[bytes, int] | None = None
                     ) -> tuple[bool, int, dict[bytes, object]]:
        """Applies `ops` in one Txn. Returns (succeeded, revision, current kvs by key); when a
        compare fails nothing is written and the current kvs let the caller retry. With a
        guard (key, mod_revision), or on a `with_guard` view, the Txn also compares that key
        and raises NotLeader when it moved, whatever the other compares found."""
        guard = guard or self.guard
        request = txn.request(ops, self.encode, guard)
        resp, revision = await self._group.submit(request, frozenset(op.key for op in ops))
        current = {}
        if not resp.succeeded:
            current = _read_back(resp)
            _check_guard(guard, current)
            if guard is not None:
                current.pop(guard[0], None)
        return resp.succeeded, revision, current

    # ---- reads ----

    async def get(self, kind: Kind, namespace: str, name: str):
        resp = await self._call("Range", rpc.RangeRequest(key=self.key(kind, namespace, name)))
        if not resp.kvs:
            raise NotFound(not_found(kind, namespace, name))
        return self.decode(kind, resp.kvs[0])

    async def get_many(self, keys: Sequence[bytes]) -> tuple[dict[bytes, object], int]:
        """Raw (mod_revision, value) for each present key, read at one revision."""
        resp = await self._call("Txn", rpc.TxnRequest(success=[txn.read(k) for k in keys]))
        return _read_back(resp), resp.header.revision

    async def list(self, kind: Kind, namespace: str | None = None,
                   revision: int = 0, skip_unreadable: bool = False) -> tuple[list, int]:
        """Every object of a kind (in one namespace, or all) at one etcd revision; with
        `skip_unreadable`, without the Secrets this replica cannot open (else SealError)."""
        start = self.range_prefix(kind, namespace)
        resp = await self._call("Range", rpc.RangeRequest(
            key=start, range_end=range_end(start), revision=revision))
        out = []
        for kv in resp.kvs:
            try:
                out.append(self.decode(kind, kv))
            except SealError:
                if not skip_unreadable:
                    raise
        return out, resp.header.revision

    async def count(self, kind: Kind) -> int:
        return await self.raw.count(self.range_prefix(kind))

    async def revision(self) -> int:
        resp = await self._call("Range", rpc.RangeRequest(key=b"\0", limit=1,
                                                          count_only=True))
        return resp.header.revision

    async def etcd_version(self) -> str:
        """The etcd server's version, "" when it cannot say."""
        try:
            await self.client.connect()
            return (await self.client.status()).version
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError):
            return ""

    # ---- writes ----

    async def create(self, obj):
        ok, rev, _ = await self.commit([Op(self.key_of(obj), obj, ABSENT)])
        if not ok:
            raise AlreadyExists(f'{kind_of(obj).plural} "{obj.metadata.name}" already exists')
        return self._stamped(obj, rev)

    async def update(self, obj, expect: int | None = None):
        """Writes `obj` if the stored one is still at `expect` (default: obj's resourceVersion)."""
        if expect is None:
            expect = int(obj.metadata.resource_version or 0)
        key = self.key_of(obj)
        ok, rev, current = await self.commit([Op(key, obj, expect)])
        if not ok:
            raise conflict(kind_of(obj), obj.metadata.namespace, obj.metadata.name,
                           expect, current.get(key))
        return self._stamped(obj, rev)

    async def delete(self, kind: Kind, namespace: str, name: str, expect: int | None = None):
        """Deletes the object (if still at `expect`); returns it as it was."""
        key = self.key(kind, namespace, name)
        while True:
            found, _ = await self.get_many([key])
            kv = found.get(key)
            if kv is None:
                raise NotFound(not_found(kind, namespace, name))
            if expect is not None and kv.mod_revision != expect:
                raise conflict(kind, namespace, name, expect, kv)
            ok, _, current = await self.commit([Op(key, None, kv.mod_revision)])
            if ok:
                return self.decode(kind, kv)
            if expect is not None:
                raise conflict(kind, namespace, name, expect, current.get(key))
            # Changed between the read and the delete: delete what is there now.

    async def delete_namespace(self, key: bytes, expect: int, marked, prefixes: Sequence[bytes],
                               pods_prefix: bytes, with_namespace: Sequence[bytes] = ()) -> bool:
        """One Txn, if the namespace at `key` is still at `expect`: deletes every key under
        `prefixes`, then, when nothing is under `pods_prefix`, every key under `with_namespace`
        and the namespace itself, or else stores `marked` (its Terminating form) for the
        namespace controller to finish."""
        finish = rpc.TxnRequest(compare=[txn.prefix_empty(pods_prefix)],
                                success=[*(txn.delete(p, prefix=True) for p in with_namespace),
                                         txn.delete(key)],
                                failure=[txn.put(key, self.encode(marked))])
        ops = [txn.delete(start, prefix=True) for start in prefixes]
        ops.append(rpc.RequestOp(request_txn=finish))
        resp = await self._send([txn.mod_equals(key, expect)], ops, [])
        return resp.succeeded

    async def delete_if_empty(self, key: bytes, expect: int, prefix: bytes,
                              also_empty: Sequence[bytes] = ()) -> bool:
        """Deletes `key` if it is still at `expect` and nothing is under `prefix` (nor under
        `also_empty`): a Terminating namespace whose last pod (and claim) is gone."""
        resp = await self._send([txn.mod_equals(key, expect), txn.prefix_empty(prefix),
                                 *(txn.prefix_empty(p) for p in also_empty)],
                                [txn.delete(key)], [])
        return resp.succeeded

    @staticmethod
    def _stamped(obj, revision: int):
        out = type(obj)()
        out.CopyFrom(obj)
        out.metadata.resource_version = str(revision)
        return out

    # ---- watch ----

    def watch(self, kind: Kind, namespace: str | None = None,
              after: int = 0) -> AsyncIterator[watching.WatchEvent]:
        """Changes after revision `after` (0: list first, as one RESYNC), in revision order."""
        return watching.watch(self, kind, namespace, after)

    async def follow(self, kind: Kind, *, resync, put, delete,
                     namespace: str | None = None) -> None:
        await watching.follow(self, kind, resync=resync, put=put, delete=delete,
                              namespace=namespace)


def _read_back(resp) -> dict[bytes, object]:
    """The kvs a Txn's range reads returned, by key."""
    return {kv.key: kv for r in resp.responses for kv in r.response_range.kvs}


def _check_guard(guard: tuple[bytes, int] | None, current: dict) -> None:
    """NotLeader when a failed Txn failed because the guard key moved."""
    if guard is None:
        return
    held = current.get(guard[0])
    if held is None or held.mod_revision != guard[1]:
        raise NotLeader(f"not the leader any more: {guard[0].decode()} is at revision "
                        f"{held.mod_revision if held else 0}, not {guard[1]}")
