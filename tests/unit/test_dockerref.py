"""The image-tree reader the moor-vs-docker comparisons rely on: whiteouts and opaque markers
hide only what lower layers have, a file replaces a directory, config fields normalise, and a
layer read from its tar equals the same layer unpacked for overlayfs."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile

import pytest

from nodeagent.runtime.images.layers import unpack_layer
from tests import imagebuild as ib
from tests.dockerref import Node, apply_layers, config_of, dir_entries, tar_entries, tree_diff
from tests.imagebuild import TarEntry


def tree(*layers: list[TarEntry]) -> dict[str, Node]:
    return apply_layers(tar_entries(io.BytesIO(ib.layer_tar(entries))) for entries in layers)


def sha(data: bytes) -> str:
    return ib.sha256(data).split(":")[1]


BASE = [TarEntry("etc", kind="dir"), TarEntry("etc/motd", b"m"),
        TarEntry("etc/passwd", b"p", uid=0, gid=0, mode=0o600),
        TarEntry("var", kind="dir"), TarEntry("var/www", kind="dir", mode=0o750),
        TarEntry("var/www/old.html", b"old"), TarEntry("var/www/sub", kind="dir"),
        TarEntry("var/www/sub/deep", b"d"), TarEntry("bin", kind="dir"),
        TarEntry("bin/sh", link="busybox", kind="sym"), TarEntry("bin/busybox", b"bb"),
        TarEntry("bin/ls", link="bin/busybox", kind="hard")]


def test_one_layer_reads_every_type():
    t = tree(BASE)
    assert t["/etc/passwd"] == Node("file", 0o600, 0, 0, data=sha(b"p"))
    assert t["/var/www"] == Node("dir", 0o750, 0, 0)
    assert t["/bin/sh"].type == "symlink" and t["/bin/sh"].link == "busybox"
    assert t["/bin/ls"].type == "hardlink" and t["/bin/ls"].data == "/bin/busybox"
    assert "/" not in t


def test_whiteout_hides_a_lower_file_and_a_lower_directory():
    t = tree(BASE, [TarEntry("etc", kind="dir"), TarEntry("etc/.wh.motd"),
                    TarEntry("var/www/.wh.sub")])
    assert "/etc/motd" not in t and "/etc/passwd" in t
    assert "/var/www/sub" not in t and "/var/www/sub/deep" not in t
    assert "/var/www/old.html" in t


def test_opaque_dir_keeps_what_its_own_layer_adds_in_any_order():
    # The marker after the new file: it still hides only the layers below.
    t = tree(BASE, [TarEntry("var/www", kind="dir", mode=0o755),
                    TarEntry("var/www/new", b"n"), TarEntry("var/www/.wh..wh..opq")])
    assert sorted(p for p in t if p.startswith("/var/www/")) == ["/var/www/new"]
    assert t["/var/www"].mode == 0o755


def test_whiteout_and_re_add_in_one_layer():
    t = tree(BASE, [TarEntry("etc/motd", b"again"), TarEntry("etc/.wh.motd")])
    assert t["/etc/motd"].data == sha(b"again")


def test_file_replaces_a_directory_and_its_children():
    t = tree(BASE, [TarEntry("var/www", b"now a file")])
    assert t["/var/www"].type == "file"
    assert not [p for p in t if p.startswith("/var/www/")]


def test_implied_parents_appear():
    t = tree([TarEntry("a/b/c", b"x")])
    assert t["/a"] == t["/a/b"] == Node("dir", 0o755, 0, 0)


def test_gzip_and_dot_slash_names_read_the_same():
    plain = ib.layer_tar(BASE)
    dotted = ib.layer_tar([TarEntry("./" + e.name, e.data, e.link if e.kind != "hard" else
                                    "./" + e.link, e.kind, e.mode) for e in BASE])
    a = apply_layers([tar_entries(io.BytesIO(plain))])
    b = apply_layers([tar_entries(io.BytesIO(gzip.compress(dotted)))])
    assert tree_diff(a, b) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts (mknod) need root")
def test_unpacked_layers_read_as_their_tars():
    """The fallback for a store that kept no blob: the agent's unpacked layer dirs."""
    layers = [BASE, [TarEntry("etc", kind="dir"), TarEntry("etc/.wh.motd"),
                     TarEntry("var/www", kind="dir"), TarEntry("var/www/.wh..wh..opq"),
                     TarEntry("var/www/index.html", b"hi", uid=33, gid=33, mode=0o640)]]
    work = tempfile.mkdtemp(prefix="moortest-dockerref-")
    try:
        dirs = []
        for i, entries in enumerate(layers):
            blob = os.path.join(work, f"{i}.tar")
            with open(blob, "wb") as f:
                f.write(ib.layer_tar(entries))
            unpack_layer(blob, os.path.join(work, f"{i}"))
            dirs.append(os.path.join(work, f"{i}"))
        assert tree_diff(tree(*layers), apply_layers(dir_entries(d) for d in dirs)) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_config_of_keeps_the_compared_fields_and_drops_empty_ones():
    doc = {"config": {"Env": ["PATH=/bin"], "Cmd": None, "Entrypoint": [], "WorkingDir": "",
                      "User": "app", "Labels": {}, "Hostname": "abc", "ExposedPorts":
                      {"80/tcp": {}}}}
    assert config_of(doc) == {"Env": ["PATH=/bin"], "User": "app",
                              "ExposedPorts": {"80/tcp": {}}}


def test_tree_diff_names_each_side():
    a = {"/x": Node("file", 0o644, 0, 0, data="1"), "/y": Node("dir", 0o755, 0, 0)}
    b = {"/x": Node("file", 0o600, 0, 0, data="1"), "/z": Node("dir", 0o755, 0, 0)}
    lines = tree_diff(a, b)
    assert len(lines) == 3
    assert lines[1].startswith("/y: only in docker") and lines[2].startswith("/z: only in moor")
