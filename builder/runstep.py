"""RUN in a real container of the node runtime: the image's layers as lowerdirs under a fresh
upper dir, the build host's network (its net namespace, /etc/resolv.conf and /etc/hosts bound
as Docker's builder does), Docker's default capabilities, the step's env, user and workdir
(created when missing), output handed on line by line as the shim logs it.

After the command the upper dir holds the step's changes, less the mount points the runtime
made in it (mount stubs are removed, as BuildKit removes them), ready for layers.from_upper.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from builder import rootview
from nodeagent.runtime.cgroups import remove_parent
from nodeagent.runtime.runtime import Runtime, StartError
from nodeagent.runtime.security import resolve_user
from nodeagent.runtime.spec import EXITED, ContainerSpec

DEFAULT_CGROUP_ROOT = "moorage-build"
CGROUP_ROOT_ENV = "MOOR_BUILD_CGROUP_ROOT"
HOSTNAME = "buildkitsandbox"  # what `hostname` says in a RUN of Docker's BuildKit
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")
# Mount points the runtime makes in every rootfs; not the step's, unless the image had them.
RUNTIME_DIRS = ("/proc", "/dev", "/sys")
POLL = 0.02  # the longest wait between two looks at a running step's log and status
POLL_MIN = 0.001
LOG_MAX_BYTES = 1 << 40  # one file for the step's whole output; it is removed with the step


@dataclass(frozen=True, slots=True)
class RunResult:
    cid: str
    exit_code: int
    reason: str
    upper: str


class RunError(Exception):
    """The command could not be started (not: it failed); the message says why."""


def _parse_cri(line: str) -> tuple[str, bool]:
    """(text, ends the line) of one CRI log record."""
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return line.rstrip("\n"), True
    return (parts[3] if len(parts) > 3 else ""), parts[2] != "P"


class Runner:
    """Containers for one build's RUN steps, under root.containers, cgroups under cgroup_root."""

    def __init__(self, state_dir: str, build_id: str, cgroup_root: str | None = None):
        self.cgroup_root = cgroup_root or os.environ.get(CGROUP_ROOT_ENV) or DEFAULT_CGROUP_ROOT
        self.runtime = Runtime(state_dir, cgroup_root=self.cgroup_root)
        self.build_id = build_id
        self._numbers = itertools.count(1)
        self._live: set[str] = set()  # set.add/discard are atomic: stages run in threads

    def run(self, argv: Sequence[str], lowers: Sequence[str], env: Sequence[str], user: str,
            workdir: str, on_output: Callable[[str], None], empty_lower: str,
            cancelled: Callable[[], bool] = lambda: False) -> RunResult:
        """Runs argv to its end; the caller takes the layer from .upper, then calls remove."""
        cid = f"build-{self.build_id}-{next(self._numbers)}"
        envd = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        user = user or "0:0"
        _check_user(lowers, user)
        envd.setdefault("HOME", _home(lowers, user))
        files = tuple((p, p) for p in HOST_FILES if os.path.exists(p))
        spec = ContainerSpec(id=cid, args=tuple(argv), lower_dirs=tuple(lowers) or (empty_lower,),
                             env=tuple(envd.items()), cwd=workdir or "/", user=user,
                             hostname=HOSTNAME, netns_path="/proc/self/ns/net",
                             log_max_bytes=LOG_MAX_BYTES, log_max_files=1, files=files)
        self.runtime.create(spec)
        self._live.add(cid)
        cdir = os.path.join(self.runtime.state_dir, cid)
        upper = os.path.join(cdir, "upper")
        _make_workdir(upper, lowers, workdir or "/")
        stubs = [p for p in (*RUNTIME_DIRS, *(f for f, _ in files))
                 if not rootview.exists(lowers, p)]
        try:
            self.runtime.start(cid)
        except StartError as e:
            raise RunError(_start_reason(str(e).split(": ", 1)[-1], spec.args[0])) from None
        killed = False

        def exited() -> bool:
            nonlocal killed
            if not killed and cancelled():  # the build is stopping: so does this step
                killed = True
                self.runtime.signal(cid, signal.SIGKILL)
            return self.runtime.status(cid).state == EXITED

        _stream(os.path.join(cdir, "container.log"), exited, on_output)
        st = self.runtime.status(cid)
        _remove_stubs(upper, lowers, stubs, [f for f, _ in files])
        return RunResult(cid, st.exit_code if st.exit_code is not None else 1, st.reason, upper)

    def warm(self) -> None:
        """Starts the runtime's fork server now (it imports for ~70ms), not at the first
        container start. The runtime has no public call for it; starting is idempotent."""
        try:
            self.runtime.zygote._ensure()
        except OSError:
            pass  # the first start retries, and falls back to a fresh shim

    def remove(self, cid: str) -> None:
        self.runtime.remove(cid)
        self._live.discard(cid)

    def kill_all(self) -> None:
        """SIGKILLs every running step (another stage failed, or the build was stopped);
        their RUNs then end as failed."""
        for cid in list(self._live):
            try:
                self.runtime.signal(cid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Removes what is left (a failed step's container) and the fork server."""
        for cid in list(self._live):
            try:
                self.remove(cid)
            except OSError:
                pass
        self.runtime.close()
        remove_parent(self.cgroup_root)  # only once empty: other builds may share it


def _stream(log: str, exited: Callable[[], bool], on_output: Callable[[str], None]) -> None:
    """Hands on the log's lines until the container has exited and the log is read to its end
    (exited() is sampled before each read, so nothing written before the exit is missed)."""
    f = None
    partial = ""
    buf = b""
    delay = POLL_MIN
    try:
        while True:
            done = exited()
            if f is None:
                try:
                    f = open(log, "rb")  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    if done:
                        return
                    time.sleep(POLL)
                    continue
            chunk = f.read()
            if chunk:
                delay = POLL_MIN
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    text, end = _parse_cri(raw.decode(errors="replace"))
                    if end:
                        on_output(partial + text)
                        partial = ""
                    else:
                        partial += text
                continue
            if done:
                if partial:
                    on_output(partial)
                return
            time.sleep(delay)
            delay = min(delay * 2, POLL)  # short steps end soon after they exit
    finally:
        if f is not None:
            f.close()


def _check_user(lowers: Sequence[str], user: str) -> None:
    """A USER the image does not know fails the RUN with Docker's words, before any container
    (whose init would fail with them too, but its message is lost on the way)."""
    passwd, group = rootview.read_file(lowers, "/etc/passwd"), rootview.read_file(lowers,
                                                                                  "/etc/group")
    try:
        resolve_user(user, passwd, group)
    except (LookupError, ValueError):
        name, _, grp = user.partition(":")
        try:
            resolve_user(name, passwd, group)
        except (LookupError, ValueError):
            raise RunError(f"unable to find user {name}: no matching entries in passwd file"
                           ) from None
        raise RunError(f"unable to find group {grp}: no matching entries in group file"
                       ) from None


def _home(lowers: Sequence[str], user: str) -> str:
    """HOME for the user, from the image's /etc/passwd, as Docker sets it ("/" if unlisted)."""
    name = user.partition(":")[0]
    for line in rootview.read_file(lowers, "/etc/passwd").splitlines():
        f = line.split(":")
        if len(f) > 5 and (f[0] == name or f[2] == name):
            return f[5] or "/"
    return "/root" if name in ("0", "root") else "/"


def _copy_dir_meta(src: os.stat_result, dst: str) -> None:
    os.chown(dst, src.st_uid, src.st_gid)
    os.chmod(dst, stat.S_IMODE(src.st_mode))
    os.utime(dst, ns=(src.st_atime_ns, src.st_mtime_ns))


def _make_workdir(upper: str, lowers: Sequence[str], workdir: str) -> None:
    """Creates the part of workdir the image lacks, in upper (with copies of the existing
    parents' metadata, as overlay's copy-up would make them); Docker's layer keeps it."""
    parts = rootview.resolve(lowers, workdir)
    if parts is None or rootview.exists(lowers, "/" + "/".join(parts), follow_last=True):
        return
    host = upper
    for i, part in enumerate(parts):
        host = os.path.join(host, part)
        found = rootview.lookup(lowers, "/" + "/".join(parts[:i + 1]), follow_last=False)
        if os.path.isdir(host):
            continue
        os.mkdir(host, 0o755)
        if found is not None and stat.S_ISDIR(found[1].st_mode):
            _copy_dir_meta(found[1], host)


def _remove_stubs(upper: str, lowers: Sequence[str], stubs: list[str], files: list[str]) -> None:
    """Removes the runtime's mount points from upper: the bound host files always (the step
    could not change them), the dirs it made only while still empty; then parents that are
    left as unchanged copies of the image's."""
    for f in files:
        try:
            os.unlink(os.path.join(upper, f.lstrip("/")))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
    for d in stubs:
        if d in files:
            continue
        try:
            os.rmdir(os.path.join(upper, d.lstrip("/")))
        except OSError:
            pass  # the step put something there (or it is not ours)
    for d in {os.path.dirname(f) for f in files}:
        host = os.path.join(upper, d.lstrip("/"))
        lower = rootview.lookup(lowers, d, follow_last=False)
        try:
            st = os.lstat(host)
            if (os.listdir(host) or rootview.is_opaque(host)):
                continue
        except OSError:
            continue
        if lower is None or (stat.S_ISDIR(lower[1].st_mode) and
                             (st.st_mode, st.st_uid, st.st_gid) ==
                             (lower[1].st_mode, lower[1].st_uid, lower[1].st_gid)):
            try:
                os.rmdir(host)
            except OSError:
                pass


_ERRNO_RE = re.compile(r"^\w+Error: \[Errno \d+\] ([^:]+)(?::.*)?$")


def _start_reason(reason: str, program: str) -> str:
    """The init's `FileNotFoundError: [Errno 2] No such file or directory: '/x'` as Docker
    words it: `exec: "/x": no such file or directory`."""
    m = _ERRNO_RE.match(reason)
    return f'exec: "{program}": {m.group(1).lower()}' if m else reason
