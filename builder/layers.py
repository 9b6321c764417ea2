"""Image layers from directories: an overlayfs upper dir (what one build step changed) or a plain
tree, written as a deterministic gzipped tar with both digests computed while writing.

Entries come in the order Docker's walk gives them (each directory's names sorted bytewise, a
directory before what it holds), named without "./" (directories end in "/"), in PAX format,
with numeric owners only (no user or group names), mtimes truncated to seconds and clamped to
SOURCE_DATE_EPOCH when one is given, and no access or change times. overlayfs's whiteouts
(character devices 0/0, or the xattr form newer kernels may use) become `.wh.<name>` files and
opaque directories get a `<dir>/.wh..wh..opq` file right after their own entry, as the OCI
image spec has them. Files linked to each other inside the layer become tar hard links.
Checked against a layer of Docker 20.10's builder (`docker save`): the same entry order, ustar
headers of the PAX format, whiteouts as mode 0600 files, opaque markers with the directory's
owner and permission bits and mtime 0. Docker also writes the build host's user and group
names and the file type bits in the mode field; neither is kept here (they are not the image's).

With adopt=True the dir is handed over: the same walk trims it to exactly what the tar records
(kept xattrs only, whole-second clamped mtimes, no sockets or device nodes, root 0755 0:0), so
images.commit can move it into the store as the layer's unpacked dir instead of unpacking the
blob it has just written: unpacking costs as much again as archiving.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from builder.errors import BuildError
from builder.gzipstream import GzipWriter

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPES = {"docker": DOCKER_LAYER, "oci": OCI_LAYER}
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Docker keeps only file capabilities; overlayfs's own xattrs describe the upper dir, not the
# files, and would let a layer forge whiteouts when unpacked.
KEEP_XATTRS = frozenset({b"security.capability"})
_OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
_OPAQUE = (b"trusted.overlay.opaque", b"user.overlay.opaque")
_XWHITEOUT = (b"trusted.overlay.whiteout", b"user.overlay.whiteout")
# An upper dir holding these is not self-contained: its content partly lives in a lower layer.
_INCOMPLETE = {b"redirect": "redirect_dir", b"metacopy": "metacopy"}
_PAX_XATTR = "SCHILY.xattr."
# Level 1 compresses 50 MiB of binaries at ~110 MiB/s on two cores here against ~47 at level 6,
# for a blob ~12% bigger: Docker's builders do not compress at build time at all, so the build
# pays for this and a push does not. MOOR_BUILD_GZIP_LEVEL=6..9 trades speed for size.
GZIP_LEVEL = 1
GZIP_LEVEL_ENV = "MOOR_BUILD_GZIP_LEVEL"
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_END = b"\0" * (2 * _BLOCK)  # two zero blocks end the archive (no record padding, as Go)


@dataclass(frozen=True, slots=True)
class Layer:
    path: str  # the compressed blob file
    digest: str  # "sha256:..." of the blob: what manifests list
    diff_id: str  # "sha256:..." of the uncompressed tar: what the config's rootfs lists
    size: int  # bytes of the blob
    media_type: str
    tree: str | None = None  # adopt=True: the dir holding this layer unpacked, for commit


def _tree_mtime(st: os.stat_result, epoch: int | None) -> int:
    mtime = st.st_mtime_ns // 1_000_000_000
    return mtime if epoch is None else min(mtime, epoch)


def media_type(media: str) -> str:
    try:
        return MEDIA_TYPES[media]
    except KeyError:
        raise BuildError(f"unknown image format {media!r}; want docker or oci") from None


def from_upper(upper: str, out_dir: str, *, source_date_epoch: int | None = None,
               media: str = "docker", adopt: bool = False) -> Layer | None:
    """The layer an overlayfs upper dir records (the overlay must be unmounted), written into
    out_dir; None when the step changed no file (a metadata-only step gets no layer).
    adopt=True hands upper over to images.commit (see the module docstring): use it no more."""
    return _write(upper, out_dir, source_date_epoch, media, overlay=True, adopt=adopt)


def from_tree(root: str, out_dir: str, *, source_date_epoch: int | None = None,
              media: str = "docker", adopt: bool = False) -> Layer | None:
    """The layer that adds everything under root as it is (no whiteouts): COPY into scratch."""
    return _write(root, out_dir, source_date_epoch, media, overlay=False, adopt=adopt)


def _write(top: str, out_dir: str, epoch: int | None, media: str, overlay: bool,
           adopt: bool) -> Layer | None:
    mtype = media_type(media)
    try:
        if not os.listdir(top):
            return None
    except OSError as e:
        raise BuildError(f"reading layer dir {top}: {e.strerror}") from None
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".layer-", suffix=".tar.gz")
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK) as out:
            gz = GzipWriter(out, level=_gzip_level())
            try:
                _Archiver(os.fsencode(top), gz, epoch, overlay, adopt).run()
                gz.write(_END)
                gz.close()
            except BaseException:
                gz.abort()
                raise
        final = os.path.join(out_dir, gz.sha.hexdigest() + ".tar.gz")
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return Layer(final, gz.sha256, gz.raw_sha256, gz.size, mtype,
                 os.path.abspath(top) if adopt else None)


def _gzip_level() -> int:
    text = os.environ.get(GZIP_LEVEL_ENV, "")
    if not text:
        return GZIP_LEVEL
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise BuildError(f"{GZIP_LEVEL_ENV}={text!r}: want a gzip level from 0 to 9")
    return int(text)


class _Archiver:
    """One walk of one dir into a tar stream; remembers inodes to write hard links."""

    def __init__(self, top: bytes, out: GzipWriter, epoch: int | None, overlay: bool,
                 adopt: bool):
        self.top = top
        self.out = out
        self.epoch = epoch
        self.overlay = overlay
        self.adopt = adopt
        self.links: dict[tuple[int, int], str] = {}

    def run(self) -> None:
        self._walk(self.top, "")
        if self.adopt:
            os.chown(self.top, 0, 0)
            os.chmod(self.top, 0o755)
            self._drop_xattrs(self.top, [os.fsencode(n) for n in os.listxattr(self.top)])

    def _walk(self, dirpath: bytes, prefix: str) -> None:
        try:
            names = sorted(os.listdir(dirpath))
        except OSError as e:
            raise self._error(dirpath, e) from None
        for name in names:
            path = dirpath + b"/" + name
            rel = prefix + os.fsdecode(name)
            try:
                st = os.lstat(path)
            except OSError as e:
                raise self._error(path, e) from None
            xattrs, drop = self._xattrs(path)
            if self.overlay and self._is_whiteout(st, xattrs):
                self._whiteout(rel, name, prefix, st)
                if self.adopt and not stat.S_ISCHR(st.st_mode):
                    os.unlink(path)  # the xattr form: a store layer holds overlay's classic one
                    os.mknod(path, stat.S_IFCHR | 0o000, 0)
                continue
            if stat.S_ISDIR(st.st_mode):
                info = self._info(rel, st, tarfile.DIRTYPE)
                self._header(info, xattrs)
                opaque = self.overlay and any(xattrs.get(k) == b"y" for k in _OPAQUE)
                if opaque:
                    self._opaque(rel, st)
                self._walk(path, rel + "/")
                if self.adopt:
                    self._trim(path, st, drop)
                    if opaque:  # store layers are mounted with trusted.* xattrs
                        os.setxattr(path, _OPAQUE[0], b"y", follow_symlinks=False)
                continue
            if stat.S_ISREG(st.st_mode):
                self._file(path, rel, st, xattrs)
            elif stat.S_ISLNK(st.st_mode):
                info = self._info(rel, st, tarfile.SYMTYPE)
                info.linkname = os.fsdecode(os.readlink(path))
                self._header(info, xattrs)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info = self._info(rel, st, tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode)
                                  else tarfile.BLKTYPE)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self._header(info, xattrs)
                if self.adopt and not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    # Unpacking skips device nodes (a container's /dev is the runtime's), so
                    # the store's copy of this layer has none either.
                    os.unlink(path)
                    continue
            elif stat.S_ISFIFO(st.st_mode):
                self._header(self._info(rel, st, tarfile.FIFOTYPE), xattrs)
            else:
                # Sockets are left out, as Docker leaves them out: they mean nothing unbound.
                if self.adopt:
                    os.unlink(path)
                continue
            if self.adopt:
                self._trim(path, st, drop)

    def _trim(self, path: bytes, st: os.stat_result, drop: list[bytes]) -> None:
        """Makes path on disk what unpacking its tar entry would give (adopt=True)."""
        self._drop_xattrs(path, drop)
        mtime = _tree_mtime(st, self.epoch)
        if st.st_mtime_ns != mtime * 1_000_000_000 or stat.S_ISDIR(st.st_mode):
            # Directories always: removing a socket or a device inside one moved its mtime.
            os.utime(path, ns=(mtime * 1_000_000_000,) * 2, follow_symlinks=False)

    @staticmethod
    def _drop_xattrs(path: bytes, names: list[bytes]) -> None:
        for name in names:
            if name not in KEEP_XATTRS:
                try:
                    os.removexattr(path, name, follow_symlinks=False)
                except OSError:
                    pass

    def _xattrs(self, path: bytes) -> tuple[dict[bytes, bytes], list[bytes]]:
        """The xattrs that matter here (kept ones, overlay's markers), and all others' names."""
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return {}, []
        found, drop = {}, []
        for name in names:
            key = os.fsencode(name)
            if key.startswith(_OVERLAY_XATTR_PREFIXES):
                kind = key.split(b".", 2)[2]
                if self.overlay and kind in _INCOMPLETE:
                    raise BuildError(
                        f"{os.fsdecode(path)}: overlayfs recorded a {kind.decode()} there, so "
                        "the upper dir is not a complete layer; mount the build overlay with "
                        f"{_INCOMPLETE[kind]}=off")
                if not self.overlay or (key not in _OPAQUE and key not in _XWHITEOUT):
                    drop.append(key)
                    continue
                drop.append(key)  # re-set in trusted.* form if it made the dir opaque
            elif key not in KEEP_XATTRS:
                drop.append(key)
                continue
            try:
                found[key] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
        return found, drop

    @staticmethod
    def _is_whiteout(st: os.stat_result, xattrs: dict[bytes, bytes]) -> bool:
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        return stat.S_ISREG(st.st_mode) and st.st_size == 0 and \
            any(k in xattrs for k in _XWHITEOUT)

    def _info(self, rel: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(rel)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = _tree_mtime(st, self.epoch)
        return info

    def _header(self, info: tarfile.TarInfo, xattrs: dict[bytes, bytes] | None = None) -> None:
        pax = {_PAX_XATTR + os.fsdecode(k): v.decode("utf-8", "surrogateescape")
               for k, v in sorted((xattrs or {}).items()) if k in KEEP_XATTRS}
        header = None if pax else ustar_header(info)
        if header is None:
            info.pax_headers = pax
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.out.write(header)

    def _whiteout(self, rel: str, name: bytes, prefix: str, st: os.stat_result) -> None:
        # A plain empty file keeping the whiteout's owner and time; overlayfs may share one
        # whiteout inode between many deletions, so it is never written as a hard link.
        info = self._info(prefix + WHITEOUT_PREFIX + os.fsdecode(name), st, tarfile.REGTYPE)
        info.mode = 0o600
        self._header(info)

    def _opaque(self, rel: str, st: os.stat_result) -> None:
        # As Docker writes it: the directory's owner and permission bits, no time.
        info = self._info(rel + "/" + OPAQUE_MARKER, st, tarfile.REGTYPE)
        info.mode &= 0o777
        info.mtime = 0
        self._header(info)

    def _file(self, path: bytes, rel: str, st: os.stat_result,
              xattrs: dict[bytes, bytes]) -> None:
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                info = self._info(rel, st, tarfile.LNKTYPE)
                info.linkname = first
                self._header(info, xattrs)
                return
            self.links[key] = rel
        info = self._info(rel, st, tarfile.REGTYPE)
        info.size = st.st_size
        self._header(info, xattrs)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise self._error(path, e) from None
        try:
            left = st.st_size
            while left > 0:
                chunk = os.read(fd, min(left, _CHUNK))
                if not chunk:
                    break
                self.out.write(chunk)
                left -= len(chunk)
        except OSError as e:
            raise self._error(path, e) from None
        finally:
            os.close(fd)
        if left:
            raise BuildError(f"{os.fsdecode(path)}: shrank by {left} bytes while being "
                             "archived; nothing may write to a layer being made")
        if st.st_size % _BLOCK:
            self.out.write(b"\0" * (_BLOCK - st.st_size % _BLOCK))

    @staticmethod
    def _error(path: bytes, e: OSError) -> BuildError:
        return BuildError(f"archiving {os.fsdecode(path)}: {e.strerror}")


_NUL8, _NUL32 = b"\0" * 8, b"\0" * 32
_TAIL = b"\0" * (155 + 12)  # prefix (unused, as Python's PAX writer leaves it) and padding
_MAX7, _MAX11 = 8 ** 7, 8 ** 11


def ustar_header(info: tarfile.TarInfo) -> bytes | None:
    """The header block tarfile's PAX writer makes for info, when it needs no PAX record
    (ASCII names and links of at most 100 bytes, numbers that fit): ~10x faster, which is most
    of the cost of a layer of many small files. None: let tarfile write it."""
    name = info.name + "/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") \
        else info.name
    link = info.linkname
    if not (name.isascii() and link.isascii() and len(name) <= 100 and len(link) <= 100 and
            0 <= info.uid < _MAX7 and 0 <= info.gid < _MAX7 and 0 <= info.size < _MAX11 and
            type(info.mtime) is int and 0 <= info.mtime < _MAX11 and
            0 <= info.devmajor < _MAX7 and 0 <= info.devminor < _MAX7):
        return None
    block = b"".join((
        name.encode().ljust(100, b"\0"), b"%07o\0" % (info.mode & 0o7777),
        b"%07o\0" % info.uid, b"%07o\0" % info.gid, b"%011o\0" % info.size,
        b"%011o\0" % info.mtime, b"        ", info.type, link.encode().ljust(100, b"\0"),
        tarfile.POSIX_MAGIC, _NUL32, _NUL32, *(
            (b"%07o\0" % info.devmajor, b"%07o\0" % info.devminor)
            if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (_NUL8, _NUL8)),
        _TAIL))
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


# ---- reading layers back (tests, comparisons) ----

@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member as a comparison sees it; digest is the content's sha256 for files."""

    name: str
    kind: str  # file, dir, symlink, hardlink, char, block, fifo
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    link: str = ""
    digest: str = ""
    device: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()


_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
          tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
          tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}


def read_entries(path: str) -> list[Entry]:
    """The members of a layer blob (gzipped or plain tar), in order."""
    return list(iter_entries(path))


def iter_entries(path: str) -> Iterator[Entry]:
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
        with tarfile.open(fileobj=f, mode="r|") as tf:
            for m in tf:
                digest = ""
                if m.isreg():
                    sha = hashlib.sha256()
                    src = tf.extractfile(m)
                    while chunk := src.read(_CHUNK):
                        sha.update(chunk)
                    digest = "sha256:" + sha.hexdigest()
                xattrs = tuple(sorted(
                    (k[len(_PAX_XATTR):], v.encode("utf-8", "surrogateescape"))
                    for k, v in m.pax_headers.items() if k.startswith(_PAX_XATTR)))
                yield Entry(m.name, _KINDS.get(m.type, repr(m.type)), m.mode, m.uid, m.gid,
                            m.size, int(m.mtime), m.linkname, digest,
                            (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
                            xattrs)
