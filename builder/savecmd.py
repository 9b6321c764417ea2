"""`moor save -o FILE NAME...`: images of the build machine's store as one tarball in the
layout `docker save` writes since Docker 25, which is both an OCI image layout (oci-layout,
index.json, blobs/sha256/) and Docker's legacy archive (manifest.json naming the config and
layer blobs), so `docker load`, `moor image load` and the agents' importer all read it.

Blobs are written as the store holds them (layers stay compressed: the OCI layout says so in
the manifest, and `docker load` decompresses what it is given). Entries are sorted and carry
fixed mtimes, so saving the same images twice gives the same bytes.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile

from builder.errors import BuildError
from builder.paths import BuildRoot
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.store import Image, Store, StoreError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
MTIME = 0


def familiar(reference: str) -> str:
    """docker.io/library/busybox:1.36 -> busybox:1.36, as Docker writes RepoTags."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if reference.startswith(prefix):
            return reference[len(prefix):]
    return reference


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def plan(store: Store, images: list[Image]) -> tuple[dict[str, str], dict[str, bytes]]:
    """What the archive holds: archive name -> blob file on disk, and the generated files
    (oci-layout, index.json, manifest.json). Raises BuildError for a blob the store lacks."""
    blobs: dict[str, str] = {}
    index, legacy = [], []
    for image in images:
        for what, digest in (("manifest", image.manifest_digest),
                             ("config", image.config_digest),
                             *(("layer", d) for d in image.layer_digests)):
            path = store.blob_path(digest)
            if not os.path.isfile(path):
                raise BuildError(f"{image.reference}: its {what} blob {digest} is not in the "
                                 "store (the layer was unpacked from another image's "
                                 f"download); pull or build {image.reference} again")
            blobs[_blob(digest)] = path
        with open(store.blob_path(image.manifest_digest), "rb") as f:
            raw = f.read()
        try:
            media = json.loads(raw).get("mediaType") or OCI_MANIFEST
        except ValueError:
            raise BuildError(f"{image.reference}: its manifest blob is not JSON") from None
        last = image.reference.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last and "@" not in last else ""
        annotations = {CONTAINERD_NAME: image.reference}
        if tag:
            annotations[OCI_REF_NAME] = tag
        index.append({"mediaType": media, "digest": image.manifest_digest, "size": len(raw),
                      "annotations": annotations})
        legacy.append({"Config": _blob(image.config_digest),
                       "RepoTags": [familiar(image.reference)] if tag else [],
                       "Layers": [_blob(d) for d in image.layer_digests]})
    files = {"oci-layout": OCI_LAYOUT,
             "index.json": json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                       "manifests": index}, separators=(",", ":")).encode(),
             "manifest.json": json.dumps(legacy, separators=(",", ":")).encode()}
    return blobs, files


def _info(name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, mode, MTIME, kind
    return info


def write(out, blobs: dict[str, str], files: dict[str, bytes]) -> None:
    """The tar stream: directories, blobs (sorted), then the generated files."""
    import io

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for d in ("blobs", "blobs/sha256"):
            tf.addfile(_info(d, 0, 0o755, tarfile.DIRTYPE))
        for name in sorted(blobs):
            with open(blobs[name], "rb") as f:
                tf.addfile(_info(name, os.fstat(f.fileno()).st_size), f)
        for name in sorted(files):
            tf.addfile(_info(name, len(files[name])), io.BytesIO(files[name]))


def resolve(store: Store, names: list[str]) -> list[Image]:
    images = []
    for name in names:
        try:
            image = store.get(name)
        except (ReferenceError, StoreError) as err:
            raise BuildError(f"{name}: {err}") from None
        if image is None:
            raise BuildError(f"reference does not exist: {name} (see `moor images`)")
        if image.reference not in {i.reference for i in images}:
            images.append(image)
    return images


def run(args) -> int:
    root = BuildRoot.from_args(args.root)
    try:
        for name in args.names:
            parse_reference(name)
    except ReferenceError as err:
        raise BuildError(str(err)) from None
    store = Store(root.images)
    blobs, files = plan(store, resolve(store, args.names))
    if not args.output or args.output == "-":
        if sys.stdout.isatty():
            raise BuildError("cowardly refusing to write an archive to a terminal: "
                             "use -o FILE or redirect the output")
        write(sys.stdout.buffer, blobs, files)
        sys.stdout.flush()
        return 0
    directory = os.path.dirname(os.path.abspath(args.output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".save-")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out, blobs, files)
        os.chmod(tmp, 0o644)
        os.rename(tmp, args.output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 0
