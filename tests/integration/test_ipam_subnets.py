"""Node subnet leases against a real etcd: stable, distinct, race-free, reusable, bounded."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from controlplane.allocators.subnets import IPAMError, assign_subnet, release_subnet
from tests.conftest import run


async def _closing(store, coro):
    try:
        return await coro
    finally:
        await store.client.close()


def test_lease_is_stable_across_calls_and_restarts(store_factory):
    async def go():
        store = await store_factory()
        first = await assign_subnet(store, "node-a")
        again = await assign_subnet(store, "node-a")
        await store.client.close()
        restarted = await store_factory()   # a new client, same prefix: a restarted server
        later = await _closing(restarted, assign_subnet(restarted, "node-a"))
        return first, again, later

    first, again, later = run(go())
    assert first == again == later == "10.244.0.0/24"


def test_nodes_get_distinct_lowest_free_subnets(store_factory):
    async def go():
        store = await store_factory()
        return await _closing(store, _assign_all(store, ["a", "b", "c"]))

    async def _assign_all(store, names):
        return [await assign_subnet(store, n) for n in names]

    assert run(go()) == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]


def test_concurrent_assignments_never_share_a_subnet(store_factory):
    names = [f"node-{i}" for i in range(20)]

    async def go():
        store = await store_factory()

        async def both():
            # The same node racing itself must still end with one lease.
            got = await asyncio.gather(*(assign_subnet(store, n) for n in names + names[:5]))
            return got, [await assign_subnet(store, n) for n in names]

        return await _closing(store, both())

    got, settled = run(go())
    assert len(set(settled)) == 20
    assert got[:20] == settled
    assert got[20:] == settled[:5]
    assert all(ipaddress.IPv4Network(s).subnet_of(ipaddress.IPv4Network("10.244.0.0/16"))
               for s in settled)


def test_release_then_reuse(store_factory):
    async def go():
        store = await store_factory()

        async def steps():
            a = await assign_subnet(store, "a")
            b = await assign_subnet(store, "b")
            released = await release_subnet(store, "a")
            twice = await release_subnet(store, "a")
            c = await assign_subnet(store, "c")
            a2 = await assign_subnet(store, "a")
            return a, b, released, twice, c, a2

        return await _closing(store, steps())

    a, b, released, twice, c, a2 = run(go())
    assert released == a and twice is None
    assert c == a                      # the lowest free subnet is the one given back
    assert a2 not in (b, c)


def test_exhaustion_and_invalid_cidr(store_factory):
    async def go():
        store = await store_factory()

        async def steps():
            got = [await assign_subnet(store, f"n{i}", "10.9.0.0/23", 24) for i in range(2)]
            with pytest.raises(IPAMError, match="no free /24"):
                await assign_subnet(store, "n2", "10.9.0.0/23", 24)
            with pytest.raises(IPAMError, match="not a valid"):
                await assign_subnet(store, "n3", "10.9.0.0/33")
            with pytest.raises(IPAMError, match="between"):
                await assign_subnet(store, "n3", "10.9.0.0/16", 8)
            return got

        return await _closing(store, steps())

    assert run(go()) == ["10.9.0.0/24", "10.9.1.0/24"]
