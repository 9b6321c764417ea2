"""The service table: every Service with its ready endpoints, kept from one Service watch and
one Pod watch, and sent whole to every agent session whenever it changes (and at session
start), for the agents' service rules and DNS.

`service_entry` (moorage/model/endpoints.py, shared with `moor describe`) is pure; the index only
keeps the watched objects and coalesces bursts of changes (a rollout touches many pods at
once) into one broadcast. The same Service watch feeds the cluster's registry aliases
(moorage/model/registries.py), sent to agents whenever they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from controlplane.store import Store
from moorage.model import kinds
from moorage.model.endpoints import pod_is_ready, selects, service_entry
from moorage.model.registries import aliases
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

SERVICE = kinds.BY_NAME["Service"]
POD = kinds.BY_NAME["Pod"]
# Changes that arrive within this long of each other go out as one table.
COALESCE_SECONDS = 0.02


class ServiceIndex:
    def __init__(self, store: Store, broadcast: Callable[[agent_pb2.ServiceTable], None],
                 coalesce_seconds: float = COALESCE_SECONDS,
                 on_registries: Callable[[agent_pb2.ClusterRegistries], None] | None = None):
        self.store = store
        self.broadcast = broadcast
        # Called with every new set of registry aliases, once synced.
        self.on_registries = on_registries
        self._registries = agent_pb2.ClusterRegistries()
        self.coalesce_seconds = coalesce_seconds
        self.services: dict[tuple[str, str], pb.Service] = {}
        self.pods: dict[str, dict[str, pb.Pod]] = {}          # namespace -> name -> pod
        self.entries: dict[tuple[str, str], agent_pb2.ServiceEntry] = {}
        self._synced = {"services": False, "pods": False}
        self.synced = asyncio.Event()
        self._sent: agent_pb2.ServiceTable | None = None
        self._flush: asyncio.TimerHandle | None = None

    def message(self) -> agent_pb2.ServiceTable:
        return agent_pb2.ServiceTable(services=[self.entries[k] for k in sorted(self.entries)])

    def registries(self) -> agent_pb2.ClusterRegistries:
        """The registry aliases the Services declare now."""
        return self._registries

    def _check_registries(self) -> None:
        now = aliases(self.services.values())
        if now != self._registries:
            self._registries = now
            if self.synced.is_set() and self.on_registries is not None:
                self.on_registries(now)

    # ---- recomputing ----

    def _recompute(self, keys: Iterable[tuple[str, str]]) -> None:
        changed = False
        for key in keys:
            svc = self.services.get(key)
            if svc is None:
                changed |= self.entries.pop(key, None) is not None
                continue
            entry = service_entry(svc, self.pods.get(key[0], {}).values())
            if self.entries.get(key) != entry:
                self.entries[key] = entry
                changed = True
        if changed and self.synced.is_set():
            self._schedule()

    def _selecting(self, *pods: pb.Pod | None) -> list[tuple[str, str]]:
        """The services whose endpoints these versions of a pod may be among."""
        return [k for k, svc in self.services.items()
                if any(p is not None and selects(svc, p) for p in pods)]

    def _schedule(self) -> None:
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.coalesce_seconds, self._send)

    def flush(self) -> None:
        """Sends a table that is waiting out the coalescing delay now (none waiting: nothing
        to do); a barrier for tests, and a last send before shutting down."""
        if self._flush is not None:
            self._flush.cancel()
            self._send()

    def _send(self) -> None:
        self._flush = None
        table = self.message()
        if table != self._sent:
            self._sent = table
            self.broadcast(table)

    def _mark_synced(self, what: str) -> None:
        self._synced[what] = True
        if all(self._synced.values()):
            self._recompute(list(self.services))
            if not self.synced.is_set():
                self.synced.set()
                self._sent = self.message()
            else:
                self._schedule()

    # ---- services ----

    def _resync_services(self, items) -> None:
        gone = set(self.services)
        self.services = {(s.metadata.namespace, s.metadata.name): s for s in items}
        self._recompute(gone | set(self.services))
        self._check_registries()
        self._mark_synced("services")

    def _put_service(self, svc: pb.Service) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self.services[key] = svc
        self._recompute([key])
        self._check_registries()

    def _delete_service(self, svc: pb.Service) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self.services.pop(key, None)
        self._recompute([key])
        self._check_registries()

    # ---- pods ----

    def _resync_pods(self, items) -> None:
        self.pods = {}
        for pod in items:
            self.pods.setdefault(pod.metadata.namespace, {})[pod.metadata.name] = pod
        self._recompute(list(self.services))
        self._mark_synced("pods")

    def _put_pod(self, pod: pb.Pod) -> None:
        ns = self.pods.setdefault(pod.metadata.namespace, {})
        old = ns.get(pod.metadata.name)
        ns[pod.metadata.name] = pod
        # Only what endpoints depend on; a status heartbeat of an unready pod changes nothing.
        if old is None or _endpoint_view(old) != _endpoint_view(pod):
            self._recompute(self._selecting(pod, old))

    def _delete_pod(self, pod: pb.Pod) -> None:
        ns = self.pods.get(pod.metadata.namespace, {})
        if (old := ns.pop(pod.metadata.name, None)) is not None:
            self._recompute(self._selecting(old))

    async def run(self) -> None:
        await asyncio.gather(
            self.store.follow(SERVICE, resync=self._resync_services, put=self._put_service,
                              delete=self._delete_service),
            self.store.follow(POD, resync=self._resync_pods, put=self._put_pod,
                              delete=self._delete_pod))


def _endpoint_view(pod: pb.Pod) -> tuple:
    return (dict(pod.metadata.labels), pod_is_ready(pod), pod.status.pod_ip,
            pod.spec.node_name, pod.spec.hostname, pod.spec.subdomain,
            tuple(cp.SerializeToString() for c in pod.spec.containers for cp in c.ports))
