"""What the agent's streams share: the error that ends a stream, choosing a pod's container,
and running a blocking producer (a file follow, a pipe read) off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Iterator

from nodeagent.pods.worker import UID_CHARS, parse_container_id

RUNNING = "running"
# Frames carry at most this much output, so one chatty container cannot make huge messages.
CHUNK_BYTES = 64 * 1024
# Items buffered between a reading thread and the stream; a slow caller slows the reader.
QUEUE_DEPTH = 64


class PodIOError(Exception):
    """Ends a stream with an error frame; `code` is a gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def pod_containers(cids: Iterable[str], pod_uid: str, name: str) -> list[tuple[int, str]]:
    """(attempt, container id) of every instance of container `name` of the pod, oldest first."""
    prefix = pod_uid.replace("-", "")[:UID_CHARS]
    found = []
    for cid in cids:
        parsed = parse_container_id(cid)
        if parsed and parsed[0] == prefix and parsed[1] == name:
            found.append((parsed[2], cid))
    return sorted(found)


def select_container(cids: Iterable[str], pod_uid: str, pod: str, name: str,
                     previous: bool = False) -> str:
    """The current instance (highest attempt) of the container, or with `previous` the one
    before it. Raises PodIOError worded like kubectl's."""
    found = pod_containers(cids, pod_uid, name)
    if previous:
        if len(found) < 2:
            raise PodIOError("FAILED_PRECONDITION",
                             f'previous terminated container "{name}" in pod "{pod}" not found')
        return found[-2][1]
    if not found:
        raise PodIOError("FAILED_PRECONDITION",
                         f'container "{name}" in pod "{pod}" is waiting to start')
    return found[-1][1]


def coalesce(items: list[tuple[int, bytes]], limit: int = CHUNK_BYTES) -> list[tuple[int, bytes]]:
    """Joins consecutive pieces for the same fd into chunks of at most about `limit` bytes."""
    out: list[tuple[int, bytes]] = []
    for fd, data in items:
        if out and out[-1][0] == fd and len(out[-1][1]) + len(data) <= limit:
            out[-1] = (fd, out[-1][1] + data)
        else:
            out.append((fd, data))
    return out


async def from_thread(produce: Callable[[threading.Event], Iterator], stop: threading.Event):
    """Runs the blocking generator `produce(stop)` in a thread and yields its items here,
    with back-pressure; leaving early sets `stop`, which the generator must honour."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_DEPTH)
    end = object()

    def put(item) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:   # the loop is gone
            return False
        while True:
            try:
                future.result(timeout=0.2)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False

    def run() -> None:
        try:
            for item in produce(stop):
                if not put(item):
                    return
        except Exception as err:  # noqa: BLE001 - handed to the consumer
            put(err)
        finally:
            put(end)

    threading.Thread(target=run, name="stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            batch = [item]
            while not queue.empty() and len(batch) < QUEUE_DEPTH:
                batch.append(queue.get_nowait())
            for i, got in enumerate(batch):
                if got is end or isinstance(got, Exception):
                    if i:
                        yield batch[:i]
                    if got is end:
                        return
                    raise got
            yield batch
    finally:
        stop.set()
