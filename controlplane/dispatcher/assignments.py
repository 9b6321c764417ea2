"""Which pods each node must run, from one pod watch fanned out to every agent session.

Invariant: a subscriber gets the node's full set when it subscribes, then every change after
it, in order; a pod that leaves a node (deleted, or bound elsewhere) is sent as removed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controlplane.store import Store
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb

POD = kinds.BY_NAME["Pod"]


@dataclass(slots=True)
class Change:
    pods: list[pb.Pod] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class AssignmentIndex:
    def __init__(self, store: Store):
        self.store = store
        self.by_node: dict[str, dict[str, pb.Pod]] = {}
        self.node_of: dict[str, str] = {}          # pod uid -> node
        self.subscribers: dict[str, set[asyncio.Queue]] = {}
        self.synced = asyncio.Event()

    def subscribe(self, node: str) -> tuple[list[pb.Pod], asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers.setdefault(node, set()).add(queue)
        return list(self.by_node.get(node, {}).values()), queue

    def unsubscribe(self, node: str, queue: asyncio.Queue) -> None:
        self.subscribers.get(node, set()).discard(queue)

    def pods_on(self, node: str) -> list[pb.Pod]:
        return list(self.by_node.get(node, {}).values())

    def _publish(self, node: str, change: Change) -> None:
        for queue in self.subscribers.get(node, ()):
            queue.put_nowait(change)

    def _remove(self, uid: str) -> None:
        node = self.node_of.pop(uid, None)
        if node is not None:
            self.by_node.get(node, {}).pop(uid, None)
            self._publish(node, Change(removed=[uid]))

    def _put(self, pod: pb.Pod) -> None:
        uid, node = pod.metadata.uid, pod.spec.node_name
        if not node:
            self._remove(uid)
            return
        if self.node_of.get(uid) not in (None, node):
            self._remove(uid)
        old = self.by_node.get(node, {}).get(uid)
        self.node_of[uid] = node
        self.by_node.setdefault(node, {})[uid] = pod
        if old is None or old.spec != pod.spec or old.metadata.labels != pod.metadata.labels \
                or old.metadata.deletion_timestamp != pod.metadata.deletion_timestamp:
            # Status-only changes (the agent's own reports) are not news to the agent; a
            # deletion is (the agent stops the pod's containers, then confirms).
            self._publish(node, Change(pods=[pod]))

    def _replace(self, pods) -> None:
        old_nodes = set(self.by_node)
        self.by_node.clear()
        self.node_of.clear()
        for pod in pods:
            if pod.spec.node_name:
                self.node_of[pod.metadata.uid] = pod.spec.node_name
                self.by_node.setdefault(pod.spec.node_name, {})[pod.metadata.uid] = pod
        for node in old_nodes | set(self.by_node):
            # After a re-list, sessions get a fresh full set (marked by removed=None).
            for queue in self.subscribers.get(node, ()):
                queue.put_nowait(None)

    def _resync(self, pods) -> None:
        self._replace(pods)
        self.synced.set()

    async def run(self) -> None:
        await self.store.follow(POD, resync=self._resync, put=self._put,
                                delete=lambda pod: self._remove(pod.metadata.uid))
