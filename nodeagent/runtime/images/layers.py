"""Safe unpacking of one image layer tar into a directory overlayfs can use as a lowerdir.

Invariant: nothing is ever created outside the destination, and the destination appears only
once the whole layer is unpacked (it is built in a temp dir beside it and renamed).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import uuid
import zlib
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 8 << 30
DEFAULT_MAX_ENTRIES = 1_000_000
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"
_PAX_XATTR = "SCHILY.xattr."
# Open each path step without following a symlink, so a link planted by an earlier member can
# never redirect a later one outside the root.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LayerError(Exception):
    """The layer cannot be unpacked safely; the message names the layer and the member."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Stops decompression bombs: totals counted over the uncompressed tar stream."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Unpacked:
    diff_id: str  # sha256 of the uncompressed tar, as image configs list it in rootfs.diff_ids
    size: int  # uncompressed bytes read
    entries: int
    skipped: tuple[str, ...]  # device nodes: a container gets its /dev from the runtime


class _CountingReader:
    """Hashes and counts the uncompressed stream, refusing to read past the byte limit."""

    def __init__(self, raw, limit: int, where: str):
        self._raw, self._limit, self._where = raw, limit, where
        self.size = 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n >= 0 else _CHUNK)
        self.size += len(data)
        if self.size > self._limit:
            raise LayerError(f"{self._where}: more than {self._limit} uncompressed bytes "
                             "(limit max_bytes); refusing a possible decompression bomb")
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def open_decompressed(f, where: str):
    """Wraps a binary file in the decompressor its magic bytes call for (gzip or none)."""
    head = f.read(6)
    f.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=f, mode="rb")
    for magic, kind in ((_ZSTD_MAGIC, "zstd"), (_XZ_MAGIC, "xz"), (_BZIP2_MAGIC, "bzip2")):
        if head.startswith(magic):
            raise LayerError(f"{where}: {kind}-compressed layers are not supported "
                             "(only gzip or uncompressed tar)")
    return f


def unpack_layer(blob_path: str, dest: str, limits: Limits = DEFAULT_LIMITS) -> Unpacked:
    """Unpacks the layer at blob_path into dest (which must not exist) and returns its diff-id.

    On any error nothing is left behind: the temp dir beside dest is removed.
    """
    where = f"layer {os.path.basename(blob_path)}"
    if os.path.lexists(dest):
        raise LayerError(f"{where}: destination {dest} already exists")
    parent = os.path.dirname(os.path.abspath(dest))
    tmp = os.path.join(parent, f".tmp-{os.path.basename(dest)}-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp, 0o755)
    try:
        with open(blob_path, "rb") as f:
            reader = _CountingReader(open_decompressed(f, where), limits.max_bytes, where)
            result = _extract(reader, tmp, limits, where)
        os.rename(tmp, dest)
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract(reader: _CountingReader, root: str, limits: Limits, where: str) -> Unpacked:
    root_fd = os.open(root, _DIR_FLAGS)
    dir_times: list[tuple[tuple[str, ...], float]] = []
    skipped: list[str] = []
    entries = file_bytes = 0
    try:
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                for member in tf:
                    entries += 1
                    if entries > limits.max_entries:
                        raise LayerError(f"{where}: more than {limits.max_entries} entries "
                                         "(limit max_entries)")
                    # Sparse members expand beyond the bytes the stream carries.
                    file_bytes += member.size if member.isreg() else 0
                    if file_bytes > limits.max_bytes:
                        raise LayerError(f"{where}: files add up to more than "
                                         f"{limits.max_bytes} bytes (limit max_bytes)")
                    _extract_member(tf, member, root_fd, dir_times, skipped, where)
        except tarfile.TarError as e:
            raise LayerError(f"{where}: not a valid tar archive: {e}") from None
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise LayerError(f"{where}: {e}") from None
        reader.drain()
        # Directory mtimes last: creating children would otherwise bump them again.
        for parts, mtime in reversed(dir_times):
            try:
                pfd = _open_parent(root_fd, parts, where, create=False)
            except (LayerError, OSError):
                continue  # a later member replaced or whited out this directory
            try:
                os.utime(parts[-1], (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(pfd)
    finally:
        os.close(root_fd)
    return Unpacked("sha256:" + reader.sha.hexdigest(), reader.size, entries, tuple(skipped))


def split_member_name(name: str, where: str) -> tuple[str, ...]:
    """A member name as path parts inside the root; refuses absolute paths and '..'."""
    if name.startswith("/"):
        raise LayerError(f"{where}: member {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerError(f"{where}: member {name!r} has a '..' component")
    if "\0" in name:
        raise LayerError(f"{where}: member {name!r} has a NUL byte")
    return parts


def _open_parent(root_fd: int, parts: tuple[str, ...], where: str, create: bool) -> int:
    """An fd of the directory holding parts[-1], reached without following any symlink."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LayerError(f"{where}: path {'/'.join(parts)!r} goes through "
                                     f"{part!r}, which is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _clear(pfd: int, name: str, keep_dir: bool) -> bool:
    """Removes what sits at name (never following it); True if a directory was kept."""
    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return True
        shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)
    return False


def _whiteout_target(member: tarfile.TarInfo, base: str, where: str) -> str | None:
    """The name a whiteout hides, '' for an opaque marker, None if base is no whiteout."""
    if not base.startswith(WHITEOUT_PREFIX):
        return None
    what = f"{where}: malformed whiteout {member.name!r}"
    if not member.isreg():
        raise LayerError(f"{what}: a whiteout must be a plain file, not type {member.type!r}")
    if base == OPAQUE_MARKER:
        return ""
    target = base[len(WHITEOUT_PREFIX):]
    if target in ("", ".", ".."):
        raise LayerError(f"{what}: it names no file that could be hidden")
    if target.startswith(WHITEOUT_PREFIX):
        raise LayerError(f"{what}: '.wh..wh.' names are reserved for the opaque marker")
    return target


def _extract_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int,
                    dir_times: list, skipped: list, where: str) -> None:
    parts = split_member_name(member.name, where)
    if not parts:
        return  # "./" itself: the root's metadata is ours, not the layer's
    base = parts[-1]
    target = _whiteout_target(member, base, where)
    if member.ischr() and member.devmajor == 0 and member.devminor == 0:
        target = base  # already in overlay's own whiteout form
    elif member.ischr() or member.isblk():
        skipped.append("/".join(parts))
        return
    pfd = _open_parent(root_fd, parts, where, create=True)
    try:
        if target == "":
            if len(parts) < 2:
                raise LayerError(f"{where}: opaque marker {member.name!r} must sit in a "
                                 "directory, not at the layer root")
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            return
        if target is not None:
            _clear(pfd, target, keep_dir=False)
            os.mknod(target, stat.S_IFCHR | 0o000, 0, dir_fd=pfd)
            return
        kept_dir = _clear(pfd, base, keep_dir=member.isdir())
        if member.isdir():
            if not kept_dir:
                os.mkdir(base, 0o700, dir_fd=pfd)
            dir_times.append((parts, member.mtime))
        elif member.isreg():
            _write_file(tf, member, pfd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
        elif member.islnk():
            _hardlink(member, root_fd, pfd, base, where)
            return  # a hard link shares the target's metadata; do not rewrite it
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            raise LayerError(f"{where}: member {member.name!r} has unsupported type "
                             f"{member.type!r}")
        _set_metadata(member, pfd, base)
    finally:
        os.close(pfd)


def _write_file(tf: tarfile.TarFile, member: tarfile.TarInfo, pfd: int, base: str) -> None:
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)
    with os.fdopen(fd, "wb") as out:
        src = tf.extractfile(member)
        while chunk := src.read(_CHUNK):
            out.write(chunk)


def _hardlink(member: tarfile.TarInfo, root_fd: int, pfd: int, base: str, where: str) -> None:
    target_parts = split_member_name(member.linkname, where)
    if not target_parts:
        raise LayerError(f"{where}: hard link {member.name!r} points at the layer root")
    tfd = _open_parent(root_fd, target_parts, where, create=False) if len(target_parts) > 1 \
        else os.dup(root_fd)
    try:
        os.link(target_parts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        raise LayerError(f"{where}: hard link {member.name!r} points at {member.linkname!r}, "
                         "which is not earlier in this layer") from None
    finally:
        os.close(tfd)


def _set_metadata(member: tarfile.TarInfo, pfd: int, base: str) -> None:
    os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
    if member.isreg() or member.isdir():
        _set_xattrs(member, pfd, base)
    if not member.issym():
        # After chown, which clears setuid/setgid bits.
        os.chmod(base, stat.S_IMODE(member.mode), dir_fd=pfd)
    os.utime(base, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)


def _set_xattrs(member: tarfile.TarInfo, pfd: int, base: str) -> None:
    xattrs = {k[len(_PAX_XATTR):]: v for k, v in member.pax_headers.items()
              if k.startswith(_PAX_XATTR)
              # overlay's own xattrs would let a layer forge whiteouts and opaque dirs.
              and not k[len(_PAX_XATTR):].startswith("trusted.overlay.")}
    if not xattrs:
        return
    # os.setxattr takes no dir_fd; an fd opened without following links is just as safe.
    fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        for name, value in xattrs.items():
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)
