"""The image store against a real registry (Debian's docker-registry): push with the test
builders, pull by tag and digest, mirrors, TLS policy, bearer auth, archives, sharing and gc."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from nodeagent.runtime.images import store as store_module
from nodeagent.runtime.images.archive import ArchiveError, import_archive
from nodeagent.runtime.images.registry import Credentials, RegistryConfig, host_architecture
from nodeagent.runtime.images.store import Store, StoreError
from tests import imagebuild as ib
from tests.conftest import TEST_PREFIX
from tests.conftest import stop_process as stop

REGISTRY_BIN = "/usr/bin/docker-registry"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking whiteouts needs root"),
    pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Debian's docker-registry on a free port; with `users` ({name: password}) it requires
    Basic auth (htpasswd), and `url` carries the first user's credentials for pushing; `auth`
    is another `auth:` section of its config.yml (a token server's, tests/tokenserver.py)."""

    def __init__(self, tmp: str, users: dict[str, str] | None = None, auth: str = ""):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.data = os.path.join(tmp, "data")
        config = os.path.join(tmp, "config.yml")
        if users:
            import bcrypt

            htpasswd = os.path.join(tmp, "htpasswd")
            with open(htpasswd, "w") as f:
                f.writelines(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                             for u, p in users.items())
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
            user, password = next(iter(users.items()))
            self.url = f"http://{user}:{password}@{self.host}"
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {self.data}\nhttp:\n  addr: {self.host}\n{auth}")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as err:
                if err.code == 401 and auth:
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        stop(self.proc)
        raise RuntimeError("docker-registry did not answer GET /v2/")

    def blob_file(self, digest: str) -> str:
        hexd = digest.split(":")[1]
        return os.path.join(self.data, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")

    def config(self, **kw) -> RegistryConfig:
        return RegistryConfig(insecure=frozenset({self.host}), timeout=10, **kw)


@pytest.fixture(scope="module")
def registry():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "registry-")
    reg = Registry(tmp)
    yield reg
    stop(reg.proc)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def pushed(registry):
    """Images every test may pull; tests that tamper with a registry push their own."""
    base = ib.make_image()
    layered = ib.make_image([ib.busybox_rootfs(), ib.whiteout_layer()], oci=True,
                            entrypoint=["httpd", "-f"], cmd=["-p", "80"], user="65534",
                            exposed_ports=["80/tcp"])
    arm = ib.make_image([[ib.TarEntry("arm-only", b"arm")]], arch="arm64")
    return {
        "docker": ib.push(registry.url, "test/bb", "1", base),
        "oci": ib.push(registry.url, "test/layered", "1", layered),
        "index": ib.push(registry.url, "test/multi", "1", ib.make_image(oci=True),
                         multiarch_with=arm),
        "list": ib.push(registry.url, "test/multilist", "1", base, multiarch_with=arm,
                        oci_index=False),
        "other": ib.push(registry.url, "test/other", "1",
                         ib.make_image([[ib.TarEntry("other", b"unshared")]])),
        "mirror": ib.push(registry.url, "library/busybox", "1.36", base),
    }


@pytest.fixture
def store():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "store-")
    yield Store(root)
    shutil.rmtree(root, ignore_errors=True)


def contents(store: Store) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(os.path.join(store.root, d)))
            for d in ("blobs/sha256", "layers", "tmp", "images")}


# ---- pulling ----

@pytest.mark.parametrize("repo", ["test/bb", "test/layered"], ids=["docker-schema2", "oci"])
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_pull_by_tag_and_digest(registry, pushed, store, repo, by):
    kind = "docker" if repo == "test/bb" else "oci"
    ref = f"{registry.host}/{repo}" + (":1" if by == "tag" else "@" + pushed[kind])
    seen = []
    image = store.pull(ref, registry.config(), progress=seen.append)
    assert image.manifest_digest == pushed[kind]
    assert store.get(ref) == image
    bottom = image.layer_dirs()[-1]
    assert os.path.isfile(os.path.join(bottom, "bin/busybox"))
    assert os.readlink(os.path.join(bottom, "bin/sh")) == "busybox"
    assert seen and seen[-1].done == seen[-1].total
    assert contents(store)["tmp"] == []


def test_layered_image_config_and_whiteouts(registry, pushed, store):
    image = store.pull(f"{registry.host}/test/layered:1", registry.config())
    cfg = image.config
    assert (cfg.entrypoint, cfg.cmd, cfg.user, cfg.exposed_ports, cfg.working_dir) == (
        ("httpd", "-f"), ("-p", "80"), "65534", ("80/tcp",), "/")
    top, bottom = image.layer_dirs()
    assert top.endswith(image.diff_ids[1].split(":")[1] + "/rootfs")
    assert stat.S_ISCHR(os.lstat(os.path.join(top, "etc/motd")).st_mode)
    assert os.getxattr(os.path.join(top, "var/www"), "trusted.overlay.opaque") == b"y"
    assert os.path.isfile(os.path.join(bottom, "etc/motd"))


@pytest.mark.parametrize("repo", ["test/multi", "test/multilist"], ids=["oci-index", "list"])
def test_index_picks_the_host_platform(registry, pushed, store, repo):
    image = store.pull(f"{registry.host}/{repo}:1", registry.config())
    assert image.config.architecture == host_architecture()
    assert image.index_digest == pushed["index" if repo == "test/multi" else "list"]
    assert os.path.isfile(os.path.join(image.layer_dirs()[0], "bin/busybox"))
    arm = Store(os.path.join(store.root, "arm")).pull(
        f"{registry.host}/{repo}:1", registry.config(architecture="arm64"))
    assert os.listdir(arm.layer_dirs()[0]) == ["arm-only"]


def test_index_without_the_platform_is_a_clear_error(registry, pushed, store):
    with pytest.raises(StoreError, match=r"no linux/s390x image in the index \(it has "
                                         r"linux/amd64, linux/arm64\)"):
        store.pull(f"{registry.host}/test/multi:1", registry.config(architecture="s390x"))


def test_missing_manifest_names_the_registry(registry, store):
    with pytest.raises(StoreError) as err:
        store.pull(f"{registry.host}/test/nothing:1", registry.config())
    assert str(err.value) == (f"pulling {registry.host}/test/nothing:1: manifest unknown at "
                              f"{registry.host}")


def test_corrupt_blob_fails_and_leaves_nothing_behind(registry, store):
    image = ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("victim", os.urandom(4096))]])
    ib.push(registry.url, "test/corrupt", "1", image)
    path = registry.blob_file(image.layers[1].digest)
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(StoreError, match="failed verification"):
        store.pull(f"{registry.host}/test/corrupt:1", registry.config())
    left = contents(store)
    assert image.layers[1].digest.split(":")[1] not in left["blobs/sha256"]
    assert image.diff_ids[1].split(":")[1] not in left["layers"]
    assert not [n for n in left["layers"] if n.startswith(".")]
    assert left["tmp"] == [] and left["images"] == []


def test_short_name_resolves_through_a_mirror(registry, pushed, store):
    config = registry.config(mirrors={"docker.io": [registry.url]})
    image = store.pull("busybox:1.36", config)
    assert image.reference == "docker.io/library/busybox:1.36"
    assert image.manifest_digest == pushed["mirror"]
    assert store.get("docker.io/library/busybox:1.36") == image


def test_mirror_miss_falls_through_and_reports_every_endpoint(registry, store):
    config = RegistryConfig(mirrors={"docker.io": [registry.url]},
                            insecure=frozenset({registry.host, "docker.io"}), timeout=2)
    with pytest.raises(StoreError, match=f"manifest unknown at mirror {registry.host}; "):
        store.pull("nosuchimage:1", config)


def test_plain_http_only_for_insecure_registries(registry, pushed, store):
    with pytest.raises(StoreError, match=f"TLS handshake with {registry.host} failed.*insecure"):
        store.pull(f"{registry.host}/test/bb:1", RegistryConfig(timeout=5))
    with pytest.raises(Exception, match="plain HTTP but .* not listed as an insecure"):
        RegistryConfig(mirrors={"docker.io": [registry.url]})


# ---- bearer auth through a token server and a reverse proxy ----

TOKEN = "moortest-token-1"


def _auth_proxy(upstream: str, user: str, password: str, scheme: str):
    """A reverse proxy to upstream demanding a bearer token (from its /token) or basic auth."""
    import base64

    expected_basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    port = free_port()
    wanted = f"Bearer {TOKEN}" if scheme == "bearer" else expected_basic
    challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",service="moortest",'
                 'scope="repository:test/bb:pull"' if scheme == "bearer"
                 else 'Basic realm="moortest"')

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/token"):
                ok = self.headers.get("Authorization") == expected_basic
                self._reply(200 if ok else 401, json.dumps({"token": TOKEN}).encode() if ok
                            else b"{}", {"Content-Type": "application/json"})
                return
            if self.headers.get("Authorization") != wanted:
                self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication'
                                 b' required"}]}', {"WWW-Authenticate": challenge})
                return
            req = urllib.request.Request(upstream + self.path,
                                         headers={"Accept": self.headers.get("Accept", "*/*")})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    self._reply(resp.status, resp.read(), dict(resp.headers))
            except urllib.error.HTTPError as e:
                self._reply(e.code, e.read(), dict(e.headers))

        def _reply(self, code, body, headers):
            self.send_response(code)
            for k, v in headers.items():
                if k.lower() in ("content-type", "docker-content-digest", "www-authenticate"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(params=["bearer", "basic"])
def auth_proxy(request, registry, pushed):
    server, host = _auth_proxy(registry.url, "alice", "s3cret", request.param)
    yield request.param, host
    server.shutdown()
    server.server_close()


def test_auth_with_credentials(auth_proxy, pushed, store):
    _, host = auth_proxy
    config = RegistryConfig(insecure=frozenset({host}),
                            credentials={host: Credentials("alice", "s3cret")})
    image = store.pull(f"{host}/test/bb:1", config)
    assert image.manifest_digest == pushed["docker"]


def test_auth_without_credentials_is_a_clear_error(auth_proxy, store):
    scheme, host = auth_proxy
    want = (f"token server {host} refused a token for repository:test/bb:pull \\(HTTP 401\\)"
            if scheme == "bearer" else f"{host} wants a username and password")
    with pytest.raises(StoreError, match=want):
        store.pull(f"{host}/test/bb:1", RegistryConfig(insecure=frozenset({host})))


@pytest.mark.parametrize("domain, config, want", [
    pytest.param("docker.io", RegistryConfig(), ["https://registry-1.docker.io"], id="hub"),
    pytest.param("docker.io", RegistryConfig(mirrors={"docker.io": ["mirror.example:5000",
                                                                    "https://m2.example/v"]}),
                 ["https://mirror.example:5000", "https://m2.example/v",
                  "https://registry-1.docker.io"], id="mirrors-first"),
    pytest.param("localhost:5000", RegistryConfig(insecure=frozenset({"localhost:5000"})),
                 ["http://localhost:5000"], id="insecure"),
    pytest.param("quay.io", RegistryConfig(insecure=frozenset({"localhost:5000"})),
                 ["https://quay.io"], id="secure"),
])
def test_endpoints(domain, config, want):
    assert [e.base_url for e in config.endpoints(domain)] == want


# ---- archives ----

@pytest.mark.parametrize("kind", ["docker-save", "oci-dir", "oci-tar"])
def test_import_archive(store, kind):
    image = ib.make_image([ib.busybox_rootfs(), ib.whiteout_layer()], oci=kind != "docker-save",
                          cmd=["sleep", "60"])
    path = os.path.join(store.root, "archive")
    if kind == "docker-save":
        ib.write_docker_save(path, image, ["localhost/imported:v1", "imported:v1"])
    else:
        ib.write_oci_layout(path, image, "localhost/imported:v1", as_tar=kind == "oci-tar")
    images = import_archive(store, path)
    assert images[0].reference == "localhost/imported:v1"
    assert store.get("localhost/imported:v1").diff_ids == image.diff_ids
    assert images[0].config.cmd == ("sleep", "60")
    assert [os.path.basename(os.path.dirname(d)) for d in images[0].layer_dirs()] == [
        d.split(":")[1] for d in reversed(image.diff_ids)]
    if kind == "docker-save":
        assert store.get("docker.io/library/imported:v1") is not None


def test_import_rejects_a_tampered_oci_blob(store):
    image = ib.make_image(oci=True)
    path = os.path.join(store.root, "layout")
    ib.write_oci_layout(path, image, "localhost/x:1")
    blob = os.path.join(path, "blobs/sha256", image.layers[0].digest.split(":")[1])
    with open(blob, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ArchiveError, match="failed verification"):
        import_archive(store, path)
    assert contents(store)["layers"] == [] and contents(store)["images"] == []


# ---- sharing and gc ----

def test_shared_base_layer_is_unpacked_once(registry, pushed, store, monkeypatch):
    calls = []
    real = store_module.unpack_layer

    def counting(blob, dest, limits):
        calls.append(blob)
        return real(blob, dest, limits)

    monkeypatch.setattr(store_module, "unpack_layer", counting)
    config = registry.config()
    threads = [threading.Thread(target=store.pull, args=(f"{registry.host}/test/{r}:1", config))
               for r in ("bb", "layered", "bb", "multi")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    base = store.get(f"{registry.host}/test/bb:1")
    layered = store.get(f"{registry.host}/test/layered:1")
    assert base and layered and store.get(f"{registry.host}/test/multi:1")
    assert layered.layer_dirs()[-1] == base.layer_dirs()[0]
    assert len(calls) == 2 and len(contents(store)["layers"]) == 2


def test_gc_keeps_shared_and_in_use_layers(registry, pushed, store):
    config = registry.config()
    base = store.pull(f"{registry.host}/test/bb:1", config)
    layered = store.pull(f"{registry.host}/test/layered:1", config)
    other = store.pull(f"{registry.host}/test/other:1", config)
    freed = store.gc([layered.reference], in_use_layer_dirs=other.layer_dirs())
    assert freed > 0
    assert store.get(base.reference) is None and store.get(other.reference) is None
    assert store.get(layered.reference) == layered
    assert all(os.path.isdir(d) for d in layered.layer_dirs() + other.layer_dirs())
    blobs = contents(store)["blobs/sha256"]
    assert base.manifest_digest.split(":")[1] not in blobs
    assert layered.manifest_digest.split(":")[1] in blobs
    assert store.gc([layered.reference]) > 0  # nothing runs from other's layer any more
    assert not os.path.exists(other.layer_dirs()[0]) and store.remove(layered.reference)
    store.gc([])
    assert contents(store)["layers"] == [] and contents(store)["blobs/sha256"] == []
