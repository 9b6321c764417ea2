"""An image's filesystem as the build sees it between steps: lookups through the stack of
unpacked layer dirs (whiteouts, opaque dirs, symlinks resolved as if the image were /) without
mounting anything, and overlay mounts for the steps that write (COPY, ADD) or read a whole tree
(COPY --from).

Invariant: a path resolved here never leads outside the layer dirs it was asked about.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodeagent.runtime.syscalls import Syscalls

OPAQUE_XATTR = "trusted.overlay.opaque"
_CWD_LOCK = threading.Lock()
MAX_LINKS = 40


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _entry(lowers: Sequence[str], parts: Sequence[str]) -> tuple[str, os.stat_result] | None:
    """The topmost layer's entry at parts (no link followed at the last step), or None when
    absent or whited out. Callers resolve every earlier part to a directory first."""
    for layer in lowers:
        path = os.path.join(layer, *parts)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            if _hides_below(layer, parts):
                return None
            continue
        if is_whiteout(st):
            return None
        return path, st
    return None


def _hides_below(layer: str, parts: Sequence[str]) -> bool:
    """Whether this layer hides the lower layers' parts: an ancestor here is opaque, whited
    out, or no directory."""
    for i in range(1, len(parts)):
        anc = os.path.join(layer, *parts[:i])
        try:
            st = os.lstat(anc)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(st.st_mode) or is_opaque(anc):
            return True
    return False


def resolve(lowers: Sequence[str], path: str, follow_last: bool = True,
            missing_ok: bool = False) -> list[str] | None:
    """The path's components with every symlink of the image resolved inside the image, or
    None when some directory on the way is missing (with missing_ok, what follows a missing
    one is kept as written: nothing there can be a link) or is no directory. The last
    component may itself be absent."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        found = _entry(lowers, [*done, part])
        if found and stat.S_ISLNK(found[1].st_mode) and (parts or follow_last):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(found[0])
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if parts and found is None and missing_ok:
            rest = [p for p in parts if p != ".."]
            if len(rest) != len(parts):
                return None  # '..' below a missing dir: nothing to resolve it against
            return [*done, part, *rest]
        if parts and (found is None or not stat.S_ISDIR(found[1].st_mode)):
            return None
        done.append(part)
    return done


def lookup(lowers: Sequence[str], path: str,
           follow_last: bool = True) -> tuple[str, os.stat_result] | None:
    """(host path, lstat) of the image's entry at path, or None when the image has none."""
    parts = resolve(lowers, path, follow_last)
    if parts is None:
        return None
    if not parts:
        return (lowers[0], os.lstat(lowers[0])) if lowers else None
    return _entry(lowers, parts)


def read_file(lowers: Sequence[str], path: str) -> str:
    """The image's file at path as text ("" when absent or unreadable): /etc/passwd and kin."""
    found = lookup(lowers, path)
    if found is None or not stat.S_ISREG(found[1].st_mode):
        return ""
    try:
        with open(found[0], errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def exists(lowers: Sequence[str], path: str, follow_last: bool = False) -> bool:
    return lookup(lowers, path, follow_last) is not None


def copy_up(upper: str, lowers: Sequence[str], path: str) -> None:
    """Makes in upper the directories on path (already resolved: no symlinks) that the
    image has, with their owner, mode and times, as overlayfs's copy-up would before
    writing below them; stops at the first one the image lacks."""
    host, parts = upper, [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        found = lookup(lowers, "/" + "/".join(parts[:i + 1]), follow_last=False)
        if found is None or not stat.S_ISDIR(found[1].st_mode):
            return
        host = os.path.join(host, part)
        if not os.path.isdir(host):
            st = found[1]
            os.mkdir(host, 0o700)
            os.chown(host, st.st_uid, st.st_gid)
            os.chmod(host, stat.S_IMODE(st.st_mode))
            os.utime(host, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def mounted(lowers: Sequence[str], merged: str, upper: str | None = None,
            work: str | None = None, sysc: Syscalls | None = None) -> Iterator[str]:
    """The layers (top first) mounted at merged, writable into upper when given, read-only
    otherwise; unmounted on the way out. One read-only layer is used as it is."""
    # The runtime's mount code, imported here: lookups (all a warm build does) need none.
    from nodeagent.runtime.rootfs import RootfsPlan, distinct_lowers, overlay_options
    from nodeagent.runtime.syscalls import MNT_DETACH, MS_RDONLY, LibcSyscalls

    sysc = sysc or LibcSyscalls()
    lowers = list(distinct_lowers(lowers))
    if upper is None and len(lowers) == 1:
        yield lowers[0]
        return
    os.makedirs(merged, exist_ok=True)
    if not lowers:
        if upper is None:
            yield merged  # an empty image: an empty dir
            return
        lowers = [_empty_dir(merged)]
    if upper is None:
        opts, cwd = f"lowerdir={':'.join(lowers)}", None
        flags = MS_RDONLY
    else:
        opts, cwd = overlay_options(RootfsPlan(tuple(lowers), upper, work or "", merged))
        flags = 0
    with _CWD_LOCK:  # the cwd is the process's: stages run in threads
        _mount(sysc, merged, flags, opts, cwd, upper is not None)
    try:
        yield merged
    finally:
        sysc.umount2(merged, MNT_DETACH)


def _mount(sysc: Syscalls, merged: str, flags: int, opts: str, cwd: str | None,
           writable: bool) -> None:
    here = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        try:
            # volatile: no sync of the host's filesystem at unmount (~25ms each here); a
            # crash loses the step, which the build would redo anyway.
            sysc.mount("overlay", merged, "overlay", flags,
                       opts + ",volatile" if writable else opts)
        except OSError:
            if not writable:
                raise
            sysc.mount("overlay", merged, "overlay", flags, opts)  # a kernel before 5.10
    finally:
        os.chdir(here)


def _empty_dir(beside: str) -> str:
    d = beside.rstrip("/") + ".empty"
    os.makedirs(d, exist_ok=True)
    return d
