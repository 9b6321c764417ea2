"""`moor exec` on the agent: a command run in a running container, with or without a TTY, its
stdout and stderr relayed as frames, the caller's stdin and TTY resizes fed to it, and its exit
code as the final frame. Blocking reads and waits run in threads."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator

from moorage.v1 import agent_pb2, api_pb2
from nodeagent.streams.common import CHUNK_BYTES, RUNNING, PodIOError, from_thread

# After the exec'd process exits, how long its output may still trickle in (a background child
# can hold the pipe open forever).
DRAIN_SECONDS = 1.0


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


class _Process:
    """The exec'd process and the descriptors its output comes from and its input goes to."""

    def __init__(self, proc: subprocess.Popen, ex: api_pb2.ExecStart):
        self.proc = proc
        self.master = getattr(proc, "pty_master", None) if ex.tty else None
        if self.master is not None:
            _set_winsize(self.master, ex.rows, ex.cols)
            self.outs = [(1, self.master)]
            self.stdin_fd = self.master if ex.stdin else None
        else:
            self.outs = [(1, proc.stdout.fileno()), (2, proc.stderr.fileno())]
            self.stdin_fd = proc.stdin.fileno() if proc.stdin else None

    async def feed(self, inbound: asyncio.Queue) -> None:
        """The caller's frames: stdin data, its end, TTY resizes."""
        while True:
            frame = await inbound.get()
            if frame is None:
                return
            if (frame.rows or frame.cols) and self.master is not None:
                _set_winsize(self.master, frame.rows, frame.cols)
            if self.stdin_fd is None:
                continue
            try:
                if frame.data:
                    await asyncio.to_thread(_write_all, self.stdin_fd, frame.data)
                if frame.eof:
                    if self.master is not None:
                        await asyncio.to_thread(_write_all, self.stdin_fd, b"\x04")
                    else:
                        self.proc.stdin.close()
                        return
            except OSError:   # the process is gone or closed its stdin
                return

    async def close(self) -> None:
        if self.proc.poll() is None:
            await asyncio.to_thread(_terminate, self.proc, self.master is not None)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)


async def _relay(call, output: asyncio.Queue, waiter: asyncio.Task, open_outs: int) -> None:
    """Writes output frames until every output closed, or the process exited and its output
    stopped trickling in for DRAIN_SECONDS."""
    while open_outs:
        getter = asyncio.create_task(output.get())
        if waiter.done():
            try:
                item = await asyncio.wait_for(getter, DRAIN_SECONDS)
            except TimeoutError:
                return
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


async def serve_exec(runtime, call, msg: agent_pb2.OpenStream, cid: str,
                     inbound: asyncio.Queue) -> None:
    ex = msg.exec
    if not ex.command:
        raise PodIOError("INVALID_ARGUMENT", "no command to run")
    if (await asyncio.to_thread(runtime.status, cid)).state != RUNNING:
        raise PodIOError("FAILED_PRECONDITION",
                         f'container "{ex.container}" in pod "{ex.pod}" is not running')
    try:
        proc = await asyncio.to_thread(
            runtime.exec, cid, list(ex.command), tty=ex.tty,
            stdin=subprocess.PIPE if ex.stdin else None)
    except (RuntimeError, OSError) as err:
        raise PodIOError("FAILED_PRECONDITION", str(err)) from None
    p = _Process(proc, ex)
    stops = [threading.Event() for _ in p.outs]
    output: asyncio.Queue = asyncio.Queue()

    async def pump(fd_no: int, fd: int, stop: threading.Event):
        try:
            async for batch in from_thread(lambda s: _read_fd(fd, s), stop):
                output.put_nowait((fd_no, b"".join(batch)))
        finally:
            output.put_nowait((fd_no, None))

    tasks = [asyncio.create_task(pump(n, fd, stop)) for (n, fd), stop in zip(p.outs, stops)]
    tasks.append(asyncio.create_task(p.feed(inbound)))
    waiter = asyncio.create_task(asyncio.to_thread(proc.wait))
    try:
        await _relay(call, output, waiter, len(p.outs))
        code = await waiter
        await call.write(api_pb2.StreamFrame(exited=True, exit_code=code))
    finally:
        for stop in stops:
            stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
        await p.close()
