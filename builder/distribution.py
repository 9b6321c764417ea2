"""Push and pull between the build machine's image store and registries, per the OCI
distribution spec.

A push sends each layer and the config unless the registry has it (HEAD), mounts it from
another repository of the same registry when we know one holds it (POST ?mount=&from=), else
uploads it (POST, then one PUT ?digest= streamed from the file, or PATCH chunks with
Content-Range for big blobs and a closing PUT); the manifest goes last, under the tag. Layers
go up in parallel (as Docker: up to 5 at once), each thread on its own persistent connection.
Where blobs were pushed or pulled from is remembered per registry in the store
(blob-sources.json) so that later pushes can mount rather than upload.

Progress lines are Docker's: `<short id>: Pushed|Layer already exists|Mounted from <repo>`, then
`<tag>: digest: sha256:... size: N`; pulls print `<short id>: Pull complete|Already exists`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable

from builder import registries
from builder.errors import BuildError
from builder.registryhttp import FileSlice, RegistryHTTPError, Session, file_size
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.registry import (
    OCI_MANIFEST,
    Descriptor,
    RegistryConfig,
    RegistryError,
    parse_manifest,
)
from nodeagent.runtime.images.store import Image, Store, StoreError

LineFn = Callable[[str], None]
PARALLEL = 5  # Docker's max-concurrent-uploads default
CHUNKED_ABOVE = 512 << 20  # blobs bigger than this go up in PATCH chunks
CHUNK_SIZE = 64 << 20
MOUNT_TRIES = 3  # other repositories tried as a mount source before uploading
SOURCES_FILE = "blob-sources.json"
MAX_SOURCES = 20000  # blob records kept per registry (oldest dropped)

EXISTS, PUSHED = "Layer already exists", "Pushed"


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


# ---- where blobs are ----

class BlobSources:
    """{registry host: {digest: [repository, ...]}} in the store, newest repository last."""

    def __init__(self, store: Store):
        self.path = os.path.join(store.root, SOURCES_FILE)

    def load(self, host: str) -> dict[str, list[str]]:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        found = doc.get(host) if isinstance(doc, dict) else None
        return found if isinstance(found, dict) else {}

    def add(self, host: str, repository: str, digests) -> None:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {}
            table = doc.setdefault(host, {}) if isinstance(doc, dict) else {}
            for digest in digests:
                repos = [r for r in table.pop(digest, []) if r != repository]
                table[digest] = (repos + [repository])[-4:]
            while len(table) > MAX_SOURCES:
                table.pop(next(iter(table)))
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.rename(tmp, self.path)
        finally:
            os.close(fd)


# ---- push ----

def _manifest_of(store: Store, image: Image, where: str) -> tuple[bytes, str, list[Descriptor]]:
    try:
        with open(store.blob_path(image.manifest_digest), "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BuildError(f"{where}: the image's manifest {image.manifest_digest} is not in the "
                         f"store ({e.strerror})") from None
    try:
        manifest = parse_manifest(raw, image.manifest_digest)
    except RegistryError as e:
        raise BuildError(f"{where}: the image's manifest: {e}") from None
    return raw, manifest.media_type or OCI_MANIFEST, [manifest.config, *manifest.layers]


def push(store: Store, image: Image, reference: str, config: RegistryConfig,
         progress: LineFn | None = None, *, chunked_above: int = CHUNKED_ABOVE,
         chunk_size: int = CHUNK_SIZE, parallel: int = PARALLEL) -> str:
    """Pushes image as reference (its tag, default latest); returns the manifest digest.
    BuildError (`push <reference>: <what the registry said>`) on any failure."""
    where = f"push {reference}"
    say = progress or (lambda _line: None)
    try:
        ref = parse_reference(reference)
    except ReferenceError as e:
        raise BuildError(f"{where}: {e}") from None
    if ref.digest:
        raise BuildError(f"{where}: cannot push to a digest; give a tag (NAME:TAG)")
    tag = ref.tag or "latest"
    endpoint = registries.push_endpoint(config, ref.domain)
    raw, media_type, blobs = _manifest_of(store, image, where)
    sources = BlobSources(store)
    known = sources.load(endpoint.host)
    candidates = {b.digest: [r for r in reversed(known.get(b.digest, []))
                             if r != ref.repository][:MOUNT_TRIES] for b in blobs}
    mount_repos = sorted({r for rs in candidates.values() for r in rs})
    scopes = [f"repository:{ref.repository}:pull,push"] + [
        f"repository:{r}:pull" for r in mount_repos]
    session = Session(config, endpoint, ref.domain, scopes)
    uploader = _Uploader(session, store, ref.repository, chunked_above, chunk_size)
    try:
        say(f"The push refers to repository [{ref.name}]")
        session.request("GET", session.url("/v2/"), ok=(200,), what="GET /v2/")
        _upload_all(uploader, blobs, candidates, parallel, say)
        resp = session.request("PUT", session.url(f"/v2/{ref.repository}/manifests/{tag}"),
                               body=raw, headers={"Content-Type": media_type,
                                                  "Content-Length": str(len(raw))},
                               ok=(200, 201), what="PUT manifest")
    except RegistryHTTPError as e:
        raise BuildError(f"{where}: {e}") from None
    finally:
        session.close()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    answered = resp.header("Docker-Content-Digest")
    if answered and answered != digest:
        raise BuildError(f"{where}: the registry says the manifest has digest {answered}, but "
                         f"we sent {digest}")
    sources.add(endpoint.host, ref.repository, [b.digest for b in blobs])
    say(f"{tag}: digest: {digest} size: {len(raw)}")
    return digest


def _upload_all(uploader: _Uploader, blobs: list[Descriptor], candidates: dict,
                parallel: int, say: LineFn) -> None:
    """Every blob, `parallel` at once; a line per layer as each finishes (none for the config,
    as Docker). The first failure cancels what has not started and is raised."""
    config_blob = blobs[0]
    pool = concurrent.futures.ThreadPoolExecutor(max(1, min(parallel, len(blobs))),
                                                 thread_name_prefix="push")
    try:
        futures = {pool.submit(uploader.blob, b, candidates[b.digest]): b for b in blobs}
        for future in concurrent.futures.as_completed(futures):
            blob, outcome = futures[future], future.result()
            if blob is not config_blob:
                say(f"{short(blob.digest)}: {outcome}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Uploader:
    def __init__(self, session: Session, store: Store, repository: str, chunked_above: int,
                 chunk_size: int):
        self.s = session
        self.store = store
        self.repo = repository
        self.chunked_above = chunked_above
        self.chunk_size = chunk_size

    def blob(self, desc: Descriptor, mount_from: list[str]) -> str:
        s, digest = self.s, desc.digest
        head = s.request("HEAD", s.url(f"/v2/{self.repo}/blobs/{digest}"), ok=(200, 404),
                         what=f"HEAD blob {short(digest)}")
        if head.status == 200:
            return EXISTS
        location = ""
        for source in mount_from:
            query = urllib.parse.urlencode({"mount": digest, "from": source})
            resp = s.request("POST", s.url(f"/v2/{self.repo}/blobs/uploads/?{query}"),
                             ok=(201, 202), what=f"mount {short(digest)}")
            if resp.status == 201:
                return f"Mounted from {source}"
            location = resp.header("Location")  # not there: an upload was started instead
            if location:
                break
        path = self.store.blob_path(digest)
        try:
            size = file_size(path)
        except FileNotFoundError:
            raise RegistryHTTPError(f"blob {digest} is not in the build machine's store (its "
                                    "layer was unpacked from another image's download); "
                                    "rebuild or pull the image again") from None
        if size != desc.size:
            raise RegistryHTTPError(f"blob {digest} in the store is {size} bytes, its "
                                    f"manifest says {desc.size}")
        if not location:
            resp = s.request("POST", s.url(f"/v2/{self.repo}/blobs/uploads/"), ok=(202,),
                             what=f"start upload of {short(digest)}")
            location = resp.header("Location")
        if not location:
            raise RegistryHTTPError("the registry started an upload without a Location")
        if size > self.chunked_above:
            location = self._chunks(s.resolve(location), path, size, digest)
        else:
            with open(path, "rb") as f:
                s.request("PUT", _with_digest(s.resolve(location), digest), body=f,
                          headers={"Content-Type": "application/octet-stream",
                                   "Content-Length": str(size)},
                          ok=(201,), what=f"upload of {short(digest)}")
            return PUSHED
        s.request("PUT", _with_digest(location, digest), ok=(201,),
                  what=f"closing upload of {short(digest)}")
        return PUSHED

    def _chunks(self, location: str, path: str, size: int, digest: str) -> str:
        offset = 0
        while offset < size:
            length = min(self.chunk_size, size - offset)
            with FileSlice(path, offset, length) as body:
                resp = self.s.request(
                    "PATCH", location, body=body,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(length),
                             "Content-Range": f"{offset}-{offset + length - 1}"},
                    ok=(202,), what=f"chunk at {offset} of {short(digest)}")
            offset += length
            location = self.s.resolve(resp.header("Location") or location)
        return location


def _with_digest(location: str, digest: str) -> str:
    sep = "&" if urllib.parse.urlsplit(location).query else "?"
    return f"{location}{sep}digest={urllib.parse.quote(digest)}"


# ---- pull ----

def pull(store: Store, reference: str, config: RegistryConfig,
         progress: LineFn | None = None) -> Image:
    """Store.pull with the build machine's settings and Docker's progress lines; remembers
    where the blobs came from (for later mounts)."""
    say = progress or (lambda _line: None)
    try:
        ref = parse_reference(reference)
    except ReferenceError as e:
        raise BuildError(f"pull {reference}: {e}") from None
    say(f"{ref.digest or ref.tag or 'latest'}: Pulling from {ref.repository}")
    downloaded: set[str] = set()

    def on_progress(p) -> None:
        if p.done >= p.total and p.digest not in downloaded:
            downloaded.add(p.digest)
            say(f"{short(p.digest)}: Pull complete")

    try:
        image = store.pull(reference, config, on_progress)
    except StoreError as e:
        message = str(e)
        prefix = f"pulling {reference}: "
        raise BuildError(f"pull {reference}: "
                         f"{message[len(prefix):] if message.startswith(prefix) else message}"
                         ) from None
    for digest in image.layer_digests:
        if digest not in downloaded:
            say(f"{short(digest)}: Already exists")
    with contextlib.suppress(OSError):
        BlobSources(store).add(registries.push_endpoint(config, ref.domain).host,
                               ref.repository, [image.config_digest, *image.layer_digests])
    return image
