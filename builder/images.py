"""Images the builder makes, committed into the image store: the config (its rootfs filled in
here, so no caller can get the layer list wrong), a manifest over the base image's layers and
the new ones, each tag's record and one record under the image's ID; and finding an image by
name, full ID or short ID, as Docker does.

Blobs are written before the records that name them, under the store's writing lock, so gc
never sees a half-committed image.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import re
import uuid
from collections.abc import Sequence

from builder.errors import BuildError
from builder.layers import DOCKER_LAYER, OCI_LAYER, Layer
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    RegistryError,
    parse_manifest,
)
from nodeagent.runtime.images.store import IMAGE_ID_RE, Image, Store, StoreError

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_FORMATS = {"docker": (DOCKER_MANIFEST, DOCKER_CONFIG), "oci": (OCI_MANIFEST, OCI_CONFIG)}
# The same bytes under the other format's name: gzipped or plain tar.
_LAYER_AS = {"docker": {OCI_LAYER: DOCKER_LAYER, OCI_LAYER_TAR: DOCKER_LAYER_TAR},
             "oci": {DOCKER_LAYER: OCI_LAYER, DOCKER_LAYER_TAR: OCI_LAYER_TAR}}
# Config fields that are Go maps in Docker's image config: Go writes their keys sorted.
_MAP_FIELDS = ("ExposedPorts", "Volumes", "Labels")
_HEX_RE = re.compile(r"[0-9a-f]{1,64}")


def canonical_json(doc: dict) -> bytes:
    """Compact JSON as Docker writes configs and manifests: objects keep their order (the
    caller's layout), except Go maps, whose keys are sorted; the same doc, the same bytes."""
    doc = copy.deepcopy(doc)
    for section in ("config", "container_config"):
        cfg = doc.get(section)
        if isinstance(cfg, dict):
            for name in _MAP_FIELDS:
                if isinstance(cfg.get(name), dict):
                    cfg[name] = dict(sorted(cfg[name].items()))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def image_id(image: Image) -> str:
    """Docker's image ID: the config's digest."""
    return image.config_digest


def short_id(image_or_id: Image | str) -> str:
    ident = image_or_id if isinstance(image_or_id, str) else image_id(image_or_id)
    return ident.split(":", 1)[-1][:12]


def config_doc(store: Store, image: Image) -> dict:
    """The image's whole config JSON."""
    try:
        with open(store.blob_path(image.config_digest), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise BuildError(f"the config of {image.reference} ({image.config_digest}) cannot be "
                         f"read from {store.root}: {e}") from None
    if not isinstance(doc, dict):
        raise BuildError(f"the config of {image.reference} is not a JSON object")
    return doc


def manifest_of(store: Store, image: Image) -> Manifest:
    """The image's manifest, as the store keeps it."""
    try:
        with open(store.blob_path(image.manifest_digest), "rb") as f:
            raw = f.read()
        return parse_manifest(raw, image.manifest_digest)
    except (OSError, RegistryError) as e:
        raise BuildError(f"the manifest of {image.reference} ({image.manifest_digest}) cannot "
                         f"be read from {store.root}: {e}") from None


def normalise_tag(tag: str) -> str:
    """A -t/tag argument as the store records it: web:1 -> docker.io/library/web:1."""
    try:
        ref = parse_reference(tag)
    except ReferenceError as e:
        raise BuildError(f"invalid tag {tag!r}: {e}") from None
    if ref.digest:
        raise BuildError(f"invalid tag {tag!r}: a tag cannot name a digest")
    return str(ref)


def commit(store: Store, config_doc: dict, new_layers: Sequence[Layer], base: Image | None, *,
           media: str = "docker", tags: Sequence[str] = ()) -> Image:
    """Writes the config (rootfs.diff_ids = the base's + the new layers'), the new layers' blobs
    and unpacked dirs, and the manifest; records the image under its ID and each tag. Returns
    the image under its first tag, or under its ID when there is none."""
    manifest_type, config_type = _format(media)
    refs = [normalise_tag(t) for t in tags]
    doc = dict(config_doc)
    doc["rootfs"] = {"type": "layers",
                     "diff_ids": [*(base.diff_ids if base else ()),
                                  *(layer.diff_id for layer in new_layers)]}
    raw = canonical_json(doc)
    try:
        with store.writing():
            config_digest = store.put_blob(io.BytesIO(raw), what="image config")
            descriptors = [Descriptor(_layer_as(media, d.media_type), d.digest, d.size)
                           for d in (manifest_of(store, base).layers if base else ())]
            for layer in new_layers:
                _put_layer(store, layer)
                descriptors.append(Descriptor(_layer_as(media, layer.media_type), layer.digest,
                                              layer.size))
            manifest_raw = canonical_json({
                "schemaVersion": 2, "mediaType": manifest_type,
                "config": _descriptor(Descriptor(config_type, config_digest, len(raw)), media),
                "layers": [_descriptor(d, media) for d in descriptors]})
            digest = store.put_blob(io.BytesIO(manifest_raw), what="manifest")
            manifest = parse_manifest(manifest_raw, digest, manifest_type)
            parent = image_id(base) if base else None
            image = store.add_image(config_digest, manifest, parent)
            tagged = [store.add_image(ref, manifest, parent) for ref in refs]
    except (StoreError, RegistryError, OSError) as e:
        raise BuildError(f"committing the image to {store.root}: {e}") from None
    return tagged[0] if tagged else image


def tag(store: Store, image: Image, target: str) -> Image:
    """Records image under target too (`docker tag`)."""
    ref = normalise_tag(target)
    with store.writing():
        return store.add_image(ref, manifest_of(store, image), image.parent)


def _format(media: str) -> tuple[str, str]:
    try:
        return _FORMATS[media]
    except KeyError:
        raise BuildError(f"unknown image format {media!r}; want docker or oci") from None


def _layer_as(media: str, layer_type: str) -> str:
    return _LAYER_AS[media].get(layer_type, layer_type)


def _descriptor(d: Descriptor, media: str) -> dict:
    # Field order as each format's reference implementation writes descriptors.
    if media == "oci":
        return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    return {"mediaType": d.media_type, "size": d.size, "digest": d.digest}


def _put_layer(store: Store, layer: Layer) -> None:
    if not store.has_blob(layer.digest):
        tmp = os.path.join(store.tmp_dir, f".blob-{uuid.uuid4().hex}")
        try:
            os.link(layer.path, tmp)  # the blob was hashed as it was written: no copy
            store.commit_blob(tmp, layer.digest)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            with open(layer.path, "rb") as f:
                store.put_blob(f, layer.digest, f"layer {layer.path}")
    if layer.tree and store.adopt_layer(layer.tree, layer.diff_id):
        return
    store.ensure_layer(layer.digest, layer.diff_id)


# ---- finding images ----

def resolve(store: Store, name_or_id: str) -> Image | None:
    """The image a user means: a reference (web:1 is docker.io/library/web:1, a digest
    reference too), else a full or short image ID (with or without "sha256:"), as Docker
    looks them up. An ID prefix that fits several images is an error."""
    text = name_or_id.strip()
    if IMAGE_ID_RE.fullmatch(text):
        return _by_id(store, text, exact=True)
    try:
        image = store.get(text)
    except (ReferenceError, StoreError):
        image = None
    if image is not None:
        return image
    prefix = text[7:] if text.startswith("sha256:") else text
    if _HEX_RE.fullmatch(prefix):
        return _by_id(store, "sha256:" + prefix, exact=len(prefix) == 64)
    return None


def _by_id(store: Store, ident: str, exact: bool) -> Image | None:
    if exact:
        image = store.get(ident)
        if image is not None:
            return image
    found: dict[str, list[Image]] = {}
    for image in store.list():
        if image.config_digest.startswith(ident):
            found.setdefault(image.config_digest, []).append(image)
    if len(found) > 1:
        raise BuildError(f"image ID {ident.split(':', 1)[1]!r} is ambiguous: it begins "
                         f"{len(found)} images' IDs; give more of it")
    if not found:
        return None
    (images,) = found.values()
    # The ID record if there is one, else the first tag (an image pulled has no ID record).
    return min(images, key=lambda i: (not IMAGE_ID_RE.fullmatch(i.reference), i.reference))


def is_id_record(image: Image) -> bool:
    return bool(IMAGE_ID_RE.fullmatch(image.reference))
