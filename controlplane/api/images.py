"""The Images API: an image archive streamed by `moor image load` through the control plane to
one node's agent, which imports it into its image store (controlplane/dispatcher/streams.py
brokers the stream, nodeagent/streams/imageload.py is the agent's half).

Admin only (controlplane/identity/auth.py refuses every other caller). The archive's bytes
are never held here whole: at most LOAD_DEPTH frames wait for the agent, and the caller's
stream is read only as fast as the agent takes them, so gRPC's flow control reaches back to
`moor`.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from controlplane.dispatcher.streams import PodStreams, StreamError, status_code
from controlplane.identity.auth import guard
from controlplane.store import NotFound
from moorage.model import kinds
from moorage.v1 import agent_pb2, api_pb2, api_pb2_grpc

# Frames of the archive waiting for the agent (each at most what `moor` sends, 1 MiB).
LOAD_DEPTH = 8


class ImagesServicer(api_pb2_grpc.ImagesServicer):
    def __init__(self, store, streams: PodStreams, ca_cert=None):
        self.store, self.streams, self.ca_cert = store, streams, ca_cert

    async def _node(self, name: str) -> str:
        if not name:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              "image_load.node: the node to load the image on is required")
        try:
            await self.store.get(kinds.BY_NAME["Node"], "", name)
        except NotFound:
            raise StreamError(grpc.StatusCode.NOT_FOUND, f'nodes "{name}" not found') from None
        if not self.streams.connected(name):
            raise StreamError(grpc.StatusCode.UNAVAILABLE,
                              f"node {name} is not connected to this control plane")
        return name

    async def Load(self, request_iterator, context):
        await guard(context, "Load", None, self.ca_cert)
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("image_load"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first frame of Load must carry `image_load`")
        try:
            node = await self._node(first.image_load.node)
            start = api_pb2.ImageLoadStart()
            start.CopyFrom(first.image_load)
            opening = agent_pb2.OpenStream(image_load=start)
            async with self.streams.open(node, opening, depth=LOAD_DEPTH) as link:
                truncated = False

                async def pump_out():
                    nonlocal truncated
                    if first.data or first.eof:
                        await link.put(api_pb2.StreamFrame(data=first.data, eof=first.eof))
                        if first.eof:
                            return
                    async for frame in request_iterator:
                        await link.put(api_pb2.StreamFrame(data=frame.data, eof=frame.eof))
                        if frame.eof:
                            return
                    # The caller stopped sending before its last frame: never import a part.
                    truncated = True
                    link.close()

                caller = asyncio.create_task(pump_out())
                try:
                    async for frame in link.frames():
                        if frame.error:
                            await context.abort(status_code(frame.code), frame.error)
                        frame.id = ""
                        yield frame
                        if frame.exited:
                            return
                    if truncated:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "the archive ended before its frame with eof: "
                                            "nothing was loaded")
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"the stream from node {node} ended unexpectedly")
                finally:
                    caller.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                        await caller
        except StreamError as err:
            await context.abort(err.code, err.message)
