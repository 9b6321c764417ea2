"""ConfigMaps and Secrets for the agents: one watch of each kind, and per session the objects
its node's pods use.

Invariant: a session sends an object before the assignment that first needs it and again
whenever it changes, and says `removed` once no pod of its node uses it; a node never receives
an object no pod of its own names (the Node authorizer's rule, enforced here by construction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from controlplane.store import Store
from moorage.model import configs, kinds
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

CONFIG_MAP = kinds.BY_NAME["ConfigMap"]
SECRET = kinds.BY_NAME["Secret"]

# (kind name, namespace, name)
Key = tuple[str, str, str]
# Objects are up to 1 MiB each: a message carries at most about this much of them.
CONFIG_MESSAGE_BYTES = 4 * 1024 * 1024


def split(msg: agent_pb2.ConfigData) -> list[agent_pb2.ConfigData]:
    """`msg` as messages of about CONFIG_MESSAGE_BYTES at most, in order (only the first one
    `full`, removals in the last)."""
    out = [agent_pb2.ConfigData(full=msg.full)]
    size = 0
    for field in ("config_maps", "secrets"):
        for obj in getattr(msg, field):
            n = obj.ByteSize()
            if size and size + n > CONFIG_MESSAGE_BYTES:
                out.append(agent_pb2.ConfigData())
                size = 0
            getattr(out[-1], field).add().CopyFrom(obj)
            size += n
    out[-1].removed.extend(msg.removed)
    return out


def needed(pods: Iterable[pb.Pod]) -> set[Key]:
    """Every ConfigMap and Secret the pods name, in each pod's namespace."""
    out: set[Key] = set()
    for pod in pods:
        for ref in configs.references(pod.spec):
            out.add((ref.kind, pod.metadata.namespace, ref.name))
    return out


class ConfigIndex:
    def __init__(self, store: Store, changed: Callable[[Key], None]):
        self.store = store
        self.objects: dict[Key, object] = {}
        # Called with each object's key when it is created, changed or deleted.
        self.changed = changed
        self._synced = {CONFIG_MAP.name: False, SECRET.name: False}
        self.synced = asyncio.Event()

    @staticmethod
    def key(obj) -> Key:
        return (kinds.kind_of(obj).name, obj.metadata.namespace, obj.metadata.name)

    def _resync(self, kind_name: str, items) -> None:
        old = {k for k in self.objects if k[0] == kind_name}
        for k in old:
            del self.objects[k]
        for obj in items:
            self.objects[self.key(obj)] = obj
        self._synced[kind_name] = True
        if all(self._synced.values()):
            self.synced.set()
        for k in old | {self.key(o) for o in items}:
            self.changed(k)

    def _put(self, obj) -> None:
        self.objects[self.key(obj)] = obj
        self.changed(self.key(obj))

    def _delete(self, obj) -> None:
        self.objects.pop(self.key(obj), None)
        self.changed(self.key(obj))

    async def run(self) -> None:
        await asyncio.gather(*(
            self.store.follow(kind, resync=lambda items, k=kind.name: self._resync(k, items),
                              put=self._put, delete=self._delete)
            for kind in (CONFIG_MAP, SECRET)))


class SessionConfigs:
    """What one session has sent; `update` says what to send next."""

    def __init__(self, index: ConfigIndex):
        self.index = index
        self.sent: dict[Key, str] = {}    # key -> resourceVersion sent

    def additions(self, pods: Iterable[pb.Pod], full: bool = False
                  ) -> agent_pb2.ConfigData | None:
        """New or changed objects the pods need (all of them when `full`)."""
        if full:
            self.sent.clear()
        msg = agent_pb2.ConfigData(full=full)
        for key in sorted(needed(pods)):
            obj = self.index.objects.get(key)
            if obj is None:
                if key in self.sent:   # deleted meanwhile: the agent must forget it
                    del self.sent[key]
                    msg.removed.add(kind=key[0], namespace=key[1], name=key[2])
                continue
            if self.sent.get(key) == obj.metadata.resource_version:
                continue
            self.sent[key] = obj.metadata.resource_version
            (msg.config_maps if key[0] == CONFIG_MAP.name else msg.secrets).add().CopyFrom(obj)
        return msg if full or msg.config_maps or msg.secrets or msg.removed else None

    def removals(self, pods: Iterable[pb.Pod]) -> agent_pb2.ConfigData | None:
        """What was sent that no pod here uses any more."""
        keep = needed(pods)
        gone = sorted(k for k in self.sent if k not in keep)
        if not gone:
            return None
        msg = agent_pb2.ConfigData()
        for key in gone:
            del self.sent[key]
            msg.removed.add(kind=key[0], namespace=key[1], name=key[2])
        return msg

    def concerns(self, key: Key, pods: Iterable[pb.Pod]) -> bool:
        return key in self.sent or key in needed(pods)
