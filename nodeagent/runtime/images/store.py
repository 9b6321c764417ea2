"""The node's content-addressed image store: verified blobs, layers unpacked once and shared by
every image, and one record per image reference.

Layout under the root:
  blobs/sha256/<hex>           verified content; written to tmp/ and renamed in
  layers/<diffid-hex>/rootfs   an unpacked layer; appears only when fully unpacked
  images/<sha256 of ref>.json  reference -> manifest, config and ordered layers (bottom first);
                               a build machine also records images by ID ("sha256:<config>")
  locks/                       flock files: one per layer being unpacked, one for the store
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .layers import DEFAULT_LIMITS, LayerError, Limits, unpack_layer
from .reference import ReferenceError, parse_reference
from .registry import Manifest, ProgressFn, RegistryClient, RegistryConfig, RegistryError

_CHUNK = 1 << 20
_RECORD_VERSION = 1
# An image ID (the config's digest) names an image with no tag, as Docker's IDs do.
IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
_SIZE_FILE = "size"


class StoreError(Exception):
    """An image could not be pulled, imported or read; the message says which and why."""


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The run defaults an image carries (the "config" object of its config JSON)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp", sorted
    architecture: str = ""
    os: str = ""

    @classmethod
    def from_json(cls, doc: dict) -> ImageConfig:
        cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        ports = cfg.get("ExposedPorts")
        return cls(entrypoint=_strings(cfg.get("Entrypoint")), cmd=_strings(cfg.get("Cmd")),
                   env=_strings(cfg.get("Env")), working_dir=str(cfg.get("WorkingDir") or ""),
                   user=str(cfg.get("User") or ""),
                   exposed_ports=tuple(sorted(ports)) if isinstance(ports, dict) else (),
                   architecture=str(doc.get("architecture", "")), os=str(doc.get("os", "")))


@dataclass(frozen=True, slots=True)
class Image:
    reference: str  # normalised, e.g. docker.io/library/busybox:1.36
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]  # blobs, bottom layer first
    diff_ids: tuple[str, ...]  # bottom layer first, as in the image config
    config: ImageConfig
    layers_root: str
    index_digest: str | None = None  # the multi-arch index the manifest was picked from
    parent: str | None = None  # a built image: the ID of the image it was built on

    def layer_dirs(self) -> list[str]:
        """Absolute unpacked rootfs dirs, TOP layer first: the order overlayfs lowerdir wants."""
        return [os.path.join(self.layers_root, d.split(":", 1)[1], "rootfs")
                for d in reversed(self.diff_ids)]


def _record_name(reference: str) -> str:
    return hashlib.sha256(reference.encode()).hexdigest() + ".json"


def record_key(ref: str) -> str:
    """What a record is stored under: an image ID as it is, a reference normalised."""
    return ref if IMAGE_ID_RE.fullmatch(ref) else str(parse_reference(ref))


class Store:
    """Images on this node. Pulls and imports may run concurrently (threads or processes);
    gc waits for them and they for it."""

    def __init__(self, root: str, limits: Limits = DEFAULT_LIMITS):
        self.root = os.path.abspath(root)
        self.limits = limits
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        self.images_dir = os.path.join(self.root, "images")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.locks_dir = os.path.join(self.root, "locks")
        for d in (self.blobs_dir, self.layers_dir, self.images_dir, self.tmp_dir,
                  self.locks_dir):
            os.makedirs(d, exist_ok=True)

    # ---- reading ----

    def get(self, ref: str) -> Image | None:
        """The image stored under ref; a digest reference also finds an image pulled by tag."""
        if IMAGE_ID_RE.fullmatch(ref):
            record = self._read_record(os.path.join(self.images_dir, _record_name(ref)))
            return self._image(record) if record else None
        parsed = parse_reference(ref)
        record = self._read_record(os.path.join(self.images_dir, _record_name(str(parsed))))
        if record is None and parsed.digest:
            record = next((r for r in self._records() if r["reference"].startswith(
                parsed.name + ":") and parsed.digest in (r["manifest"], r.get("index"))), None)
        return self._image(record) if record else None

    def list(self) -> list[Image]:
        return [self._image(r) for r in self._records()]

    def _records(self) -> Iterator[dict]:
        for name in sorted(os.listdir(self.images_dir)):
            if name.endswith(".json"):
                record = self._read_record(os.path.join(self.images_dir, name))
                if record:
                    yield record

    def _read_record(self, path: str) -> dict | None:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise StoreError(f"image record {path} is corrupt: {e}") from None

    def _image(self, record: dict) -> Image:
        config_doc = self._blob_json(record["config"], f"config of {record['reference']}")
        return Image(record["reference"], record["manifest"], record["config"],
                     tuple(record["layers"]), tuple(record["diff_ids"]),
                     ImageConfig.from_json(config_doc), self.layers_dir, record.get("index"),
                     record.get("parent"))

    def _blob_json(self, digest: str, what: str) -> dict:
        try:
            with open(self.blob_path(digest), "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise StoreError(f"{what} ({digest}) cannot be read from the store: {e}") from None
        if not isinstance(doc, dict):
            raise StoreError(f"{what} ({digest}) is not a JSON object")
        return doc

    # ---- blobs and layers (also used by archive imports) ----

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, digest.split(":", 1)[1])

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, diff_id.split(":", 1)[1])

    def put_blob(self, stream, expected: str | None = None, what: str = "blob") -> str:
        """Copies stream into the store, verifying expected if given; returns the digest."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=".blob-")
        try:
            sha = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
            digest = "sha256:" + sha.hexdigest()
            if expected and digest != expected:
                raise StoreError(f"{what} {expected} failed verification: its content has "
                                 f"digest {digest}")
            self.commit_blob(tmp, digest)
            return digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def commit_blob(self, verified_tmp: str, digest: str) -> None:
        # Concurrent writers of one blob rename identical bytes; the last rename wins harmlessly.
        os.rename(verified_tmp, self.blob_path(digest))

    def ensure_layer(self, blob_digest: str, diff_id: str) -> None:
        """Unpacks the blob as layer diff_id unless it already is; exactly one concurrent
        caller unpacks, and a layer whose content does not match diff_id is never kept.
        Callers hold writing(), or gc could take the half-made layer for crash debris."""
        final = self.layer_path(diff_id)
        if os.path.isdir(final):
            return
        with self._flock(f"layer-{diff_id.split(':', 1)[1]}", fcntl.LOCK_EX):
            if os.path.isdir(final):
                return
            tmp = os.path.join(self.layers_dir, f".tmp-{uuid.uuid4().hex}")
            os.mkdir(tmp)
            try:
                result = unpack_layer(self.blob_path(blob_digest), os.path.join(tmp, "rootfs"),
                                      self.limits)
                if result.diff_id != diff_id:
                    raise StoreError(f"layer {blob_digest} unpacks to {result.diff_id}, but the "
                                     f"image config says {diff_id}")
                os.rename(tmp, final)
            except LayerError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StoreError(str(e)) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def diff_ids(self, config_digest: str, n_layers: int, where: str) -> list[str]:
        """The config's rootfs.diff_ids, checked to be n_layers well-formed digests."""
        return _diff_ids(self._blob_json(config_digest, f"config of {where}"), n_layers, where)

    def adopt_layer(self, tree: str, diff_id: str) -> bool:
        """Moves tree (a layer already unpacked, in lowerdir form, on this filesystem) in as
        layer diff_id; False, leaving tree alone, if the layer is here already or tree is on
        another filesystem. The caller vouches that tree is what diff_id unpacks to."""
        final = self.layer_path(diff_id)
        if os.path.isdir(final):
            return False
        with self._flock(f"layer-{diff_id.split(':', 1)[1]}", fcntl.LOCK_EX):
            if os.path.isdir(final):
                return False
            tmp = os.path.join(self.layers_dir, f".tmp-{uuid.uuid4().hex}")
            os.mkdir(tmp)
            try:
                os.rename(tree, os.path.join(tmp, "rootfs"))
            except OSError as e:
                os.rmdir(tmp)
                if e.errno == errno.EXDEV:
                    return False
                raise
            os.rename(tmp, final)
            return True

    def layer_size(self, diff_id: str) -> int:
        """Bytes of the unpacked layer's files (hard links counted once), remembered beside it."""
        path = os.path.join(self.layer_path(diff_id), _SIZE_FILE)
        try:
            with open(path) as f:
                return int(f.read())
        except (OSError, ValueError):
            pass
        size = _disk_usage(os.path.join(self.layer_path(diff_id), "rootfs"))
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=".size-")
        with os.fdopen(fd, "w") as f:
            f.write(str(size))
        try:
            os.rename(tmp, path)
        except OSError:  # the layer (or, by gc, the temp file) was removed meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    def add_image(self, reference: str, manifest: Manifest, parent: str | None = None) -> Image:
        """Records reference (or an image ID) -> manifest once its config and every layer are
        in the store; parent is the ID of the image a built image was made from."""
        diff_ids = self.diff_ids(manifest.config.digest, len(manifest.layers), reference)
        for diff_id in diff_ids:
            if not os.path.isdir(self.layer_path(diff_id)):
                raise StoreError(f"{reference}: layer {diff_id} is not unpacked")
        record = {"version": _RECORD_VERSION, "reference": reference,
                  "manifest": manifest.digest, "index": manifest.index_digest,
                  "config": manifest.config.digest,
                  "layers": [layer.digest for layer in manifest.layers], "diff_ids": diff_ids}
        if parent:
            record["parent"] = parent
        path = os.path.join(self.images_dir, _record_name(reference))
        fd, tmp = tempfile.mkstemp(dir=self.images_dir, prefix=".record-")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.rename(tmp, path)
        return self._image(record)

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int):
        fd = os.open(os.path.join(self.locks_dir, name + ".lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def writing(self):
        """Held while adding content, so gc never deletes what is not yet recorded."""
        return self._flock("store", fcntl.LOCK_SH)

    # ---- pulling ----

    def pull(self, ref: str, registry_config: RegistryConfig | None = None,
             progress: ProgressFn | None = None) -> Image:
        """Pulls ref (skipping blobs and layers already here) and records it under ref."""
        try:
            parsed = parse_reference(ref)
            client = RegistryClient(registry_config or RegistryConfig())
            with self.writing():
                endpoint, manifest = client.fetch_manifest(parsed)
                self.put_blob(io.BytesIO(manifest.raw), manifest.digest, "manifest")
                if not self.has_blob(manifest.config.digest):
                    self.commit_blob(client.fetch_blob(endpoint, parsed, manifest.config,
                                                       self.tmp_dir), manifest.config.digest)
                diff_ids = self.diff_ids(manifest.config.digest, len(manifest.layers),
                                         str(parsed))
                for layer, diff_id in zip(manifest.layers, diff_ids):
                    if os.path.isdir(self.layer_path(diff_id)):
                        continue  # unpacked layers are verified; the blob is not needed again
                    if not self.has_blob(layer.digest):
                        self.commit_blob(client.fetch_blob(endpoint, parsed, layer, self.tmp_dir,
                                                           progress), layer.digest)
                    self.ensure_layer(layer.digest, diff_id)
                return self.add_image(str(parsed), manifest)
        except (ReferenceError, RegistryError, StoreError, OSError) as e:
            raise StoreError(f"pulling {ref}: {e}") from None

    # ---- removing ----

    def remove(self, ref: str) -> bool:
        """Forgets ref; its blobs and layers stay until gc finds them unreferenced."""
        path = os.path.join(self.images_dir, _record_name(record_key(ref)))
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def gc(self, keep_refs: Iterable[str] | None, in_use_layer_dirs: Iterable[str] = ()) -> int:
        """Removes images not in keep_refs (None keeps every image, even one recorded while gc
        waited for the lock), then every blob and layer no remaining image (and no running
        container, named by in_use_layer_dirs) uses; returns bytes freed."""
        keep = None if keep_refs is None else {record_key(r) for r in keep_refs}
        in_use = {_layer_name(d) for d in in_use_layer_dirs}
        with self._flock("store", fcntl.LOCK_EX):
            live_blobs: set[str] = set()
            live_layers = set(in_use)
            for record in list(self._records()):
                if keep is not None and record["reference"] not in keep:
                    os.unlink(os.path.join(self.images_dir, _record_name(record["reference"])))
                    continue
                for digest in (record["manifest"], record["config"], *record["layers"]):
                    live_blobs.add(digest.split(":", 1)[1])
                live_layers.update(d.split(":", 1)[1] for d in record["diff_ids"])
            freed = 0
            for name in os.listdir(self.blobs_dir):
                if name not in live_blobs:
                    freed += _disk_usage(os.path.join(self.blobs_dir, name))
                    os.unlink(os.path.join(self.blobs_dir, name))
            for name in os.listdir(self.layers_dir):
                if name not in live_layers and not name.startswith("."):
                    freed += _disk_usage(os.path.join(self.layers_dir, name))
                    shutil.rmtree(os.path.join(self.layers_dir, name))
            # Nothing writes while we hold the store lock, so any temp file is a crash leftover
            # and no one holds or waits for a layer lock.
            for d in (self.tmp_dir, self.layers_dir):
                for name in os.listdir(d):
                    if name.startswith("."):
                        freed += _disk_usage(os.path.join(d, name))
                        _remove(os.path.join(d, name))
            for name in os.listdir(self.locks_dir):
                if name.startswith("layer-") and name[6:-5] not in live_layers:
                    _remove(os.path.join(self.locks_dir, name))
            return freed


def _diff_ids(config: dict, n_layers: int, where: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
            isinstance(d, str) and len(d) == 71 and d.startswith("sha256:") and
            all(c in "0123456789abcdef" for c in d[7:]) for d in diff_ids):
        raise StoreError(f"{where}: image config has no valid rootfs.diff_ids")
    if len(diff_ids) != n_layers:
        raise StoreError(f"{where}: image config lists {len(diff_ids)} diff_ids but the "
                         f"manifest has {n_layers} layers")
    return diff_ids


def _layer_name(path: str) -> str:
    """layers/<hex>/rootfs or layers/<hex> -> <hex>."""
    path = os.path.abspath(path)
    return os.path.basename(os.path.dirname(path) if path.endswith("/rootfs") else path)


def _disk_usage(path: str) -> int:
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_size
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

