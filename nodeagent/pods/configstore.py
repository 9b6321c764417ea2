"""The ConfigMaps and Secrets this node's pods use, as the control plane sent them: in memory
only (never written to the state dir), replaced whole on each session, changed one by one."""

from __future__ import annotations

import threading

from moorage.model import configs
from moorage.v1 import agent_pb2

# (kind name, namespace, name)
Key = tuple[str, str, str]


class ConfigStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, object] = {}
        # Bumped on every change, so a container held for a missing object retries at once.
        self.generation = 0

    def apply(self, msg: agent_pb2.ConfigData) -> set[Key]:
        """Takes a ConfigData message; the keys that changed."""
        with self._lock:
            before = dict(self._objects)
            if msg.full:
                self._objects.clear()
            for obj in (*msg.config_maps, *msg.secrets):
                kind = configs.CONFIG_MAP if obj.DESCRIPTOR.name == "ConfigMap" \
                    else configs.SECRET
                self._objects[(kind, obj.metadata.namespace, obj.metadata.name)] = obj
            for ref in msg.removed:
                self._objects.pop((ref.kind, ref.namespace, ref.name), None)
            changed = {k for k in before.keys() | self._objects.keys()
                       if before.get(k) is not self._objects.get(k)}
            if changed:
                self.generation += 1
            return changed

    def get(self, kind: str, namespace: str, name: str):
        """The object, or None when the control plane says it does not exist."""
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def version(self, kind: str, namespace: str, name: str) -> str:
        obj = self.get(kind, namespace, name)
        return obj.metadata.resource_version if obj is not None else ""
