"""The Pods API: logs, exec and top for any pod, served through the agent that runs it (the
control plane brokers the streams: controlplane/dispatcher/streams.py)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from controlplane.dispatcher.streams import (
    PodStreams,
    StreamError,
    StreamLink,
    choose_container,
    status_code,
)
from controlplane.identity.auth import guard
from controlplane.store import NotFound
from moorage.model import kinds, quantities
from moorage.v1 import agent_pb2, api_pb2, api_pb2_grpc


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
