"""hostPath volumes: which host paths a pod may have (only under the agent's
--allowed-host-paths; the state dir, /proc, /sys and / never), Kubernetes' type checks, and
opening the path without following any symlink, so what is checked is what gets mounted.

The path is opened with openat2(2) from its allowed prefix with RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH, and the O_PATH fd is what gets bind-mounted
(through /proc/self/fd/N): a symlink swapped in after the check cannot redirect the mount.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from moorage.model import podvolumes as pv
from nodeagent.runtime.syscalls import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    Syscalls,
)

ALWAYS_REFUSED = ("/proc", "/sys")
RESOLVE = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH
DIR_MODE, FILE_MODE = 0o755, 0o644
FLAG = "--allowed-host-paths"

# What each type wants of an existing path: (test of st_mode, what the error calls it).
_WANTS = {
    pv.DIRECTORY: (stat.S_ISDIR, "a directory"),
    pv.DIRECTORY_OR_CREATE: (stat.S_ISDIR, "a directory"),
    pv.FILE: (stat.S_ISREG, "a file"),
    pv.FILE_OR_CREATE: (stat.S_ISREG, "a file"),
    pv.SOCKET: (stat.S_ISSOCK, "a socket file"),
    pv.CHAR_DEVICE: (stat.S_ISCHR, "a character device"),
    pv.BLOCK_DEVICE: (stat.S_ISBLK, "a block device"),
}


class HostPathError(Exception):
    """Why a hostPath cannot be mounted (one line, as the pod's status shows it)."""


def parse_allowed(text: str) -> tuple[str, ...]:
    """--allowed-host-paths' comma-separated prefixes, normalised; raises ValueError for a
    relative one."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if not item.startswith("/"):
            raise ValueError(f"{FLAG} {item!r}: want an absolute path")
        out.append(os.path.normpath(item))
    return tuple(dict.fromkeys(out))


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def placement(path: str, allowed: tuple[str, ...], state_dir: str) -> tuple[str, str]:
    """(allowed prefix, the rest of the path below it) for a hostPath; raises HostPathError
    when the path may not be mounted. Pure."""
    p = os.path.normpath(path)
    if not path.startswith("/") or ".." in path.split("/"):
        raise HostPathError(f'hostPath "{path}" must be an absolute path without ".."')
    state = os.path.normpath(state_dir) if state_dir else ""
    if p == "/":
        raise HostPathError(f'hostPath "{path}" is refused: / is never allowed')
    for root in ALWAYS_REFUSED:
        if _inside(p, root):
            raise HostPathError(f'hostPath "{path}" is refused: {root} is never allowed')
    if state and (_inside(p, state) or _inside(state, p)):
        raise HostPathError(f'hostPath "{path}" is refused: it holds or is inside the agent\'s '
                            f"state dir {state}")
    matches = [a for a in allowed if _inside(p, a)]
    if not matches:
        listed = ", ".join(allowed) if allowed else "none are allowed"
        raise HostPathError(f'hostPath "{path}" is not under {FLAG} ({listed})')
    prefix = max(matches, key=len)
    return prefix, os.path.relpath(p, prefix) if p != prefix else ""


def type_problem(type_: str, mode: int | None, path: str) -> str:
    """Kubernetes' hostPath type check of an existing path (`mode` its st_mode; None: it does
    not exist), or "". Pure."""
    want = _WANTS.get(type_)
    if want is None:
        return ""
    test, what = want
    if mode is None or not test(mode):
        return f"hostPath type check failed: {path} is not {what}"
    return ""


@dataclass(frozen=True, slots=True)
class Opened:
    """An O_PATH fd of the checked path (the caller closes it) and whether it is a dir."""

    fd: int
    is_dir: bool


def open_checked(sys: Syscalls, path: str, type_: str, allowed: tuple[str, ...],
                 state_dir: str) -> Opened:
    """Opens a hostPath for mounting: placement, then openat2 from the prefix (creating what
    DirectoryOrCreate, FileOrCreate or no type create), then the type check on what was
    opened. Raises HostPathError; the host is changed only by a *OrCreate it allows."""
    prefix, rest = placement(path, allowed, state_dir)
    real = os.path.realpath(prefix)
    placement(os.path.join(real, rest) if rest else real, (real,), state_dir)
    try:
        base = os.open(prefix, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise HostPathError(f'hostPath "{path}": allowed prefix {prefix}: '
                            f"{os.strerror(err.errno)}") from None
    try:
        fd = _open_below(sys, base, rest, type_, path)
    finally:
        os.close(base)
    mode = os.fstat(fd).st_mode
    problem = type_problem(type_, mode, path)
    if stat.S_ISLNK(mode):   # RESOLVE_NO_SYMLINKS refuses these; never bind one regardless
        problem = f'hostPath "{path}" goes through a symbolic link, which is not followed'
    if problem:
        os.close(fd)
        raise HostPathError(problem)
    return Opened(fd, stat.S_ISDIR(mode))


def _open_below(sys: Syscalls, base: int, rest: str, type_: str, path: str) -> int:
    if not rest:
        return os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=base)
    try:
        return sys.openat2(base, rest, os.O_PATH, RESOLVE)
    except OSError as err:
        if err.errno != errno.ENOENT or type_ not in (pv.UNSET, pv.DIRECTORY_OR_CREATE,
                                                      pv.FILE_OR_CREATE):
            raise _explain(err, path, type_) from None
    if type_ == pv.FILE_OR_CREATE:
        parent_rel, name = os.path.split(rest)
        parent = _open_dir(sys, base, parent_rel, path, create=False)
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, FILE_MODE, dir_fd=parent))
        except FileExistsError:
            pass
        finally:
            os.close(parent)
        try:
            return sys.openat2(base, rest, os.O_PATH, RESOLVE)
        except OSError as err:
            raise _explain(err, path, type_) from None
    return _open_dir(sys, base, rest, path, create=True)


def _open_dir(sys: Syscalls, base: int, rel: str, path: str, *, create: bool) -> int:
    """Walks `rel` below `base` one name at a time (mkdir where missing if `create`), never
    through a symlink; an O_PATH fd of the last directory."""
    fd = os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=base)
    for name in filter(None, rel.split("/")):
        try:
            try:
                nxt = sys.openat2(fd, name, os.O_PATH | os.O_DIRECTORY, RESOLVE)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = sys.openat2(fd, name, os.O_PATH | os.O_DIRECTORY, RESOLVE)
        except OSError as err:
            os.close(fd)
            raise _explain(err, path, pv.DIRECTORY) from None
        os.close(fd)
        fd = nxt
    return fd


def _explain(err: OSError, path: str, type_: str) -> HostPathError:
    if err.errno == errno.ELOOP:
        return HostPathError(f'hostPath "{path}" goes through a symbolic link, which is not '
                             "followed; give the real path")
    if err.errno == errno.EXDEV:
        return HostPathError(f'hostPath "{path}" leads outside its allowed prefix')
    if err.errno == errno.ENOENT:
        problem = type_problem(type_, None, path)
        return HostPathError(problem or f'hostPath "{path}": no such file or directory')
    if err.errno == errno.ENOTDIR:
        return HostPathError(f"hostPath type check failed: {path} is not a directory")
    return HostPathError(f'hostPath "{path}": {os.strerror(err.errno or 0)}')
