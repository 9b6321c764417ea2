"""The agent's half of logs, exec and top: serves OpenStream requests over Dispatcher.Stream
and answers stats requests from the runtime's cgroups and /proc.

Everything here runs in the session's event loop, which must never block: file reads, pipe and
pty reads and process waits run in threads. Contract: each stream ends with exactly one final
frame (`eof` for logs, `exited` for exec, or `error` + `code`), unless the control plane hangs
up first, in which case the follow or the exec'd process is stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import grpc

from moorage.v1 import agent_pb2, agent_pb2_grpc, api_pb2
from nodeagent.podworker import UID_CHARS, parse_container_id
from nodeagent.runtime.logs import FULL, LogLine, follow, parse_line

log = logging.getLogger("moorage.agent.podio")

RUNNING = "running"
# Frames carry at most this much output, so one chatty container cannot make huge messages.
CHUNK_BYTES = 64 * 1024
# Items buffered between a reading thread and the stream; a slow caller slows the reader.
QUEUE_DEPTH = 64
# After the exec'd process exits, how long its output may still trickle in (a background child
# can hold the pipe open forever).
DRAIN_SECONDS = 1.0
# How long the stats sample is: CPU cores are a rate over it.
STATS_WINDOW = 0.5
_STREAMS = {"stdout": 1, "stderr": 2}


class PodIOError(Exception):
    """Ends a stream with an error frame; `code` is a gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# ---- pure parts ----

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


class LineAssembler:
    """Joins the CRI format's partial (P) records with the full (F) record ending them."""

    def __init__(self) -> None:
        self._partial: dict[str, list[str]] = {}

    def feed(self, line: LogLine) -> LogLine | None:
        parts = self._partial.setdefault(line.stream, [])
        if line.tag != FULL:
            if not parts:
                parts.append(line.time)   # a line's time is its first record's
            parts.append(line.text)
            return None
        if not parts:
            return line
        self._partial[line.stream] = []
        return LogLine(parts[0], line.stream, FULL, "".join(parts[1:]) + line.text)


def format_line(line: LogLine, timestamps: bool) -> bytes:
    text = f"{line.time} {line.text}\n" if timestamps else f"{line.text}\n"
    return text.encode(errors="replace")


def log_lines(raw: Iterable[str], timestamps: bool) -> Iterator[tuple[int, bytes]]:
    """(fd, bytes) for each whole line among CRI records."""
    assembler = LineAssembler()
    for record in raw:
        line = assembler.feed(parse_line(record))
        if line is not None:
            yield _STREAMS.get(line.stream, 1), format_line(line, timestamps)


def tail(items: Iterable, n: int) -> list:
    """The last n items; n <= 0 means all."""
    return list(items) if n <= 0 else list(deque(items, maxlen=n))


def coalesce(items: list[tuple[int, bytes]], limit: int = CHUNK_BYTES) -> list[tuple[int, bytes]]:
    """Joins consecutive pieces for the same fd into chunks of at most about `limit` bytes."""
    out: list[tuple[int, bytes]] = []
    for fd, data in items:
        if out and out[-1][0] == fd and len(out[-1][1]) + len(data) <= limit:
            out[-1] = (fd, out[-1][1] + data)
        else:
            out.append((fd, data))
    return out


def cpu_rate(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Cores used between two (wall seconds, cpu seconds) samples."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) / wall) if wall > 0 else 0.0


def parse_proc_stat(text: str, user_hz: int) -> float:
    """Busy CPU seconds of all CPUs from /proc/stat (everything but idle and iowait)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(x) for x in fields[1:9]]
            busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
            return busy / user_hz
    return 0.0


def parse_meminfo(text: str) -> int:
    """Working set of the node in bytes: MemTotal - MemAvailable."""
    info = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    return max(0, info.get("MemTotal", 0) - info.get("MemAvailable", 0))


# ---- blocking helpers (threads) ----

def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def read_logs(path: str, follow_: bool, tail_lines: int, timestamps: bool,
              running: Callable[[], bool], stop: threading.Event) -> Iterator[tuple[int, bytes]]:
    """The log's lines (the last `tail_lines`), then with `follow_` new ones until the container
    stops or `stop` is set. Blocking: run it in a thread."""
    backlog = _count_lines(path)
    done = (lambda: stop.is_set() or not running()) if follow_ else (lambda: True)
    kept: deque = deque(maxlen=tail_lines if tail_lines > 0 else None)
    records = 0

    def counted():
        nonlocal records
        for record in follow(path, done=done):
            if stop.is_set():
                return
            records += 1
            yield record

    for item in log_lines(counted(), timestamps):
        if records <= backlog:
            kept.append(item)
            if records == backlog:
                yield from kept
                kept.clear()
        else:
            if kept:
                yield from kept
                kept.clear()
            yield item
    yield from kept


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows and cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_fd(fd: int, stop: threading.Event) -> Iterator[bytes]:
    """Chunks from fd until EOF (EIO on a pty master whose slave is closed) or stop."""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, CHUNK_BYTES)
        except OSError:
            return
        if not data:
            return
        yield data


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

    threading.Thread(target=run, name="podio", daemon=True).start()
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


# ---- the shell ----

class PodIO:
    def __init__(self, runtime, session, stats_window: float = STATS_WINDOW):
        self.runtime, self.session, self.stats_window = runtime, session, stats_window
        self._tasks: set[asyncio.Task] = set()

    # logs and exec

    def open_stream(self, msg: agent_pb2.OpenStream) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _container(self, msg: agent_pb2.OpenStream, name: str, pod: str,
                   previous: bool = False) -> str:
        return select_container((i.id for i in self.runtime.list()), msg.pod_uid, pod, name,
                                previous)

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
            if msg.HasField("exec"):
                work = asyncio.create_task(self._exec(call, msg, inbound))
            else:
                work = asyncio.create_task(self._logs(call, msg))
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

    async def _logs(self, call, msg: agent_pb2.OpenStream) -> None:
        req = msg.logs
        cid = await asyncio.to_thread(self._container, msg, req.container, req.pod,
                                      req.previous)
        path = os.path.join(self.runtime.state_dir, cid, "container.log")

        def running() -> bool:
            return self.runtime.status(cid).state == RUNNING
        stop = threading.Event()
        follow_ = req.follow and not req.previous

        def produce(stop):
            return read_logs(path, follow_, req.tail_lines, req.timestamps, running, stop)

        async for batch in from_thread(produce, stop):
            for fd, data in coalesce(batch):
                await call.write(api_pb2.StreamFrame(fd=fd, data=data))
        await call.write(api_pb2.StreamFrame(fd=1, eof=True))

    async def _exec(self, call, msg: agent_pb2.OpenStream, inbound: asyncio.Queue) -> None:
        ex = msg.exec
        if not ex.command:
            raise PodIOError("INVALID_ARGUMENT", "no command to run")
        cid = await asyncio.to_thread(self._container, msg, ex.container, ex.pod)
        if (await asyncio.to_thread(self.runtime.status, cid)).state != RUNNING:
            raise PodIOError("FAILED_PRECONDITION",
                             f'container "{ex.container}" in pod "{ex.pod}" is not running')
        try:
            proc = await asyncio.to_thread(
                self.runtime.exec, cid, list(ex.command), tty=ex.tty,
                stdin=subprocess.PIPE if ex.stdin else None)
        except (RuntimeError, OSError) as err:
            raise PodIOError("FAILED_PRECONDITION", str(err)) from None
        master = getattr(proc, "pty_master", None) if ex.tty else None
        if master is not None:
            _set_winsize(master, ex.rows, ex.cols)
            outs = [(1, master)]
            stdin_fd = master if ex.stdin else None
        else:
            outs = [(1, proc.stdout.fileno()), (2, proc.stderr.fileno())]
            stdin_fd = proc.stdin.fileno() if proc.stdin else None
        stops = [threading.Event() for _ in outs]
        output: asyncio.Queue = asyncio.Queue()

        async def pump(fd_no: int, fd: int, stop: threading.Event):
            try:
                async for batch in from_thread(lambda s: _read_fd(fd, s), stop):
                    output.put_nowait((fd_no, b"".join(batch)))
            finally:
                output.put_nowait((fd_no, None))

        async def feed_stdin():
            while True:
                frame = await inbound.get()
                if frame is None:
                    return
                if (frame.rows or frame.cols) and master is not None:
                    _set_winsize(master, frame.rows, frame.cols)
                if stdin_fd is None:
                    continue
                try:
                    if frame.data:
                        await asyncio.to_thread(_write_all, stdin_fd, frame.data)
                    if frame.eof:
                        if master is not None:
                            await asyncio.to_thread(_write_all, stdin_fd, b"\x04")
                        else:
                            proc.stdin.close()
                            return
                except OSError:   # the process is gone or closed its stdin
                    return

        tasks = [asyncio.create_task(pump(n, fd, stop)) for (n, fd), stop in zip(outs, stops)]
        tasks.append(asyncio.create_task(feed_stdin()))
        waiter = asyncio.create_task(asyncio.to_thread(proc.wait))
        try:
            open_outs = len(outs)
            while open_outs:
                getter = asyncio.create_task(output.get())
                if waiter.done():
                    try:
                        item = await asyncio.wait_for(getter, DRAIN_SECONDS)
                    except TimeoutError:
                        break
                else:
                    await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    item = getter.result()
                fd_no, data = item
                if data is None:
                    open_outs -= 1
                    continue
                for i in range(0, len(data), CHUNK_BYTES):
                    await call.write(api_pb2.StreamFrame(fd=fd_no, data=data[i:i + CHUNK_BYTES]))
            code = await waiter
            await call.write(api_pb2.StreamFrame(exited=True, exit_code=code))
        finally:
            for stop in stops:
                stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if proc.poll() is None:
                await asyncio.to_thread(_terminate, proc, master is not None)
            waiter.cancel()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            if master is not None:
                with contextlib.suppress(OSError):
                    os.close(master)

    # stats

    async def stats(self, req: agent_pb2.StatsRequest) -> agent_pb2.StatsReport:
        # Copied here, in the session's loop, which is the one that changes it.
        desired = dict(self.session.desired)
        return await asyncio.to_thread(self._measure, desired)

    def _sample(self) -> tuple[float, float, dict[str, float]]:
        with open("/proc/stat") as f:
            node_cpu = parse_proc_stat(f.read(), os.sysconf("SC_CLK_TCK"))
        containers = {}
        for info in self.runtime.list():
            if info.status.state != RUNNING or parse_container_id(info.id) is None:
                continue
            try:
                containers[info.id] = self.runtime.stats(info.id)
            except OSError:
                continue
        return time.monotonic(), node_cpu, containers

    def _measure(self, desired: dict) -> agent_pb2.StatsReport:
        t0, cpu0, before = self._sample()
        time.sleep(self.stats_window)
        t1, cpu1, after = self._sample()
        with open("/proc/meminfo") as f:
            node_mem = parse_meminfo(f.read())
        report = agent_pb2.StatsReport()
        report.node.name = getattr(self.session, "node_name", "")
        report.node.cpu_cores = cpu_rate((t0, cpu0), (t1, cpu1))
        report.node.memory_working_set_bytes = node_mem
        pods = {uid.replace("-", "")[:UID_CHARS]: pod
                for uid, pod in desired.items()}
        usage: dict[str, api_pb2.PodUsage] = {}
        for cid, now in sorted(after.items()):
            prefix, name, _, _ = parse_container_id(cid)
            pod = pods.get(prefix)
            if pod is None:
                continue
            item = usage.get(pod.metadata.uid)
            if item is None:
                item = usage[pod.metadata.uid] = api_pb2.PodUsage(
                    namespace=pod.metadata.namespace, name=pod.metadata.name,
                    uid=pod.metadata.uid, node=report.node.name)
            was = before.get(cid)
            cores = cpu_rate((t0, was.cpu_seconds), (t1, now.cpu_seconds)) if was else 0.0
            item.containers.append(api_pb2.ContainerUsage(
                name=name, cpu_cores=cores, memory_working_set_bytes=now.memory_working_set))
        report.pods.extend(usage.values())
        return report


def _terminate(proc: subprocess.Popen, tty: bool, grace: float = 2.0) -> None:
    """nsexec passes SIGHUP and SIGTERM on to the command (an interactive shell ignores
    SIGTERM); SIGKILL the wrapper if that was not enough."""
    with contextlib.suppress(ProcessLookupError):
        if tty:
            proc.send_signal(signal.SIGHUP)
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
