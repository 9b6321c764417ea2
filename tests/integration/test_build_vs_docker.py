"""`moor build` against Docker's own builder: the Dockerfiles of tests/buildcases.py built by
both (Debian's docker.io 20.10, started by the test), and the two images' file trees and
configs compared; then an image `moor push`ed to a real docker-registry is `docker pull`ed.

Compared: every path of the final filesystem (all layers applied, whiteouts and opaque
directories honoured) with its type, permission bits (setuid, setgid and sticky included),
owner uid and gid, symlink target, content (sha256) and hard-link target; and the config
fields Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Labels, Volumes, StopSignal,
Healthcheck, Shell and OnBuild (an empty value counts as absent).

Not compared, and why:
- times (mtime of files and directories, `created`), `history`, `container_config`, Hostname,
  Image, ArgsEscaped, docker_version: bookkeeping that Docker's two builders fill differently
  from each other and from run to run;
- layering (how many layers, which step a file landed in, layer digests): only the final
  filesystem is the image's behaviour; legacy and BuildKit split steps differently too;
- the root directory's own entry and xattrs: neither builder records them consistently.

The reference is BuildKit (the one built into dockerd 20.10, DOCKER_BUILDKIT=1), the legacy
builder only where BuildKit is not there. Where the two disagree, BuildKit is taken; the
differences found on this machine (test_legacy_and_buildkit_agree keeps the cases where they
agree honest):
- COPY --chown gives the parent directories it creates the same owner (legacy: root);
- an ARG declared after an ENV of the same name wins in later RUNs (legacy keeps the ENV, a
  known limitation of the classic builder);
- legacy leaves each VOLUME's mount point as a directory in the next RUN's layer;
- `id` in a RUN lists supplementary groups under legacy only (so the cases print id -u/-g);
- legacy runs every stage before the target, BuildKit only those the target needs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from tests import buildcases
from tests import imagebuild as ib
from tests.conftest import TEST_PREFIX, unique
from tests.dockerref import (
    config_of,
    docker_image,
    import_into_root,
    moor_build,
    moor_image,
    tree_diff,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="builds run containers as root")]


@pytest.fixture(scope="module")
def work():
    path = tempfile.mkdtemp(prefix=TEST_PREFIX + "bvd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def base_tar(work):
    return ib.busybox_tar(work, repo_tags=(buildcases.BASE,))


@pytest.fixture(scope="module")
def engine(docker_engine, base_tar):
    """The session's dockerd with the test busybox loaded."""
    docker_engine.load(base_tar)
    return docker_engine


@pytest.fixture(scope="module")
def moor_root(base_tar):
    """A build root of its own (/tmp/moortest-build-*), the test busybox imported."""
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "build-")
    import_into_root(root, base_tar)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def context(work: str, case: buildcases.Case) -> str:
    path = os.path.join(work, unique(case.name + "-"))
    return case.write(path)


def docker_build(engine, ctx: str, case: buildcases.Case, buildkit: bool = True,
                 no_cache: bool = False) -> str:
    return engine.build(ctx, unique("ref-") + ":1", buildkit=buildkit,
                        build_args=case.build_args, target=case.target, labels=case.labels,
                        no_cache=no_cache)


def show(lines: list[str]) -> str:
    return "\n  " + "\n  ".join(lines)


# ---- the reference side and the readers, on their own ----

@pytest.mark.parametrize("case", [buildcases.SINGLE, buildcases.WHITEOUTS], ids=lambda c: c.name)
def test_docker_rebuild_gives_the_same_image(engine, work, case):
    ctx = context(work, case)
    first = docker_image(engine, docker_build(engine, ctx, case))
    again = docker_image(engine, docker_build(engine, ctx, case, no_cache=True))
    assert tree_diff(first[0], again[0], names=("first", "again")) == []
    assert config_of(first[1]) == config_of(again[1])


@pytest.mark.parametrize("case", [buildcases.SINGLE, buildcases.WHITEOUTS,
                                  buildcases.DOCKERIGNORE, buildcases.SYMLINKS,
                                  dataclasses.replace(
                                      buildcases.CONFIGS, name="configs-novolume",
                                      dockerfile=buildcases.CONFIGS.dockerfile.replace(
                                          'VOLUME /data\nVOLUME ["/logs"]\n', ""))],
                         ids=lambda c: c.name)
def test_legacy_and_buildkit_agree(engine, work, case):
    """Two independent builders, one reader: equal trees say the reader reads images, not
    one builder's habits."""
    ctx = context(work, case)
    kit = docker_image(engine, docker_build(engine, ctx, case, buildkit=True))
    legacy = docker_image(engine, docker_build(engine, ctx, case, buildkit=False))
    assert tree_diff(kit[0], legacy[0], names=("buildkit", "legacy")) == []
    assert config_of(kit[1]) == config_of(legacy[1])


def test_store_reads_a_docker_image_as_docker_does(engine, work):
    """A docker-built image with whiteouts and opaque dirs, `docker save`d and imported into a
    build root's store, reads back as the same tree and config."""
    case = buildcases.WHITEOUTS
    iid = docker_build(engine, context(work, case), case)
    tag = "moortest/whiteouts:1"
    engine.docker("tag", iid, tag)
    saved = os.path.join(work, unique("saved-") + ".tar")
    engine.save(tag, saved)
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "build-")
    try:
        import_into_root(root, saved)
        want, got = docker_image(engine, tag), moor_image(root, tag)
        assert tree_diff(want[0], got[0]) == []
        assert config_of(got[1]) == config_of(want[1])
        assert "/gone" not in got[0] and "/data/a" not in got[0] and "/data/new" in got[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.unlink(saved)


# ---- moor build against docker build ----

@pytest.mark.parametrize("case", buildcases.CASES, ids=lambda c: c.name)
def test_moor_build_matches_docker(engine, moor_root, work, case):
    ctx = context(work, case)
    want_tree, want_config = docker_image(engine, docker_build(engine, ctx, case))
    tag = unique("moor-") + ":1"
    out = moor_build(moor_root, ctx, tag, build_args=case.build_args, target=case.target,
                     labels=case.labels)
    assert out.returncode == 0, f"moor build: {out.stderr[-3000:]}"
    got_tree, got_config = moor_image(moor_root, tag)
    diff = tree_diff(want_tree, got_tree)
    assert diff == [], f"{case.name}: trees differ:{show(diff)}"
    assert config_of(got_config) == config_of(want_config)


# ---- push, then docker pull ----

@pytest.mark.parametrize("media", ["docker", "oci"])
def test_docker_pulls_what_moor_pushed(engine, moor_root, work, media):
    from tests.integration.test_images import Registry, stop

    reg = Registry(tempfile.mkdtemp(prefix=TEST_PREFIX + "registry-", dir=work))
    try:
        case = buildcases.SINGLE
        name = f"{reg.host}/moortest/app"
        out = moor_build(moor_root, context(work, case), f"{name}:1", media=media)
        assert out.returncode == 0, f"moor build: {out.stderr[-3000:]}"
        push = _moor(moor_root, "push", "--insecure-registry", reg.host, f"{name}:1")
        assert push.returncode == 0, f"moor push: {push.stderr[-3000:]}"
        digest = _manifest_digest(reg.host, "moortest/app", "1")

        # 127.0.0.0/8 is an insecure registry to dockerd by default.
        engine.docker("pull", f"{name}:1")
        engine.docker("pull", f"{name}@{digest}")
        want_tree, want_config = moor_image(moor_root, f"{name}:1")
        for ref in (f"{name}:1", f"{name}@{digest}"):
            got_tree, got_config = docker_image(engine, ref)
            assert tree_diff(want_tree, got_tree, names=("moor", "docker")) == []
            assert config_of(got_config) == config_of(want_config)
        assert engine.docker("run", "--rm", "--network", "none", f"{name}@{digest}") == "hello\n"
    finally:
        stop(reg.proc)


def _moor(root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", args[0], "--root", root, *args[1:]],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def _manifest_digest(host: str, repository: str, tag: str) -> str:
    req = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}", method="HEAD",
        headers={"Accept": ", ".join((ib.DOCKER_MANIFEST, ib.OCI_MANIFEST))})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"]
