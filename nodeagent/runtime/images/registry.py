"""A client for the registry distribution API v2: manifests, platform selection, verified blob
downloads, bearer/basic auth, and mirrors tried in order before the upstream registry.

Plain HTTP is used only for registries the configuration lists as insecure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import platform
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .auth import (  # noqa: F401 - Credentials, Endpoint, describe_network: this module's API too
    AuthError,
    Authorizer,
    Credentials,
    Endpoint,
    describe_network,
    is_loopback,
    parse_challenge,
)
from .reference import DOCKER_HUB, DOCKER_HUB_API_HOST, Reference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
# Layer media types we can unpack; zstd and foreign (non-distributable) layers are refused.
LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar",
})
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20  # configs are read whole into memory
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20
# A digest becomes a file name in the store, so only this exact shape is ever accepted.
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _pull_secret_advice(host: str) -> str:
    return f"give the pod an imagePullSecrets Secret (kubernetes.io/dockerconfigjson) for {host}"


class RegistryError(Exception):
    """A registry could not give us what we asked for; the message says what and where."""


def host_architecture() -> str:
    machine = platform.machine().lower()
    return _ARCHES.get(machine, machine)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Like Docker's daemon.json registry settings: keys are registry names such as docker.io
    or localhost:5000; mirrors are "host[:port]" or "scheme://host[:port]" URLs."""

    mirrors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    timeout: float = DEFAULT_TIMEOUT
    architecture: str = field(default_factory=host_architecture)
    # Docker's default: registries on localhost or 127.0.0.0/8 speak plain HTTP (the build
    # machine's setting; agents list every insecure registry).
    insecure_loopback: bool = False

    def __post_init__(self) -> None:
        for domain in self.mirrors:
            self.endpoints(domain)  # a bad mirror fails here, at configuration time

    def endpoints(self, domain: str) -> list[Endpoint]:
        """Where to look for an image of this registry: its mirrors in order, then itself."""
        found = [self._mirror(url, domain) for url in self.mirrors.get(domain, ())]
        host = DOCKER_HUB_API_HOST if domain == DOCKER_HUB else domain
        scheme = "http" if self.is_insecure(domain) or self.is_insecure(host) else "https"
        return found + [Endpoint(f"{scheme}://{host}", host, mirror=False)]

    def _mirror(self, url: str, domain: str) -> Endpoint:
        parsed = urllib.parse.urlsplit(url if "://" in url else "//" + url)
        if not parsed.netloc or parsed.scheme not in ("", "http", "https"):
            raise RegistryError(f"mirror {url!r} for {domain}: want host[:port] or an "
                                "http(s):// URL")
        insecure = self.is_insecure(parsed.netloc)
        if parsed.scheme == "http" and not insecure:
            raise RegistryError(f"mirror {url} for {domain} uses plain HTTP but "
                                f"{parsed.netloc} is not listed as an insecure registry")
        scheme = parsed.scheme or ("http" if insecure else "https")
        return Endpoint(f"{scheme}://{parsed.netloc}{parsed.path.rstrip('/')}", parsed.netloc,
                        mirror=True)

    def is_insecure(self, host: str) -> bool:
        return host in self.insecure or (self.insecure_loopback and is_loopback(host))

    def credentials_for(self, host: str, domain: str) -> Credentials | None:
        return self.credentials.get(host) or self.credentials.get(domain)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """One platform's image manifest; index_digest is set when it was picked from an index."""

    digest: str
    media_type: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]
    index_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    digest: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


def parse_descriptor(doc: object, what: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    digest, size = doc.get("digest"), doc.get("size")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"{what} has digest {digest!r}; want sha256: and 64 hex digits")
    if not isinstance(size, int) or size < 0:
        raise RegistryError(f"{what} has size {size!r}; want a non-negative integer")
    return Descriptor(str(doc.get("mediaType", "")), digest, size)


def parse_manifest(raw: bytes, digest: str, content_type: str = "",
                   index_digest: str | None = None) -> Manifest:
    """An image manifest (Docker schema 2 or OCI) from its bytes; indexes are not accepted."""
    doc = _json(raw, "manifest")
    media = doc.get("mediaType") or content_type
    if doc.get("schemaVersion") == 1:
        raise RegistryError("Docker schema 1 manifests are not supported; re-push the image "
                            "with a current client")
    if media not in MANIFEST_TYPES and not ("config" in doc and "layers" in doc):
        raise RegistryError(f"manifest has media type {media!r}, not an image manifest")
    layers = tuple(parse_descriptor(d, f"manifest layer {i}")
                   for i, d in enumerate(doc.get("layers") or []))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise RegistryError(f"manifest layer {i} has media type {layer.media_type!r}; "
                                "only tar and tar+gzip layers are supported")
    config = parse_descriptor(doc.get("config"), "manifest config")
    if config.size > MAX_CONFIG_BYTES:
        raise RegistryError(f"image config is {config.size} bytes; at most {MAX_CONFIG_BYTES} "
                            "are accepted")
    return Manifest(digest, media or OCI_MANIFEST, raw, config, layers, index_digest)


def pick_platform(index: dict, architecture: str) -> Descriptor:
    """The linux/<architecture> entry of an index (variants ignored); the first one wins."""
    seen = []
    for i, entry in enumerate(index.get("manifests") or []):
        plat = (entry.get("platform") if isinstance(entry, dict) else None) or {}
        seen.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if plat.get("os") == "linux" and plat.get("architecture") == architecture:
            return parse_descriptor(entry, f"index entry {i}")
    raise RegistryError(f"no linux/{architecture} image in the index (it has "
                        f"{', '.join(seen) or 'nothing'})")


def _json(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return doc


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """Talks to the registries of one configuration; keeps tokens per repository it pulls."""

    def __init__(self, config: RegistryConfig):
        self.config = config
        self._auth: dict[tuple[str, str], str] = {}
        self._opener = urllib.request.build_opener()
        self._authorizer = Authorizer(config, _pull_secret_advice, self._opener)

    def fetch_manifest(self, ref: Reference) -> tuple[Endpoint, Manifest]:
        """The image manifest for ref from the first endpoint that has it."""
        errors = []
        for endpoint in self.config.endpoints(ref.domain):
            try:
                return endpoint, self._manifest_at(endpoint, ref)
            except RegistryError as e:
                errors.append(str(e))
        raise RegistryError("; ".join(errors))

    def _manifest_at(self, endpoint: Endpoint, ref: Reference) -> Manifest:
        raw, ctype = self._get_manifest(endpoint, ref, ref.object)
        digest = _sha256(raw)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"manifest from {endpoint.host} has digest {digest}, "
                                f"not the {ref.digest} asked for")
        doc = _json(raw, f"manifest from {endpoint.host}")
        media = doc.get("mediaType") or ctype
        if media not in INDEX_TYPES and "manifests" not in doc:
            return self._checked(parse_manifest, endpoint, raw, digest, ctype)
        picked = pick_platform(doc, self.config.architecture)
        raw2, ctype2 = self._get_manifest(endpoint, ref, picked.digest)
        if _sha256(raw2) != picked.digest:
            raise RegistryError(f"manifest {picked.digest} from {endpoint.host} failed "
                                f"verification: got {_sha256(raw2)}")
        return self._checked(parse_manifest, endpoint, raw2, picked.digest, ctype2, digest)

    @staticmethod
    def _checked(fn, endpoint: Endpoint, *args):
        try:
            return fn(*args)
        except RegistryError as e:
            raise RegistryError(f"{e} (from {endpoint.host})") from None

    def _get_manifest(self, endpoint: Endpoint, ref: Reference, obj: str) -> tuple[bytes, str]:
        with self._open(endpoint, ref, f"/manifests/{obj}", {"Accept": ACCEPT}) as resp:
            raw = resp.read(MAX_MANIFEST_BYTES + 1)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest at {endpoint.host} is larger than "
                                f"{MAX_MANIFEST_BYTES} bytes")
        return raw, ctype

    def fetch_blob(self, endpoint: Endpoint, ref: Reference, desc: Descriptor, tmp_dir: str,
                   progress: ProgressFn | None = None) -> str:
        """Downloads a blob into a new temp file in tmp_dir and returns its path once its
        sha256 matches desc.digest; on any failure the temp file is gone."""
        fd, path = tempfile.mkstemp(dir=tmp_dir, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as out, \
                    self._open(endpoint, ref, f"/blobs/{desc.digest}", {}) as resp:
                sha, done = hashlib.sha256(), 0
                while chunk := self._read(resp, endpoint):
                    done += len(chunk)
                    if done > desc.size:
                        raise RegistryError(f"blob {desc.digest} from {endpoint.host} is "
                                            f"larger than the {desc.size} bytes its manifest says")
                    sha.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(Progress(desc.digest, done, desc.size))
            got = "sha256:" + sha.hexdigest()
            if got != desc.digest:
                raise RegistryError(f"blob {desc.digest} from {endpoint.host} failed "
                                    f"verification: its content has digest {got}")
            return path
        except BaseException:
            os.unlink(path)
            raise

    def _read(self, resp, endpoint: Endpoint) -> bytes:
        try:
            return resp.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"download from {endpoint.host} broke off: {e}") from None

    def _open(self, endpoint: Endpoint, ref: Reference, path: str, headers: dict):
        url = f"{endpoint.base_url}/v2/{ref.repository}{path}"
        key = (endpoint.base_url, ref.repository)
        for attempt in (1, 2):
            req = urllib.request.Request(url, headers=headers)
            if key in self._auth:
                # Unredirected: blob redirects go to storage hosts (S3, CDNs) that must not
                # see our registry token.
                req.add_unredirected_header("Authorization", self._auth[key])
            try:
                return self._opener.open(req, timeout=self.config.timeout)
            except urllib.error.HTTPError as e:
                challenge = e.headers.get("WWW-Authenticate", "")
                body = _read_error_body(e)
                if e.code == 401 and attempt == 1 and challenge:
                    self._auth[key] = self._authorize(endpoint, ref, challenge)
                    continue
                raise RegistryError(_describe_http(e.code, body, endpoint, ref)) from None
            except (urllib.error.URLError, OSError) as e:
                raise RegistryError(describe_network(e, endpoint)) from None
        raise AssertionError("unreachable")

    def _authorize(self, endpoint: Endpoint, ref: Reference, challenge: str) -> str:
        """The Authorization header value a 401 challenge asks for (the challenge's scope, or
        pull of this repository)."""
        _, params = parse_challenge(challenge)
        scopes = [] if params.get("scope") else [f"repository:{ref.repository}:pull"]
        try:
            return self._authorizer.authorize(endpoint, ref.domain, challenge, scopes)
        except AuthError as e:
            raise RegistryError(str(e)) from None


def _read_error_body(e: urllib.error.HTTPError) -> bytes:
    try:
        return e.read(64 << 10)
    except (OSError, ValueError):  # the body only decorates the message; its absence is fine
        return b""
    finally:
        e.close()


def _describe_http(code: int, body: bytes, endpoint: Endpoint, ref: Reference) -> str:
    reasons = []
    try:
        for err in json.loads(body).get("errors") or []:
            reasons.append(str(err.get("message") or err.get("code", "")).strip())
    except (ValueError, AttributeError):
        pass
    reason = "; ".join(r for r in reasons if r)
    if not reason:
        reason = {401: "unauthorized", 403: "forbidden", 404: "not found",
                  429: "too many requests"}.get(code, f"HTTP {code}")
    where = f"at mirror {endpoint.host}" if endpoint.mirror else f"at {endpoint.host}"
    hint = (f" (give the pod an imagePullSecrets Secret for {endpoint.host})"
            if code in (401, 403) else "")
    return f"{reason} {where}{hint}"
