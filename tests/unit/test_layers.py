"""Safe layer unpacking: every escape attempt fails with a clear error and writes nothing outside
the layer root; whiteouts become overlayfs whiteouts; bombs stop at their limits."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.runtime.images.layers import (
    DEFAULT_LIMITS,
    OPAQUE_XATTR,
    LayerError,
    Limits,
    unpack_layer,
)
from tests.imagebuild import TarEntry, layer_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and chown need root")


def scan(top: str) -> set[str]:
    """Every path under top except the blob itself, never following symlinks."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), top))
    return found - {"layer.tar", "blob"}


@pytest.fixture
def work():
    """A parent dir holding the blob, a victim dir outside the root, and the layer's dest."""
    top = tempfile.mkdtemp(prefix="moortest-layers-")
    os.mkdir(os.path.join(top, "outside"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def unpack(work: str, entries, *, compress=False, limits=DEFAULT_LIMITS):
    blob = os.path.join(work, "layer.tar")
    data = layer_tar(entries)
    with open(blob, "wb") as f:
        f.write(gzip.compress(data) if compress else data)
    dest = os.path.join(work, "root")
    return unpack_layer(blob, dest, limits), dest


OUT = "../outside"  # from the root, the sibling victim dir


@pytest.mark.parametrize("entries, error", [
    pytest.param([TarEntry("../outside/passwd", b"x")], "'..' component", id="dotdot"),
    pytest.param([TarEntry("a/../../outside/passwd", b"x")], "'..' component", id="inner-dotdot"),
    pytest.param([TarEntry("/abs", b"x")], "absolute path", id="absolute"),
    pytest.param([TarEntry("link", link=OUT, kind="sym"), TarEntry("link/passwd", b"x")],
                 "symlink", id="write-through-symlink"),
    pytest.param([TarEntry("d", kind="dir"), TarEntry("d/l", link="/", kind="sym"),
                  TarEntry("d/l/etc/x", b"x")], "symlink", id="write-through-abs-symlink"),
    pytest.param([TarEntry("hl", link="../outside/victim", kind="hard")], "'..' component",
                 id="hardlink-outside"),
    pytest.param([TarEntry("hl", link="/etc/passwd", kind="hard")], "absolute path",
                 id="hardlink-absolute"),
    pytest.param([TarEntry("l", link=OUT, kind="sym"), TarEntry("hl", link="l/victim",
                                                                 kind="hard")],
                 "symlink", id="hardlink-through-symlink"),
    pytest.param([TarEntry("hl", link="missing", kind="hard")], "not earlier in this layer",
                 id="hardlink-missing"),
    pytest.param([TarEntry(".wh.", b"")], "names no file", id="whiteout-empty"),
    pytest.param([TarEntry("d/.wh..", b"")], "names no file", id="whiteout-dotdot"),
    pytest.param([TarEntry("d/.wh..wh.x", b"")], "reserved", id="whiteout-reserved"),
    pytest.param([TarEntry("d/.wh..wh..opq", kind="dir")], "plain file", id="opaque-dir"),
    pytest.param([TarEntry("d/.wh.x", link="y", kind="sym")], "plain file",
                 id="whiteout-symlink"),
    pytest.param([TarEntry(".wh..wh..opq", b"")], "must sit in a directory", id="opaque-root"),
])
def test_attacks_fail_and_write_nothing_outside(work, entries, error):
    with open(os.path.join(work, "outside", "victim"), "w") as f:
        f.write("v")
    before = scan(work)
    with pytest.raises(LayerError, match=error):
        unpack(work, entries)
    assert scan(work) == before  # no temp dir, no root, nothing new in outside/


def test_files_links_and_metadata_are_preserved(work):
    result, root = unpack(work, [
        TarEntry("bin", kind="dir", mode=0o755, mtime=1000),
        TarEntry("bin/tool", b"#!x", mode=0o4755, uid=7, gid=8, mtime=2000),
        TarEntry("bin/alias", link="tool", kind="sym"),
        TarEntry("bin/hard", link="bin/tool", kind="hard"),
        TarEntry("run/fifo", kind="fifo"),
        TarEntry("dev/null", kind="chr", major=1, minor=3),
    ], compress=True)
    st_tool = os.lstat(os.path.join(root, "bin/tool"))
    assert (stat.S_IMODE(st_tool.st_mode), st_tool.st_uid, st_tool.st_gid) == (0o4755, 7, 8)
    assert st_tool.st_mtime == 2000 and st_tool.st_nlink == 2
    assert os.readlink(os.path.join(root, "bin/alias")) == "tool"
    assert os.path.samefile(os.path.join(root, "bin/hard"), os.path.join(root, "bin/tool"))
    assert os.lstat(os.path.join(root, "bin")).st_mtime == 1000
    assert stat.S_ISFIFO(os.lstat(os.path.join(root, "run/fifo")).st_mode)
    assert result.skipped == ("dev/null",)
    assert not os.path.lexists(os.path.join(root, "dev/null"))


def test_diff_id_is_the_uncompressed_digest(work):
    import hashlib
    entries = [TarEntry("a", b"hello")]
    result, _ = unpack(work, entries, compress=True)
    assert result.diff_id == "sha256:" + hashlib.sha256(layer_tar(entries)).hexdigest()


def test_whiteouts_become_overlay_whiteouts(work):
    _, root = unpack(work, [
        TarEntry("etc", kind="dir"),
        TarEntry("etc/.wh.motd", b""),
        TarEntry("var/cache/.wh..wh..opq", b""),
        TarEntry("var/cache/kept", b"k"),
        TarEntry("old", kind="dev0"),
    ])
    for path in ("etc/motd", "old"):
        st_w = os.lstat(os.path.join(root, path))
        assert stat.S_ISCHR(st_w.st_mode) and st_w.st_rdev == 0
    assert not os.path.lexists(os.path.join(root, "etc/.wh.motd"))
    assert os.getxattr(os.path.join(root, "var/cache"), OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(os.path.join(root, "var/cache"))) == ["kept"]


def test_later_entries_replace_earlier_ones_without_following_links(work):
    _, root = unpack(work, [
        TarEntry("f", link="../outside/victim", kind="sym"),
        TarEntry("f", b"replaced"),
    ])
    assert not os.path.islink(os.path.join(root, "f"))
    assert not os.path.exists(os.path.join(work, "outside", "victim"))


@pytest.mark.parametrize("limits, entries, error", [
    pytest.param(Limits(max_bytes=64 << 10), [TarEntry("big", b"\0" * (1 << 20))],
                 "max_bytes", id="bytes"),
    pytest.param(Limits(max_entries=10), [TarEntry(f"f{i}", b"") for i in range(11)],
                 "max_entries", id="entries"),
])
def test_bomb_limits(work, limits, entries, error):
    before = scan(work)
    with pytest.raises(LayerError, match=error):
        unpack(work, entries, compress=True, limits=limits)
    assert scan(work) == before


@pytest.mark.parametrize("blob, error", [
    pytest.param(b"\x28\xb5\x2f\xfd" + b"\0" * 100, "zstd", id="zstd"),
    pytest.param(b"not a tar at all" * 64, "not a valid tar", id="garbage"),
    pytest.param(b"\x1f\x8b\x08\x00" + b"\0" * 40, "layer blob", id="bad-gzip"),
])
def test_unreadable_layers_fail_cleanly(work, blob, error):
    path = os.path.join(work, "blob")
    with open(path, "wb") as f:
        f.write(blob)
    before = scan(work)
    with pytest.raises(LayerError, match=error):
        unpack_layer(path, os.path.join(work, "root"))
    assert scan(work) == before


# ---- property: nothing ever lands outside the root ----

_segment = st.sampled_from(["a", "b", "c", "a", "b", "..", ".", "", "/", ".wh.a"])
_name = st.lists(_segment, min_size=1, max_size=5).map("/".join)
_member = st.one_of(
    st.builds(lambda n: TarEntry(n, b"x"), _name),
    st.builds(lambda n: TarEntry(n, kind="dir"), _name),
    st.builds(lambda n, t: TarEntry(n, link=t, kind="sym"), _name,
              st.sampled_from(["..", "../outside", "/", "/tmp", "a", "../../..", "."])),
    st.builds(lambda n, t: TarEntry(n, link=t, kind="hard"), _name, _name),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_member, min_size=1, max_size=8))
def test_property_never_writes_outside_root(entries):
    work = tempfile.mkdtemp(prefix="moortest-layerprop-")
    try:
        os.mkdir(os.path.join(work, "outside"))
        before = scan(work)
        try:
            unpack(work, entries)
        except (LayerError, ValueError):
            assert scan(work) == before
        else:
            added = scan(work) - before
            assert all(p == "root" or p.startswith("root/") for p in added), added
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_layer_tar_builder_round_trips():
    data = layer_tar([TarEntry("x/y", b"z")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [m.name for m in tf.getmembers()] == ["x/y"]
