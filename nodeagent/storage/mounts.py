"""Reading this mount namespace's mount table and taking mounts down, deepest first; and the
one way a resolved file descriptor becomes a mount (a bind through /proc/self/fd)."""

from __future__ import annotations

import os
import re

from nodeagent.runtime.syscalls import MNT_DETACH, MS_BIND, MS_RDONLY, MS_REMOUNT, Syscalls

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def table(text: str | None = None) -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, source) of every mount, in mount order."""
    if text is None:
        with open(MOUNTINFO) as f:
            text = f.read()
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2:
            out.append((_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return out


def under(directory: str, text: str | None = None) -> list[str]:
    """Mount points at or below `directory`, deepest first (the order to unmount them)."""
    base = os.path.normpath(directory)
    found = {p for p, _, _ in table(text) if p == base or p.startswith(base + "/")}
    return sorted(found, key=lambda p: (-p.count("/"), p))


def is_mount_point(path: str, text: str | None = None) -> bool:
    path = os.path.normpath(path)
    return any(p == path for p, _, _ in table(text))


def source_of(path: str, text: str | None = None) -> str:
    """The source (a loop device for an image) of the topmost mount at `path`, or ""."""
    path = os.path.normpath(path)
    found = [src for p, _, src in table(text) if p == path]
    return found[-1] if found else ""


def device_of(path: str, text: str | None = None) -> str:
    """The major:minor of the topmost mount at `path` (mountinfo's third field), or ""."""
    if text is None:
        with open(MOUNTINFO) as f:
            text = f.read()
    path = os.path.normpath(path)
    found = [line.split()[2] for line in text.splitlines()
             if len(line.split()) > 4 and _unescape(line.split()[4]) == path]
    return found[-1] if found else ""


def held_elsewhere(device: str, proc: str = "/proc") -> bool:
    """Whether a mount namespace other than ours (a container's) has device `device`
    (major:minor) mounted: then its filesystem must not be unmounted and changed offline."""
    try:
        own = os.readlink(os.path.join(proc, "self", "ns", "mnt"))
    except OSError:
        return True
    seen = {own}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            ns = os.readlink(os.path.join(proc, pid, "ns", "mnt"))
            if ns in seen:
                continue
            seen.add(ns)
            with open(os.path.join(proc, pid, "mountinfo")) as f:
                if any(line.split()[2] == device for line in f if len(line.split()) > 2):
                    return True
        except OSError:
            continue
    return False


def unmount_under(sys: Syscalls, directory: str) -> list[str]:
    """Detaches every mount at or below `directory`; those that are still there (none when
    all went). A caller removes the directory's files only when this returns nothing, so a
    bind of a host path or a persistent volume is never emptied through its mount point."""
    for point in under(directory):
        try:
            sys.umount2(point, MNT_DETACH)
        except OSError:
            pass
    return under(directory)


def bind_fd(sys: Syscalls, fd: int, target: str, read_only: bool = False) -> None:
    """Binds what `fd` (an O_PATH fd from openat2) names onto `target`: the kernel follows
    /proc/self/fd/N to the inode itself, so no path is resolved again after the check."""
    source = f"/proc/self/fd/{fd}"
    sys.mount(source, target, None, MS_BIND)
    if read_only:
        sys.mount(source, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
