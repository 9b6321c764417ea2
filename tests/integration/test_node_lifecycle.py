"""The node lifecycle controller against a real etcd: leases decide Ready, whatever raced."""

from __future__ import annotations

from controlplane.controllers.nodes import NodeLifecycle, is_ready
from controlplane.dispatcher.sessions import lease_key
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb
from tests.builders import pb_node
from tests.conftest import run

NODE = kinds.BY_NAME["Node"]


def node(name: str, status: str, reason: str) -> pb.Node:
    return pb_node(name, ready=status, reason=reason)


def test_ready_follows_the_lease_both_ways(store_factory):
    async def go():
        store = await store_factory()
        lifecycle = NodeLifecycle(store, eviction_seconds=3600)
        # A heartbeating node whose record a racing NotReady write left at Unknown.
        await store.create(node("back", "Unknown", "NodeStatusUnknown"))
        lease = await store.client.lease(60)
        await store.client.put(lease_key(store, "back"), b"back", lease=lease)
        # A Ready node with no lease behind it.
        await store.create(node("gone", "True", "AgentReady"))
        # An alive node that is NotReady for a reason this controller did not set: left alone.
        await store.create(node("other", "False", "KubeletNotReady"))
        lease2 = await store.client.lease(60)
        await store.client.put(lease_key(store, "other"), b"other", lease=lease2)

        await lifecycle.check()
        states = {n.metadata.name: is_ready(n) for n in (await store.list(NODE))[0]}
        assert states == {"back": True, "gone": False, "other": False}
        gone = await store.get(NODE, "", "gone")
        assert [c.reason for c in gone.status.conditions if c.type == "Ready"] == \
            ["NodeStatusUnknown"]
        await store.client.revoke_lease(lease.id)
        await store.client.revoke_lease(lease2.id)
        await store.client.delete_prefix(store.prefix.encode())
        await store.client.close()
    run(go())
