"""Builders for test images made offline from Debian's busybox-static: layer tars, configs,
manifests, and writers for `docker save` tarballs, OCI layouts and pushes to a real registry.

Everything is deterministic (fixed mtimes, gzip without timestamps), so the same layer built
twice has the same digest and two images can share it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "httpd", "hostname", "id", "env", "wget",
           "nslookup", "true", "false", "ps", "mkdir", "rm", "cp", "mv", "test", "grep", "sed",
           "head", "tail", "printf", "pwd", "uname", "date", "kill", "nc", "touch", "stat",
           "readlink", "ip", "ping", "wc", "sort", "uniq", "tr", "cut", "dd", "df", "du", "find",
           "xargs", "tee", "mount", "umount", "ln", "chmod", "chown", "whoami", "seq", "yes")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MTIME = 1_700_000_000

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_PLAIN = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One tar member; kind is file, dir, sym, hard, fifo, chr, or dev0 (an overlay whiteout)."""

    name: str
    data: bytes = b""
    link: str = ""
    kind: str = "file"
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    major: int = 0
    minor: int = 0


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
          "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE,
          "dev0": tarfile.CHRTYPE}


def layer_tar(entries: Iterable[TarEntry]) -> bytes:
    """An uncompressed tar with exactly these members, in order, names as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid, info.mtime = e.uid, e.gid, e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.major, e.minor
            info.size = len(e.data) if e.kind == "file" else 0
            tf.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _busybox_bytes() -> bytes:
    with open(BUSYBOX, "rb") as f:
        return f.read()


def busybox_rootfs() -> list[TarEntry]:
    """bin/busybox with applet symlinks, a minimal /etc, and the usual empty dirs."""
    entries = [TarEntry(d, kind="dir") for d in ("bin", "etc", "root", "proc", "sys", "dev",
                                                 "var", "var/www", "usr", "usr/bin")]
    entries.append(TarEntry("tmp", kind="dir", mode=0o1777))
    entries.append(TarEntry("bin/busybox", _busybox_bytes(), mode=0o755))
    entries += [TarEntry(f"bin/{a}", link="busybox", kind="sym") for a in APPLETS]
    entries.append(TarEntry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                          b"nobody:x:65534:65534:nobody:/:/bin/false\n"))
    entries.append(TarEntry("etc/group", b"root:x:0:\nnogroup:x:65534:\n"))
    entries.append(TarEntry("etc/motd", b"base layer\n"))
    return entries


def whiteout_layer() -> list[TarEntry]:
    """A second layer that deletes etc/motd, empties var/www, and adds etc/hello."""
    return [TarEntry("etc", kind="dir"), TarEntry("etc/.wh.motd"),
            TarEntry("etc/hello", b"from layer 2\n"),
            TarEntry("var/www", kind="dir"), TarEntry("var/www/.wh..wh..opq"),
            TarEntry("var/www/index.html", b"<p>hi</p>\n")]


@dataclass(frozen=True, slots=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}


@dataclass(frozen=True, slots=True)
class TestImage:
    """A single-platform image: config and layer blobs, and its manifest in either format."""

    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    oci: bool = False
    extra_blobs: tuple[Blob, ...] = field(default=())

    @property
    def manifest(self) -> Blob:
        doc = {"schemaVersion": 2,
               "mediaType": OCI_MANIFEST if self.oci else DOCKER_MANIFEST,
               "config": self.config.descriptor(),
               "layers": [layer.descriptor() for layer in self.layers]}
        return Blob(doc["mediaType"], json.dumps(doc, indent=1).encode())


def make_image(layers: Sequence[Sequence[TarEntry]] | None = None, *, oci: bool = False,
               cmd: Sequence[str] | None = ("sh",), entrypoint: Sequence[str] | None = None,
               env: Sequence[str] = (f"PATH={PATH}",), user: str = "", workdir: str = "/",
               exposed_ports: Sequence[str] = (), arch: str = "amd64",
               compress: bool = True) -> TestImage:
    """An image of the busybox rootfs (or the given layers, bottom first)."""
    layers = [busybox_rootfs()] if layers is None else layers
    tars = [layer_tar(entries) for entries in layers]
    config = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Cmd": list(cmd) if cmd is not None else None,
                         "Env": list(env), "WorkingDir": workdir, "User": user},
              "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]}}
    if entrypoint is not None:
        config["config"]["Entrypoint"] = list(entrypoint)
    if exposed_ports:
        config["config"]["ExposedPorts"] = {p: {} for p in exposed_ports}
    if compress:
        kind = OCI_LAYER if oci else DOCKER_LAYER
        blobs = [Blob(kind, gzip.compress(t, mtime=0)) for t in tars]
    else:
        blobs = [Blob(OCI_LAYER_PLAIN if oci else "application/vnd.docker.image.rootfs.diff.tar",
                      t) for t in tars]
    return TestImage(Blob(OCI_CONFIG if oci else DOCKER_CONFIG, json.dumps(config).encode()),
                     tuple(blobs), tuple(config["rootfs"]["diff_ids"]), oci)


def index_of(images: Sequence[TestImage], oci: bool = True) -> Blob:
    """A multi-arch index (or Docker manifest list) over images, each with its platform."""
    entries = []
    for image in images:
        arch = json.loads(image.config.data)["architecture"]
        entries.append(image.manifest.descriptor(platform={"architecture": arch, "os": "linux"}))
    media = OCI_INDEX if oci else DOCKER_LIST
    return Blob(media, json.dumps({"schemaVersion": 2, "mediaType": media,
                                   "manifests": entries}).encode())


# ---- writers ----

def write_docker_save(path: str, image: TestImage, repo_tags: Sequence[str]) -> None:
    """A `docker save`-style tarball: manifest.json, <id>.json, <layer>/layer.tar (plain)."""
    files: dict[str, bytes] = {}
    config_name = image.config.digest.split(":")[1] + ".json"
    files[config_name] = image.config.data
    layer_names = []
    for layer in image.layers:
        raw = gzip.decompress(layer.data) if layer.data[:2] == b"\x1f\x8b" else layer.data
        name = f"{sha256(raw).split(':')[1]}/layer.tar"
        files[name] = raw
        layer_names.append(name)
    files["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": list(repo_tags),
                                          "Layers": layer_names}]).encode()
    _write_tar(path, files)


def busybox_tar(directory: str, repo_tags: Sequence[str] = ("busybox:test",)) -> str:
    """directory/busybox.tar: the busybox image, `docker save`d under `repo_tags`."""
    path = os.path.join(directory, "busybox.tar")
    write_docker_save(path, make_image(), repo_tags)
    return path


def write_oci_layout(path: str, image: TestImage, ref_name: str, as_tar: bool = False) -> None:
    """An OCI image layout (a dir, or a tar of one) whose index names the image ref_name."""
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    manifest = image.manifest
    for blob in (image.config, *image.layers, manifest):
        files["blobs/sha256/" + blob.digest.split(":")[1]] = blob.data
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest.descriptor(
        annotations={"org.opencontainers.image.ref.name": ref_name})]}
    files["index.json"] = json.dumps(index).encode()
    if as_tar:
        _write_tar(path, files)
        return
    for name, data in files.items():
        full = os.path.join(path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)


def _write_tar(path: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tf.addfile(info, io.BytesIO(data))


# ---- a real registry ----

_BASIC: dict[str, str] = {}


def _request(url: str, method: str, data: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request; credentials in the URL (http://user:password@host) go as Basic
    auth, for a registry that requires it."""
    headers = dict(headers or {})
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    if parts.username:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        # Kept for the upload URLs the registry hands back, which carry no credentials.
        _BASIC[host] = "Basic " + base64.b64encode(pair.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=host))
    if host in _BASIC:
        headers["Authorization"] = _BASIC[host]
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


def push_blob(registry_url: str, name: str, blob: Blob) -> None:
    status, headers, _ = _request(f"{registry_url}/v2/{name}/blobs/uploads/", "POST", b"")
    assert status == 202, status
    location = urllib.parse.urljoin(registry_url + "/", headers["Location"])
    sep = "&" if "?" in location else "?"
    _request(f"{location}{sep}digest={urllib.parse.quote(blob.digest)}", "PUT", blob.data,
             {"Content-Type": "application/octet-stream"})


def push_manifest(registry_url: str, name: str, reference: str, manifest: Blob) -> str:
    _request(f"{registry_url}/v2/{name}/manifests/{reference}", "PUT", manifest.data,
             {"Content-Type": manifest.media_type})
    return manifest.digest


def push(registry_url: str, name: str, tag: str, image: TestImage,
         multiarch_with: TestImage | None = None, oci_index: bool = True) -> str:
    """Uploads image (and, for a multi-arch index, another platform's image) under name:tag;
    returns the digest the tag points at."""
    images = [image] + ([multiarch_with] if multiarch_with else [])
    for img in images:
        for blob in (img.config, *img.layers):
            push_blob(registry_url, name, blob)
        if multiarch_with:
            push_manifest(registry_url, name, img.manifest.digest, img.manifest)
    if multiarch_with:
        return push_manifest(registry_url, name, tag, index_of(images, oci=oci_index))
    return push_manifest(registry_url, name, tag, image.manifest)
