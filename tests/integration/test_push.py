"""`moor push|pull|login` (python -m builder) against Debian's docker-registry: HEAD skips,
cross-repository mounts, monolithic and chunked uploads, a pull back by digest into a fresh
store, Basic auth (htpasswd) and Bearer auth (the registry's token mode with a token server),
a name whose address is another (registries.json mirrors), and a pod on a cluster agent that
runs the pushed image."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from builder import distribution, registries
from builder.errors import BuildError
from builder.paths import BuildRoot
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from tests import imagebuild as ib
from tests.conftest import TEST_PREFIX, stop_process
from tests.integration.test_images import REGISTRY_BIN, Registry
from tests.tokenserver import TokenServer

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the image store unpacks layers as root"),
    pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry"),
]

APP = [ib.TarEntry("app", b"v1\n")]
SHORT = re.compile(r"^([0-9a-f]{12}): (.+)$")


def _tmp(name: str) -> str:
    return tempfile.mkdtemp(prefix=f"{TEST_PREFIX}{name}-")


@pytest.fixture(scope="module")
def registry():
    tmp = _tmp("pushreg")
    reg = Registry(tmp)
    yield reg
    stop_process(reg.proc)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def roots():
    """Makes build roots (and an empty DOCKER_CONFIG, so the host's logins stay out)."""
    made = []

    def make() -> str:
        made.append(_tmp("buildroot"))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def builder(root: str, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    command, rest = args[0], args[1:]
    env = {**os.environ, "DOCKER_CONFIG": os.path.join(root, "docker-config")}
    return subprocess.run([sys.executable, "-m", "builder", command, "--root", root, *rest],
                          input=stdin, capture_output=True, text=True, env=env, timeout=120)


def ok(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout.splitlines()


def layer_lines(lines: list[str]) -> dict[str, str]:
    return dict(m.groups() for m in map(SHORT.match, lines) if m)


def short(digest: str) -> str:
    return digest.split(":")[1][:12]


def add_image(root: str, image: ib.TestImage, ref: str):
    """The image in the root's store under ref, blobs as built (gzip layers, its manifest)."""
    layout = os.path.join(root, "layout")
    shutil.rmtree(layout, ignore_errors=True)
    ib.write_oci_layout(layout, image, ref)
    (found,) = import_archive(Store(BuildRoot(root).images), layout)
    shutil.rmtree(layout)
    return found


def registry_manifest(reg: Registry, repo: str, tag: str, auth: str | None = None):
    req = urllib.request.Request(f"http://{reg.host}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": ib.DOCKER_MANIFEST + "," + ib.OCI_MANIFEST})
    if auth:
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"], resp.read()


def test_push_skips_what_exists_and_mounts_shared_layers(registry, roots):
    root = roots()
    web = ib.make_image([ib.busybox_rootfs(), APP])
    image = add_image(root, web, f"{registry.host}/test/web:1")
    out = ok(builder(root, "push", f"{registry.host}/test/web:1"))
    assert out[0] == f"The push refers to repository [{registry.host}/test/web]"
    assert layer_lines(out) == {short(d): "Pushed" for d in image.layer_digests}
    assert out[-1] == f"1: digest: {web.manifest.digest} size: {len(web.manifest.data)}"
    assert registry_manifest(registry, "test/web", "1") == (web.manifest.digest,
                                                              web.manifest.data)

    again = ok(builder(root, "push", f"{registry.host}/test/web:1"))
    assert layer_lines(again) == {short(d): "Layer already exists" for d in image.layer_digests}

    # Another repository sharing the busybox layer: mounted, not uploaded again.
    api = ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("api", b"v2\n")]])
    other = add_image(root, api, f"{registry.host}/test/api:1")
    assert other.layer_digests[0] == image.layer_digests[0]
    lines = layer_lines(ok(builder(root, "push", f"{registry.host}/test/api:1")))
    assert lines == {short(other.layer_digests[0]): "Mounted from test/web",
                     short(other.layer_digests[1]): "Pushed"}


def test_pull_back_by_digest_into_a_fresh_store(registry, roots):
    src = roots()
    image = ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("pulled", b"yes\n")]], oci=True,
                          cmd=["cat", "/pulled"])
    pushed = add_image(src, image, f"{registry.host}/test/pullback:1")
    ok(builder(src, "push", f"{registry.host}/test/pullback:1"))

    dst = roots()
    ref = f"{registry.host}/test/pullback@{image.manifest.digest}"
    out = ok(builder(dst, "pull", ref))
    assert out[0] == f"{image.manifest.digest}: Pulling from test/pullback"
    assert layer_lines(out) == {short(d): "Pull complete" for d in pushed.layer_digests}
    assert out[-3:] == [f"Digest: {image.manifest.digest}",
                        f"Status: Downloaded newer image for {ref}", ref]
    got = Store(BuildRoot(dst).images).get(ref)
    assert (got.config_digest, got.layer_digests, got.diff_ids) == (
        pushed.config_digest, pushed.layer_digests, pushed.diff_ids)
    assert got.config.cmd == ("cat", "/pulled")
    assert ok(builder(dst, "pull", ref))[-2] == f"Status: Image is up to date for {ref}"


def test_chunked_upload_of_a_big_blob(registry, roots):
    root = roots()
    noise = os.urandom(300 << 10)  # incompressible, so the gzip blob stays this big
    image = ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("noise", noise)]])
    found = add_image(root, image, f"{registry.host}/test/chunked:1")
    store = Store(BuildRoot(root).images)
    lines: list[str] = []
    digest = distribution.push(store, found, f"{registry.host}/test/chunked:1",
                               registries.load(BuildRoot(root)), lines.append,
                               chunked_above=64 << 10, chunk_size=100 << 10)
    assert digest == image.manifest.digest
    with open(registry.blob_file(found.layer_digests[1]), "rb") as f:
        assert f.read() == image.layers[1].data


def test_basic_auth_login_then_push(roots):
    tmp = _tmp("basicreg")
    password = "pw-" + os.urandom(4).hex()
    reg = Registry(tmp, users={"alice": password})
    try:
        root = roots()
        ref = f"{reg.host}/private/web:1"
        add_image(root, ib.make_image([ib.busybox_rootfs(), APP]), ref)
        refused = builder(root, "push", ref)
        assert refused.returncode == 1
        assert refused.stderr == (f"error: push {ref}: {reg.host} wants a username and "
                                  f"password: log in first (moor login {reg.host} -u USER)\n")

        wrong = builder(root, "login", reg.host, "-u", "alice", "--password-stdin",
                        stdin="nope\n")
        assert wrong.returncode == 1
        assert wrong.stderr == (f"error: login {reg.host}: unauthorized: authentication "
                                "required\n")
        assert not os.path.exists(BuildRoot(root).registries)

        assert ok(builder(root, "login", reg.host, "-u", "alice", "--password-stdin",
                          stdin=password + "\n")) == ["Login Succeeded"]
        path = BuildRoot(root).registries
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path) as f:
            stored = json.load(f)["auths"][reg.host]["auth"]
        assert base64.b64decode(stored).decode() == f"alice:{password}"
        assert ok(builder(root, "push", ref))[-1].startswith("1: digest: sha256:")
    finally:
        stop_process(reg.proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_bearer_token_push_mount_and_pull(roots):
    tmp = _tmp("tokenreg")
    password = "pw-" + os.urandom(4).hex()
    tokens = TokenServer(tmp, {"bob": password})
    reg = Registry(tmp, auth=tokens.registry_auth())
    try:
        root = roots()
        web = f"{reg.host}/team/web:1"
        image = add_image(root, ib.make_image([ib.busybox_rootfs(), APP]), web)
        refused = builder(root, "push", web)
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: push {web}: token server 127.0.0.1:{tokens.port} refused a token for "
            f"repository:team/web:pull,push (HTTP 401); check the credentials for {reg.host}\n")

        ok(builder(root, "login", reg.host, "-u", "bob", "-p", password))
        ok(builder(root, "push", web))
        api = add_image(root, ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("a", b"2")]]),
                        f"{reg.host}/team/api:1")
        lines = layer_lines(ok(builder(root, "push", f"{reg.host}/team/api:1")))
        assert lines[short(api.layer_digests[0])] == "Mounted from team/web"
        # The mount's token also grants pull of the repository mounted from.
        assert {"repository:team/api:pull,push", "repository:team/web:pull"} <= set(
            tokens.scopes)

        dst = roots()
        shutil.copy(BuildRoot(root).registries, BuildRoot(dst).registries)
        ok(builder(dst, "pull", web))
        assert Store(BuildRoot(dst).images).get(web).layer_digests == image.layer_digests
    finally:
        stop_process(reg.proc)
        tokens.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_name_pushes_to_and_pulls_from_its_address(registry, roots):
    """registries.json as `moor registry deploy` writes it: the name's mirror is where it is."""
    name = "registry.moortest.invalid:5000"
    root = roots()
    settings = {"mirrors": {name: [f"http://{registry.host}"]},
                "insecure": [name, registry.host]}
    with open(BuildRoot(root).registries, "w") as f:
        json.dump(settings, f)
    image = ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("alias", b"1")]])
    add_image(root, image, f"{name}/test/alias:1")
    out = ok(builder(root, "push", f"{name}/test/alias:1"))
    assert out[0] == f"The push refers to repository [{name}/test/alias]"
    assert registry_manifest(registry, "test/alias", "1")[0] == image.manifest.digest

    dst = roots()
    shutil.copy(BuildRoot(root).registries, BuildRoot(dst).registries)
    assert ok(builder(dst, "pull", f"{name}/test/alias:1"))[-3] == (
        f"Digest: {image.manifest.digest}")


def test_errors_are_one_line(registry, roots):
    root = roots()
    missing = builder(root, "push", f"{registry.host}/test/none:1")
    assert missing.returncode == 1
    assert missing.stderr == ("error: An image does not exist locally with the tag: "
                              f"{registry.host}/test/none\n")
    assert builder(root, "push", "none:1").stderr == (
        "error: An image does not exist locally with the tag: none\n")
    add_image(root, ib.make_image(), "nohost:1")  # no registry: refused, not sent to docker.io
    assert builder(root, "push", "nohost:1").stderr == (
        "error: push nohost:1: 'nohost:1' names no registry, so it would go to Docker Hub: "
        "name one (REGISTRY[:PORT]/nohost:1), or write docker.io/nohost:1 to mean Docker Hub\n")
    add_image(root, ib.make_image(), "127.0.0.1:1/test/down:1")
    down = builder(root, "push", "127.0.0.1:1/test/down:1")
    assert down.stderr == "error: push 127.0.0.1:1/test/down:1: connection refused by 127.0.0.1:1\n"
    unknown = builder(root, "pull", f"{registry.host}/test/none:1")
    assert unknown.returncode == 1
    assert unknown.stderr == (f"error: pull {registry.host}/test/none:1: manifest unknown at "
                              f"{registry.host}\n")


def test_push_of_a_manifest_digest_is_refused(registry, roots):
    root = roots()
    found = add_image(root, ib.make_image(), f"{registry.host}/test/d:1")
    with pytest.raises(BuildError, match="cannot push to a digest"):
        distribution.push(Store(BuildRoot(root).images), found,
                          f"{registry.host}/test/d@{found.manifest_digest}",
                          registries.load(BuildRoot(root)))


def test_a_stale_mount_record_falls_back_to_an_upload(registry, roots):
    """The registry answers a mount it cannot do with an upload session (202), used as is."""
    root = roots()
    image = ib.make_image([[ib.TarEntry("stale", os.urandom(64))]])
    found = add_image(root, image, f"{registry.host}/test/stale:1")
    store = Store(BuildRoot(root).images)
    distribution.BlobSources(store).add(registry.host, "test/never-pushed",
                                        found.layer_digests)
    lines = layer_lines(ok(builder(root, "push", f"{registry.host}/test/stale:1")))
    assert lines == {short(found.layer_digests[0]): "Pushed"}


def test_a_pod_on_a_cluster_agent_runs_the_pushed_image(etcd_endpoint, registry, roots):
    from tests.agents import start_agents
    from tests.conftest import start_controlplane, unique
    from tests.wait import wait_until

    build = roots()
    ref = f"{registry.host}/test/runme:1"
    add_image(build, ib.make_image([ib.busybox_rootfs(), APP],
                                   cmd=["sh", "-c", "cat /app; exec sleep 3600"]), ref)
    ok(builder(build, "push", ref))

    root = _tmp("pushcluster")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    node = unique("push-a")
    agents = start_agents(cp, root, [node], extra_args=("--insecure-registry", registry.host))
    env = cp.env()

    def moor(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)

    def phase() -> str:
        out = moor("get", "pod", "moortest-runme", "-o", "json")
        return json.loads(out.stdout)["status"].get("phase", "") if out.returncode == 0 else ""

    try:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "moortest-runme"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": ref}]}}
        applied = moor("apply", "-f", "-", stdin=json.dumps(pod))
        assert applied.returncode == 0, applied.stderr
        wait_until(lambda: phase() == "Running", 90, "the pod Running")
        logs = wait_until(lambda: moor("logs", "moortest-runme").stdout, 30, "its log")
        assert logs.splitlines() == ["v1"]
    finally:
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)
