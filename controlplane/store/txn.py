"""Transactions: the one shape every write takes (`Op`s compared and applied in one etcd Txn),
the leader guard added to it, and group commit.

Group commit: while one Txn is in flight, commits that arrive are sent together as the
sub-transactions of one outer Txn. Each keeps its own compares and outcome; they share a
revision. Disjoint keys only, and few enough to stay under etcd's default --max-txn-ops 128.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aetcd
from aetcd import rpc

# An absent key compares as mod_revision 0.
ABSENT = 0
MAX_GROUP = 64


def range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    return aetcd.utils.prefix_range_end(prefix)


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


def mod_equals(key: bytes, revision: int) -> rpc.Compare:
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                       mod_revision=revision)


def prefix_empty(prefix: bytes) -> rpc.Compare:
    """Holds when no key starts with `prefix` (a range compare is vacuously true when empty)."""
    return rpc.Compare(key=prefix, range_end=range_end(prefix), target=rpc.Compare.VERSION,
                       result=rpc.Compare.EQUAL, version=0)


def put(key: bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes, prefix: bool = False) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
        key=key, range_end=range_end(key) if prefix else b"", prev_kv=True))


def read(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def request(ops: Sequence[Op], encode, guard: tuple[bytes, int] | None) -> rpc.TxnRequest:
    """The Txn for `ops`: every expectation (and the guard) compared; on failure it reads
    every key back, so the caller learns what changed."""
    compare, success, failure = [], [], []
    if guard is not None:
        compare.append(mod_equals(*guard))
        failure.append(read(guard[0]))
    for op in ops:
        if op.expect is not None:
            compare.append(mod_equals(op.key, op.expect))
        failure.append(read(op.key))
        if op.guard_only:
            continue
        success.append(delete(op.key) if op.obj is None
                       else put(op.key, encode(op.obj, op.key), op.lease))
    return rpc.TxnRequest(compare=compare, success=success, failure=failure)


class GroupCommit:
    def __init__(self, send):
        self.send = send
        self.queue: list[tuple[rpc.TxnRequest, frozenset, asyncio.Future]] = []
        self.running = False

    async def submit(self, req: rpc.TxnRequest, keys: frozenset):
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((req, keys, fut))
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
