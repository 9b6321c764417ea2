"""The node lifecycle's pure core: what a node's lease (or its absence) means, when pods are
evicted, and which pods are orphans of a deleted node; and its shell on the in-memory etcd."""

from __future__ import annotations

import pytest

from controlplane.controllers.nodes import (
    UNKNOWN_REASON,
    EvictPods,
    MarkNotReady,
    MarkReady,
    NodeLifecycle,
    decide,
    is_ready,
    orphans,
    to_evict,
)
from controlplane.dispatcher.sessions import lease_key
from controlplane.store import Store
from controlplane.store.memory import MemoryEtcd
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb
from tests.builders import pb_node, pb_pod
from tests.conftest import run


def node(name: str, status: str = "True", reason: str = "AgentReady") -> pb.Node:
    return pb_node(name, ready=status, reason=reason)


@pytest.mark.parametrize("n, leased, since, now, evicting, want, want_since", [
    pytest.param(node("a"), True, {}, 100.0, True, [], {}, id="ready-with-lease"),
    # Lost its lease: NotReady now, no eviction before the grace has passed.
    pytest.param(node("a"), False, {}, 100.0, True, [MarkNotReady("a")], {"a": 100.0},
                 id="lease-lost"),
    # 4 s without a lease (the eviction grace): evicted; marked only once.
    pytest.param(node("a", "Unknown", UNKNOWN_REASON), False, {"a": 96.0}, 100.0, True,
                 [EvictPods("a")], {"a": 96.0}, id="evict-after-grace"),
    pytest.param(node("a", "Unknown", UNKNOWN_REASON), False, {"a": 96.5}, 100.0, True,
                 [], {"a": 96.5}, id="not-yet"),
    # During the control plane's start-up grace nothing is evicted.
    pytest.param(node("a", "Unknown", UNKNOWN_REASON), False, {"a": 0.0}, 100.0, False,
                 [], {"a": 0.0}, id="startup-grace"),
    # Heartbeating again after this controller said Unknown: Ready; the lease is the truth.
    pytest.param(node("a", "Unknown", UNKNOWN_REASON), True, {"a": 96.0}, 100.0, True,
                 [MarkReady("a")], {}, id="back"),
    # NotReady for a reason someone else set: left alone.
    pytest.param(node("a", "False", "KubeletNotReady"), True, {}, 100.0, True, [], {},
                 id="not-ours"),
])
def test_decide(n, leased, since, now, evicting, want, want_since):
    actions, down = decide([n], {"a"} if leased else set(), since, now,
                           eviction_seconds=4.0, evicting=evicting)
    assert actions == want
    assert down == want_since


def pod(name: str, node_name: str) -> pb.Pod:
    return pb_pod(name, node=node_name)


def test_orphans_wait_the_grace_and_forget_what_is_gone():
    pods = [pod("kept", "n1"), pod("lost", "n9"), pod("pending", "")]
    gone, seen = orphans(pods, {"n1"}, {}, 10.0, 4.0)
    assert gone == [] and seen == {"default/lost": 10.0}
    gone, seen = orphans(pods, {"n1"}, seen, 14.0, 4.0)
    assert [p.metadata.name for p in gone] == ["lost"]
    assert orphans([], {"n1"}, seen, 20.0, 4.0) == ([], {})


def stateful(name: str, node_name: str) -> pb.Pod:
    p = pod(name, node_name)
    p.status.phase = "Running"
    p.metadata.owner_references.add(kind="StatefulSet", name="db", controller=True)
    return p


def test_statefulset_pods_are_kept_on_a_notready_node():
    web, db = pod("web", "n1"), stateful("db-0", "n1")
    web.status.phase = "Running"
    elsewhere, done = pod("other", "n2"), pod("done", "n1")
    done.status.phase = "Succeeded"
    evict, kept = to_evict([web, db, elsewhere, done], "n1")
    assert [p.metadata.name for p in evict] == ["web"]
    assert [p.metadata.name for p in kept] == ["db-0"]


def test_statefulset_pods_go_once_their_node_is_deleted():
    gone, _ = orphans([stateful("db-0", "n9")], {"n1"}, {"default/db-0": 0.0}, 10.0, 4.0)
    assert [p.metadata.name for p in gone] == ["db-0"]


def test_the_shell_on_the_in_memory_etcd():
    async def go():
        store = Store(MemoryEtcd(), prefix="/t")
        clock = [1000.0]
        lifecycle = NodeLifecycle(store, eviction_seconds=4, startup_grace_seconds=0,
                                  clock=lambda: clock[0])
        await store.create(node("gone"))
        lease = await store.leases.grant(60)
        await store.raw.put(lease_key(store, "alive"), b"alive", lease=lease)
        await store.create(node("alive"))
        p = pod("web", "gone")
        p.status.phase = "Running"
        await store.create(p)
        await store.create(stateful("db-0", "gone"))
        await lifecycle.check()
        NODE, POD = kinds.BY_NAME["Node"], kinds.BY_NAME["Pod"]
        assert not is_ready(await store.get(NODE, "", "gone"))
        assert is_ready(await store.get(NODE, "", "alive"))
        assert (await store.get(POD, "default", "web")).spec.node_name == "gone"
        clock[0] += 4
        await lifecycle.check()
        pods, _ = await store.list(POD)
        # Evicted from the NotReady node, but for the StatefulSet's pod.
        assert [p.metadata.name for p in pods] == ["db-0"]
    run(go())
