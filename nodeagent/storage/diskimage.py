"""Sparse ext4 image files, loop-mounted: a size the kernel enforces (a write past it fails
with ENOSPC, and nothing outside the image fills), online growth, and finding the loop
devices of images under a directory.

Through util-linux: `mount -o loop` attaches the image with LO_FLAGS_AUTOCLEAR, so the loop
device goes away with the last unmount and a crashed agent leaves none behind once its
mounts are taken down.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from nodeagent.storage import mounts

# fast_commit: an fsync inside the image commits a small delta instead of a whole journal
# transaction (about twice the fsync rate through the loop device, which turns every flush
# into an fsync of the image file). Inode tables and journal written now, not by a background
# thread competing with the pod's first writes.
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "fast_commit",
        "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")
# A volume's root, as the kubelet makes an emptyDir: anyone in the pod may write.
ROOT_MODE = 0o777

SYS_BLOCK = "/sys/block"


class ImageError(Exception):
    """An image could not be made, mounted or grown (one line, with the tool's message)."""


def _run(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ImageError(f"{argv[0]}: {err}") from None
    if out.returncode != 0:
        why = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}")
        raise ImageError(f"{' '.join(argv)}: {why.splitlines()[-1]}")
    return out.stdout


def create(path: str, size_bytes: int) -> bool:
    """Makes `path` a sparse ext4 image of `size_bytes`, once: an existing image is left as it
    is (its data kept). Built under a temporary name and renamed, so a crash half-way never
    leaves a file that looks like an image. True when it was made now."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    staged = path + ".new"
    with open(staged, "wb") as f:
        f.truncate(size_bytes)
    _run(*MKFS, staged)
    os.rename(staged, path)
    return True


def mount(path: str, target: str, *, fresh: bool = False) -> None:
    """Loop-mounts the image at `target` (made if missing) unless something is mounted there
    already. A `fresh` image gets its root opened to the pod and lost+found removed (a
    database refuses a data dir that holds it)."""
    os.makedirs(target, mode=0o755, exist_ok=True)
    if mounts.is_mount_point(target):
        return
    _run("mount", "-t", "ext4", "-o", "loop", path, target)
    if fresh:
        shutil.rmtree(os.path.join(target, "lost+found"), ignore_errors=True)
        os.chmod(target, ROOT_MODE)


def grow(path: str, target: str, size_bytes: int) -> bool:
    """Grows the image file to `size_bytes` (never shrinks it) and its mounted filesystem
    with it, online; True when the filesystem has grown. Online growth needs
    CAP_SYS_RESOURCE: without it resize2fs fails, False is returned, and the filesystem can
    still grow unmounted (`resize_offline`)."""
    if os.path.getsize(path) < size_bytes:
        with open(path, "r+b") as f:
            f.truncate(size_bytes)
    loop = mounts.source_of(target)
    if not loop.startswith("/dev/loop"):
        raise ImageError(f"{target}: no loop device is mounted there")
    _run("losetup", "-c", loop)
    try:
        _run("resize2fs", loop)
    except ImageError:
        return False
    return True


def fs_bytes(target: str) -> int:
    """The size of the filesystem mounted at `target`, with what ext4 keeps for itself."""
    st = os.statvfs(target)
    return st.f_blocks * st.f_frsize


def resize_offline(path: str, size_bytes: int) -> None:
    """Grows an unmounted image and its filesystem to `size_bytes`."""
    if os.path.getsize(path) < size_bytes:
        with open(path, "r+b") as f:
            f.truncate(size_bytes)
    _run("e2fsck", "-f", "-p", path)
    _run("resize2fs", path)


def usage(target: str) -> tuple[int, int]:
    """(used, capacity) bytes of the filesystem mounted at `target`, as `df` counts them."""
    st = os.statvfs(target)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def loops_backed_under(directory: str) -> list[tuple[str, str]]:
    """(loop device, backing file) of every loop device whose image is below `directory`."""
    base = os.path.normpath(directory) + "/"
    found = []
    for backing in sorted(glob.glob(os.path.join(SYS_BLOCK, "loop*", "loop", "backing_file"))):
        try:
            with open(backing) as f:
                file = f.read().strip()
        except OSError:
            continue
        if file.startswith(base):
            found.append(("/dev/" + backing.split("/")[3], file.removesuffix(" (deleted)")))
    return found


def detach(device: str) -> None:
    _run("losetup", "-d", device)
