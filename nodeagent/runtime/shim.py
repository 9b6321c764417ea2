"""Per-container supervisor: starts the container init in new namespaces, logs its output,
waits for it and records status.json even when the agent that started it is gone.

Usage: python -m nodeagent.runtime.shim [--detach] <state-dir>/<id>/config.json
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from nodeagent.runtime import container_init
from nodeagent.runtime.cgroups import Cgroup, Limits
from nodeagent.runtime.logs import LogWriter
from nodeagent.runtime.spec import (
    EXITED,
    REASON_COMPLETED,
    REASON_ERROR,
    REASON_OOM,
    REASON_START_ERROR,
    RUNNING,
    ContainerSpec,
    Status,
    exit_code_of,
    proc_start_time,
    read_json,
    write_json_atomic,
)
from nodeagent.runtime.syscalls import CLONE_NEWPID, LibcSyscalls

DRAIN_TIMEOUT = 2.0  # after init exits, how long to wait for its pipes to reach EOF


def write_status(cdir: str, status: Status) -> None:
    from dataclasses import asdict
    write_json_atomic(os.path.join(cdir, "status.json"), asdict(status))


def container_cgroup(config: dict, cid: str) -> Cgroup:
    return Cgroup.for_container(config["cgroup_root"], cid)


def _remove_quietly(cg: Cgroup) -> None:
    try:
        cg.remove()
    except OSError as e:
        print(f"cgroup remove: {e}", file=sys.stderr)


def _detach() -> int | None:
    """Fork into a new session; the original process waits for a one-line report and exits.

    Returns the report fd in the detached child; never returns in the parent. The agent thus
    gets a synchronous start() while the shim is no child of the agent's and outlives it.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        report = b""
        while chunk := os.read(r, 4096):
            report += chunk
        # No waitpid: the shim lives on; once we exit, init (or a subreaper) reaps it.
        sys.stdout.write(report.decode() or "error shim died before reporting\n")
        sys.stdout.flush()
        os._exit(0 if report.startswith(b"running") else 1)
    os.close(r)
    os.setsid()
    return w


def _quiet_stdio(cdir: str) -> None:
    # The agent's pipes must not stay open in the shim, or its reader would never see EOF.
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(cdir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def run(config_path: str, report_fd: int | None) -> int:
    config = read_json(config_path)
    cdir = os.path.dirname(os.path.abspath(config_path))
    spec = ContainerSpec.from_json(config["spec"])
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    me = os.getpid()

    def report(line: str) -> None:
        if report_fd is not None:
            os.write(report_fd, line.encode() + b"\n")

    def fail(message: str, started: float) -> int:
        write_status(cdir, Status(EXITED, exit_code=128, reason=REASON_START_ERROR,
                                  message=message, started_at=started,
                                  finished_at=time.time(), shim_pid=me,
                                  shim_start=proc_start_time(me) or 0))
        report(f"error {message}")
        return 1

    started = time.time()
    cg = container_cgroup(config, spec.id)
    sysc = LibcSyscalls()
    netns_fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC) if spec.netns_path else -1
    tty_parent, out_r, out_w, err_r, err_w = _output_fds(spec.tty)
    sync_r, sync_w = os.pipe()
    errp_r, errp_w = os.pipe2(os.O_CLOEXEC)
    # Only children enter a new pid namespace, so the shim unshares it and its one fork is PID 1.
    # The shim starts no thread after this: the kernel refuses threads across pid namespaces.
    sysc.unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        container_init.run(sysc, spec, cdir, out_w, err_w, sync_r, errp_w, netns_fd)
    for fd in (out_w, err_w, sync_r, errp_w, netns_fd):
        if fd >= 0:
            os.close(fd)
    # Book-keeping the init does not need waits until it is forked and building its rootfs.
    _quiet_stdio(cdir)
    shim_start = proc_start_time(me) or 0
    with open(os.path.join(cdir, "shim.pid"), "w") as f:
        f.write(f"{me} {shim_start}\n")
    # The init builds its rootfs meanwhile and waits for "g" before running anything of the
    # workload: cgroup setup (a v1 join waits out an RCU grace period) is off the critical path.
    try:
        cg.create(Limits(spec.memory_limit, spec.cpu_quota_millicores,
                         spec.cpu_request_millicores, spec.pids_limit))
        cg.add(pid)
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _remove_quietly(cg)
        return fail(f"cgroup: {e}", started)
    os.write(sync_w, b"g")
    os.close(sync_w)
    if spec.tty:
        # Empty if the child died first: its end of the socket closed with it.
        _, fds, _, _ = socket.recv_fds(tty_parent, 1, 1)
        tty_parent.close()
        out_r = fds[0] if fds else -1
    err = b""
    while chunk := os.read(errp_r, 4096):
        err += chunk
    os.close(errp_r)
    if err:
        os.waitpid(pid, 0)
        cg.remove()
        return fail(err.decode(errors="replace"), started)

    running = Status(RUNNING, pid=pid, started_at=started, shim_pid=me,
                     pid_start=proc_start_time(pid) or 0, shim_start=shim_start)
    write_status(cdir, running)
    report(f"running {pid}")
    if report_fd is not None:
        os.close(report_fd)

    _until_exit(cdir, spec, running, {out_r: "stdout", err_r: "stderr"}, cg)
    return 0


def _output_fds(tty: bool) -> tuple[socket.socket | None, int, int, int, int]:
    """(tty socket, stdout read/write, stderr read/write): with a TTY the child opens the pty
    inside the container and sends its master back on the socket."""
    if tty:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return parent, -1, child.detach(), -1, -1
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    return None, out_r, out_w, err_r, err_w


def _until_exit(cdir: str, spec: ContainerSpec, running: Status, streams: dict[int, str],
                cg) -> None:
    """Logs the container's output until its init exits, then records how it ended."""
    from dataclasses import replace

    logs = LogWriter(os.path.join(cdir, "container.log"), spec.log_max_bytes, spec.log_max_files)
    wait_status = supervise(running.pid, streams, logs)
    logs.close()
    code = exit_code_of(wait_status)
    oom = cg.oom_kills() > 0
    reason = REASON_OOM if oom else (REASON_COMPLETED if code == 0 else REASON_ERROR)
    write_status(cdir, replace(running, state=EXITED, exit_code=code, reason=reason,
                               finished_at=time.time()))
    _remove_quietly(cg)


def supervise(pid: int, streams: dict[int, str], logs: LogWriter) -> int:
    """Copy output to the log until init exits and its pipes drain; return its wait status."""
    streams = {fd: name for fd, name in streams.items() if fd >= 0}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    wait_status = None
    deadline = None
    while streams and (deadline is None or time.monotonic() < deadline):
        timeout = None if deadline is None else max(0, deadline - time.monotonic()) * 1000
        for fd, _ in poller.poll(timeout):
            if fd == pidfd:
                _, wait_status = os.waitpid(pid, 0)
                poller.unregister(pidfd)
                deadline = time.monotonic() + DRAIN_TIMEOUT
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: a pty whose last slave closed
                data = b""
            if data:
                logs.write(streams[fd], data)
            else:
                poller.unregister(fd)
                os.close(fd)
                del streams[fd]
    if wait_status is None:
        _, wait_status = os.waitpid(pid, 0)
    os.close(pidfd)
    return wait_status


def main(argv: list[str]) -> int:
    detach = argv[:1] == ["--detach"]
    config = argv[1] if detach else argv[0]
    report_fd = _detach() if detach else None
    try:
        return run(config, report_fd)
    except Exception as e:  # the agent must learn why, not wait forever
        if report_fd is not None:
            os.write(report_fd, f"error shim: {e}\n".encode())
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
