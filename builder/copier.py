"""COPY and ADD into an image's root filesystem (a mounted overlay, or a fresh layer dir when
the image below is empty), by Docker's rules: a directory source copies its contents, a file
lands in dest when dest is a directory (ends with '/', names an existing one, or several
sources are copied) and at dest otherwise, missing parents are created, ownership is 0:0 or
--chown's (or kept, for --from), --chmod sets the permission bits, mtimes are kept, symlinks
are copied as symlinks, and ADD unpacks local tar archives.

Invariant: every write lands inside root; an image's symlink on the way is resolved as if root
were / (rootfs.secure_join), and a copied symlink is never followed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from builder.errors import BuildError

OS_WalkEntry = tuple[str, str, os.stat_result]
COPY_THREADS = 4
PARALLEL_MIN_FILES = 64  # (path below the source, host path, lstat)


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class CopySource:
    """One matched source: its name (for dest/basename), whether it is a directory, and its
    entries (parents first; "" is the source itself)."""

    name: str
    is_dir: bool
    entries: Iterable[OS_WalkEntry]
    host: str = ""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    owner: Owner | None = Owner(0, 0)  # None: keep the source's owners (COPY --from)
    chmod: int | None = None
    parent_owner: Owner = Owner(0, 0)  # for the missing parents of dest


def parse_chmod(text: str) -> int:
    """--chmod's octal mode."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise BuildError(f"invalid chmod parameter {text!r}: want an octal mode such as "
                         "0755") from None
    if not 0 <= mode <= 0o7777:
        raise BuildError(f"invalid chmod parameter {text!r}: out of range")
    return mode


def _table(text: str) -> list[list[str]]:
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


def parse_chown(text: str, passwd: str, group: str) -> Owner:
    """--chown's user[:group], numeric or looked up in the image's /etc/passwd and /etc/group;
    without a group the gid is the uid's number, as Docker documents."""
    user, sep, grp = text.partition(":")
    if not user or (sep and not grp):
        raise BuildError(f"invalid chown parameter {text!r}: want user[:group]")

    def lookup(name: str, rows: list[list[str]], what: str, file: str) -> int:
        if name.isdigit():
            return int(name)
        row = next((r for r in rows if len(r) > 2 and r[0] == name and r[2].isdigit()), None)
        if row is None:
            raise BuildError(f"unable to convert uid/gid chown string to host mapping: can't "
                             f"find {what} for {name!r}: no such entry in the image's {file}")
        return int(row[2])

    uid = lookup(user, _table(passwd), "uid", "/etc/passwd")
    gid = lookup(grp, _table(group), "gid", "/etc/group") if grp else uid
    return Owner(uid, gid)


# ---- archives (ADD) ----

_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def is_archive(path: str) -> bool:
    """Whether ADD would unpack this local file: a tar, plain or gzip/bzip2/xz compressed
    (judged by content, as Docker does, not by the file name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if not head:
        return False
    if not head.startswith(_MAGICS) and head[257:262] != b"ustar" and len(head) < 512:
        return False
    import tarfile  # here: a build with no ADD to judge never needs it

    try:
        with tarfile.open(path, "r:*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False


def unpacked_archive(path: str, scratch: str) -> str:
    """The archive unpacked (safely: nothing outside the dir) into a fresh dir under scratch;
    the caller removes it."""
    from nodeagent.runtime.images.layers import LayerError, unpack_layer

    dest = os.path.join(scratch, f"archive-{uuid.uuid4().hex}")
    try:
        unpack_layer(path, dest)
    except LayerError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise BuildError(f"ADD failed: unpacking {os.path.basename(path)}: {e}") from None
    return dest


# ---- copying ----


class Copier:
    """Writes sources into root (the image's '/' on the host)."""

    def __init__(self, root: str, options: CopyOptions, on_digest=None, link_from=None):
        """on_digest(src, st, sha256 hex), when given, is told every regular file's content
        digest, computed as the file is copied (the build cache's checksum, for free).
        link_from(src) may name an immutable file (an image store's layer) with exactly the
        metadata the copy would get: it is hard-linked instead of copied."""
        self.root = os.path.realpath(root)
        self.opts = options
        self.on_digest = on_digest
        self.link_from = link_from
        self._dir_times: list[tuple[str, os.stat_result]] = []
        self._sgid: dict[str, bool] = {}

    def container_path(self, host: str) -> str:
        rel = os.path.relpath(host, self.root)
        return "/" if rel == "." else "/" + rel

    def is_dir(self, path: str) -> bool:
        """Whether path names a directory of the image (following its symlinks inside it)."""
        return os.path.isdir(secure_join(self.root, path)) and not os.path.islink(
            secure_join(self.root, path))

    def copy(self, sources: list[CopySource], dest: str, workdir: str = "/",
             as_dir: bool | None = None) -> None:
        """COPY sources... dest: dest relative to workdir; see the module docstring. as_dir
        True says dest is a directory whatever its spelling (several sources matched)."""
        dest_path = posixpath.join(workdir or "/", dest)
        as_dir = as_dir or (dest.endswith("/") or dest in (".", "") or dest.endswith("/.")
                            or len(sources) > 1 or self.is_dir(dest_path))
        for src in sources:
            if src.is_dir:
                target = dest_path
            elif as_dir:
                target = posixpath.join(dest_path, src.name)
            else:
                target = dest_path
            self.copy_tree(src.entries, target)
        self.finish()

    def extract(self, entries: Iterable[OS_WalkEntry], target: str) -> None:
        """An unpacked archive's entries into the directory target (made if missing; an
        existing one keeps its own metadata, as when Docker unpacks into it)."""
        self.copy_tree(entries, target, into=True)
        self.finish()

    def copy_tree(self, entries: Iterable[OS_WalkEntry], target: str, into: bool = False) -> None:
        """One source's entries, its "" entry landing at target (a container path); with
        `into`, "" only names the directory the rest goes in."""
        hosts: dict[str, str] = {}
        files: dict[str, list[tuple[str, os.stat_result, str]]] = {}  # by parent dir
        for below, host, st in entries:
            top_dir = below == "" and stat.S_ISDIR(st.st_mode)
            if top_dir:
                # Docker copies a directory's contents, not the directory (the context root
                # included): one made for it is 0755, never the source's nor --chmod's mode.
                st = _with_mode(st, stat.S_IFDIR | 0o755)
            if below == "" and into:
                hosts[""] = self.make_dirs(target)
                continue
            if below == "":
                parent = self.make_dirs(posixpath.dirname(target.rstrip("/")) or "/")
                name = posixpath.basename(target.rstrip("/"))
                dst = os.path.join(parent, name) if name else self.root
            else:
                up, _, name = below.rpartition("/")
                dst = os.path.join(hosts[up], name)
            if stat.S_ISREG(st.st_mode):
                files.setdefault(os.path.dirname(dst), []).append((host, st, dst))
            else:
                hosts[below] = self._put(host, st, dst, chmod=not top_dir)
        self._put_files(files)

    def _put_files(self, batches: dict[str, list[tuple[str, os.stat_result, str]]]) -> None:
        """The regular files, one batch per directory; several directories are filled at
        once (creating a file waits on the filesystem, and different directories do not
        wait on each other: about 2x faster for many small files here)."""
        def fill(batch: list[tuple[str, os.stat_result, str]]) -> None:
            for src, st, dst in batch:
                self._put_file(src, st, dst)

        if len(batches) < 2 or sum(map(len, batches.values())) < PARALLEL_MIN_FILES:
            for batch in batches.values():
                fill(batch)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="copy") as pool:
            for _ in pool.map(fill, batches.values()):
                pass  # re-raises the first failure, after every batch has ended

    def make_dirs(self, path: str) -> str:
        """Host path of the container dir path, creating what is missing (0755, parent_owner)."""
        host = self.root
        for part in [p for p in path.split("/") if p]:
            nxt = secure_join(self.root, self.container_path(os.path.join(host, part)))
            if not os.path.lexists(nxt):
                os.mkdir(nxt, 0o755)
                os.chown(nxt, self.opts.parent_owner.uid, self.opts.parent_owner.gid)
                os.chmod(nxt, 0o755)
            elif not os.path.isdir(nxt):
                raise BuildError(f"cannot copy to {path}: {self.container_path(nxt)} is not a "
                                 "directory")
            host = nxt
        return host

    def _owner(self, st: os.stat_result) -> tuple[int, int]:
        o = self.opts.owner
        return (st.st_uid, st.st_gid) if o is None else (o.uid, o.gid)

    def _mode(self, st: os.stat_result) -> int:
        return stat.S_IMODE(st.st_mode) if self.opts.chmod is None else self.opts.chmod

    def _put(self, src: str, st: os.stat_result, dst: str, chmod: bool = True) -> str:
        """Copies one entry to dst (a host path under root); returns where it landed.
        chmod False: a directory made keeps st's mode whatever --chmod says."""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._put_file(src, st, dst)
            return dst
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            return dst  # an overlay whiteout in a layer we read from: not a file
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            existing = None
        if stat.S_ISDIR(mode):
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                followed = secure_join(self.root, self.container_path(dst))
                if os.path.isdir(followed) and not os.path.islink(followed):
                    dst, existing = followed, os.lstat(followed)
                else:
                    os.unlink(dst)
                    existing = None
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(dst)
                existing = None
            if existing is None:
                # A directory made here takes the source's metadata; one that exists keeps
                # its own, as BuildKit's copy does.
                os.mkdir(dst, 0o700)
                uid, gid = self._owner(st)
                os.chown(dst, uid, gid)
                mode = self._mode(st) if chmod else stat.S_IMODE(st.st_mode)
                os.chmod(dst, mode)
                self._sgid[dst] = bool(mode & stat.S_ISGID)
                self._dir_times.append((dst, st))  # after its children are written
            return dst
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise BuildError(f"cannot overwrite directory {self.container_path(dst)} "
                                 "with a non-directory")
            os.unlink(dst)
        uid, gid = self._owner(st)
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
            os.chown(dst, uid, gid, follow_symlinks=False)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dst, 0o600)
            os.chown(dst, uid, gid)
            os.chmod(dst, self._mode(st))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
            os.chown(dst, uid, gid)
            os.chmod(dst, self._mode(st))
        else:
            return dst  # sockets are not copied (Docker skips them too)
        os.utime(dst, ns=_times(st), follow_symlinks=False)
        return dst

    def _put_file(self, src: str, st: os.stat_result, dst: str) -> None:
        """A regular file, created with its mode and its metadata set through the open fd:
        syscalls are most of a small file's cost (six here when owner and mode need no
        fixing: two opens, the copy, utime, two closes)."""
        if self.link_from is not None and self._link(src, dst):
            return
        uid, gid = self._owner(st)
        mode = self._mode(st)
        try:
            fd = os.open(dst, _CREATE, mode & 0o777)
        except FileExistsError:
            if stat.S_ISDIR(os.lstat(dst).st_mode):
                raise BuildError(f"cannot overwrite directory {self.container_path(dst)} "
                                 "with a non-directory") from None
            os.unlink(dst)
            fd = os.open(dst, _CREATE, mode & 0o777)
        try:
            if self.on_digest is not None:
                self.on_digest(src, st, _copy_hashing(src, fd, st.st_size))
            elif st.st_size:
                _copy_content(src, fd, st.st_size)
            if (uid, gid) != (0, 0) or self._setgid(os.path.dirname(dst)):
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)  # after chown, which clears setuid and setgid
            elif mode & ~0o777 or mode & _UMASK:
                os.fchmod(fd, mode)
            os.utime(fd, ns=_times(st))
        finally:
            os.close(fd)

    def _link(self, src: str, dst: str) -> bool:
        real = self.link_from(src)
        if real is None:
            return False
        for _ in (0, 1):
            try:
                os.link(real, dst, follow_symlinks=False)
                return True
            except FileExistsError:
                if stat.S_ISDIR(os.lstat(dst).st_mode):
                    return False  # the copy says why it cannot
                os.unlink(dst)
            except OSError:
                return False  # another filesystem, too many links: copy it
        return False

    def _setgid(self, parent: str) -> bool:
        """Whether files made in parent take its group (a setgid dir), so need a chown."""
        found = self._sgid.get(parent)
        if found is None:
            found = self._sgid[parent] = bool(os.stat(parent).st_mode & stat.S_ISGID)
        return found

    def finish(self) -> None:
        """Directory mtimes, last (writing children changed them), deepest first."""
        for dst, st in reversed(self._dir_times):
            os.utime(dst, ns=_times(st), follow_symlinks=False)
        self._dir_times.clear()


def secure_join(root: str, path: str) -> str:
    """nodeagent's rootfs.secure_join, imported when first needed (a warm build copies
    nothing and should not pay for the runtime's imports)."""
    from nodeagent.runtime.rootfs import secure_join as join
    return join(root, path)


def _times(st: os.stat_result) -> tuple[int, int]:
    """The copy's (atime, mtime): whole seconds, all a layer's tar records, so making the
    layer (layers.from_upper, which trims its dir to what the tar says) has nothing to fix."""
    mtime = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
    return mtime, mtime


def _with_mode(st: os.stat_result, mode: int) -> os.stat_result:
    fields = list(st)[:10]
    fields[stat.ST_MODE] = mode
    return os.stat_result(fields, {"st_atime_ns": st.st_atime_ns,
                                   "st_mtime_ns": st.st_mtime_ns})


# Read once, while the builder is single-threaded (reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_content(src: str, fd_out: int, size: int) -> None:
    """src's first `size` bytes (as it was walked) into fd_out, in the kernel where it can
    (copy_file_range), else by reads and writes."""
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fd_in, fd_out, size - done, done, done)
                if not n:
                    break
                done += n
        except OSError:
            os.lseek(fd_in, done, os.SEEK_SET)
            os.lseek(fd_out, done, os.SEEK_SET)
            while done < size and (chunk := os.read(fd_in, min(1 << 20, size - done))):
                done += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view):]
    finally:
        os.close(fd_in)


def _copy_hashing(src: str, fd_out: int, size: int) -> str:
    """Like _copy_content, through user space, returning the bytes' sha256 hex digest."""
    sha = hashlib.sha256()
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        done = 0
        while done < size and (chunk := os.read(fd_in, min(1 << 20, size - done))):
            done += len(chunk)
            sha.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd_out, view):]
    finally:
        os.close(fd_in)
    return sha.hexdigest()


def tree_entries(host: str) -> Iterator[OS_WalkEntry]:
    """Every entry of a host tree (another stage's files, an unpacked archive)."""
    from builder.context import walk_tree
    return walk_tree(host)
