"""Imports image archives into a Store: `docker save` tarballs (manifest.json) and OCI image
layouts (oci-layout, index.json, blobs/) given as a directory or a tar.

Archives are untrusted: every name inside them is checked to stay inside the archive, and every
blob an OCI layout names by digest is verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile

from .layers import LayerError, open_decompressed, split_member_name
from .reference import ReferenceError, parse_reference
from .registry import (
    INDEX_TYPES,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    RegistryError,
    host_architecture,
    parse_descriptor,
    parse_manifest,
    pick_platform,
)
from .store import Image, Store, StoreError

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MAX_JSON_BYTES = 16 << 20


class ArchiveError(Exception):
    """The archive is not a usable image archive; the message says what is wrong where."""


class _DirSource:
    def __init__(self, root: str):
        self.root = root

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def open(self, name: str):
        try:
            return open(self._path(name), "rb")
        except OSError as e:
            raise ArchiveError(f"{self.root}: cannot read {name!r}: {e.strerror}") from None

    def _path(self, name: str) -> str:
        try:
            return os.path.join(self.root, *split_member_name(name, self.root))
        except LayerError as e:
            raise ArchiveError(str(e)) from None


class _TarSource:
    def __init__(self, path: str):
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open until close()
        except (OSError, tarfile.TarError) as e:
            raise ArchiveError(f"{path}: not a readable tar archive: {e}") from None
        self._members = {}
        for m in self._tar.getmembers():
            with contextlib.suppress(LayerError):
                self._members["/".join(split_member_name(m.name, path))] = m

    def exists(self, name: str) -> bool:
        return self._key(name) in self._members

    def open(self, name: str):
        member = self._members.get(self._key(name))
        # tarfile resolves a link member to its target inside this same archive, never on disk.
        f = self._tar.extractfile(member) if member else None
        if f is None:
            raise ArchiveError(f"{self.path}: has no file {name!r}")
        return f

    def _key(self, name: str) -> str:
        try:
            return "/".join(split_member_name(name, self.path))
        except LayerError as e:
            raise ArchiveError(str(e)) from None

    def close(self) -> None:
        self._tar.close()


def _read_json(source, name: str, where: str):
    with source.open(name) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ArchiveError(f"{where}: {name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw), raw
    except ValueError as e:
        raise ArchiveError(f"{where}: {name} is not valid JSON: {e}") from None


def import_archive(store: Store, path: str, repository: str | None = None) -> list[Image]:
    """Imports every image in the archive at path (a `docker save` tarball or an OCI layout,
    as a directory or a tar) into `store`; `repository` names images an OCI layout tags with
    a bare tag."""
    with store.writing():
        return _import(store, path, repository)


def _import(store: Store, path: str, repository: str | None) -> list[Image]:
    source = _DirSource(path) if os.path.isdir(path) else _TarSource(path)
    try:
        if source.exists("oci-layout") and source.exists("index.json"):
            return _import_oci(store, source, path, repository)
        if source.exists("manifest.json"):
            return _import_docker(store, source, path)
        raise ArchiveError(f"{path}: neither a docker save archive (no manifest.json) nor an "
                           "OCI layout (no oci-layout and index.json)")
    except (RegistryError, ReferenceError, StoreError) as e:
        raise ArchiveError(f"importing {path}: {e}") from None
    finally:
        if isinstance(source, _TarSource):
            source.close()


def _import_docker(store: Store, source, path: str) -> list[Image]:
    entries, _ = _read_json(source, "manifest.json", path)
    if not isinstance(entries, list):
        raise ArchiveError(f"{path}: manifest.json is not a list of images")
    images = []
    for i, entry in enumerate(entries):
        where = f"{path}: manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or \
                not isinstance(entry.get("Layers"), list):
            raise ArchiveError(f"{where}: needs Config (a file name) and Layers (a list)")
        tags = entry.get("RepoTags") or []
        if not tags:
            raise ArchiveError(f"{where}: has no RepoTags, so the image would have no name")
        refs = [str(parse_reference(t)) for t in tags]
        with source.open(entry["Config"]) as f:
            config = store.put_blob(f, what="config")
        diff_ids = store.diff_ids(config, len(entry["Layers"]), where)
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids):
            with source.open(str(name)) as f:
                digest = store.put_blob(f, what=f"layer {name}")
            layers.append(Descriptor(_layer_type(store, digest), digest,
                                     os.path.getsize(store.blob_path(digest))))
            store.ensure_layer(digest, diff_id)
        manifest = _synthesize_manifest(store, config, layers)
        images += [store.add_image(ref, manifest) for ref in refs]
    return images


def _import_oci(store: Store, source, path: str, repository: str | None) -> list[Image]:
    index, _ = _read_json(source, "index.json", path)
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError(f"{path}: index.json has no manifests list")
    images = []
    for i, entry in enumerate(index["manifests"]):
        where = f"{path}: index.json manifests[{i}]"
        desc = parse_descriptor(entry, where)
        ref = _oci_name(entry.get("annotations") or {}, repository, where)
        manifest = _oci_manifest(store, source, desc, where)
        diff_ids = store.diff_ids(manifest.config.digest, len(manifest.layers), where)
        for layer, diff_id in zip(manifest.layers, diff_ids):
            if not os.path.isdir(store.layer_path(diff_id)):
                _put_verified(store, source, layer, where)
                store.ensure_layer(layer.digest, diff_id)
        images.append(store.add_image(ref, manifest))
    return images


def _oci_name(annotations: dict, repository: str | None, where: str) -> str:
    name = annotations.get(CONTAINERD_NAME) or annotations.get(OCI_REF_NAME)
    if not name:
        raise ArchiveError(f"{where}: has no {OCI_REF_NAME} annotation, so the image would "
                           "have no name")
    # The OCI spec lets ref.name be a bare tag; it then needs a repository from the caller.
    if "/" not in name and ":" not in name and "@" not in name:
        if not repository:
            raise ArchiveError(f"{where}: is named only by the tag {name!r}; pass a "
                               "repository to import it under")
        name = f"{repository}:{name}"
    return str(parse_reference(name))


def _oci_manifest(store: Store, source, desc: Descriptor, where: str) -> Manifest:
    raw = _read_blob(source, desc, where)
    doc = json.loads(raw)
    index_digest = None
    if desc.media_type in INDEX_TYPES or "manifests" in doc:
        index_digest = desc.digest
        desc = pick_platform(doc, host_architecture())
        raw = _read_blob(source, desc, where)
    manifest = parse_manifest(raw, desc.digest, desc.media_type, index_digest)
    store.put_blob(io.BytesIO(raw), desc.digest, "manifest")
    _put_verified(store, source, manifest.config, where)
    return manifest


def _read_blob(source, desc: Descriptor, where: str) -> bytes:
    with source.open(_blob_name(desc)) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if "sha256:" + hashlib.sha256(raw).hexdigest() != desc.digest:
        raise ArchiveError(f"{where}: blob {desc.digest} failed verification")
    try:
        json.loads(raw)
    except ValueError as e:
        raise ArchiveError(f"{where}: blob {desc.digest} is not valid JSON: {e}") from None
    return raw


def _put_verified(store: Store, source, desc: Descriptor, where: str) -> None:
    if not store.has_blob(desc.digest):
        with source.open(_blob_name(desc)) as f:
            store.put_blob(f, desc.digest, f"{where}: blob")


def _blob_name(desc: Descriptor) -> str:
    return "blobs/sha256/" + desc.digest.split(":", 1)[1]


def _layer_type(store: Store, digest: str) -> str:
    with open(store.blob_path(digest), "rb") as f:
        try:
            gz = open_decompressed(f, digest) is not f
        except LayerError as e:
            raise ArchiveError(str(e)) from None
    return OCI_LAYER_GZIP if gz else OCI_LAYER


def _synthesize_manifest(store: Store, config: str, layers: list[Descriptor]) -> Manifest:
    """docker save has no manifest; an equivalent OCI one gives every image the same record."""
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": config,
                      "size": os.path.getsize(store.blob_path(config))},
           "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                      for d in layers]}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    digest = store.put_blob(io.BytesIO(raw), what="manifest")
    return parse_manifest(raw, digest, OCI_MANIFEST)
