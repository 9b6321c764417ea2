"""The broker between the Pods and Images APIs (controlplane/api/pods.py, images.py) and the
agents: streams for logs, exec and image loads, and questions (stats, network checks) asked
over a node's session.

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

from moorage.v1 import agent_pb2, api_pb2

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
    """One logs/exec/image-load request between its caller and the agent's Stream.

    `depth` bounds the frames waiting for the agent (0: unbounded); a caller that streams
    bulk data (an image archive) sends with `put`, which waits for room, so the control plane
    holds a few frames of it, never the whole archive."""

    def __init__(self, id_: str, node: str, depth: int = 0):
        self.id, self.node = id_, node
        self.connected = asyncio.Event()
        # None in to_agent ends the agent's stream; None in from_agent means the agent is gone.
        self.to_agent: asyncio.Queue = asyncio.Queue(maxsize=depth)
        self.from_agent: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def send(self, frame: api_pb2.StreamFrame) -> None:
        if not self.closed:
            self.to_agent.put_nowait(frame)

    async def put(self, frame: api_pb2.StreamFrame) -> None:
        """Queues `frame` for the agent once there is room (dropped after close)."""
        if not self.closed:
            await self.to_agent.put(frame)

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
            # The agent's stream ends at the None: frames still waiting would never be read.
            while self.to_agent.full():
                self.to_agent.get_nowait()
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
    async def open(self, node: str, request: agent_pb2.OpenStream, depth: int = 0):
        """Asks `node` to open a stream for `request`; yields the connected link (of queue
        depth `depth`, see StreamLink), closed on exit (also when the caller is cancelled)."""
        link = StreamLink(uuid.uuid4().hex, node, depth)
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
