"""The Dispatcher service: one bidirectional session per node agent.

Hello registers (or refreshes) the Node and takes an etcd lease that heartbeats keep alive;
the node lifecycle controller reads those leases. The session then streams the node's full pod
set and each change to it, and writes the pod statuses the agent reports — only for pods bound
to that node.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import grpc

from controlplane.allocators.subnets import DEFAULT_CLUSTER_CIDR, IPAMError, assign_subnet
from controlplane.dispatcher.assignments import AssignmentIndex, Change
from controlplane.dispatcher.configs import ConfigIndex, Key, SessionConfigs, split
from controlplane.dispatcher.peers import PeerIndex
from controlplane.dispatcher.servicetable import ServiceIndex
from controlplane.dispatcher.volumes import SessionVolumes, VolumeIndex, VolumeReports
from controlplane.events import EventRecorder
from controlplane.ha import replicas
from controlplane.identity.auth import peer_identity
from controlplane.store import Conflict, NotFound, Store, StoreError
from moorage.model import kinds, names, storage
from moorage.model.network import DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI
from moorage.model.timestamps import now_rfc3339
from moorage.v1 import agent_pb2, agent_pb2_grpc
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

NODE = kinds.BY_NAME["Node"]
POD = kinds.BY_NAME["Pod"]
HEARTBEAT_SECONDS = 2.0
# A node whose agent has not heartbeated for this long loses its lease and goes NotReady.
NOT_READY_SECONDS = 6
WRITE_ATTEMPTS = 5


def lease_key(store: Store, node: str) -> bytes:
    return f"{store.prefix}/node-leases/{node}".encode()


def set_condition(conditions, type_: str, status: str, reason: str, message: str,
                  now: str) -> None:
    """Sets a node condition as of `now` (RFC 3339); the transition time moves only when the
    status does."""
    for c in conditions:
        if c.type == type_:
            if c.status != status:
                c.last_transition_time = now
            c.status, c.reason, c.message, c.last_heartbeat_time = status, reason, message, now
            return
    conditions.add(type=type_, status=status, reason=reason, message=message,
                   last_heartbeat_time=now, last_transition_time=now)


@dataclass(frozen=True, slots=True)
class NetworkDefaults:
    """The overlay's cluster-wide settings, sent to every agent with its session settings."""

    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    vxlan_vni: int = DEFAULT_VXLAN_VNI
    vxlan_port: int = DEFAULT_VXLAN_PORT


def node_from_hello(hello: agent_pb2.Hello, current: pb.Node | None,
                    pod_cidr: str = "", now: str = "") -> pb.Node:
    """The Node an agent's Hello describes, merged into the stored one, stamped `now`."""
    now = now or now_rfc3339()
    node = pb.Node(api_version="v1", kind="Node")
    if current is not None:
        node.CopyFrom(current)
    else:
        node.metadata.name = hello.node_name
        node.metadata.uid = str(uuid.uuid4())
        node.metadata.creation_timestamp = now
        node.metadata.generation = 1
    # Labels the agent reports win; labels an operator added stay.
    node.metadata.labels.update(hello.labels)
    node.metadata.labels["kubernetes.io/hostname"] = hello.node_name
    if pod_cidr:
        node.spec.pod_cidr = pod_cidr
    node.status.capacity.clear()
    node.status.capacity.update(hello.capacity)
    node.status.allocatable.clear()
    node.status.allocatable.update(hello.capacity)
    del node.status.addresses[:]
    node.status.addresses.extend(hello.addresses)
    node.status.node_info.CopyFrom(hello.node_info)
    if hello.allowed_host_paths:
        node.metadata.annotations[storage.ALLOWED_HOST_PATHS_ANNOTATION] = ",".join(
            hello.allowed_host_paths)
    else:
        node.metadata.annotations.pop(storage.ALLOWED_HOST_PATHS_ANNOTATION, None)
    set_condition(node.status.conditions, "Ready", "True", "AgentReady",
                  "the agent is connected and heartbeating", now)
    return node


def merge_pod_status(pod: pb.Pod, reported: pb.PodStatus) -> pb.PodStatus:
    """The agent owns phase, containers and addresses; the scheduler's condition stays."""
    status = pb.PodStatus()
    status.CopyFrom(reported)
    del status.conditions[:]
    for c in pod.status.conditions:
        if c.type == "PodScheduled":
            status.conditions.add().CopyFrom(c)
    ready = bool(reported.container_statuses) and all(
        c.ready for c in reported.container_statuses) and reported.phase == "Running"
    old = {c.type: c for c in pod.status.conditions}
    for type_ in ("ContainersReady", "Ready"):
        value = "True" if ready else "False"
        prev = old.get(type_)
        moved = prev is None or prev.status != value
        status.conditions.add(type=type_, status=value,
                              last_transition_time=now_rfc3339() if moved
                              else prev.last_transition_time)
    return status


# No item held back (None and False mean something on a session's queue).
NOTHING = object()


@dataclass(frozen=True, slots=True)
class VolumesChanged:
    """On a session's queue: a volume of its node was made, changed or removed."""


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """On a session's queue: a ConfigMap or Secret changed (its node may not use it)."""

    key: Key


def coalesce(first: Change, queue: asyncio.Queue) -> tuple[Change, object]:
    """`first` merged with the pod changes already waiting in `queue` (a later change of a pod
    replaces an earlier one), up to the first item that is not a pod change: that one is
    returned (else NOTHING), for the caller to handle next, before the rest of the queue."""
    latest: dict[str, pb.Pod | None] = {}

    def add(change: Change) -> None:
        for uid in change.removed:
            latest.pop(uid, None)
            latest[uid] = None
        for pod in change.pods:
            latest.pop(pod.metadata.uid, None)
            latest[pod.metadata.uid] = pod

    add(first)
    held = NOTHING
    while not queue.empty():
        item = queue.get_nowait()
        if not isinstance(item, Change):
            held = item
            break
        add(item)
    return (Change(pods=[p for p in latest.values() if p is not None],
                   removed=[u for u, p in latest.items() if p is None]), held)


class DispatcherServicer(agent_pb2_grpc.DispatcherServicer):
    def __init__(self, store: Store, index: AssignmentIndex,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 not_ready_seconds: int = NOT_READY_SECONDS, ca_cert=None,
                 network: NetworkDefaults | None = None):
        self.store = store
        # Callers must present a node certificate from this CA (x509.Certificate).
        self.ca_cert = ca_cert
        self.index = index
        self.heartbeat_seconds = heartbeat_seconds
        self.not_ready_seconds = not_ready_seconds
        # node -> the queue its Session stream yields from; `send` adds to it.
        self.sessions: dict[str, asyncio.Queue] = {}
        # Logs, exec and top (controlplane/dispatcher/streams.py); set by the server.
        self.streams = None
        self.network = network or NetworkDefaults()
        self.events = EventRecorder(store, "kubelet")
        self.peers = PeerIndex(store, self.broadcast)
        self.services = ServiceIndex(store, self.broadcast_services,
                                     on_registries=self.broadcast_registries)
        self.configs = ConfigIndex(store, self._config_changed)
        self.volumes = VolumeIndex(store, self._volumes_changed)
        self.volume_reports = VolumeReports(store, self.events)
        # This replica's advertised API address (controlplane/ha/replicas.py); "" for none.
        self.replica_address = ""

    def broadcast(self, peers: agent_pb2.Peers) -> None:
        msg = agent_pb2.DispatcherMessage(peers=peers)
        for queue in list(self.sessions.values()):
            queue.put_nowait(msg)

    def broadcast_services(self, table: agent_pb2.ServiceTable) -> None:
        msg = agent_pb2.DispatcherMessage(services=table)
        for queue in list(self.sessions.values()):
            queue.put_nowait(msg)

    def broadcast_registries(self, registries: agent_pb2.ClusterRegistries) -> None:
        msg = agent_pb2.DispatcherMessage(registries=registries)
        for queue in list(self.sessions.values()):
            queue.put_nowait(msg)

    def _config_changed(self, key: Key) -> None:
        # Each session decides whether its node uses the object (SessionConfigs.concerns).
        for queue in list(self.sessions.values()):
            queue.put_nowait(ConfigChanged(key))

    def _volumes_changed(self, node: str) -> None:
        queue = self.sessions.get(node)
        if queue is not None:
            queue.put_nowait(VolumesChanged())

    def send(self, node: str, msg: agent_pb2.DispatcherMessage) -> bool:
        """Queues `msg` on the node's open session; False when the node has none here."""
        queue = self.sessions.get(node)
        if queue is None:
            return False
        queue.put_nowait(msg)
        return True

    async def _register(self, hello: agent_pb2.Hello) -> tuple[int, str]:
        # The node's /24 of the cluster CIDR: the same one on every reconnect (etcd keeps it).
        pod_cidr = await assign_subnet(self.store, hello.node_name, self.network.cluster_cidr)
        # The lease goes first: the lifecycle controller lists nodes, then leases, so it can
        # never see this node's Ready record without also seeing the lease that backs it.
        lease = await self.store.leases.grant(self.not_ready_seconds)
        await self.store.raw.put(lease_key(self.store, hello.node_name),
                                 hello.node_name.encode(), lease=lease)
        for _ in range(WRITE_ATTEMPTS):
            try:
                current = await self.store.get(NODE, "", hello.node_name)
            except NotFound:
                current = None
            node = node_from_hello(hello, current, pod_cidr)
            try:
                if current is None:
                    await self.store.create(node)
                else:
                    await self.store.update(node)
                break
            except Conflict:
                continue
        else:
            raise Conflict(f"node {hello.node_name} kept changing while registering it")
        return lease, pod_cidr

    async def _heartbeat(self, node: str, lease_id: int) -> int:
        if await self.store.leases.refresh(lease_id) <= 0:
            # The lease expired (a long pause): the node is back, take a new one.
            lease = await self.store.leases.grant(self.not_ready_seconds)
            await self.store.raw.put(lease_key(self.store, node), node.encode(), lease=lease)
            await self._mark_ready(node)
            return lease
        return lease_id

    async def _mark_ready(self, name: str) -> None:
        for _ in range(WRITE_ATTEMPTS):
            node = await self.store.get(NODE, "", name)
            set_condition(node.status.conditions, "Ready", "True", "AgentReady",
                          "the agent is connected and heartbeating", now_rfc3339())
            try:
                await self.store.update(node)
                return
            except Conflict:
                continue

    async def _pod_status(self, node: str, report: agent_pb2.PodStatusReport) -> None:
        for _ in range(WRITE_ATTEMPTS):
            try:
                pod = await self.store.get(POD, report.namespace, report.name)
            except NotFound:
                return
            if pod.metadata.uid != report.uid or pod.spec.node_name != node:
                log.warning("node %s reported status for pod %s/%s it does not run; ignored",
                            node, report.namespace, report.name)
                return
            status = merge_pod_status(pod, report.status)
            if status == pod.status:
                return
            pod.status.CopyFrom(status)
            try:
                await self.store.update(pod)
                return
            except Conflict:
                continue

    async def _pod_terminated(self, node: str, report: agent_pb2.PodTerminated) -> None:
        """The agent stopped every container of a pod being deleted: remove the pod. Only a
        pod of this node that is Terminating; a repeat for a pod already gone is ignored."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                pod = await self.store.get(POD, report.namespace, report.name)
            except NotFound:
                return
            if pod.metadata.uid != report.uid or pod.spec.node_name != node or \
                    not pod.metadata.deletion_timestamp:
                return
            try:
                await self.store.delete(POD, report.namespace, report.name,
                                        int(pod.metadata.resource_version))
                return
            except (Conflict, NotFound):
                continue

    async def _pod_event(self, node: str, ev: agent_pb2.PodEvent) -> None:
        """Records an agent's event about one of its own pods (others are ignored)."""
        try:
            pod = await self.store.get(POD, ev.namespace, ev.pod)
        except NotFound:
            return
        if pod.metadata.uid != ev.uid or pod.spec.node_name != node:
            return
        type_ = ev.type if ev.type in ("Normal", "Warning") else "Normal"
        try:
            await self.events.record(pod, type_, ev.reason[:128], ev.message[:1024])
        except StoreError as err:   # events are best-effort; the session goes on
            log.warning("recording an event for pod %s/%s: %s", ev.namespace, ev.pod, err)

    async def _node_identity(self, context, method: str) -> str:
        """The calling node's name, from its client certificate; aborts for anyone else."""
        identity = peer_identity(context, self.ca_cert)
        if identity is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{method} needs a node certificate: join with a token first")
        if identity.kind != "node":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{identity} is not a node and may not call {method}")
        return identity.name

    async def _read(self, name: str, lease_id: int, request_iterator, closed: asyncio.Event,
                    queue: asyncio.Queue) -> None:
        """The agent's messages, in order: heartbeats, statuses, events, confirmations."""
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("message")
                if kind == "heartbeat":
                    lease_id = await self._heartbeat(name, lease_id)
                elif kind == "pod_status":
                    await self._pod_status(name, msg.pod_status)
                elif kind == "event":
                    await self._pod_event(name, msg.event)
                elif kind == "pod_terminated":
                    await self._pod_terminated(name, msg.pod_terminated)
                elif kind == "volumes":
                    try:
                        await self.volume_reports.handle(name, self.volumes, msg.volumes)
                    except StoreError as err:   # the next report tries again
                        log.warning("node %s's volume report: %s", name, err)
                elif kind in ("stats", "net_check") and self.streams is not None:
                    self.streams.answer(name, getattr(msg, kind))
        finally:
            closed.set()
            queue.put_nowait(False)

    async def Session(self, request_iterator, context):
        caller = await self._node_identity(context, "Session")
        first = await request_iterator.__anext__()
        if first.WhichOneof("message") != "hello":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "a session must start with Hello")
        hello = first.hello
        reason = names.dns1123_subdomain(hello.node_name)
        if reason:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"node name: {reason}")
        name = hello.node_name
        if name != caller:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {caller!r} may not open a session as node {name!r}")
        try:
            lease_id, pod_cidr = await self._register(hello)
        except IPAMError as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        log.info("node %s connected", name)
        await self.index.synced.wait()
        pods, queue = self.index.subscribe(name)
        self.sessions[name] = queue
        closed = asyncio.Event()

        reader = asyncio.create_task(self._read(name, lease_id, request_iterator, closed,
                                                queue))
        try:
            yield agent_pb2.DispatcherMessage(settings=agent_pb2.SessionSettings(
                heartbeat_period_ms=int(self.heartbeat_seconds * 1000),
                control_planes=await replicas.ordered(self.store, self.replica_address),
                network=agent_pb2.NetworkSettings(
                    pod_cidr=pod_cidr, cluster_cidr=self.network.cluster_cidr,
                    vxlan_vni=self.network.vxlan_vni, vxlan_port=self.network.vxlan_port)))
            await self.peers.synced.wait()
            yield agent_pb2.DispatcherMessage(peers=self.peers.message())
            await self.services.synced.wait()
            yield agent_pb2.DispatcherMessage(services=self.services.message())
            # Always sent, empty too: a reconnecting agent drops aliases that went meanwhile.
            yield agent_pb2.DispatcherMessage(registries=self.services.registries())
            await self.configs.synced.wait()
            sent = SessionConfigs(self.configs)
            for part in split(sent.additions(pods, full=True)):
                yield agent_pb2.DispatcherMessage(config=part)
            await self.volumes.synced.wait()
            volumes = SessionVolumes(self.volumes, name)
            if self.volumes.missing(name, pods):
                await self.volumes.refresh()
            yield agent_pb2.DispatcherMessage(volumes=volumes.update(full=True))
            yield agent_pb2.DispatcherMessage(assignments=agent_pb2.Assignments(
                full=True, pods=pods))
            held = NOTHING
            while not closed.is_set():
                change = await queue.get() if held is NOTHING else held
                held = NOTHING
                if change is False:
                    break
                if isinstance(change, agent_pb2.DispatcherMessage):   # from send()
                    yield change
                    continue
                if isinstance(change, VolumesChanged):
                    update = volumes.update()
                    if update is not None:
                        yield agent_pb2.DispatcherMessage(volumes=update)
                    continue
                if isinstance(change, ConfigChanged):
                    here = self.index.pods_on(name)
                    update = sent.additions(here) if sent.concerns(change.key, here) else None
                    for part in split(update) if update is not None else ():
                        yield agent_pb2.DispatcherMessage(config=part)
                    continue
                if change is None:   # the index re-listed: send the whole set again
                    msg = agent_pb2.Assignments(full=True, pods=self.index.pods_on(name))
                else:
                    # Changes queued meanwhile go out as one message (a scale-down of a
                    # hundred pods is one Assignments, not a hundred).
                    change, held = coalesce(change, queue)
                    msg = agent_pb2.Assignments(pods=change.pods, removed_uids=change.removed)
                # The volumes its pods use reach the node before they do.
                if self.volumes.missing(name, msg.pods):
                    await self.volumes.refresh()
                update = volumes.update()
                if update is not None:
                    yield agent_pb2.DispatcherMessage(volumes=update)
                for out in self._with_configs(msg, sent, self.index.pods_on(name)):
                    yield out
        finally:
            if self.sessions.get(name) is queue:
                del self.sessions[name]
            self.index.unsubscribe(name, queue)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            log.info("node %s disconnected", name)

    @staticmethod
    def _with_configs(msg: agent_pb2.Assignments, sent: SessionConfigs, pods: list[pb.Pod]
                      ) -> list[agent_pb2.DispatcherMessage]:
        """The assignments with what their pods need first and what none needs any more
        after."""
        out = [agent_pb2.DispatcherMessage(config=part)
               for part in split(sent.additions(pods) or agent_pb2.ConfigData())
               if part.ByteSize()]
        out.append(agent_pb2.DispatcherMessage(assignments=msg))
        gone = sent.removals(pods)
        out += [agent_pb2.DispatcherMessage(config=part) for part in split(gone)] if gone else []
        return out

    async def Stream(self, request_iterator, context):
        """An agent's half of a logs or exec request (see controlplane/dispatcher/streams.py)."""
        identity = await self._node_identity(context, "Stream")
        if self.streams is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streams are not served here")
        async for frame in self.streams.agent_stream(identity, request_iterator, context):
            yield frame
