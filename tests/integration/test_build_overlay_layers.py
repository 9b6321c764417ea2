"""A real overlayfs mount changed the ways build steps change files (create, modify, delete a
file and a directory, replace a directory, chmod, chown, symlink, hard link, fifo): the layer
made from its upper dir has the right tar entries, and mounting that layer over the same lower
dir (unpacked by the store's unpacker, or adopted as it is) shows exactly the changed tree."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from builder import layers
from nodeagent.runtime.images.layers import unpack_layer

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlayfs needs root")]

T = 1_700_000_000


@pytest.fixture
def work():
    top = tempfile.mkdtemp(prefix="moortest-bovl-")
    mounts: list[str] = []
    yield top, mounts
    for m in reversed(mounts):
        subprocess.run(["umount", m], check=False)
    shutil.rmtree(top, ignore_errors=True)


def mount(mounts: list, merged: str, lower: list[str], upper: str | None = None,
          workdir: str | None = None) -> None:
    os.makedirs(merged, exist_ok=True)
    opts = "lowerdir=" + ":".join(lower)
    if upper:
        opts += f",upperdir={upper},workdir={workdir}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged], check=True)
    mounts.append(merged)


def umount(mounts: list, merged: str) -> None:
    subprocess.run(["umount", merged], check=True)
    mounts.remove(merged)


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_lower(lower: str) -> None:
    write(f"{lower}/etc/motd", b"base\n")
    write(f"{lower}/etc/hostname", b"base\n")
    write(f"{lower}/etc/remove-me", b"x\n")
    write(f"{lower}/bin/tool", b"#!/bin/sh\n", 0o755)
    write(f"{lower}/old/a/deep", b"1\n")
    write(f"{lower}/old/b", b"2\n")
    write(f"{lower}/www/index.html", b"old\n")
    write(f"{lower}/www/sub/page.html", b"old\n")
    write(f"{lower}/data/owned", b"d\n")
    for dirpath, dirnames, filenames in os.walk(lower):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (T, T))


def change(m: str) -> None:
    """One RUN step's worth of changes, through the overlay."""
    write(f"{m}/etc/new.conf", b"created\n")
    with open(f"{m}/etc/motd", "ab") as f:
        f.write(b"modified\n")
    os.unlink(f"{m}/etc/remove-me")
    shutil.rmtree(f"{m}/old")
    shutil.rmtree(f"{m}/www")  # replaced: overlay marks the new dir opaque
    os.mkdir(f"{m}/www")
    write(f"{m}/www/index.html", b"new\n")
    os.chmod(f"{m}/bin/tool", 0o4711)
    os.chown(f"{m}/data/owned", 1234, 4321)
    os.symlink("../etc/motd", f"{m}/bin/motd")
    os.link(f"{m}/etc/hostname", f"{m}/etc/hostname.bak")  # copies hostname up, then links
    os.mkfifo(f"{m}/data/fifo")


def view(root: str) -> dict:
    """The merged tree as a container sees it."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            item = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    item += (f.read(),)
            elif stat.S_ISLNK(st.st_mode):
                item += (os.readlink(path),)
            found[os.path.relpath(path, root)] = item
    return found


def test_layer_from_a_real_overlay(work):
    top, mounts = work
    lower, upper, wd, merged = (f"{top}/{d}" for d in ("lower", "upper", "work", "merged"))
    make_lower(lower)
    os.makedirs(upper)
    os.makedirs(wd)
    mount(mounts, merged, [lower], upper, wd)
    change(merged)
    want = view(merged)
    umount(mounts, merged)

    layer = layers.from_upper(upper, f"{top}/out")
    entries = {e.name: e for e in layers.read_entries(layer.path)}
    kinds = {name: e.kind for name, e in entries.items()}
    assert kinds == {
        "bin": "dir", "bin/motd": "symlink", "bin/tool": "file",
        "data": "dir", "data/fifo": "fifo", "data/owned": "file",
        "etc": "dir", "etc/hostname": "file", "etc/hostname.bak": "hardlink",
        "etc/motd": "file", "etc/new.conf": "file", "etc/.wh.remove-me": "file",
        ".wh.old": "file",
        "www": "dir", "www/.wh..wh..opq": "file", "www/index.html": "file"}
    names = list(entries)
    assert names.index("www/.wh..wh..opq") == names.index("www") + 1
    assert entries["bin/tool"].mode == 0o4711
    assert (entries["data/owned"].uid, entries["data/owned"].gid) == (1234, 4321)
    assert entries["bin/motd"].link == "../etc/motd"
    assert entries["etc/hostname.bak"].link == "etc/hostname"
    assert entries["etc/.wh.remove-me"].size == 0 and entries[".wh.old"].size == 0
    assert all(not e.xattrs for e in entries.values())  # overlay's own xattrs stay out

    # The store's unpacker gives a dir that, over the same lower, is the changed tree.
    unpack_layer(layer.path, f"{top}/unpacked")
    mount(mounts, f"{top}/check1", [f"{top}/unpacked", lower])
    assert view(f"{top}/check1") == want
    umount(mounts, f"{top}/check1")

    # Adopted as it is (trimmed in place), the upper dir shows the same tree too.
    adopted = layers.from_upper(upper, f"{top}/out2", adopt=True)
    assert (adopted.digest, adopted.diff_id) == (layer.digest, layer.diff_id)
    mount(mounts, f"{top}/check2", [upper, lower])
    assert view(f"{top}/check2") == want
    umount(mounts, f"{top}/check2")
