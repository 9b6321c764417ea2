"""The scheduler shell against a real etcd: binds pods, never twice, explains, re-queues."""

from __future__ import annotations

import asyncio
import collections

from controlplane.metrics import PENDING_PODS, SCHEDULE_ATTEMPTS, SCHEDULING_LATENCY
from controlplane.scheduler import SchedulerConfig
from controlplane.scheduler.binder import Scheduler
from controlplane.store import Store
from moorage.model import kinds, quantities
from moorage.v1 import objects_pb2 as pb
from tests.conftest import run
from tests.wait import wait_until_async as wait_for

POD = kinds.BY_NAME["Pod"]
NODE = kinds.BY_NAME["Node"]
EVENT = kinds.BY_NAME["Event"]


def node(name: str, cpu: str = "4", memory: str = "8Gi", ready: bool = True, **labels) -> pb.Node:
    n = pb.Node(api_version="v1", kind="Node")
    n.metadata.name = name
    n.metadata.labels.update(labels)
    n.status.allocatable.update({"cpu": cpu, "memory": memory, "pods": "110"})
    n.status.conditions.add(type="Ready", status="True" if ready else "False")
    return n


def pod(name: str, cpu: str = "100m", memory: str = "64Mi", ns: str = "default",
        owner: str | None = None, **selector) -> pb.Pod:
    p = pb.Pod(api_version="v1", kind="Pod")
    p.metadata.name, p.metadata.namespace = name, ns
    c = p.spec.containers.add(name="c", image="busybox")
    c.resources.requests.update({"cpu": cpu, "memory": memory})
    p.spec.node_selector.update(selector)
    if owner:
        p.metadata.owner_references.add(kind="Deployment", name=owner, controller=True)
    p.status.phase = "Pending"
    return p




async def create_all(store: Store, objs, chunk: int = 100) -> None:
    from controlplane.store import ABSENT, Op

    for i in range(0, len(objs), chunk):
        ok, _, _ = await store.commit([Op(store.key_of(o), o, ABSENT) for o in objs[i:i + chunk]])
        assert ok


def started(store: Store, **kw) -> tuple[Scheduler, asyncio.Task]:
    sched = Scheduler(store, **kw)
    return sched, asyncio.get_running_loop().create_task(sched.run())


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_200_pods_over_20_nodes_are_bound_within_capacity_and_spread(store_factory):
    async def go():
        store = await store_factory()
        await create_all(store, [node(f"node-{i:02d}") for i in range(20)])
        await create_all(store, [pod(f"web-{i:03d}", owner="web") for i in range(200)])
        scheduled_before = SCHEDULE_ATTEMPTS.labels("scheduled")._value.get()
        sched, task = started(store, config=SchedulerConfig(strategy="spread"))
        try:
            async def all_bound():
                pods, _ = await store.list(POD, "default")
                return pods if all(p.spec.node_name for p in pods) else None
            pods = await wait_for(all_bound)
        finally:
            await stop(task)
        per_node = collections.Counter(p.spec.node_name for p in pods)
        assert len(pods) == 200 and set(per_node) == {f"node-{i:02d}" for i in range(20)}
        # 200 equal pods over 20 equal nodes, spread: exactly 10 each.
        assert max(per_node.values()) - min(per_node.values()) <= 1
        for name, count in per_node.items():
            cpu = count * 100   # millicores requested on that node
            assert cpu <= 4000 and count * 64 * 2**20 <= quantities.memory_bytes("8Gi"), name
        for p in pods:
            cond = [c for c in p.status.conditions if c.type == "PodScheduled"]
            assert cond and cond[0].status == "True"
        assert SCHEDULE_ATTEMPTS.labels("scheduled")._value.get() - scheduled_before == 200
        assert SCHEDULING_LATENCY._sum.get() > 0
        assert PENDING_PODS._value.get() == 0
        events, _ = await store.list(EVENT, "default")
        scheduled = [e for e in events if e.reason == "Scheduled"]
        assert len(scheduled) == 200
        assert scheduled[0].message.startswith("Successfully assigned default/web-")
    run(go())


def test_two_schedulers_racing_never_bind_a_pod_twice(store_factory):
    """Each round binds 200 pods with two schedulers; every round must bind each pod exactly
    once, and at least one round must have been a real race (both bound pods, or one lost a
    bind to the other): a round where one scheduler happened to win everything proves less."""
    async def round_(store_a, prefix: str) -> bool:
        store_b = Store(store_a.client, prefix=store_a.prefix)
        start_rev = await store_a.revision()
        a, ta = started(store_a, record_events=False, batch_size=25)
        b, tb = started(store_b, record_events=False, batch_size=25)
        await asyncio.gather(a.synced.wait(), b.synced.wait())
        names = [f"{prefix}{i:03d}" for i in range(200)]
        await create_all(store_a, [pod(n) for n in names], chunk=20)
        try:
            async def all_bound():
                pods, _ = await store_a.list(POD, "default")
                mine = [p for p in pods if p.metadata.name.startswith(prefix)]
                return mine if len(mine) == 200 and all(p.spec.node_name for p in mine) \
                    else None
            await wait_for(all_bound)
            # Barrier: a pod created after the others is bound only once both schedulers have
            # looked at their queues again, so no losing bind attempt is still in flight.
            await create_all(store_a, [pod(prefix + "late")])
            await wait_for(_bound(store_a, prefix + "late"))
        finally:
            await stop(ta)
            await stop(tb)
        assert a.bindings + b.bindings == 201
        # The etcd history itself: each pod's nodeName was set exactly once, never changed.
        history = collections.defaultdict(list)
        gen = store_a.watch(POD, "default", after=start_rev)
        final, _ = await store_a.list(POD, "default")
        last_rev = {p.metadata.name: int(p.metadata.resource_version) for p in final
                    if p.metadata.name.startswith(prefix)}

        async def read_history():
            seen = set()
            async for ev in gen:
                if ev.obj is not None and ev.obj.metadata.name in last_rev:
                    history[ev.obj.metadata.name].append(ev.obj.spec.node_name)
                    if ev.revision >= last_rev[ev.obj.metadata.name]:
                        seen.add(ev.obj.metadata.name)
                if len(seen) == len(last_rev):
                    return
        await asyncio.wait_for(read_history(), 30)
        await gen.aclose()
        for name, nodes in history.items():
            assigned = [n for n in nodes if n]
            assert len(set(assigned)) == 1, (name, nodes)
            first = nodes.index(assigned[0])
            assert all(n == assigned[0] for n in nodes[first:]), (name, nodes)
        # They really raced: both bound some, or one lost binds to the other.
        return bool((a.bindings and b.bindings) or a.conflicts + b.conflicts > 0)

    async def go():
        store_a = await store_factory()
        await create_all(store_a, [node(f"n{i}", cpu="1000") for i in range(10)])
        for i in range(3):
            if await round_(store_a, f"r{i}-"):
                break
        else:
            raise AssertionError("the two schedulers never raced in three rounds")
    run(go())


def _bound(store, name: str):
    async def check():
        p = await store.get(POD, "default", name)
        return p.spec.node_name or None
    return check


def test_unschedulable_pod_explains_itself_and_is_requeued_when_a_node_fits(store_factory):
    async def go():
        store = await store_factory()
        await create_all(store, [node("small-1", memory="256Mi"), node("small-2", memory="256Mi"),
                                 node("ssd-1", disktype="ssd", memory="128Mi"),
                                 node("down", ready=False)])
        big = pod("big", memory="512Mi")
        await create_all(store, [big])
        sched, task = started(store)
        try:
            async def explained():
                p = await store.get(POD, "default", "big")
                conds = [c for c in p.status.conditions if c.type == "PodScheduled"]
                return p if conds and conds[0].reason == "Unschedulable" else None
            p = await wait_for(explained)
            cond = [c for c in p.status.conditions if c.type == "PodScheduled"][0]
            assert cond.status == "False"
            assert cond.message == ("0/4 nodes available: 3 Insufficient memory, "
                                    "1 node(s) were not ready.")
            details = {d.node: d.reason for d in p.status.scheduling_details}
            assert details["small-1"] == "needs 512Mi memory, 256Mi free"
            assert sorted(details) == ["down", "small-1", "small-2", "ssd-1"]
            events, _ = await store.list(EVENT, "default")
            assert any(e.reason == "FailedScheduling" and e.type == "Warning" and
                       e.involved_object.name == "big" for e in events)
            # A node that fits arrives: the pod is retried and bound without a new apply.
            await create_all(store, [node("large", memory="4Gi")])

            async def bound():
                p = await store.get(POD, "default", "big")
                return p.spec.node_name or None
            assert await wait_for(bound) == "large"
            p = await store.get(POD, "default", "big")
            assert list(p.status.scheduling_details) == []
        finally:
            await stop(task)
    run(go())


def test_scheduler_rebuilds_its_cache_from_etcd_on_start(store_factory):
    async def go():
        store = await store_factory()
        await create_all(store, [node("only", cpu="1")])
        first = pod("first", cpu="800m")
        first.spec.node_name = "only"          # bound before this scheduler started
        await create_all(store, [first, pod("second", cpu="800m")])
        sched, task = started(store)
        try:
            async def explained():
                p = await store.get(POD, "default", "second")
                return p if p.status.scheduling_details else None
            p = await wait_for(explained)
            assert p.status.scheduling_details[0].reason == "needs 800m cpu, 200m free"
        finally:
            await stop(task)
    run(go())


def test_higher_priority_pods_are_placed_first(store_factory):
    async def go():
        store = await store_factory()
        await create_all(store, [node("one", cpu="1")])
        low = pod("low", cpu="800m")
        high = pod("high", cpu="800m")
        high.spec.priority = 1000
        await create_all(store, [low, high])
        sched, task = started(store)
        try:
            async def decided():
                h = await store.get(POD, "default", "high")
                lo = await store.get(POD, "default", "low")
                return (h, lo) if h.spec.node_name and lo.status.scheduling_details else None
            h, lo = await wait_for(decided)
            assert h.spec.node_name == "one" and not lo.spec.node_name
        finally:
            await stop(task)
    run(go())
