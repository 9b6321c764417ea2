"""What a real registry cannot show a push (builder/distribution.py over registryhttp.py): an
upload Location on another host (object storage) never receives the registry's credentials, a
keep-alive connection the server dropped while idle is reopened, and a registry that names
another manifest digest than the one sent is an error. A small in-process fake serves it."""

from __future__ import annotations

import http.server
import io
import json
import threading

import pytest

from builder import distribution
from builder.errors import BuildError
from nodeagent.runtime.images.registry import Credentials, RegistryConfig
from nodeagent.runtime.images.store import Image, ImageConfig, Store
from tests import imagebuild as ib


class Fake:
    """A registry that wants Basic auth and sends uploads to a second "storage" server."""

    def __init__(self, drop_idle: bool = False, manifest_digest: str | None = None,
                 relative: bool = False):
        self.relative = relative
        self.seen: list[tuple[str, str, str, str]] = []  # (server, method, path, auth)
        self.blobs: dict[str, bytes] = {}
        self.drop_idle = drop_idle
        self.manifest_digest = manifest_digest
        self.registry = self._serve("registry")
        self.storage = self._serve("storage")

    def _serve(self, role: str):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size)
                auth = self.headers.get("Authorization", "")
                fake.seen.append((role, self.command, self.path, auth))
                code, headers = fake.answer(role, self.command, self.path, auth, body)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                # Drop the connection without saying so, as an idle timeout does.
                self.close_connection = fake.drop_idle

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def host(self, server) -> str:
        return f"127.0.0.1:{server.server_address[1]}"

    def answer(self, role, method, path, auth, body):
        if role == "storage" or (self.relative and path.startswith("/v2/team/app/blobs/up")
                                 and method == "PUT"):
            if role == "registry" and auth != "Basic dTpw":
                return 401, {"WWW-Authenticate": 'Basic realm="fake"'}
            digest = path.split("digest=")[1].replace("%3A", ":")
            self.blobs[digest] = body
            return 201, {}
        if auth != "Basic dTpw":  # u:p
            return 401, {"WWW-Authenticate": 'Basic realm="fake"'}
        if method == "HEAD":
            return 404, {}
        if method == "POST" and self.relative:
            return 202, {"Location": "/v2/team/app/blobs/uploads/1?_state=x"}
        if method == "POST":
            return 202, {"Location": f"http://{self.host(self.storage)}/upload/1?_state=x"}
        if "/manifests/" in path:
            return 201, {"Docker-Content-Digest": self.manifest_digest or ib.sha256(body)}
        return 200, {}

    def close(self):
        for s in (self.registry, self.storage):
            s.shutdown()
            s.server_close()


def stored_image(tmp_path) -> tuple[Store, Image, ib.TestImage]:
    store = Store(str(tmp_path / "store"))
    image = ib.make_image([[ib.TarEntry("a", b"1")], [ib.TarEntry("b", b"2")]])
    for blob in (image.config, *image.layers, image.manifest):
        store.put_blob(io.BytesIO(blob.data), blob.digest)
    found = Image("x", image.manifest.digest, image.config.digest,
                  tuple(b.digest for b in image.layers), image.diff_ids, ImageConfig(),
                  store.layers_dir)
    return store, found, image


@pytest.fixture
def fake():
    made = []

    def make(**kw) -> Fake:
        made.append(Fake(**kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def config_for(fake: Fake) -> RegistryConfig:
    host = fake.host(fake.registry)
    return RegistryConfig(insecure=frozenset({host}), credentials={host: Credentials("u", "p")})


@pytest.mark.parametrize("drop_idle", [False, True], ids=["keep-alive", "dropped-when-idle"])
def test_uploads_to_a_storage_host_carry_no_credentials(tmp_path, fake, drop_idle):
    f = fake(drop_idle=drop_idle)
    store, found, image = stored_image(tmp_path)
    lines: list[str] = []
    digest = distribution.push(store, found, f"{f.host(f.registry)}/team/app:2", config_for(f),
                               lines.append, parallel=1)
    assert digest == image.manifest.digest
    assert f.blobs == {b.digest: b.data for b in (image.config, *image.layers)}
    storage = [s for s in f.seen if s[0] == "storage"]
    assert len(storage) == 3 and all(auth == "" for *_, auth in storage)
    assert lines[-1] == f"2: digest: {digest} size: {len(image.manifest.data)}"
    assert sorted(lines[1:-1]) == sorted(f"{b.digest[7:19]}: Pushed" for b in image.layers)


def test_a_relative_location_is_on_the_registry_with_its_credentials(tmp_path, fake):
    f = fake(relative=True)
    store, found, image = stored_image(tmp_path)
    distribution.push(store, found, f"{f.host(f.registry)}/team/app:2", config_for(f))
    assert f.blobs == {b.digest: b.data for b in (image.config, *image.layers)}
    puts = [s for s in f.seen if s[1] == "PUT" and "/blobs/uploads/" in s[2]]
    assert len(puts) == 3 and all(s[0] == "registry" and s[3] == "Basic dTpw" for s in puts)
    assert all("?_state=x&digest=sha256%3A" in s[2] for s in puts)


def test_a_registry_naming_another_manifest_digest_is_an_error(tmp_path, fake):
    f = fake(manifest_digest="sha256:" + "0" * 64)
    store, found, image = stored_image(tmp_path)
    ref = f"{f.host(f.registry)}/team/app:2"
    with pytest.raises(BuildError) as err:
        distribution.push(store, found, ref, config_for(f))
    assert str(err.value) == (f"push {ref}: the registry says the manifest has digest "
                              f"sha256:{'0' * 64}, but we sent {image.manifest.digest}")


def test_blob_sources_are_kept_per_registry_newest_last(tmp_path):
    store = Store(str(tmp_path / "store"))
    sources = distribution.BlobSources(store)
    sources.add("r:5000", "a", ["sha256:1", "sha256:2"])
    sources.add("r:5000", "b", ["sha256:1"])
    sources.add("other", "c", ["sha256:1"])
    assert sources.load("r:5000") == {"sha256:2": ["a"], "sha256:1": ["a", "b"]}
    assert sources.load("nowhere") == {}
    with open(sources.path) as fh:
        assert set(json.load(fh)) == {"r:5000", "other"}
