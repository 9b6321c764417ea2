"""Store contract tests: revisions, conflicts, atomic commits, the leader guard, watches, raw
records, leases and namespace deletion, each run against a real etcd and against the in-memory
etcd (controlplane/store/memory.py), so the fake unit tests use behaves as the real one."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.store import ABSENT, AlreadyExists, Conflict, NotFound, NotLeader, Op, Store
from controlplane.store.memory import MemoryEtcd
from moorage.model.kinds import BY_NAME
from moorage.v1 import objects_pb2 as pb
from tests.builders import pb_pod
from tests.conftest import run

POD = BY_NAME["Pod"]
NS = BY_NAME["Namespace"]


@pytest.fixture(params=["etcd", "memory"])
def any_store(request, store_factory):
    """Makes a Store on the real etcd or on the in-memory one."""
    if request.param == "etcd":
        return store_factory

    async def make() -> Store:
        return Store(MemoryEtcd(), prefix="/moortest-memory")
    return make


def pod(name: str, ns: str = "default", image: str = "nginx") -> pb.Pod:
    return pb_pod(name, ns, image=image, container="c")


def test_create_get_update_delete_round_trip(any_store):
    async def go():
        s = await any_store()
        created = await s.create(pod("a"))
        rv = int(created.metadata.resource_version)
        got = await s.get(POD, "default", "a")
        assert got.metadata.resource_version == str(rv)
        assert got.spec.containers[0].image == "nginx"
        got.spec.containers[0].image = "nginx:2"
        updated = await s.update(got)
        assert int(updated.metadata.resource_version) > rv
        deleted = await s.delete(POD, "default", "a")
        assert deleted.spec.containers[0].image == "nginx:2"
        with pytest.raises(NotFound, match='pods "a" not found in namespace "default"'):
            await s.get(POD, "default", "a")
    run(go())


def test_stored_bytes_never_carry_resource_version(any_store):
    async def go():
        s = await any_store()
        p = pod("a")
        p.metadata.resource_version = "999"
        await s.commit([Op(s.key_of(p), p, ABSENT)])
        rec = await s.raw.get(s.key_of(p))
        assert pb.Pod.FromString(rec.value).metadata.resource_version == ""
    run(go())


def test_create_twice_is_already_exists(any_store):
    async def go():
        s = await any_store()
        await s.create(pod("a"))
        with pytest.raises(AlreadyExists):
            await s.create(pod("a"))
    run(go())


def test_lost_race_is_a_conflict_carrying_the_current_version(any_store):
    async def go():
        s = await any_store()
        first = await s.create(pod("a"))
        mine, theirs = pod("a", image="mine"), pod("a", image="theirs")
        mine.metadata.resource_version = theirs.metadata.resource_version = (
            first.metadata.resource_version)
        winner = await s.update(theirs)
        with pytest.raises(Conflict) as err:
            await s.update(mine)
        assert err.value.current == int(winner.metadata.resource_version)
        assert "modified" in str(err.value)
        assert (await s.get(POD, "default", "a")).spec.containers[0].image == "theirs"
    run(go())


def test_concurrent_updates_exactly_one_wins(any_store):
    async def go():
        s = await any_store()
        base = await s.create(pod("a"))

        async def attempt(i):
            p = pod("a", image=f"img{i}")
            p.metadata.resource_version = base.metadata.resource_version
            try:
                await s.update(p)
                return True
            except Conflict:
                return False
        results = await asyncio.gather(*(attempt(i) for i in range(10)))
        assert results.count(True) == 1
    run(go())


def test_delete_with_stale_version_conflicts_and_keeps_the_object(any_store):
    async def go():
        s = await any_store()
        a = await s.create(pod("a"))
        await s.update(a)
        with pytest.raises(Conflict):
            await s.delete(POD, "default", "a", expect=int(a.metadata.resource_version))
        await s.get(POD, "default", "a")
        with pytest.raises(NotFound):
            await s.delete(POD, "default", "missing")
    run(go())


def test_multi_object_commit_is_all_or_nothing(any_store):
    async def go():
        s = await any_store()
        await s.create(pod("exists"))
        before, _ = await s.list(POD, None)
        ops = [Op(s.key_of(pod(f"new{i}")), pod(f"new{i}"), ABSENT) for i in range(5)]
        ops.append(Op(s.key_of(pod("exists")), pod("exists"), ABSENT))  # must fail
        ok, _, current = await s.commit(ops)
        assert not ok
        assert s.key_of(pod("exists")) in current
        after, _ = await s.list(POD, None)
        assert [p.metadata.name for p in after] == [p.metadata.name for p in before]
        ok, _, _ = await s.commit(ops[:-1])
        assert ok
        assert len((await s.list(POD, None))[0]) == 6
    run(go())


def test_list_is_consistent_at_one_revision_and_scoped_by_namespace(any_store):
    async def go():
        s = await any_store()
        for ns in ("a", "b"):
            for i in range(3):
                await s.create(pod(f"p{i}", ns))
        items, rev = await s.list(POD, "a")
        assert [(p.metadata.namespace, p.metadata.name) for p in items] == [
            ("a", "p0"), ("a", "p1"), ("a", "p2")]
        assert all(int(p.metadata.resource_version) <= rev for p in items)
        everything, rev2 = await s.list(POD, None)
        assert len(everything) == 6 and rev2 >= rev
        await s.create(pod("late", "a"))
        # Reading at the old revision shows the old world.
        old, _ = await s.list(POD, "a", revision=rev)
        assert len(old) == 3
    run(go())


async def _collect(agen, n, timeout=10.0):
    out = []

    async def pull():
        async for ev in agen:
            out.append(ev)
            if len(out) >= n:
                return
    await asyncio.wait_for(pull(), timeout)
    return out


def test_watch_resumes_from_a_revision_in_order(any_store):
    async def go():
        s = await any_store()
        a = await s.create(pod("a"))
        rev = int(a.metadata.resource_version)
        await s.create(pod("b"))
        b2 = await s.get(POD, "default", "b")
        await s.update(b2)
        await s.delete(POD, "default", "a")
        events = await _collect(s.watch(POD, "default", after=rev), 3)
        assert [(e.type, e.obj.metadata.name) for e in events] == [
            ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]
        revs = [e.revision for e in events]
        assert revs == sorted(revs) and revs[0] > rev
    run(go())


def test_watch_from_zero_lists_first_then_streams(any_store):
    async def go():
        s = await any_store()
        await s.create(pod("a"))
        gen = s.watch(POD, "default")
        first = await gen.__anext__()
        assert first.type == "RESYNC" and [p.metadata.name for p in first.items] == ["a"]
        await s.create(pod("b"))
        nxt = await asyncio.wait_for(gen.__anext__(), 10)
        assert (nxt.type, nxt.obj.metadata.name) == ("ADDED", "b")
        await gen.aclose()
    run(go())


def test_watch_from_a_compacted_revision_relists_instead_of_skipping(store_factory):
    async def go():
        s = await store_factory()
        a = await s.create(pod("a"))
        old = int(a.metadata.resource_version)
        await s.create(pod("b"))
        await s.delete(POD, "default", "a")
        c = await s.create(pod("c"))
        await s.client.compact(int(c.metadata.resource_version), physical=True)
        gen = s.watch(POD, "default", after=old)
        first = await asyncio.wait_for(gen.__anext__(), 10)
        assert first.type == "RESYNC"
        assert sorted(p.metadata.name for p in first.items) == ["b", "c"]
        assert first.revision >= int(c.metadata.resource_version)
        await s.create(pod("d"))
        nxt = await asyncio.wait_for(gen.__anext__(), 10)
        assert (nxt.type, nxt.obj.metadata.name) == ("ADDED", "d")
        await gen.aclose()
    run(go())


def test_a_guarded_view_fails_with_not_leader_once_the_key_moves(any_store):
    async def go():
        s = await any_store()
        key = s.raw.key("leader")
        await s.raw.put(key, b"me")
        held = await s.raw.get(key)
        guarded = s.with_guard(key, held.mod_revision)
        await guarded.create(pod("a"))
        await s.raw.put(key, b"someone else")
        with pytest.raises(NotLeader):
            await guarded.create(pod("b"))
        with pytest.raises(NotFound):
            await s.get(POD, "default", "b")
        # A guarded compound Txn (namespace delete) is refused the same way.
        ns = await s.create(pb.Namespace(metadata=pb.ObjectMeta(name="n")))
        with pytest.raises(NotLeader):
            await guarded.delete_if_empty(s.key_of(ns), int(ns.metadata.resource_version),
                                          s.range_prefix(POD, "n"))
        assert (await s.get(NS, "", "n")).metadata.name == "n"
    run(go())


def test_raw_records_and_leases(any_store):
    async def go():
        s = await any_store()
        key = s.raw.key("tokens", "t1")
        assert await s.raw.create(key, b"one") is None
        held = await s.raw.create(key, b"two")
        assert held is not None and held.value == b"one"
        assert [r.value for r in await s.raw.list(s.raw.key("tokens", ""))] == [b"one"]
        assert await s.raw.count(s.raw.key("tokens", "")) == 1
        assert await s.raw.delete(key) and not await s.raw.delete(key)
        lease = await s.leases.grant(60)
        assert await s.leases.refresh(lease) > 0
        await s.raw.put(s.raw.key("leased"), b"x", lease=lease)
        assert await s.raw.get(s.raw.key("leased")) is not None
        await s.leases.revoke(lease)
        assert await s.raw.get(s.raw.key("leased")) is None     # gone with its lease
        assert await s.leases.refresh(lease) == 0
        await s.leases.revoke(lease)                             # revoking twice is fine
    run(go())


def test_namespace_delete_keeps_pods_and_marks_or_removes(any_store):
    async def go():
        s = await any_store()
        for name in ("empty", "busy"):
            await s.create(pb.Namespace(metadata=pb.ObjectMeta(name=name)))
        await s.create(pod("p", ns="busy"))
        svc = pb.Service(metadata=pb.ObjectMeta(name="svc", namespace="busy"))
        await s.create(svc)
        for name in ("empty", "busy"):
            ns = await s.get(NS, "", name)
            marked = pb.Namespace()
            marked.CopyFrom(ns)
            marked.status.phase = "Terminating"
            services = s.range_prefix(BY_NAME["Service"], name)
            assert await s.delete_namespace(s.key_of(ns), int(ns.metadata.resource_version),
                                            marked, [services], s.range_prefix(POD, name))
        with pytest.raises(NotFound):
            await s.get(NS, "", "empty")                 # no pods: gone at once
        busy = await s.get(NS, "", "busy")
        assert busy.status.phase == "Terminating"        # pods left: marked
        assert (await s.get(POD, "busy", "p")).metadata.name == "p"
        with pytest.raises(NotFound):
            await s.get(BY_NAME["Service"], "busy", "svc")
        rev = int(busy.metadata.resource_version)
        assert not await s.delete_if_empty(s.key_of(busy), rev, s.range_prefix(POD, "busy"))
        await s.delete(POD, "busy", "p")
        assert await s.delete_if_empty(s.key_of(busy), rev, s.range_prefix(POD, "busy"))
    run(go())
