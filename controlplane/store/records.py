"""Records that are not API objects (join tokens, the cluster CA, replica addresses, node
leases, address leases) and etcd leases, through the same door as objects: every write is a
`Store.commit`, every error a StoreError."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aetcd
import grpc
from aetcd import rpc

from controlplane.store.errors import StoreError, StoreUnavailable
from controlplane.store.txn import ABSENT, Op, range_end


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    mod_revision: int


class RawRecords:
    """`store.raw`: keys under the store's prefix that hold bytes."""

    def __init__(self, store):
        self.store = store

    def key(self, *parts: str) -> bytes:
        return "/".join((self.store.prefix, *parts)).encode()

    async def get(self, key: bytes) -> Record | None:
        resp = await self.store._call("Range", rpc.RangeRequest(key=key))
        kv = resp.kvs[0] if resp.kvs else None
        return Record(kv.key, kv.value, kv.mod_revision) if kv is not None else None

    async def list(self, prefix: bytes, keys_only: bool = False) -> list[Record]:
        resp = await self.store._call("Range", rpc.RangeRequest(
            key=prefix, range_end=range_end(prefix), keys_only=keys_only))
        return [Record(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs]

    async def count(self, prefix: bytes) -> int:
        resp = await self.store._call("Range", rpc.RangeRequest(
            key=prefix, range_end=range_end(prefix), count_only=True))
        return resp.count

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Writes unconditionally; the revision."""
        _, revision, _ = await self.store.commit([Op(key, value, None, lease=lease)])
        return revision

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> Record | None:
        """Writes only if the key is absent; None on success, else what is there."""
        ok, _, current = await self.store.commit([Op(key, value, ABSENT, lease=lease)])
        if ok:
            return None
        kv = current.get(key)
        return Record(kv.key, kv.value, kv.mod_revision) if kv is not None else None

    async def delete(self, key: bytes, expect: int | None = None) -> bool:
        """Deletes the key (if still at `expect`); False when it was absent or had moved."""
        current = await self.get(key)
        if current is None or (expect is not None and current.mod_revision != expect):
            return False
        ok, _, _ = await self.store.commit([Op(key, None, current.mod_revision)])
        return ok

    async def watch_deleted(self, key: bytes, after: int) -> None:
        """Returns once `key` is deleted after revision `after` (resigned, expired)."""
        client = self.store.client
        watch = None
        try:
            await client.connect()
            watch = await client.watch(key, start_revision=after + 1)
            async for ev in watch:
                if ev.kind == "DELETE":
                    return
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
            raise StoreUnavailable(f"etcd is unavailable: {err}") from err
        finally:
            if watch is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watch.cancel(), 2)


class Leases:
    """`store.leases`: etcd leases, which keys can be attached to (Op.lease, raw.put)."""

    def __init__(self, store):
        self.store = store

    async def _do(self, method: str, *args):
        client = self.store.client
        try:
            await client.connect()
            result = await getattr(client, method)(*args)
        except (aetcd.exceptions.ConnectionFailedError,
                aetcd.exceptions.ConnectionTimeoutError) as err:
            self.store.health.failed(f"etcd is unavailable: {err}")
            raise StoreUnavailable(f"etcd is unavailable: {err}") from err
        except aetcd.exceptions.ClientError as err:
            if "lease not found" in str(err).lower():
                return None   # expired or revoked already
            raise StoreError(f"etcd: {err}") from err
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            self.store.health.failed(f"etcd is unavailable: {err.details()}")
            raise StoreUnavailable(f"etcd is unavailable: {err.details()}") from err
        self.store.health.ok()
        return result

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        lease = await self._do("lease", ttl)
        if lease is None:
            raise StoreError("etcd refused to grant a lease")
        return lease.id

    async def refresh(self, lease_id: int) -> int:
        """Keeps the lease alive; its remaining TTL, 0 when it has expired (or never was)."""
        reply = await self._do("refresh_lease", lease_id)
        return max(0, reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        """Ends the lease and deletes its keys; a lease already gone is fine."""
        await self._do("revoke_lease", lease_id)
