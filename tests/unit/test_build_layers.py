"""Layers from upper dirs: whiteouts and opaque dirs in OCI form, Docker's entry order and
headers, hard links, kept and dropped xattrs, SOURCE_DATE_EPOCH, deterministic gzip with both
digests right, and an adopted dir that is exactly what the store would unpack."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import layers
from builder.errors import BuildError
from builder.gzipstream import GzipWriter
from nodeagent.runtime.images.layers import unpack_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts, xattrs and chown need root")

T = 1_700_000_000  # mtimes on disk
ASCII = "".join(map(chr, range(1, 128)))
CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


@pytest.fixture
def work():
    top = tempfile.mkdtemp(prefix="moortest-blayers-")
    os.mkdir(os.path.join(top, "upper"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def put(path: str, data: bytes = b"", mode: int = 0o644, mtime: int = T) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def make_upper(upper: str) -> None:
    """What a step that deletes, replaces, edits and adds leaves in an overlay upper dir."""
    put(f"{upper}/etc/motd", b"changed\n")
    os.mknod(f"{upper}/etc/gone", stat.S_IFCHR | 0o000, 0)  # a deleted file
    os.mkdir(f"{upper}/var")
    os.mkdir(f"{upper}/var/www")  # rm -r, then mkdir: opaque
    os.chmod(f"{upper}/var/www", 0o2755)
    os.setxattr(f"{upper}/var/www", "trusted.overlay.opaque", b"y")
    put(f"{upper}/var/www/index.html", b"<p>new</p>\n")
    os.mknod(f"{upper}/olddir", stat.S_IFCHR | 0o000, 0)  # a deleted directory
    put(f"{upper}/bin/tool", b"#!/bin/sh\n", mode=0o4755)
    os.setxattr(f"{upper}/bin/tool", "security.capability", CAP)
    os.setxattr(f"{upper}/bin/tool", "user.comment", b"not kept")
    os.setxattr(f"{upper}/bin/tool", "trusted.overlay.origin", b"\x00\xfb")
    os.link(f"{upper}/bin/tool", f"{upper}/bin/tool2")
    os.symlink("../etc/motd", f"{upper}/bin/motd")
    os.chown(f"{upper}/bin/motd", 7, 8, follow_symlinks=False)
    os.chown(f"{upper}/var/www/index.html", 1000, 1000)
    os.mkfifo(f"{upper}/fifo")
    for d in ("etc", "var/www", "var", "bin", ""):
        os.utime(os.path.join(upper, d), (T, T))


def test_entries_order_whiteouts_opaque_links(work):
    upper = f"{work}/upper"
    make_upper(upper)
    layer = layers.from_upper(upper, f"{work}/out")
    got = [(e.name, e.kind) for e in layers.read_entries(layer.path)]
    # Each directory's names sorted, a directory before its content, whiteouts where the
    # deleted name sorted, the opaque marker right after its directory.
    assert got == [
        ("bin", "dir"), ("bin/motd", "symlink"), ("bin/tool", "file"), ("bin/tool2", "hardlink"),
        ("etc", "dir"), ("etc/.wh.gone", "file"), ("etc/motd", "file"), ("fifo", "fifo"),
        (".wh.olddir", "file"), ("var", "dir"), ("var/www", "dir"),
        ("var/www/.wh..wh..opq", "file"), ("var/www/index.html", "file")]
    entries = {e.name: e for e in layers.read_entries(layer.path)}
    assert entries["bin/tool"].mode == 0o4755
    assert entries["bin/tool"].xattrs == (("security.capability", CAP),)
    assert entries["bin/tool2"].link == "bin/tool"
    assert entries["bin/motd"].link == "../etc/motd"
    assert (entries["bin/motd"].uid, entries["bin/motd"].gid) == (7, 8)
    assert (entries["var/www/index.html"].uid, entries["var/www/index.html"].gid) == (1000, 1000)
    assert entries["etc/.wh.gone"].size == 0
    assert entries["var/www"].mode == 0o2755
    assert entries["var/www/.wh..wh..opq"].mode == 0o755  # permission bits only, as Docker
    assert entries["etc/motd"].mtime == T


def test_tar_headers_are_docker_like(work):
    upper = f"{work}/upper"
    make_upper(upper)
    layer = layers.from_upper(upper, f"{work}/out")
    raw = gzip.decompress(read(layer.path))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        members = tf.getmembers()
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert not any(m.name.startswith(("./", "/")) for m in members)
    headers = {m.name: raw[m.offset_data - 512:m.offset_data] for m in members}
    assert all(h[257:265] == b"ustar\x0000" for h in headers.values())  # POSIX (PAX) headers
    assert headers["bin"][:5] == b"bin/\0"  # directories end in "/"
    assert headers["bin/tool2"][156:157] == tarfile.LNKTYPE
    # Only what needs one gets a PAX record: the file with a kept capability (and, as in
    # Docker's layers, its hard link).
    assert [m.name for m in members if m.pax_headers] == ["bin/tool", "bin/tool2"]
    assert raw.endswith(b"\0" * 1024) and not raw.endswith(b"\0" * 1536)  # as Go ends it


def test_digests_and_gzip_header(work):
    upper = f"{work}/upper"
    make_upper(upper)
    layer = layers.from_upper(upper, f"{work}/out", media="oci")
    blob = read(layer.path)
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    assert layer.size == len(blob)
    assert layer.media_type == layers.OCI_LAYER
    assert os.path.basename(layer.path) == layer.digest[7:] + ".tar.gz"
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
    assert os.listdir(f"{work}/out") == [os.path.basename(layer.path)]


def test_same_tree_same_digest(work):
    upper = f"{work}/upper"
    make_upper(upper)
    a = layers.from_upper(upper, f"{work}/a", source_date_epoch=T - 10)
    make_upper(f"{work}/copy")  # new inodes and ctimes, later mtimes: all clamped
    os.utime(f"{work}/copy/etc/motd", (T + 99, T + 99))
    for d in ("etc", "var/www", "var", "bin"):
        os.utime(f"{work}/copy/{d}", (T + 5, T + 5))
    b = layers.from_upper(f"{work}/copy", f"{work}/b", source_date_epoch=T - 10)
    assert (a.digest, a.diff_id) == (b.digest, b.diff_id)
    assert a.media_type == layers.DOCKER_LAYER


def test_source_date_epoch_clamps_mtimes_only_when_later(work):
    upper = f"{work}/upper"
    put(f"{upper}/old", mtime=1000)
    put(f"{upper}/new", mtime=T)
    layer = layers.from_upper(upper, f"{work}/out", source_date_epoch=5000)
    assert {e.name: e.mtime for e in layers.read_entries(layer.path)} == {"new": 5000,
                                                                          "old": 1000}


def test_empty_upper_is_no_layer(work):
    assert layers.from_upper(f"{work}/upper", f"{work}/out") is None
    assert not os.path.exists(f"{work}/out")


def test_unknown_media_refused(work):
    put(f"{work}/upper/f")
    with pytest.raises(BuildError, match="unknown image format 'zip'"):
        layers.from_upper(f"{work}/upper", f"{work}/out", media="zip")


@pytest.mark.parametrize("xattr, option", [("trusted.overlay.redirect", "redirect_dir"),
                                            ("trusted.overlay.metacopy", "metacopy")])
def test_incomplete_upper_refused(work, xattr, option):
    put(f"{work}/upper/d/f")
    os.setxattr(f"{work}/upper/d", xattr, b"/x")
    with pytest.raises(BuildError, match=f"{option}=off"):
        layers.from_upper(f"{work}/upper", f"{work}/out")
    assert os.listdir(f"{work}/out") == []  # the half-written blob is gone


def test_shared_whiteout_inode_is_never_a_hard_link(work):
    # overlayfs may link one whiteout inode for many deletions.
    os.mknod(f"{work}/upper/a", stat.S_IFCHR | 0o000, 0)
    os.link(f"{work}/upper/a", f"{work}/upper/b")
    layer = layers.from_upper(f"{work}/upper", f"{work}/out")
    assert [(e.name, e.kind) for e in layers.read_entries(layer.path)] == [
        (".wh.a", "file"), (".wh.b", "file")]


def test_xattr_whiteout_and_user_opaque(work):
    put(f"{work}/upper/gone")
    os.setxattr(f"{work}/upper/gone", "trusted.overlay.whiteout", b"")
    os.mkdir(f"{work}/upper/d")
    os.setxattr(f"{work}/upper/d", "user.overlay.opaque", b"y")
    os.mkdir(f"{work}/upper/x")
    os.setxattr(f"{work}/upper/x", "trusted.overlay.opaque", b"x")  # has xwhiteouts: not opaque
    layer = layers.from_upper(f"{work}/upper", f"{work}/out")
    assert [e.name for e in layers.read_entries(layer.path)] == [
        "d", "d/.wh..wh..opq", ".wh.gone", "x"]


def test_from_tree_keeps_everything_as_is(work):
    put(f"{work}/upper/app/main", b"x")
    os.mkdir(f"{work}/upper/app/empty")
    os.setxattr(f"{work}/upper/app/empty", "trusted.overlay.opaque", b"y")
    layer = layers.from_tree(f"{work}/upper", f"{work}/out")
    assert [e.name for e in layers.read_entries(layer.path)] == ["app", "app/empty",
                                                                 "app/main"]


def test_sockets_left_out_devices_kept(work):
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(f"{work}/upper/sock")
    finally:
        s.close()
    os.mknod(f"{work}/upper/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    layer = layers.from_upper(f"{work}/upper", f"{work}/out")
    (entry,) = layers.read_entries(layer.path)
    assert (entry.name, entry.kind, entry.device) == ("null", "char", (1, 3))


def scan(root: str) -> dict:
    """Everything unpacking decides about a tree: types, modes, owners, whole-second mtimes,
    contents, links, device numbers, xattrs."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            item = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    sorted((n, os.getxattr(path, n, follow_symlinks=False))
                           for n in os.listxattr(path, follow_symlinks=False))]
            if stat.S_ISCHR(st.st_mode):
                item.append(st.st_rdev)
            else:
                item.append(st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                item += [read(path), st.st_nlink]
            if stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(path))
            found[rel] = item
    return found


@pytest.mark.parametrize("epoch", [None, T - 100])
def test_adopted_dir_is_what_unpacking_gives(work, epoch):
    upper = f"{work}/upper"
    make_upper(upper)
    os.utime(f"{upper}/etc/motd", ns=(T * 10**9 + 123, T * 10**9 + 123))
    os.mknod(f"{upper}/etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.utime(f"{upper}/etc", (T, T))
    layer = layers.from_upper(upper, f"{work}/out", source_date_epoch=epoch, adopt=True)
    assert layer.tree == upper
    unpack_layer(layer.path, f"{work}/unpacked")
    want = scan(f"{work}/unpacked")
    # Whiteouts: unpacking makes its own (mode 000, root's); only their kind matters.
    got = scan(upper)
    for name in ("etc/gone", "olddir"):
        assert got.pop(name)[0::5] == want.pop(name)[0::5]
    assert got == want
    assert stat.S_IMODE(os.stat(upper).st_mode) == 0o755


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3000), max_size=20),
       block=st.sampled_from([512, 1000, 4096]), threads=st.sampled_from([1, 3]))
def test_gzip_writer_round_trips_and_ignores_threads(chunks, block, threads):
    outs = []
    for n in (threads, 1):
        buf = io.BytesIO()
        w = GzipWriter(buf, block=block, threads=n)
        for c in chunks:
            w.write(c)
        w.close()
        outs.append(buf.getvalue())
    data = b"".join(chunks)
    assert outs[0] == outs[1]
    assert gzip.decompress(outs[0]) == data
    assert zlib.decompress(outs[0], 31) == data
    assert w.raw_sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert w.sha256 == "sha256:" + hashlib.sha256(outs[0]).hexdigest()
    assert w.size == len(outs[0]) and w.raw_size == len(data)


def test_gzip_level_changes_the_blob_not_the_diff_id(work, monkeypatch):
    put(f"{work}/upper/f", b"abc" * 10000)
    fast = layers.from_upper(f"{work}/upper", f"{work}/a")
    monkeypatch.setenv(layers.GZIP_LEVEL_ENV, "9")
    small = layers.from_upper(f"{work}/upper", f"{work}/b")
    assert small.diff_id == fast.diff_id and small.digest != fast.digest
    assert small.size <= fast.size
    monkeypatch.setenv(layers.GZIP_LEVEL_ENV, "fast")
    with pytest.raises(BuildError, match="MOOR_BUILD_GZIP_LEVEL='fast': want a gzip level"):
        layers.from_upper(f"{work}/upper", f"{work}/c")


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(st.text(ASCII, min_size=1, max_size=120), st.text(min_size=1)),
       link=st.one_of(st.text(ASCII, max_size=110), st.text(max_size=3)),
       kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                             tarfile.CHRTYPE, tarfile.FIFOTYPE]),
       mode=st.integers(0, 0o7777), uid=st.integers(0, 8 ** 8), gid=st.integers(0, 70000),
       size=st.integers(0, 2 ** 40), mtime=st.integers(0, 2 ** 34),
       dev=st.tuples(st.integers(0, 300), st.integers(0, 2 ** 20)))
def test_fast_header_is_tarfiles_own(name, link, kind, mode, uid, gid, size, mtime, dev):
    info = tarfile.TarInfo(name.replace("\0", ""))
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
    info.size, info.mtime, info.linkname = size, mtime, link.replace("\0", "")
    info.devmajor, info.devminor = dev
    info.uname = info.gname = ""
    fast = layers.ustar_header(info)
    if fast is not None:
        assert fast == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_names_tar_cannot_hold_in_ustar_round_trip(work):
    upper = os.fsencode(f"{work}/upper")
    long_dir = b"d" * 120
    os.makedirs(upper + b"/" + long_dir)
    put(os.fsdecode(upper + b"/" + long_dir + b"/" + b"f" * 100), b"long")
    put(os.fsdecode(upper + b"/caf\xc3\xa9"), b"utf-8")
    put(os.fsdecode(upper + b"/latin\xe9"), b"not utf-8")
    os.symlink(b"/" + b"t" * 200, upper + b"/link")
    os.utime(upper + b"/" + long_dir, (T, T))
    layer = layers.from_upper(os.fsdecode(upper), f"{work}/out", adopt=True)
    unpack_layer(layer.path, f"{work}/unpacked")
    assert scan(f"{work}/unpacked") == scan(os.fsdecode(upper))
    assert os.path.exists(os.fsencode(f"{work}/unpacked") + b"/latin\xe9")
