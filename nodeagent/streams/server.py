"""The agent's half of logs, exec, image loads and top: serves the OpenStream requests its
session gets over Dispatcher.Stream (logs.py, exec.py, imageload.py) and answers stats
requests (top.py).

Everything here runs in the session's event loop, which must never block: file reads, pipe and
pty reads and process waits run in threads. Contract: each stream ends with exactly one final
frame (`eof` for logs, `exited` for exec and image loads, or `error` + `code`), unless the
control plane hangs up first, in which case the follow, the exec'd process or the load is
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from moorage.v1 import agent_pb2, agent_pb2_grpc, api_pb2
from nodeagent.streams.common import PodIOError, select_container
from nodeagent.streams.exec import serve_exec
from nodeagent.streams.imageload import serve_image_load
from nodeagent.streams.logs import serve_logs
from nodeagent.streams.top import STATS_WINDOW, Sampler

log = logging.getLogger("moorage.agent.streams")


class StreamServer:
    def __init__(self, runtime, session, stats_window: float = STATS_WINDOW, images=None):
        # `images`: the node's image Store, for image loads (None: they are refused).
        self.runtime, self.session, self.images = runtime, session, images
        self.sampler = Sampler(runtime, getattr(session, "node_name", ""), stats_window)
        self._tasks: set[asyncio.Task] = set()

    def open_stream(self, msg: agent_pb2.OpenStream) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _container(self, msg: agent_pb2.OpenStream, name: str, pod: str,
                   previous: bool = False) -> str:
        return select_container((i.id for i in self.runtime.list()), msg.pod_uid, pod, name,
                                previous)

    async def _work(self, call, msg: agent_pb2.OpenStream, inbound: asyncio.Queue) -> None:
        if msg.HasField("image_load"):
            if self.images is None:
                raise PodIOError("UNIMPLEMENTED", "this agent has no image store to load into")
            await serve_image_load(self.images, call, msg, inbound,
                                   getattr(self.session, "node_name", ""))
        elif msg.HasField("exec"):
            ex = msg.exec
            cid = await asyncio.to_thread(self._container, msg, ex.container, ex.pod)
            await serve_exec(self.runtime, call, msg, cid, inbound)
        else:
            req = msg.logs
            cid = await asyncio.to_thread(self._container, msg, req.container, req.pod,
                                          req.previous)
            await serve_logs(self.runtime, call, msg, cid)

    async def _serve(self, msg: agent_pb2.OpenStream) -> None:
        channel = self.session.channel
        if channel is None:
            log.warning("stream %s: no session to open it on", msg.id)
            return
        call = agent_pb2_grpc.DispatcherStub(channel).Stream()
        inbound: asyncio.Queue = asyncio.Queue()

        async def read_in():
            try:
                while True:
                    frame = await call.read()
                    if frame is grpc.aio.EOF:
                        return
                    inbound.put_nowait(frame)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    log.info("stream %s: %s", msg.id, err.details())
            finally:
                inbound.put_nowait(None)

        reader = None
        try:
            await call.write(api_pb2.StreamFrame(id=msg.id))
            reader = asyncio.create_task(read_in())
            work = asyncio.create_task(self._work(call, msg, inbound))
            # The reader ends when the control plane closes the stream: the caller is gone.
            await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():   # the control plane hung up: stop following or execing
                work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                return
            except PodIOError as err:
                await call.write(api_pb2.StreamFrame(error=err.message, code=err.code))
            except Exception as err:  # noqa: BLE001 - reported, not left hanging
                log.exception("stream %s failed", msg.id)
                await call.write(api_pb2.StreamFrame(error=f"{type(err).__name__}: {err}",
                                                     code="INTERNAL"))
            await call.done_writing()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 5)
        except grpc.RpcError as err:
            log.info("stream %s: %s", msg.id, err.details())
        finally:
            if reader is not None:
                reader.cancel()
            call.cancel()

    async def stats(self, req: agent_pb2.StatsRequest) -> agent_pb2.StatsReport:
        # Copied here, in the session's loop, which is the one that changes it.
        desired = dict(self.session.desired)
        return await asyncio.to_thread(self.sampler.measure, desired)
