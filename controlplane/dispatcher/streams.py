"""Logs, exec and top: the Pods API, brokered to the agent that runs the pod.

A logs or exec request becomes a pending `StreamLink` here and an OpenStream on the node's
session; the agent answers by opening Dispatcher.Stream with the link's id, and frames are then
pumped both ways. Contract: a pending entry lives until its agent connects, it times out, or the
caller hangs up, whichever comes first, and it is always removed; once connected, closing the
link (the caller is done or gone) ends the agent's stream, so the agent stops following or
execing. Top asks each node's agent for a StatsReport over its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from controlplane.identity.auth import guard
from controlplane.store import NotFound
from moorage.model import kinds, quantities
from moorage.v1 import agent_pb2, api_pb2, api_pb2_grpc

log = logging.getLogger("moorage.streams")

# How long the agent has to open its stream after the OpenStream went out.
CONNECT_SECONDS = 10.0
# How long a node has to answer a stats request (it samples for about half a second).
STATS_SECONDS = 5.0


class StreamError(Exception):
    """A request that cannot be served; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def status_code(name: str) -> grpc.StatusCode:
    """The StatusCode an agent named in a final frame (UNKNOWN for a name we do not know)."""
    code = getattr(grpc.StatusCode, name, None) if name else None
    return code if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK \
        else grpc.StatusCode.UNKNOWN


def choose_container(pod, name: str) -> str:
    """The container a request means: `name`, or the pod's only one. Raises StreamError."""
    names = [c.name for c in pod.spec.containers]
    pod_name = pod.metadata.name
    if not name:
        if len(names) == 1:
            return names[0]
        raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"a container name must be specified for pod {pod_name}, "
                          f"choose one of: [{' '.join(names)}]")
    if name not in names:
        raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"container {name} is not valid for pod {pod_name}")
    return name


class StreamLink:
    """One logs/exec request between its caller and the agent's Stream."""

    def __init__(self, id_: str, node: str):
        self.id, self.node = id_, node
        self.connected = asyncio.Event()
        # None in to_agent ends the agent's stream; None in from_agent means the agent is gone.
        self.to_agent: asyncio.Queue = asyncio.Queue()
        self.from_agent: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def send(self, frame: api_pb2.StreamFrame) -> None:
        if not self.closed:
            self.to_agent.put_nowait(frame)

    async def frames(self) -> AsyncIterator[api_pb2.StreamFrame]:
        """The agent's frames until its stream ends."""
        while True:
            frame = await self.from_agent.get()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.to_agent.put_nowait(None)


class PodStreams:
    """The broker between Pods API calls and agents' Dispatcher.Stream calls."""

    def __init__(self, store, dispatcher, connect_seconds: float = CONNECT_SECONDS):
        self.store, self.dispatcher = store, dispatcher
        self.connect_seconds = connect_seconds
        self._pending: dict[str, StreamLink] = {}
        self._stats: dict[str, tuple[str, asyncio.Future]] = {}

    def connected(self, node: str) -> bool:
        return node in getattr(self.dispatcher, "sessions", {})

    @contextlib.asynccontextmanager
    async def open(self, node: str, request: agent_pb2.OpenStream):
        """Asks `node` to open a stream for `request`; yields the connected link, closed on
        exit (also when the caller is cancelled)."""
        link = StreamLink(uuid.uuid4().hex, node)
        request.id = link.id
        self._pending[link.id] = link
        try:
            if not self.dispatcher.send(node, agent_pb2.DispatcherMessage(open_stream=request)):
                raise StreamError(grpc.StatusCode.UNAVAILABLE,
                                  f"node {node} is not connected to this control plane")
            try:
                await asyncio.wait_for(link.connected.wait(), self.connect_seconds)
            except TimeoutError:
                raise StreamError(grpc.StatusCode.UNAVAILABLE,
                                  f"node {node} did not open the stream") from None
        except BaseException:
            self._pending.pop(link.id, None)
            link.close()
            raise
        try:
            yield link
        finally:
            link.close()

    async def agent_stream(self, node: str, request_iterator, context):
        """Dispatcher.Stream for an authenticated node: match its first frame to a pending
        link made for that node, then pump frames both ways until either side is done."""
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        link = self._pending.get(first.id)
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no pending stream {first.id!r} (timed out or cancelled)")
        if link.node != node:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"stream {first.id!r} was not requested from node {node!r}")
        del self._pending[first.id]
        rest = api_pb2.StreamFrame()
        rest.CopyFrom(first)
        rest.id = ""
        if rest.ByteSize():
            link.from_agent.put_nowait(rest)

        async def pump_in():
            try:
                async for frame in request_iterator:
                    link.from_agent.put_nowait(frame)
            except (grpc.RpcError, asyncio.CancelledError):
                pass
            finally:
                link.from_agent.put_nowait(None)

        reader = asyncio.create_task(pump_in())
        link.connected.set()
        try:
            while True:
                frame = await link.to_agent.get()
                if frame is None:
                    break
                yield frame
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    # ---- stats ----

    async def ask(self, node: str, field: str, request, timeout: float):
        """Sends `request` as DispatcherMessage.<field> to `node` and waits for the report
        with the same id (see `answer`); raises StreamError when it is not connected, silent
        or reports an error."""
        id_ = uuid.uuid4().hex
        request.id = id_
        future = asyncio.get_running_loop().create_future()
        self._stats[id_] = (node, future)
        try:
            msg = agent_pb2.DispatcherMessage(**{field: request})
            if not self.dispatcher.send(node, msg):
                raise StreamError(grpc.StatusCode.UNAVAILABLE, "not connected")
            try:
                report = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise StreamError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no answer within {timeout:g}s") from None
            if report.error:
                raise StreamError(grpc.StatusCode.INTERNAL, report.error)
            return report
        finally:
            self._stats.pop(id_, None)

    def answer(self, node: str, report) -> None:
        """A report from `node` for a request `ask` sent it (late or foreign ones are dropped)."""
        entry = self._stats.get(report.id)
        if entry is None or entry[0] != node:
            return   # late, or not this node's to answer
        if not entry[1].done():
            entry[1].set_result(report)

    async def stats(self, node: str, timeout: float = STATS_SECONDS) -> agent_pb2.StatsReport:
        """The node's usage now; raises StreamError when it is not connected or silent."""
        return await self.ask(node, "stats_request", agent_pb2.StatsRequest(), timeout)

    def stats_report(self, node: str, report: agent_pb2.StatsReport) -> None:
        self.answer(node, report)


def _quantity(parse, value: str) -> int:
    try:
        return parse(value) if value else 0
    except quantities.QuantityError:
        return 0


class PodsServicer(api_pb2_grpc.PodsServicer):
    def __init__(self, store, streams: PodStreams, ca_cert=None):
        self.store, self.streams, self.ca_cert = store, streams, ca_cert

    async def _pod(self, namespace: str, name: str):
        try:
            return await self.store.get(kinds.BY_NAME["Pod"], namespace or "default", name)
        except NotFound:
            raise StreamError(grpc.StatusCode.NOT_FOUND, f'pods "{name}" not found') from None

    async def _target(self, namespace: str, name: str, container: str):
        pod = await self._pod(namespace, name)
        container = choose_container(pod, container)
        if not pod.spec.node_name:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"pod {name} is not scheduled to a node yet")
        if not self.streams.connected(pod.spec.node_name):
            raise StreamError(grpc.StatusCode.UNAVAILABLE,
                              f"node {pod.spec.node_name} of pod {name} is not connected to "
                              "this control plane")
        return pod, container

    async def _relay(self, link: StreamLink, context, terminal: str):
        """The agent's frames for the caller; aborts on an agent's error frame, and when the
        agent's stream ends without its `terminal` frame (eof for logs, exited for exec)."""
        async for frame in link.frames():
            if frame.error:
                await context.abort(status_code(frame.code), frame.error)
            yield frame
            if getattr(frame, terminal):
                return
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"the stream from node {link.node} ended unexpectedly")

    async def Logs(self, request, context):
        await guard(context, "Logs", request, self.ca_cert)
        try:
            pod, container = await self._target(request.namespace, request.pod,
                                                request.container)
            logs = api_pb2.LogsRequest()
            logs.CopyFrom(request)
            logs.namespace, logs.container = pod.metadata.namespace, container
            opening = agent_pb2.OpenStream(pod_uid=pod.metadata.uid, logs=logs)
            async with self.streams.open(pod.spec.node_name, opening) as link:
                async for frame in self._relay(link, context, "eof"):
                    if frame.data:
                        yield api_pb2.StreamFrame(fd=frame.fd, data=frame.data)
        except StreamError as err:
            await context.abort(err.code, err.message)

    async def Exec(self, request_iterator, context):
        await guard(context, "Exec", None, self.ca_cert)
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("exec"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first frame of Exec must carry `exec`")
        start = first.exec
        if not start.command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "you must specify at least one command for the container")
        try:
            pod, container = await self._target(start.namespace, start.pod, start.container)
            start = api_pb2.ExecStart()
            start.CopyFrom(first.exec)
            start.namespace, start.container = pod.metadata.namespace, container
            opening = agent_pb2.OpenStream(pod_uid=pod.metadata.uid, exec=start)
            async with self.streams.open(pod.spec.node_name, opening) as link:
                async def pump_out():
                    async for frame in request_iterator:
                        link.send(api_pb2.StreamFrame(fd=frame.fd, data=frame.data,
                                                      eof=frame.eof, rows=frame.rows,
                                                      cols=frame.cols))
                caller = asyncio.create_task(pump_out())
                try:
                    async for frame in self._relay(link, context, "exited"):
                        frame.id = ""
                        yield frame
                finally:
                    caller.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                        await caller
        except StreamError as err:
            await context.abort(err.code, err.message)

    async def Top(self, request, context):
        await guard(context, "Top", request, self.ca_cert)
        if request.kind in ("nodes", "node", "no"):
            return await self._top_nodes()
        if request.kind in ("pods", "pod", "po"):
            return await self._top_pods(request)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f'top shows "nodes" or "pods", not {request.kind!r}')

    async def _ask(self, nodes: list[str]) -> tuple[dict[str, agent_pb2.StatsReport], list[str]]:
        """Stats from every node in `nodes` concurrently; the reports, and one line per
        node that did not answer."""
        unavailable, asked = [], []
        for node in nodes:
            if self.streams.connected(node):
                asked.append(node)
            else:
                unavailable.append(f"{node}: not connected")
        results = await asyncio.gather(*(self.streams.stats(n) for n in asked),
                                       return_exceptions=True)
        reports = {}
        for node, result in zip(asked, results):
            if isinstance(result, StreamError):
                unavailable.append(f"{node}: {result.message}")
            elif isinstance(result, BaseException):
                unavailable.append(f"{node}: {type(result).__name__}: {result}")
            else:
                reports[node] = result
        return reports, sorted(unavailable)

    async def _top_nodes(self) -> api_pb2.TopResponse:
        nodes, _ = await self.store.list(kinds.BY_NAME["Node"])
        by_name = {n.metadata.name: n for n in nodes}
        reports, unavailable = await self._ask(sorted(by_name))
        out = api_pb2.TopResponse(unavailable=unavailable)
        for name, report in sorted(reports.items()):
            usage = api_pb2.NodeUsage()
            usage.CopyFrom(report.node)
            usage.name = name
            capacity = by_name[name].status.capacity
            usage.cpu_capacity_cores = _quantity(quantities.cpu_millicores,
                                                 capacity.get("cpu", "")) / 1000
            usage.memory_capacity_bytes = _quantity(quantities.memory_bytes,
                                                    capacity.get("memory", ""))
            out.nodes.append(usage)
        return out

    async def _top_pods(self, request) -> api_pb2.TopResponse:
        namespace = None if request.all_namespaces else (request.namespace or "default")
        pods, _ = await self.store.list(kinds.BY_NAME["Pod"], namespace)
        wanted = {p.metadata.uid: p for p in pods if p.spec.node_name}
        reports, unavailable = await self._ask(sorted({p.spec.node_name
                                                       for p in wanted.values()}))
        out = api_pb2.TopResponse(unavailable=unavailable)
        found = []
        for node, report in reports.items():
            for usage in report.pods:
                pod = wanted.get(usage.uid)
                if pod is None or pod.spec.node_name != node:
                    continue
                item = api_pb2.PodUsage()
                item.CopyFrom(usage)
                item.namespace, item.name, item.node = (pod.metadata.namespace,
                                                        pod.metadata.name, node)
                found.append(item)
        out.pods.extend(sorted(found, key=lambda p: (p.namespace, p.name)))
        return out
