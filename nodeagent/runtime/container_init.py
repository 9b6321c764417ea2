"""The container's PID 1 before execve: namespaces, rootfs, hardening, user, then the command.
Runs in the shim's forked child; any failure is written to the error pipe and exits 127."""

from __future__ import annotations

import fcntl
import os
import socket
import termios

from moorage.fsutil import read_text_or_empty
from nodeagent.runtime.rootfs import (
    RootfsPlan,
    bind_files,
    bind_mounts,
    mask_paths,
    pivot,
    readonly_paths,
    setup_rootfs,
)
from nodeagent.runtime.security import (
    Identity,
    become,
    drop_capabilities,
    no_new_privs,
    resolve_user,
)
from nodeagent.runtime.spec import ContainerSpec
from nodeagent.runtime.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    PR_SET_PDEATHSIG,
    Syscalls,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_FD = 65536


def plan_for(spec: ContainerSpec, cdir: str) -> RootfsPlan:
    return RootfsPlan(spec.lower_dirs, os.path.join(cdir, "upper"), os.path.join(cdir, "work"),
                      os.path.join(cdir, "rootfs"))


def environment(spec: ContainerSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The process's variables: defaults, the spec's, then `extra` (read_env_file's)."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.hostname or spec.id[:12]}
    if spec.tty:
        env["TERM"] = "xterm"
    env.update(dict(spec.env))
    env.update(extra or {})
    env.setdefault("HOME", "/")
    return env


def read_env_file(path: str) -> dict[str, str]:
    """A spec's env_file (read while the host's paths are still reachable); {} for none."""
    if not path:
        return {}
    with open(path, "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def last_cap() -> int:
    try:
        return int(read_text_or_empty("/proc/sys/kernel/cap_last_cap").strip())
    except ValueError:
        return 40


def prepare(sysc: Syscalls, spec: ContainerSpec, cdir: str, netns_fd: int) -> None:
    """Namespaces and filesystem: everything that needs CAP_SYS_ADMIN, done before it is dropped."""
    if netns_fd >= 0:
        sysc.setns(netns_fd, CLONE_NEWNET)
        sysc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC)
    else:
        sysc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
    setup_rootfs(sysc, plan_for(spec, cdir))
    bind_files(sysc, plan_for(spec, cdir).merged, spec.files)
    bind_mounts(sysc, plan_for(spec, cdir).merged, spec.mounts)
    sysc.sethostname(spec.hostname or spec.id[:12])
    pivot(sysc, plan_for(spec, cdir).merged)
    mask_paths(sysc)
    readonly_paths(sysc)


def harden(sysc: Syscalls, ident: Identity, cap_last: int) -> None:
    """Capabilities, then user (which clears them for non-root), then no_new_privs."""
    drop_capabilities(sysc, last_cap=cap_last)
    become(sysc, ident)
    no_new_privs(sysc)


def open_console(tty_sock: int) -> int:
    """Open a pty in the container's own devpts and pass the master to the shim.

    A pty made by the shim would live in the host's devpts, invisible here (`tty` would say
    "not a tty"); so, like runc, we make it inside and send the master over a unix socket.
    """
    master, slave = os.openpty()
    with socket.socket(fileno=os.dup(tty_sock)) as sock:
        socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    return slave


def setup_stdio(out_w: int, err_w: int, tty: bool) -> None:
    if tty:
        os.dup2(out_w, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        # The pty becomes the controlling terminal of our new session (setsid came earlier).
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    else:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)


def close_fds(keep: int) -> None:
    """Leave only 0-2 (and `keep`, which is close-on-exec) so no host fd leaks into the box."""
    os.closerange(3, keep)
    os.closerange(keep + 1, MAX_FD)


def run(sysc: Syscalls, spec: ContainerSpec, cdir: str, out_w: int, err_w: int, sync_r: int,
        errp_w: int, netns_fd: int) -> None:
    """Never returns: execs the command or exits 127 after reporting why on errp_w.

    With a tty, out_w is a unix socket on which the pty master goes to the shim.
    """
    try:
        os.setsid()
        # If the shim dies, nobody could record our exit: go with it.
        sysc.prctl(PR_SET_PDEATHSIG, 9)
        os.umask(0)
        # Joining a v1 cgroup waits out an RCU grace period (~8 ms here), so the shim makes and
        # joins it while we build the rootfs; nothing of the workload runs before we are in.
        extra = read_env_file(spec.env_file)
        prepare(sysc, spec, cdir, netns_fd)
        os.umask(0o022)
        ident = resolve_user(spec.user, read_text_or_empty("/etc/passwd"),
                             read_text_or_empty("/etc/group"))
        cap_last = last_cap()
        env = environment(spec, extra)
        if os.read(sync_r, 1) != b"g":  # the shim has put us into the cgroup
            os._exit(127)
        if spec.tty:
            out_w = err_w = open_console(out_w)
        setup_stdio(out_w, err_w, spec.tty)
        close_fds(errp_w)
        harden(sysc, ident, cap_last)
        os.chdir(spec.cwd or "/")
        os.execvpe(spec.args[0], list(spec.args), env)
    except BaseException as e:  # noqa: BLE001 - everything must reach the shim
        try:
            os.write(errp_w, f"{type(e).__name__}: {e}".encode()[:4000])
        finally:
            os._exit(127)
