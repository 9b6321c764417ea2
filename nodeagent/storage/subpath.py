"""subPath mounts: the named file or directory resolved beneath its volume with openat2
(RESOLVE_BENEATH: symlinks that stay inside the volume are followed, none that lead out of
it), made as a directory when missing (as the kubelet does), and bound through its fd onto a
staging path that the container then mounts."""

from __future__ import annotations

import errno
import os

from nodeagent.runtime.syscalls import (
    MNT_DETACH,
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    Syscalls,
)
from nodeagent.storage import mounts

RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
DIR_MODE = 0o750   # the kubelet's, for a subPath it creates


class SubPathError(Exception):
    """Why a subPath cannot be mounted; reads after "subPath 'x' of volume 'v'"."""


def why(err: OSError) -> str:
    if err.errno == errno.EXDEV:
        return "leads outside the volume (through a symbolic link or a mount)"
    if err.errno == errno.ELOOP:
        return "has too many symbolic links"
    return f"cannot be opened: {os.strerror(err.errno or 0)}"


def make_target(target: str, is_dir: bool) -> None:
    """A mount point for a bind of a directory or of a file."""
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def open_beneath(sys: Syscalls, root: str, sub: str, *, create: bool) -> int:
    """An O_PATH fd of `sub` beneath `root`, its missing directories made if `create`."""
    base = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return sys.openat2(base, sub, os.O_PATH, RESOLVE)
        except FileNotFoundError:
            if not create:
                raise SubPathError("does not exist") from None
        except OSError as err:
            raise SubPathError(why(err)) from None
        fd = os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=base)
    finally:
        os.close(base)
    for name in filter(None, sub.split("/")):
        try:
            try:
                nxt = sys.openat2(fd, name, os.O_PATH, RESOLVE)
            except FileNotFoundError:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = sys.openat2(fd, name, os.O_PATH, RESOLVE)
        except OSError as err:
            raise SubPathError(why(err)) from None
        finally:
            os.close(fd)
        fd = nxt
    return fd


def stage(sys: Syscalls, root: str, sub: str, target: str, *, create: bool) -> str:
    """Binds `sub` of the volume at `root` onto `target` as it is now; returns `target`.
    A target still mounted (a container that restarts) is bound afresh."""
    fd = open_beneath(sys, root, sub, create=create)
    try:
        if mounts.is_mount_point(target):
            sys.umount2(target, MNT_DETACH)
        make_target(target, os.path.isdir(f"/proc/self/fd/{fd}"))
        mounts.bind_fd(sys, fd, target)
    finally:
        os.close(fd)
    return target
