"""Builds a container's root filesystem and hardens it, through Syscalls only (so it can be
recorded): overlay rootfs, /proc, a minimal /dev, read-only /sys, pivot_root, masked paths."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace

from nodeagent.runtime.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
    Syscalls,
)

# (name, major, minor): the devices every OCI runtime provides.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
             ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"))

# Docker's defaults: kernel interfaces a container must not read, or must not write.
MASKED_PATHS = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

PROC_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
DEV_FLAGS = MS_NOSUID | MS_STRICTATIME
SYS_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
SHM_SIZE = "65536k"


@dataclass(frozen=True, slots=True)
class RootfsPlan:
    """lower_dirs top layer first (overlayfs order); upper/work/merged live in the state dir."""

    lower_dirs: tuple[str, ...]
    upper: str
    work: str
    merged: str


MOUNT_DATA_MAX = 4000  # the kernel copies at most one page of mount options


def distinct_lowers(lower_dirs) -> tuple[str, ...]:
    """lower_dirs (top first) with each dir kept only where it is topmost. The store keeps one
    dir per layer content, so an image with two identical layers (ADD of one file twice)
    names a dir twice; overlayfs refuses that (EINVAL or ELOOP), and the lower copy adds
    nothing: every path it has, the upper copy has too, and decides."""
    return tuple(dict.fromkeys(lower_dirs))


def overlay_options(plan: RootfsPlan) -> tuple[str, str | None]:
    """The overlay mount options, and a dir to chdir into first when they must be shortened.

    Many layers with long paths overflow the one-page option limit; overlayfs resolves
    relative lowerdirs from the caller's cwd, so we then give them relative to their parent.
    """
    plan = replace(plan, lower_dirs=distinct_lowers(plan.lower_dirs))
    for d in (*plan.lower_dirs, plan.upper, plan.work):
        # overlayfs splits its options on ',' and lowerdir on ':'; such paths cannot be passed.
        if "," in d or ":" in d:
            raise ValueError(f"overlay path {d!r} contains ',' or ':'; use another state dir")
    tail = f",upperdir={plan.upper},workdir={plan.work}"
    opts = f"lowerdir={':'.join(plan.lower_dirs)}{tail}"
    if len(opts) <= MOUNT_DATA_MAX:
        return opts, None
    base = os.path.commonpath(plan.lower_dirs)
    rel = [os.path.relpath(d, base) for d in plan.lower_dirs]
    opts = f"lowerdir={':'.join(rel)}{tail}"
    if len(opts) > MOUNT_DATA_MAX:
        raise ValueError(f"{len(plan.lower_dirs)} layers do not fit in overlay mount options; "
                         "flatten the image or shorten the layer store path")
    return opts, base


def setup_rootfs(sys: Syscalls, plan: RootfsPlan) -> None:
    """Mount everything under plan.merged; must run in a fresh mount namespace."""
    r = plan.merged
    # Private first: nothing we mount may propagate back to the host's namespace.
    sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
    opts, cwd = overlay_options(plan)
    if cwd:
        sys.chdir(cwd)
    sys.mount("overlay", r, "overlay", 0, opts)
    sys.mkdir(f"{r}/proc")
    sys.mount("proc", f"{r}/proc", "proc", PROC_FLAGS)
    sys.mkdir(f"{r}/dev")
    sys.mount("tmpfs", f"{r}/dev", "tmpfs", DEV_FLAGS, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        sys.mknod(f"{r}/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    sys.mkdir(f"{r}/dev/pts")
    # newinstance: the container gets its own pty numbering, not the host's.
    sys.mount("devpts", f"{r}/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620")
    sys.mkdir(f"{r}/dev/shm")
    sys.mount("shm", f"{r}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              f"mode=1777,size={SHM_SIZE}")
    for target, name in DEV_LINKS:
        sys.symlink(target, f"{r}/dev/{name}")
    sys.mkdir(f"{r}/sys")
    sys.mount("sysfs", f"{r}/sys", "sysfs", SYS_FLAGS)


def bind_files(sys: Syscalls, root: str, files: tuple[tuple[str, str], ...]) -> None:
    """Binds each host file read-only over its path under root (made if the image lacks it).

    Before pivot_root, while the host paths are still reachable; a bind ignores MS_RDONLY, so
    it is remounted read-only after.
    """
    for path, host in files:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"file mount {path!r}: want an absolute path without '..'")
        target = secure_join(root, path)
        sys.mkdir(os.path.dirname(target))
        sys.touch(target)
        sys.mount(host, target, None, MS_BIND)
        sys.mount(host, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def secure_join(root: str, path: str, max_links: int = 40) -> str:
    """root + path with every symlink of the image resolved as if root were /, so a link
    such as /var/run -> /run (or -> ../../..) can never lead outside root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here):
            links += 1
            if links > max_links:
                raise ValueError(f"{path!r}: too many symbolic links in the image")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def bind_mounts(sys: Syscalls, root: str, mounts: tuple[tuple[str, str, bool], ...]) -> None:
    """Binds each host file or directory at its path under root (made if missing), read-only
    when asked; before pivot_root, like bind_files."""
    for path, host, read_only in mounts:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"volume mount {path!r}: want an absolute path without '..'")
        target = secure_join(root, path)
        if os.path.isdir(host):
            sys.mkdir(target)
        else:
            sys.mkdir(os.path.dirname(target))
            sys.touch(target)
        sys.mount(host, target, None, MS_BIND | MS_REC)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
        sys.mount(host, target, None, flags)


def pivot(sys: Syscalls, new_root: str) -> None:
    """pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only ours."""
    sys.chdir(new_root)
    sys.pivot_root(".", ".")
    sys.umount2(".", MNT_DETACH)
    sys.chdir("/")


def _kind(path: str) -> str | None:
    try:
        return "dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
    except OSError:
        return None


def mask_paths(sys: Syscalls, paths=MASKED_PATHS,
               kind: Callable[[str], str | None] = _kind) -> None:
    """Files get /dev/null bound over them, dirs an empty read-only tmpfs; absent ones are
    skipped."""
    for p in paths:
        k = kind(p)
        if k == "dir":
            sys.mount("tmpfs", p, "tmpfs", MS_RDONLY)
        elif k == "file":
            sys.mount("/dev/null", p, None, MS_BIND)


def readonly_paths(sys: Syscalls, paths=READONLY_PATHS,
                   kind: Callable[[str], str | None] = _kind) -> None:
    """Bind each path onto itself, then remount the bind read-only (a bind ignores MS_RDONLY)."""
    for p in paths:
        if kind(p) is None:
            continue
        sys.mount(p, p, None, MS_BIND | MS_REC)
        sys.mount(p, p, None, MS_BIND | MS_REC | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                  | MS_NOEXEC)
