"""The agent's side of the `Dispatcher.Session` stream: it says Hello, heartbeats, reports pod
status, and keeps the pod set the control plane assigns."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterator

from moorage.fsutil import write_atomic

# The sync loop forks (pyroute2's NetNS, the runtime) while this session's gRPC threads run, and
# gRPC's fork handlers then crash those children (SIGSEGV). They never use gRPC, so fork support
# is not needed; it has to be off before grpc first loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

from moorage.v1 import agent_pb2, agent_pb2_grpc
from moorage.v1 import objects_pb2 as pb
from nodeagent.session.hostfacts import HostFacts, build_hello

log = logging.getLogger("moorage.agent.session")

DEFAULT_HEARTBEAT_SECONDS = 2.0
# The pause before trying the next control-plane replica after one did not answer.
FAILOVER_SECONDS = 0.2
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0


# ---- pure parts ----

def apply_assignments(desired: dict[str, pb.Pod], msg: agent_pb2.Assignments) -> dict[str, pb.Pod]:
    """The desired set (keyed by pod uid) after `msg`; a new dict, so readers of the old one in
    other threads never see it half-changed."""
    out = {} if msg.full else dict(desired)
    if not msg.full:
        for uid in msg.removed_uids:
            out.pop(uid, None)
    for pod in msg.pods:
        if pod.metadata.uid:
            out[pod.metadata.uid] = pod
        else:
            log.error("ignoring assigned pod %s/%s without a uid", pod.metadata.namespace,
                      pod.metadata.name)
    return out


def backoff_delays(start: float = BACKOFF_START, cap: float = BACKOFF_MAX) -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 10, 10, ...: seconds to wait before each reconnect attempt."""
    delay = start
    while True:
        yield delay
        delay = min(cap, delay * 2)


# ---- the stream ----

class Session:
    """Keeps one session to the control plane open, reconnecting with back-off.

    `desired` is the node's pod set (uid -> Pod), replaced as a whole on each Assignments (so
    another thread may read it any time); it survives reconnects until the next full set.
    `generation` counts sessions that have sent Hello, so the sync loop knows to report every
    pod's status again to a (possibly restarted) control plane.
    """

    def __init__(self, address: str, node_name: str, facts: HostFacts, *,
                 labels: dict[str, str] | None = None,
                 running_pod_uids: Callable[[], list[str]] = list,
                 on_assignments: Callable[[dict[str, pb.Pod]], None] | None = None,
                 channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
                 desired: dict[str, pb.Pod] | None = None,
                 on_open_stream: Callable[[agent_pb2.OpenStream], None] | None = None,
                 on_stats: Callable[[agent_pb2.StatsRequest],
                                    Awaitable[agent_pb2.StatsReport]] | None = None,
                 on_network: Callable[[agent_pb2.NetworkSettings], None] | None = None,
                 on_peers: Callable[[agent_pb2.Peers], None] | None = None,
                 on_net_check: Callable[[agent_pb2.NetCheckRequest],
                                        Awaitable[agent_pb2.NetCheckReport]] | None = None,
                 on_services: Callable[[agent_pb2.ServiceTable], None] | None = None,
                 replicas_file: str | None = None):
        self.address, self.node_name, self.facts = address, node_name, facts
        # Where sessions may go: the --join address, then every replica the last session
        # named (SessionSettings.control_planes); `address` is the one in use or next tried.
        # Kept in `replicas_file` too, so an agent restarted while its --join replica is down
        # still finds the others.
        self.join_address = address
        self.replicas_file = replicas_file
        self._saved = self._load_replicas()   # what the file holds
        self.addresses = list(dict.fromkeys([address, *self._saved]))
        self.labels = labels or {}
        self.running_pod_uids = running_pod_uids
        self.on_assignments = on_assignments
        # The seam for mTLS: anything that makes a grpc.aio channel for an address.
        self.channel_factory = channel_factory
        # The open session's channel: log and exec streams are opened on it (same identity).
        self.channel: grpc.aio.Channel | None = None
        # Called in the session's event loop: open a Dispatcher.Stream for a logs/exec request
        # (must not block), and answer a stats request (its report is sent back on the session).
        self.on_open_stream = on_open_stream
        self.on_stats = on_stats
        # The overlay (nodeagent/network/agent.py): this node's subnet and settings, the peer list
        # (must not block), and the doctor's check (answered like stats).
        self.on_network = on_network
        self.on_peers = on_peers
        self.on_net_check = on_net_check
        # Every Service with its ready endpoints, whole, on each change (must not block):
        # for the service rules and the DNS server.
        self.on_services = on_services
        # The ConfigMaps and Secrets the node's pods use (must not block); set by the daemon.
        self.on_config: Callable[[agent_pb2.ConfigData], None] | None = None
        # The cluster's registry aliases, whole, on each change (must not block); set by the
        # daemon.
        self.on_registries: Callable[[agent_pb2.ClusterRegistries], None] | None = None
        # The local persistent volumes bound to this node (must not block); set by the daemon.
        self.on_volumes: Callable[[agent_pb2.VolumeData], None] | None = None
        # Fills in what Hello says that changes between sessions (free local storage, the
        # allowed host paths); set by the daemon.
        self.on_hello: Callable[[agent_pb2.Hello], None] | None = None
        self.desired: dict[str, pb.Pod] = dict(desired or {})
        self.heartbeat_seconds = DEFAULT_HEARTBEAT_SECONDS
        self.generation = 0
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None

    def report(self, namespace: str, name: str, uid: str, status: pb.PodStatus) -> None:
        """Queues a PodStatusReport; safe from any thread. Dropped if the session is not running."""
        msg = agent_pb2.AgentMessage(pod_status=agent_pb2.PodStatusReport(
            namespace=namespace, name=name, uid=uid, status=status))
        if self._loop is not None and self._outbox is not None:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, msg)

    def pod_terminated(self, pod: pb.Pod) -> None:
        """Queues a PodTerminated (every container of a pod being deleted has stopped); safe
        from any thread. Dropped when no session is open: the pod worker repeats it while the
        pod is still assigned."""
        msg = agent_pb2.AgentMessage(pod_terminated=agent_pb2.PodTerminated(
            namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid))
        if self._loop is not None and self._outbox is not None and self.connected:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, msg)

    def volume_report(self, report: agent_pb2.VolumeReport) -> bool:
        """Queues a VolumeReport; safe from any thread. False (dropped) when no session is
        open: the storage loop sends its report again to the next one."""
        if self._loop is None or self._outbox is None or not self.connected:
            return False
        msg = agent_pb2.AgentMessage(volumes=report)
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, msg)
        return True

    def event(self, pod: pb.Pod, type_: str, reason: str, message: str) -> None:
        """Queues a PodEvent (recorded as an Event by the control plane); safe from any thread.
        Dropped when no session is open: events are best-effort, as in Kubernetes."""
        msg = agent_pb2.AgentMessage(event=agent_pb2.PodEvent(
            namespace=pod.metadata.namespace, pod=pod.metadata.name, uid=pod.metadata.uid,
            type=type_, reason=reason, message=message))
        if self._loop is not None and self._outbox is not None and self.connected:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, msg)

    async def run(self, stop: asyncio.Event) -> None:
        """Runs sessions until `stop` is set."""
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        delays = backoff_delays()
        failed = 0   # attempts in a row that got no answer
        while not stop.is_set():
            good = await self._once(stop)
            if stop.is_set():
                break
            if good:
                delays = backoff_delays()   # a session that worked starts the back-off afresh
                failed = 0
                delay = next(delays)
            else:
                failed += 1
                # No answer: the next replica, at once while this round has untried ones.
                at = self.addresses.index(self.address) if self.address in self.addresses else -1
                self.address = self.addresses[(at + 1) % len(self.addresses)]
                delay = FAILOVER_SECONDS if failed % len(self.addresses) else next(delays)
            log.info("session ended; connecting to %s in %.1fs", self.address, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    async def _once(self, stop: asyncio.Event) -> bool:
        """One session; True if the control plane answered at all (a good session)."""
        answered = False
        channel = self.channel_factory(self.address)
        self.channel = channel
        try:
            call = agent_pb2_grpc.DispatcherStub(channel).Session()
            hello = build_hello(self.node_name, self.labels, self.facts,
                                await asyncio.to_thread(self.running_pod_uids))
            if self.on_hello is not None:
                self.on_hello(hello.hello)
            # Reports queued for the old session are stale: the sync loop resends every pod's
            # status when it sees the new generation.
            while not self._outbox.empty():
                self._outbox.get_nowait()
            await call.write(hello)
            self.generation += 1
            self.connected = True

            async def receive() -> None:
                nonlocal answered
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    answered = True
                    self._handle(msg)

            tasks = [asyncio.create_task(receive()), asyncio.create_task(self._send(call)),
                     asyncio.create_task(stop.wait())]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
            call.cancel()
        except grpc.aio.AioRpcError as err:
            log.warning("session to %s: %s %s", self.address, err.code().name, err.details())
        except (TimeoutError, OSError, grpc.RpcError) as err:
            log.warning("session to %s: %s", self.address, err)
        except Exception:
            # A bug (in a callback, most likely): its traceback, then reconnect as ever.
            log.exception("session to %s failed", self.address)
        finally:
            self.connected = False
            self.channel = None
            await channel.close()
        return answered

    async def _send(self, call) -> None:
        """The only writer on the stream: queued reports, and a Heartbeat whenever the period
        passes with nothing else sent (any message counts as a sign of life, but the control
        plane only renews the lease on Heartbeats, so they go out on time regardless)."""
        loop = asyncio.get_running_loop()
        last_beat = None
        while True:
            # Recomputed each time round, so a period from SessionSettings applies at once.
            timeout = 0 if last_beat is None else last_beat + self.heartbeat_seconds - loop.time()
            if timeout <= 0:
                await call.write(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat()))
                last_beat = loop.time()
                continue
            try:
                msg = await asyncio.wait_for(self._outbox.get(), timeout)
            except TimeoutError:
                continue
            await call.write(msg)

    def _handle(self, msg: agent_pb2.DispatcherMessage) -> None:
        kind = msg.WhichOneof("message")
        if kind == "settings":
            if msg.settings.control_planes:
                self.addresses = list(dict.fromkeys(
                    [self.address, *msg.settings.control_planes, self.join_address]))
                self._save_replicas(msg.settings.control_planes)
            period = msg.settings.heartbeat_period_ms
            self.heartbeat_seconds = period / 1000 if period > 0 else DEFAULT_HEARTBEAT_SECONDS
            if msg.settings.HasField("network") and self.on_network is not None:
                self.on_network(msg.settings.network)
        elif kind == "peers":
            if self.on_peers is not None:
                self.on_peers(msg.peers)
        elif kind == "services":
            if self.on_services is not None:
                self.on_services(msg.services)
        elif kind == "config":
            if self.on_config is not None:
                self.on_config(msg.config)
        elif kind == "volumes":
            if self.on_volumes is not None:
                self.on_volumes(msg.volumes)
        elif kind == "registries":
            if self.on_registries is not None:
                self.on_registries(msg.registries)
        elif kind == "net_check" and self.on_net_check is not None:
            self._spawn(self._answer(msg.net_check, self.on_net_check, "net_check",
                                     agent_pb2.NetCheckReport))
        elif kind == "assignments":
            a = msg.assignments
            self.desired = apply_assignments(self.desired, a)
            log.info("assignments (%s): %d pods, %d removed; node now has %d",
                     "full" if a.full else "change", len(a.pods), len(a.removed_uids),
                     len(self.desired))
            if self.on_assignments is not None:
                self.on_assignments(self.desired)
        elif kind == "open_stream":
            if self.on_open_stream is not None:
                self.on_open_stream(msg.open_stream)
        elif kind == "stats_request" and self.on_stats is not None:
            self._spawn(self._answer(msg.stats_request, self.on_stats, "stats",
                                     agent_pb2.StatsReport))

    def _load_replicas(self) -> list[str]:
        try:
            with open(self.replicas_file or "") as f:
                return [line.strip() for line in f if line.strip()]
        except OSError:
            return []

    def _save_replicas(self, addresses) -> None:
        if not self.replicas_file or list(addresses) == self._saved:
            return
        try:
            write_atomic(self.replicas_file, "".join(a + "\n" for a in addresses))
            self._saved = list(addresses)
        except OSError as err:   # only a restart's fallback list is lost
            log.warning("saving the control-plane list: %s", err)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)          # held, so it is not collected while it runs
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, req, handler, field: str, report_type) -> None:
        try:
            report = await handler(req)
        except Exception as err:  # noqa: BLE001 - the caller gets the error instead of a hang
            report = report_type(error=f"{type(err).__name__}: {err}")
        report.id = req.id
        self._outbox.put_nowait(agent_pb2.AgentMessage(**{field: report}))
