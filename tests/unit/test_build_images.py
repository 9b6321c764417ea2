"""Committing built images into the store (config rootfs, manifests in both formats, records by
tag and by ID, adopted layer dirs), finding them by name or ID, and `moor images|tag|rmi` with
Docker's columns and messages."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time

import pytest

from builder import imagecmd, images, layers
from builder.errors import BuildError
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.registry import DOCKER_MANIFEST, OCI_MANIFEST
from nodeagent.runtime.images.store import Store
from tests.imagebuild import busybox_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers keep owners: needs root")


@pytest.fixture
def root():
    top = tempfile.mkdtemp(prefix="moortest-bimages-")
    os.makedirs(f"{top}/images")
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def store(root):
    return Store(f"{root}/images")


@pytest.fixture
def base(store, root):
    (image,) = import_archive(store, busybox_tar(root, ("busybox:test",)))
    return image


def step(root: str, files: dict[str, bytes], **kw) -> layers.Layer:
    """A layer adding files, as a RUN step's upper dir would."""
    upper = tempfile.mkdtemp(prefix="upper-", dir=root)
    for name, data in files.items():
        path = os.path.join(upper, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    return layers.from_upper(upper, f"{root}/work", **kw)


def config(cmd=("sh",), created="2024-05-01T10:00:00.123456789Z", **cfg) -> dict:
    return {"architecture": "amd64", "os": "linux", "created": created,
            "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"], **cfg},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},  # wrong: replaced
            "history": []}


def blob_json(store: Store, digest: str) -> tuple[dict, bytes]:
    with open(store.blob_path(digest), "rb") as f:
        raw = f.read()
    return json.loads(raw), raw


@pytest.mark.parametrize("media, manifest_type, config_type, tar_type, layer_type", [
    ("docker", DOCKER_MANIFEST, images.DOCKER_CONFIG, images.DOCKER_LAYER_TAR,
     layers.DOCKER_LAYER),
    ("oci", OCI_MANIFEST, images.OCI_CONFIG, images.OCI_LAYER_TAR, layers.OCI_LAYER),
])
def test_commit_over_a_base(store, base, root, media, manifest_type, config_type, tar_type,
                            layer_type):
    layer = step(root, {"app/main": b"hello\n"})
    image = images.commit(store, config(Labels={"b": "2", "a": "1"}), [layer], base,
                          media=media, tags=["web:1", "registry.local:5000/team/web"])
    assert image.reference == "docker.io/library/web:1"
    assert image.diff_ids == (*base.diff_ids, layer.diff_id)
    doc, raw = blob_json(store, image.config_digest)
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [*base.diff_ids, layer.diff_id]}
    assert raw == json.dumps(doc, separators=(",", ":")).encode()  # compact, in order
    assert list(doc["config"]["Labels"]) == ["a", "b"]  # Go map: keys sorted
    assert images.image_id(image) == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest, _ = blob_json(store, image.manifest_digest)
    assert manifest["mediaType"] == manifest_type
    assert manifest["config"] == {**manifest["config"], "mediaType": config_type,
                                  "size": len(raw), "digest": image.config_digest}
    # docker save's base layer is a plain tar, named in the format asked for.
    assert [d["mediaType"] for d in manifest["layers"]] == [tar_type, layer_type]
    assert manifest["layers"][0]["digest"] == base.layer_digests[0]  # the base's blob reused
    assert manifest["layers"][1] == {**manifest["layers"][1], "digest": layer.digest,
                                     "size": layer.size}
    assert store.has_blob(layer.digest)
    with open(os.path.join(image.layer_dirs()[0], "app/main"), "rb") as f:
        assert f.read() == b"hello\n"
    # Every name and the ID find the same image.
    for name in ("web:1", "docker.io/library/web:1", "registry.local:5000/team/web:latest",
                 images.image_id(image), images.image_id(image)[7:],
                 images.short_id(image), "sha256:" + images.short_id(image)):
        found = images.resolve(store, name)
        assert found is not None and found.config_digest == image.config_digest, name
    assert store.get(images.image_id(image)).parent == images.image_id(base)
    assert images.config_doc(store, image)["config"]["Cmd"] == ["sh"]


def test_commit_is_deterministic_and_metadata_only(store, base):
    a = images.commit(store, config(cmd=("a",)), [], base)
    b = images.commit(store, config(cmd=("a",)), [], base)
    assert a.config_digest == b.config_digest and a.manifest_digest == b.manifest_digest
    assert a.reference == images.image_id(a)  # no tag: recorded under its ID
    assert a.diff_ids == base.diff_ids


def test_commit_scratch_from_tree(store, root):
    tree = f"{root}/tree"
    os.makedirs(f"{tree}/bin")
    with open(f"{tree}/bin/app", "wb") as f:
        f.write(b"\x7fELF")
    layer = layers.from_tree(tree, f"{root}/work", media="oci")
    image = images.commit(store, config(), [layer], None, media="oci", tags=["app"])
    assert image.diff_ids == (layer.diff_id,) and image.parent is None
    assert images.resolve(store, "app:latest").config_digest == image.config_digest


def test_commit_adopts_the_upper_dir(store, base, root):
    layer = step(root, {"etc/conf": b"x=1\n", "srv/data": b"d" * 5000}, adopt=True)
    upper = layer.tree
    image = images.commit(store, config(), [layer], base)
    assert not os.path.exists(upper)  # moved in, not unpacked
    rootfs = image.layer_dirs()[0]
    assert sorted(os.listdir(rootfs)) == ["etc", "srv"]
    assert stat.S_IMODE(os.stat(rootfs).st_mode) == 0o755
    # The same layer committed again keeps the first dir and leaves the new tree alone.
    again = step(root, {"etc/conf": b"x=1\n", "srv/data": b"d" * 5000}, adopt=True)
    assert again.diff_id == layer.diff_id
    images.commit(store, config(), [again], base)
    assert os.path.isdir(again.tree)


def test_commit_refuses_a_bad_tag_before_writing(store, base):
    before = sorted(os.listdir(store.images_dir))
    with pytest.raises(BuildError, match="invalid tag 'Web:1'"):
        images.commit(store, config(), [], base, tags=["Web:1"])
    with pytest.raises(BuildError, match="unknown image format"):
        images.commit(store, config(), [], base, media="zip")
    assert sorted(os.listdir(store.images_dir)) == before


def test_resolve_unknown(store, base):
    assert images.resolve(store, "nothere") is None
    assert images.resolve(store, "sha256:" + "f" * 64) is None
    assert images.resolve(store, "NOT A NAME") is None


# ---- moor images | tag | rmi ----

def args(root: str, **kw) -> argparse.Namespace:
    return argparse.Namespace(root=root, **kw)


def run_images(root, capsys, repository=None, quiet=False, digests=False) -> list[str]:
    assert imagecmd.images(args(root, repository=repository, quiet=quiet,
                                digests=digests)) == 0
    return capsys.readouterr().out.splitlines()


def test_images_table(store, base, root, capsys):
    layer = step(root, {"big": os.urandom(3000)})
    three_days_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 86400))
    web = images.commit(store, config(created=three_days_ago), [layer], base,
                        tags=["web:1", "web:2"])
    lines = run_images(root, capsys)
    short = images.short_id(web)
    size = imagecmd.human_size(store.layer_size(base.diff_ids[0]) + 3000)
    # Newest first: web, then busybox:test (made in 2024).
    bsize = imagecmd.human_size(store.layer_size(base.diff_ids[0]))
    bage = imagecmd.human_duration(time.time() - 1704067200) + " ago"
    w = max(len(bage), len("3 days ago")) + 3  # Docker's columns: widest cell + 3, >= 10
    assert lines == [
        f"REPOSITORY   TAG       IMAGE ID       {'CREATED':<{w}}SIZE",
        f"web          1         {short}   {'3 days ago':<{w}}{size}",
        f"web          2         {short}   {'3 days ago':<{w}}{size}",
        f"busybox      test      {images.short_id(base)}   {bage:<{w}}{bsize}"]
    assert len(lines) == 4
    # Filtered, the columns fit the rows shown.
    assert run_images(root, capsys, repository="web:2")[1:] == [
        f"web          2         {short}   3 days ago   {size}"]
    assert run_images(root, capsys, repository="docker.io/library/web")[1:] == [
        f"web          {t}         {short}   3 days ago   {size}" for t in "12"]
    assert run_images(root, capsys, quiet=True) == [short, short, images.short_id(base)]
    digests = run_images(root, capsys, digests=True)
    assert digests[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED",
                                  "SIZE"]
    assert web.manifest_digest in digests[1]


def test_images_dangling_shown_intermediate_hidden(store, base, root, capsys):
    mid = images.commit(store, config(cmd=("mid",)), [step(root, {"a": b"1"})], base)
    images.commit(store, config(cmd=("top",)), [step(root, {"b": b"2"})], mid, tags=["app"])
    old = images.commit(store, config(cmd=("old",)), [], base)  # an untagged leaf
    lines = run_images(root, capsys)
    rows = [line.split()[:3] for line in lines[1:]]
    assert ["<none>", "<none>", images.short_id(old)] in rows
    assert not any(images.short_id(mid) in line for line in lines)


def test_tag_and_unknown(store, base, root, capsys):
    assert imagecmd.tag(args(root, source="busybox:test", target="me/box:v1")) == 0
    assert images.resolve(store, "me/box:v1").config_digest == base.config_digest
    assert imagecmd.tag(args(root, source=images.short_id(base), target="box")) == 0
    assert imagecmd.tag(args(root, source="nope", target="x")) == 1
    assert capsys.readouterr().err == "Error response from daemon: No such image: nope:latest\n"
    with pytest.raises(BuildError, match="invalid tag"):
        imagecmd.tag(args(root, source="box", target="a b"))


def test_rmi(store, base, root, capsys):
    layer = step(root, {"data": b"x" * 100})
    web = images.commit(store, config(), [layer], base, tags=["web:1", "web:2"])
    layer_dir = store.layer_path(layer.diff_id)

    def rmi(*names, force=False):
        rc = imagecmd.rmi(args(root, names=list(names), force=force))
        out = capsys.readouterr()
        return rc, out.out.splitlines(), out.err.splitlines()

    assert rmi("web:1") == (0, ["Untagged: web:1"], [])  # web:2 still names it
    assert os.path.isdir(layer_dir)
    assert rmi("nope", "web:1") == (1, [], ["Error response from daemon: No such image: nope:latest",
                                            "Error response from daemon: No such image: web:1"])
    imagecmd.tag(args(root, source="web:2", target="web:3"))
    rc, out, err = rmi(images.short_id(web))
    assert rc == 1 and out == [] and "(must be forced) - image is referenced in multiple " \
        "repositories" in err[0]
    assert rmi(images.short_id(web), force=True) == (
        0, ["Untagged: web:2", "Untagged: web:3", f"Deleted: {images.image_id(web)}"], [])
    assert images.resolve(store, images.image_id(web)) is None
    assert not os.path.exists(layer_dir) and not store.has_blob(layer.digest)  # freed
    assert os.path.isdir(store.layer_path(base.diff_ids[0]))  # busybox:test still uses it


def test_rmi_deletes_untagged_parents(store, base, root, capsys):
    mid = images.commit(store, config(cmd=("mid",)), [step(root, {"a": b"1"})], base)
    top = images.commit(store, config(cmd=("top",)), [step(root, {"b": b"2"})], mid,
                        tags=["app"])
    rc, out = imagecmd.rmi(args(root, names=[images.short_id(mid)], force=False)), \
        capsys.readouterr()
    assert rc == 1 and "image has dependent child images" in out.err
    assert imagecmd.rmi(args(root, names=["app"], force=False)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Untagged: app:latest", f"Deleted: {images.image_id(top)}",
        f"Deleted: {images.image_id(mid)}"]
    assert images.resolve(store, "busybox:test") is not None


@pytest.mark.parametrize("size, want", [(0, "0B"), (999, "999B"), (1000, "1kB"),
                                        (4_260_000, "4.26MB"), (1_234_567_890, "1.23GB")])
def test_human_size(size, want):
    assert imagecmd.human_size(size) == want


@pytest.mark.parametrize("seconds, want", [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (61, "About a minute"),
    (150, "2 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days"),
    (15 * 86400, "2 weeks"), (90 * 86400, "3 months"), (800 * 86400, "2 years"),
])
def test_human_duration(seconds, want):
    assert imagecmd.human_duration(seconds) == want


@pytest.mark.parametrize("ref, want", [
    ("docker.io/library/web:1", "web:1"), ("docker.io/me/web:1", "me/web:1"),
    ("registry.local:5000/web:1", "registry.local:5000/web:1"),
    ("localhost/x:latest", "localhost/x:latest"),
])
def test_familiar(ref, want):
    assert imagecmd.familiar(ref) == want


def test_store_records_by_id(store, base, root):
    layer = step(root, {"f": b"1"})
    image = images.commit(store, config(), [layer], base)
    ident = images.image_id(image)
    assert store.get(ident).reference == ident
    assert store.get(ident).parent == images.image_id(base)
    store.gc(keep_refs=[ident, "busybox:test"])  # an ID is kept as itself
    assert store.get(ident) is not None and os.path.isdir(store.layer_path(layer.diff_id))
    store.gc(keep_refs=None)  # None keeps every record
    assert store.get(ident) is not None
    assert store.remove(ident) and store.get(ident) is None
    store.gc(keep_refs=None)
    assert not os.path.exists(store.layer_path(layer.diff_id))
    assert store.get("busybox:test") is not None


def test_layer_size_is_remembered(store, base):
    diff_id = base.diff_ids[0]
    size = store.layer_size(diff_id)
    assert size > 1_000_000  # busybox
    with open(os.path.join(store.layer_path(diff_id), "size")) as f:
        assert int(f.read()) == size
    assert store.layer_size(diff_id) == size


def test_images_filters(store, base, root, capsys):
    images.commit(store, config(cmd=("l",), Labels={"team": "ops"}),
                             [step(root, {"l": b"1"})], base, tags=["web:1", "reg:5000/web:1"])
    images.commit(store, config(cmd=("d",)), [step(root, {"d": b"2"})], base)

    def shown(*filters, repository=None, all_=False) -> list[list[str]]:
        assert imagecmd.images(args(root, repository=repository, quiet=False, digests=False,
                                    filter=list(filters), all=all_)) == 0
        return [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]

    assert shown("dangling=true") == [["<none>", "<none>"]]
    assert ["<none>", "<none>"] not in shown("dangling=false")
    assert shown("label=team=ops") == [["reg:5000/web", "1"], ["web", "1"]]
    assert shown("label=team") == shown("label=team=ops")
    assert shown("label=team=dev") == []
    assert shown("reference=web") == [["web", "1"]]           # '*' stops at '/', as Go's
    assert shown("reference=*/web:*") == [["reg:5000/web", "1"]]
    assert shown(repository="w*") == [["web", "1"]]
    assert shown("reference=busy*", "reference=web:1") == [["web", "1"], ["busybox", "test"]]
    for bad, message in (("x", "bad format of filter"), ("since=web", "invalid filter 'since'"),
                         ("dangling=maybe", "invalid filter 'dangling=maybe'")):
        with pytest.raises(BuildError, match=message):
            shown(bad)
