"""The service table: every Service with its ready endpoints, kept from one Service watch and
one Pod watch, and sent whole to every agent session whenever it changes (and at session
start), for the agents' service rules and DNS.

`service_entry` is pure; the index only keeps the watched objects and coalesces bursts of
changes (a rollout touches many pods at once) into one broadcast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from controlplane.store import Store
from moorage import kinds
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

SERVICE = kinds.BY_NAME["Service"]
POD = kinds.BY_NAME["Pod"]
# Changes that arrive within this long of each other go out as one table.
COALESCE_SECONDS = 0.02


def pod_is_ready(pod: pb.Pod) -> bool:
    """Running, with an IP, and its Ready condition True: fit to take traffic."""
    return (pod.status.phase == "Running" and bool(pod.status.pod_ip)
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions))


def selects(service: pb.Service, pod: pb.Pod) -> bool:
    """A selector-less service has no endpoints (they would be managed by hand)."""
    sel = service.spec.selector
    return (pod.metadata.namespace == service.metadata.namespace and bool(sel)
            and all(pod.metadata.labels.get(k) == v for k, v in sel.items()))


def target_port(port: pb.ServicePort, pod: pb.Pod) -> int:
    """The port on `pod` a service port sends to; 0 when a named one is not declared there."""
    which = port.target_port.WhichOneof("value")
    if which == "int_val":
        return port.target_port.int_val
    if which is None:
        return port.port
    name, proto = port.target_port.str_val, port.protocol or "TCP"
    for c in pod.spec.containers:
        for cp in c.ports:
            if cp.name == name and (cp.protocol or "TCP") == proto:
                return cp.container_port
    return 0


def service_entry(service: pb.Service, pods: Iterable[pb.Pod]) -> agent_pb2.ServiceEntry:
    """The service as agents see it: its ports and its ready endpoints, sorted by pod name."""
    spec = service.spec
    entry = agent_pb2.ServiceEntry(
        namespace=service.metadata.namespace, name=service.metadata.name,
        type=spec.type or "ClusterIP", cluster_ip=spec.cluster_ip)
    for p in spec.ports:
        entry.ports.add(name=p.name, protocol=p.protocol or "TCP", port=p.port,
                        node_port=p.node_port if spec.type == "NodePort" else 0)
    ready = sorted((p for p in pods if selects(service, p) and pod_is_ready(p)),
                   key=lambda p: p.metadata.name)
    for pod in ready:
        entry.endpoints.add(ip=pod.status.pod_ip, node=pod.spec.node_name,
                            pod=pod.metadata.name,
                            hostname=pod.spec.hostname or pod.metadata.name,
                            ports=[target_port(p, pod) for p in spec.ports])
    return entry


class ServiceIndex:
    def __init__(self, store: Store, broadcast: Callable[[agent_pb2.ServiceTable], None],
                 coalesce_seconds: float = COALESCE_SECONDS):
        self.store = store
        self.broadcast = broadcast
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
        self._mark_synced("services")

    def _put_service(self, svc: pb.Service) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self.services[key] = svc
        self._recompute([key])

    def _delete_service(self, svc: pb.Service) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        self.services.pop(key, None)
        self._recompute([key])

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
            pod.spec.node_name, pod.spec.hostname,
            tuple(cp.SerializeToString() for c in pod.spec.containers for cp in c.ports))
