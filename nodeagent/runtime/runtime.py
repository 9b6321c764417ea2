"""The agent's door to containers: create/start/stop/remove/status/list/exec/stats over a state
dir, where each container's shim keeps its own files, so a restarted agent re-adopts them."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

from nodeagent.runtime.cgroups import Cgroup, Stats, remove_parent
from nodeagent.runtime.spec import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerSpec,
    Status,
    alive,
    read_json,
    write_json_atomic,
)
from nodeagent.runtime.stats import StatsReader
from nodeagent.runtime.syscalls import MNT_DETACH, LibcSyscalls, Syscalls

REASON_SHIM_LOST = "ShimLost"  # the shim died without recording an exit
START_TIMEOUT = 30.0
# How long a killed container's init and shim get to be gone and record the exit.
KILL_WAIT_SECONDS = 10.0
# A wait for a container to exit looks at its (movable) deadline at least this often.
DEADLINE_RECHECK_SECONDS = 0.2


# The shim and nsexec need only the stdlib and this package, so they skip site (-S) and find
# the package through PYTHONPATH: that saves a third of a shim's start-up on a venv install.
_FAST_PYTHON = ("-S",)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _helper_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    # Every container start imports the runtime afresh; without cached bytecode that compile
    # is most of the shim's start-up (~70ms here), so helpers may write and use .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Zygote:
    """The agent's handle on its fork server: started on first use, restarted once if it died."""

    def __init__(self, python: str, env: dict[str, str], log_path: str) -> None:
        self.python, self.env, self.log_path = python, env, log_path
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None

    def _ensure(self) -> socket.socket:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self._sock is not None:
                return self._sock
            self._close_locked()
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                with open(self.log_path, "ab") as log:
                    self._proc = subprocess.Popen(
                        [self.python, *_FAST_PYTHON, "-m", "nodeagent.runtime.zygote",
                         str(theirs.fileno())],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                        pass_fds=(theirs.fileno(),), env=self.env, cwd="/",
                        start_new_session=True)
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
            self._sock = mine
            return mine

    def start_shim(self, config_path: str) -> str:
        """Ask for a shim on config_path; return its one-line report ('' if nobody reported)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            for attempt in (0, 1):
                sock = self._ensure()
                try:
                    socket.send_fds(sock, [config_path.encode()], [w], socket.MSG_NOSIGNAL)
                    break
                except OSError:
                    if attempt:
                        raise
                    self.close()  # died since last use: start a fresh one
        finally:
            os.close(w)
        try:
            # A wedged server or shim must not hang the agent's start() forever.
            report, deadline = b"", time.monotonic() + START_TIMEOUT
            poller = select.poll()
            poller.register(r, select.POLLIN)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    return f"error no report from the shim within {START_TIMEOUT:.0f}s"
                chunk = os.read(r, 4096)
                if not chunk:
                    return report.decode(errors="replace")
                report += chunk
        finally:
            os.close(r)

    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()  # EOF makes the server exit
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()


class StartError(RuntimeError):
    """The container could not be started; the message says why (from the shim)."""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    status: Status


def _signal(pid: int, start: int, sig: int) -> bool:
    """Signal pid only if it is still the process we started (guards against pid reuse)."""
    if not alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def read_status(cdir: str) -> Status:
    """status.json, corrected when the shim died without writing the final state."""
    try:
        st = Status.from_json(read_json(os.path.join(cdir, "status.json")))
    except FileNotFoundError:
        return Status(CREATED)
    if st.state == RUNNING and not alive(st.shim_pid, st.shim_start):
        # Re-read: the shim may have written its exit between our two reads.
        st = Status.from_json(read_json(os.path.join(cdir, "status.json")))
        if st.state == RUNNING:
            st = replace(st, state=EXITED, exit_code=st.exit_code or 137,
                         reason=REASON_SHIM_LOST)
    return st


def wait_exit(pid: int, start: int, deadline: Callable[[], float]) -> bool:
    """Waits until the process (pid, start time) is gone or `deadline()` (monotonic; read
    again as it waits, so a caller may move it closer) has passed; True if it is gone.

    A pidfd wakes the wait the moment the process exits, so thousands of containers can stop
    at once with no polling thread each."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        fd = None   # no pidfd (old kernel): poll instead
    try:
        if not alive(pid, start):
            return True
        while True:
            left = deadline() - time.monotonic()
            if left <= 0:
                return not alive(pid, start)
            step = min(left, DEADLINE_RECHECK_SECONDS)
            if fd is not None:
                if select.select([fd], [], [], step)[0]:
                    return True
            else:
                time.sleep(min(step, 0.02))
                if not alive(pid, start):
                    return True
    finally:
        if fd is not None:
            os.close(fd)


def stop(cdir: str, grace: float | Callable[[], float], poll: float = 0.02) -> Status:
    """SIGTERM the container's init, SIGKILL it after `grace` seconds; wait for the exit record.

    `grace` may instead be a function giving the monotonic deadline for SIGKILL, read again
    while waiting (a pod whose deletion is shortened stops sooner). As PID 1 of its namespace,
    init only sees SIGTERM if it installed a handler, like in Docker.
    """
    st = read_status(cdir)
    if st.state != RUNNING:
        return st
    if callable(grace):
        deadline = grace
    else:
        at = time.monotonic() + grace
        deadline = lambda: at  # noqa: E731
    if deadline() > time.monotonic():
        _signal(st.pid, st.pid_start, signal.SIGTERM)
        wait_exit(st.pid, st.pid_start, deadline)
    _signal(st.pid, st.pid_start, signal.SIGKILL)
    wait_exit(st.pid, st.pid_start, lambda: time.monotonic() + KILL_WAIT_SECONDS)
    # The shim records the exit right after init goes.
    until = time.monotonic() + KILL_WAIT_SECONDS
    while time.monotonic() < until:
        now = read_status(cdir)
        if now.state != RUNNING:
            return now
        time.sleep(poll)
    return read_status(cdir)


class Runtime:
    """Containers under state_dir/<id>/; cgroups under <cgroup mount>/<cgroup_root>/<id>."""

    def __init__(self, state_dir: str, cgroup_root: str = "moorage",
                 python: str = sys.executable, sysc: Syscalls | None = None) -> None:
        self.state_dir, self.cgroup_root, self.python = state_dir, cgroup_root, python
        # The kernel seam for what the agent's own process mounts and unmounts.
        self.sysc = sysc or LibcSyscalls()
        # Cached status and cgroup reads for frequent readers (metrics scrapes).
        self.stats_reader = StatsReader(self)
        os.makedirs(state_dir, exist_ok=True)
        # "." names are never container ids, so the fork server's log cannot clash with one.
        self.zygote = Zygote(python, _helper_env(), os.path.join(state_dir, ".zygote.log"))
        # The fork server exits when its socket closes: with the agent, or with this object.
        weakref.finalize(self, self.zygote.close)

    def close(self) -> None:
        """Stop the fork server; running containers are not affected."""
        self.zygote.close()

    def remove_all(self) -> None:
        """Remove every container, the fork server and this runtime's cgroup parent: the
        node is left as if the runtime had never run (tests and demos end with it)."""
        for info in self.list():
            self.remove(info.id)
        self.close()
        remove_parent(self.cgroup_root)

    def _dir(self, cid: str) -> str:
        if not cid or "/" in cid or cid.startswith("."):
            raise ValueError(f"bad container id {cid!r}: use letters, digits, '-' and '_'")
        return os.path.join(self.state_dir, cid)

    def _config(self, cid: str) -> dict:
        return read_json(os.path.join(self._dir(cid), "config.json"))

    def spec(self, cid: str) -> ContainerSpec:
        return ContainerSpec.from_json(self._config(cid)["spec"])

    def cgroup(self, cid: str) -> Cgroup:
        return Cgroup.for_container(self.cgroup_root, cid)

    def create(self, spec: ContainerSpec) -> str:
        cdir = self._dir(spec.id)
        os.makedirs(cdir)  # fails if it exists: ids are unique per node
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(cdir, sub))
        write_json_atomic(os.path.join(cdir, "config.json"),
                          {"spec": spec.to_json(), "cgroup_root": self.cgroup_root})
        # No status.json yet: read_status takes its absence as "created", and the shim writes
        # the first one, which saves a synced write per container.
        return spec.id

    def start(self, cid: str) -> Status:
        """Launch the detached shim and return once the command is exec'd (or failed)."""
        cdir = self._dir(cid)
        if read_status(cdir).state != CREATED:
            raise StartError(f"container {cid} was already started; create a new one")
        config = os.path.join(cdir, "config.json")
        try:
            report = self.zygote.start_shim(config)
        except OSError:
            report = ""
        if not report and read_status(cdir).state == CREATED and \
                not os.path.exists(os.path.join(cdir, "shim.pid")):
            report = self._start_by_exec(cid, config)  # the fork server is unavailable
        if not report.startswith("running"):
            raise StartError(f"container {cid}: "
                             f"{report.removeprefix('error ').strip() or 'shim died'}")
        return read_status(cdir)

    def _start_by_exec(self, cid: str, config: str) -> str:
        """The slow path: a fresh interpreter runs the shim, which detaches itself."""
        proc = subprocess.run(
            [self.python, *_FAST_PYTHON, "-m", "nodeagent.runtime.shim", "--detach",
             config],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT,
            env=_helper_env())
        if proc.returncode != 0:
            return "error " + (proc.stdout + proc.stderr).strip().removeprefix("error ")
        return proc.stdout

    def stop(self, cid: str, grace: float | Callable[[], float] = 10.0) -> Status:
        """Stops the container: SIGTERM, then SIGKILL after `grace` seconds (or at the
        monotonic deadline a callable gives); returns its final status."""
        return stop(self._dir(cid), grace)

    def signal(self, cid: str, sig: int) -> bool:
        """Sends `sig` to the container's init; False when it is not running."""
        st = read_status(self._dir(cid))
        return st.state == RUNNING and _signal(st.pid, st.pid_start, sig)

    def status(self, cid: str) -> Status:
        return read_status(self._dir(cid))

    def list(self, prefix: str = "") -> list[ContainerInfo]:
        """Every container in the state dir (whose id starts with `prefix`, if given); those
        whose shim lives are reported running."""
        out = []
        for cid in sorted(os.listdir(self.state_dir)):
            if cid.startswith(prefix) and \
                    os.path.exists(os.path.join(self.state_dir, cid, "config.json")):
                out.append(ContainerInfo(cid, read_status(self._dir(cid))))
        return out

    def wait(self, cid: str, timeout: float = 30.0, poll: float = 0.02) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if st.state == EXITED or time.monotonic() > deadline:
                return st
            time.sleep(poll)

    def remove(self, cid: str) -> None:
        """Stop (no grace) if running, wait for the shim to go, then delete cgroup and files."""
        cdir = self._dir(cid)
        if not os.path.isdir(cdir):
            return
        st = read_status(cdir)
        if st.state == RUNNING:
            st = stop(cdir, 0)
        deadline = time.monotonic() + 10
        while alive(st.shim_pid, st.shim_start) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.cgroup(cid).remove()
        # The overlay lives in the container's own mount namespace, gone with its init; a
        # leftover here would mean an exec'd process still pins it, so detach it to be safe.
        rootfs = os.path.join(cdir, "rootfs")
        if os.path.ismount(rootfs):
            try:
                self.sysc.umount2(rootfs, MNT_DETACH)
            except OSError:
                pass   # gone meanwhile
        shutil.rmtree(cdir)

    def exec(self, cid: str, argv: list[str], tty: bool = False, stdin=None,
             stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
        """Run argv inside the running container. With tty, the pty master is `.pty_master`."""
        cdir = self._dir(cid)
        st = read_status(cdir)
        if st.state != RUNNING:
            raise RuntimeError(f"container {cid} is {st.state}, not running; cannot exec")
        cmd = [self.python, *_FAST_PYTHON, "-m", "nodeagent.runtime.nsexec",
               os.path.join(cdir, "config.json"), "--", *argv]
        if tty:
            master, slave = os.openpty()
            proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                    env={**_helper_env(), "MOORAGE_EXEC_TTY": "1"})
            os.close(slave)
            proc.pty_master = master
            return proc
        return subprocess.Popen(cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, env=_helper_env())

    def stats(self, cid: str) -> Stats:
        return self.cgroup(cid).stats()
