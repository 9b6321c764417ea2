"""An image pushed by `moor push` is pulled and run by Docker (Debian's docker.io, started by
tests/dockerref.py): the digest Docker reports is the one moor printed."""

from __future__ import annotations

import os
import shutil

import pytest

from tests import dockerref
from tests import imagebuild as ib
from tests.conftest import stop_process
from tests.integration.test_images import REGISTRY_BIN, Registry
from tests.integration.test_push import _tmp, add_image, builder, ok

docker_engine = dockerref.docker_engine

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the image store unpacks layers as root"),
    pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry"),
]


def test_docker_pulls_and_runs_what_moor_pushed(docker_engine):
    tmp = _tmp("dockerpull")
    reg = Registry(tmp)
    root = _tmp("dockerroot")
    try:
        ref = f"{reg.host}/test/fordocker:1"
        add_image(root, ib.make_image([ib.busybox_rootfs(), [ib.TarEntry("app", b"v1\n")]],
                                      cmd=["cat", "/app"]), ref)
        digest = ok(builder(root, "push", ref))[-1].split()[2]
        pulled = docker_engine.docker("pull", ref)
        assert f"Digest: {digest}" in pulled
        assert docker_engine.docker("run", "--rm", "--network", "none", ref) == "v1\n"
        docker_engine.docker("rmi", ref)
    finally:
        stop_process(reg.proc)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
