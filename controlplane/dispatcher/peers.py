"""The overlay's peer list: every node with a pod subnet and an InternalIP, kept from one Node
watch and sent whole to every agent session whenever it changes (flannel's subnet watch)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from controlplane.store import Store
from moorage.model import kinds
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

NODE = kinds.BY_NAME["Node"]


def peer_of(node: pb.Node) -> agent_pb2.Peer | None:
    """A node's overlay entry, or None while it has no subnet or no InternalIP yet."""
    ip = next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")
    if not node.spec.pod_cidr or not ip:
        return None
    return agent_pb2.Peer(name=node.metadata.name, underlay_ip=ip, pod_cidr=node.spec.pod_cidr)


class PeerIndex:
    def __init__(self, store: Store, broadcast: Callable[[agent_pb2.Peers], None]):
        self.store = store
        self.broadcast = broadcast
        self.peers: dict[str, agent_pb2.Peer] = {}
        self.synced = asyncio.Event()

    def message(self) -> agent_pb2.Peers:
        return agent_pb2.Peers(peers=[self.peers[n] for n in sorted(self.peers)])

    def _changed(self, before: dict[str, agent_pb2.Peer]) -> None:
        if before != self.peers:
            self.broadcast(self.message())

    def _resync(self, nodes) -> None:
        before = dict(self.peers)
        self.peers = {p.name: p for p in map(peer_of, nodes) if p is not None}
        self.synced.set()
        self._changed(before)

    def _put(self, node: pb.Node) -> None:
        before = dict(self.peers)
        peer = peer_of(node)
        if peer is None:
            self.peers.pop(node.metadata.name, None)
        else:
            self.peers[peer.name] = peer
        self._changed(before)

    def _delete(self, node: pb.Node) -> None:
        before = dict(self.peers)
        self.peers.pop(node.metadata.name, None)
        self._changed(before)

    async def run(self) -> None:
        await self.store.follow(NODE, resync=self._resync, put=self._put, delete=self._delete)
