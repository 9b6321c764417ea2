"""Watching a kind: events in revision order, never a gap, riding out etcd restarts.

When the starting revision has been compacted the events in the gap are gone, so the watcher
gets a RESYNC carrying the full list at a newer revision, then changes after it. Consumers
replace their state on RESYNC; nothing is silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aetcd
import grpc
from aetcd.exceptions import RevisionCompactedError

from controlplane.store.errors import StoreUnavailable, brief
from controlplane.store.sealing import SealError
from controlplane.store.txn import range_end
from moorage.model.kinds import Kind

log = logging.getLogger("controlplane.store.store")

# Watches ride out an etcd restart, retrying with this back-off.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str                # ADDED, MODIFIED, DELETED, RESYNC, BOOKMARK
    obj: object | None
    revision: int
    # For RESYNC: the full current list at `revision`.
    items: Sequence[object] = field(default=())


async def watch(store, kind: Kind, namespace: str | None = None,
                after: int = 0) -> AsyncIterator[WatchEvent]:
    """Changes of `kind` after revision `after` (0: list first, as one RESYNC)."""
    start = store.range_prefix(kind, namespace)
    backoff = RETRY_INITIAL_SECONDS
    if after <= 0:
        items, after = await _list_retrying(store, kind, namespace)
        yield WatchEvent("RESYNC", None, after, items)
    while True:
        try:
            await store.client.connect()
            stream = await store.client.watch(
                start, range_end=range_end(start), start_revision=after + 1, prev_kv=True)
        except RevisionCompactedError:
            items, after = await _list_retrying(store, kind, namespace)
            yield WatchEvent("RESYNC", None, after, items)
            continue
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
            # etcd is down or restarting: keep trying, then resume where we stopped.
            store.health.failed(f"etcd is unavailable: {brief(err)}")
            log.log(store.health.retry_level(), "watching %s: %s; retrying in %.1fs",
                    kind.plural, brief(err), backoff)
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_SECONDS, backoff * 2)
            continue
        try:
            async for ev in stream:
                backoff = RETRY_INITIAL_SECONDS
                kv = ev.kv
                after = kv.mod_revision
                if ev.kind == "DELETE":
                    prev = ev.prev_kv
                    obj = _decode(store, kind, prev)[0] if prev is not None else None
                    if obj is not None:
                        obj.metadata.resource_version = str(kv.mod_revision)
                    yield WatchEvent("DELETED", obj, kv.mod_revision)
                else:
                    typ = "ADDED" if kv.version == 1 else "MODIFIED"
                    obj, readable = _decode(store, kind, kv)
                    # A Secret this replica cannot open is, to watchers, not there.
                    yield WatchEvent(typ if readable else "DELETED", obj, kv.mod_revision)
        except RevisionCompactedError:
            items, after = await _list_retrying(store, kind, namespace)
            yield WatchEvent("RESYNC", None, after, items)
        except (aetcd.exceptions.ClientError, grpc.aio.AioRpcError) as err:
            # The stream broke (etcd restarted, network): resume from the last revision.
            store.health.failed(f"etcd is unavailable: a watch stream broke: {brief(err)}")
            log.log(store.health.retry_level(), "watch of %s broke: %s; resuming",
                    kind.plural, brief(err))
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_SECONDS, backoff * 2)
        finally:
            with contextlib.suppress(Exception):
                await stream.cancel()


async def follow(store, kind: Kind, *, resync, put, delete,
                 namespace: str | None = None) -> None:
    """Feeds every change of `kind` to callbacks, until cancelled: `resync(items)` with the
    whole list (first, and again after a compaction), then `put(obj)` and `delete(obj)`."""
    async for ev in store.watch(kind, namespace):
        if ev.type == "RESYNC":
            resync(ev.items)
        elif ev.type == "DELETED":
            if ev.obj is not None:
                delete(ev.obj)
        else:
            put(ev.obj)


def _decode(store, kind: Kind, kv) -> tuple[object, bool]:
    """(the object, True), or for a Secret this replica cannot open (SealError, logged once
    by the sealer) (a bare one with only its name and namespace, False)."""
    try:
        return store.decode(kind, kv), True
    except SealError:
        stub = kind.message()
        rest = kv.key.decode()[len(store.range_prefix(kind)):]
        ns, _, name = rest.rpartition("/")
        stub.metadata.name, stub.metadata.namespace = name, ns
        stub.metadata.resource_version = str(kv.mod_revision)
        return stub, False


async def _list_retrying(store, kind: Kind, namespace: str | None) -> tuple[list, int]:
    backoff = RETRY_INITIAL_SECONDS
    while True:
        try:
            return await store.list(kind, namespace, skip_unreadable=True)
        except StoreUnavailable as err:
            log.log(store.health.retry_level(), "listing %s: %s; retrying in %.1fs",
                    kind.plural, err, backoff)
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_SECONDS, backoff * 2)
