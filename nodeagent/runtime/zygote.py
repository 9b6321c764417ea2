"""Fork server that starts detached shims by forking a warm, single-threaded interpreter."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys

# Pre-imported here so every shim forked from us starts with them loaded (and shares their pages).
from nodeagent.runtime import shim

MAX_REQUEST = 8192


def _run_shim(config_path: str, report_fd: int) -> None:
    """In the forked child: be the shim for one container; never returns into the server loop."""
    code = 1
    try:
        code = shim.run(config_path, report_fd)
    except BaseException as e:  # noqa: BLE001 - the agent must learn why, not wait forever
        try:
            os.write(report_fd, f"error shim: {e}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _spawn(config_path: str, report_fd: int, ctl: socket.socket) -> None:
    """Fork the shim into its own session, so no signal to our group (or the agent's) reaches
    it, and our death leaves it running. SIGCHLD is ignored here, so the kernel reaps shims
    that end while we live; we never wait, and a second fork would only add latency."""
    if os.fork() == 0:
        try:
            ctl.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim must wait for its init
        except BaseException:  # noqa: BLE001 - a forked child must never return to the loop
            os._exit(1)
        _run_shim(config_path, report_fd)
    os.close(report_fd)


def serve(ctl: socket.socket) -> int:
    """Handle (config path, report fd) messages until the agent's end of ctl closes."""
    os.chdir("/")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Objects frozen now are never touched by the collector, so forked shims keep sharing them.
    gc.collect()
    gc.freeze()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, MAX_REQUEST, 1)
        except InterruptedError:
            continue
        if not msg:
            return 0  # the agent is gone (or closed the Runtime): running shims live on
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        try:
            _spawn(msg.decode(), fds[0], ctl)
        except OSError as e:  # e.g. EAGAIN from fork under a pids limit: tell this caller
            try:
                os.write(fds[0], f"error zygote: {e}\n".encode())
                os.close(fds[0])
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=int(sys.argv[1]))))
