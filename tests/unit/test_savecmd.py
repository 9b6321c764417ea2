"""`moor save`: images of the build machine's store as an archive in Docker 25's `docker save`
layout (an OCI layout plus manifest.json), which the agents' importer reads back to the same
image, byte for byte the same when saved twice."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import types

import pytest

from builder import savecmd
from builder.errors import BuildError
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from tests import imagebuild
from tests.conftest import TEST_PREFIX


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix=TEST_PREFIX + "save-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _store_with_images(root: str) -> Store:
    store = Store(os.path.join(root, "images"))
    image = imagebuild.make_image([imagebuild.busybox_rootfs(), imagebuild.whiteout_layer()],
                                  oci=True)
    layout = os.path.join(root, "in.tar")
    imagebuild.write_docker_save(layout, image, ["busybox:test", "example.com:5000/team/app:1"])
    import_archive(store, layout)
    return store


def _save(root: str, out: str, *names: str) -> None:
    savecmd.run(types.SimpleNamespace(root=root, names=list(names), output=out))


def test_saved_images_import_back_the_same(root):
    store = _store_with_images(root)
    out = os.path.join(root, "out.tar")
    _save(root, out, "busybox:test", "example.com:5000/team/app:1")
    with tarfile.open(out) as tf:
        names = tf.getnames()
        legacy = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    assert [e["RepoTags"] for e in legacy] == [["busybox:test"], ["example.com:5000/team/app:1"]]
    assert all(n in names for e in legacy for n in [e["Config"], *e["Layers"]])
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == [
        "docker.io/library/busybox:test", "example.com:5000/team/app:1"]
    again = Store(os.path.join(root, "again"))
    loaded = import_archive(again, out)
    assert [i.reference for i in loaded] == ["docker.io/library/busybox:test",
                                             "example.com:5000/team/app:1"]
    for image in loaded:
        before = store.get(image.reference)
        assert image.diff_ids == before.diff_ids
        assert image.config_digest == before.config_digest
        assert image.config == before.config
    second = os.path.join(root, "second.tar")
    _save(root, second, "busybox:test", "example.com:5000/team/app:1")
    with open(out, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


def test_an_unknown_image_is_refused_and_nothing_is_written(root):
    _store_with_images(root)
    out = os.path.join(root, "out.tar")
    with pytest.raises(BuildError, match="reference does not exist: nope:1"):
        _save(root, out, "busybox:test", "nope:1")
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(root) if n.startswith(".save-")]


def test_a_missing_layer_blob_is_named(root):
    store = _store_with_images(root)
    image = store.get("busybox:test")
    os.unlink(store.blob_path(image.layer_digests[0]))
    with pytest.raises(BuildError, match=f"layer blob {image.layer_digests[0]} is not in"):
        _save(root, os.path.join(root, "out.tar"), "busybox:test")
