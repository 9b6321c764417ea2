"""`moor stack deploy [--build]` with Compose `build:` against a real control plane: without
--build the image is deployed as is (with a note); a failing build deploys nothing; and, once
`moor build` exists (builder/executor.py), a stack built from a Dockerfile, pushed to a real
docker-registry and run by a cluster agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from tests import imagebuild as ib
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process, unique
from tests.integration.test_images import REGISTRY_BIN, Registry
from tests.wait import wait_until


def moor_with(env):
    def moor(*args, timeout=120):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                              capture_output=True, text=True, env=env, timeout=timeout)
    return moor


def items(moor, *args) -> list[dict]:
    out = moor("get", *args, "-o", "json")
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def write_stack(tmp_path, image: str, dockerfile: str, args: str = "{}"):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "Dockerfile").write_text(dockerfile)
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(f"""\
        services:
          web:
            image: {image}
            build:
              context: ./web
              args: {args}
        """))
    return str(tmp_path / "compose.yaml")


def test_without_build_the_image_is_deployed_as_is(controlplane, tmp_path):
    moor = moor_with(controlplane.env())
    name = unique("cb")
    path = write_stack(tmp_path, "reg.moortest.invalid:5000/web:1", "FROM scratch\n")
    try:
        out = moor("stack", "deploy", "-c", path, name)
        assert out.returncode == 0, out.stderr
        assert (f"note: {path}: services.web.build: not built (no --build); deploying "
                "reg.moortest.invalid:5000/web:1 as it is in its registry") in out.stdout
        (dep,) = items(moor, "deployments", "-n", name)
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "reg.moortest.invalid:5000/web:1"
    finally:
        moor("stack", "rm", name)


def test_a_failed_build_deploys_nothing(controlplane, tmp_path):
    build_root = tempfile.mkdtemp(prefix=TEST_PREFIX + "cbroot-")
    moor = moor_with(controlplane.env(MOOR_BUILD_ROOT=build_root))
    name = unique("cb")
    path = write_stack(tmp_path, "127.0.0.1:1/web:1", "FROBNICATE the build\n")
    try:
        out = moor("stack", "deploy", "--build", "-c", path, name)
        assert out.returncode != 0
        assert "building services.web: 127.0.0.1:1/web:1 from " in out.stdout
        assert out.stderr.splitlines()[-1] == (
            f"error: {path}: services.web.build: the build of 127.0.0.1:1/web:1 failed "
            "(exit 1); nothing was deployed")
        assert name not in {n["metadata"]["name"] for n in items(moor, "namespaces")}
    finally:
        shutil.rmtree(build_root, ignore_errors=True)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="builds and runs real containers: needs root")
@pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry")
def test_a_stack_with_build_runs_on_the_cluster(etcd_endpoint, tmp_path):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "cbcluster-")
    os.makedirs(os.path.join(root, "registry"))
    reg = Registry(os.path.join(root, "registry"))
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    from tests.agents import start_agents

    agents = start_agents(cp, root, [unique("cb-a")], extra_args=("--insecure-registry",
                                                                   reg.host))
    moor = moor_with(cp.env(MOOR_BUILD_ROOT=os.path.join(root, "build")))
    name = unique("cb")
    try:
        ib.push(reg.url, "base/busybox", "1", ib.make_image())
        path = write_stack(tmp_path, f"{reg.host}/stack/web:1", textwrap.dedent(f"""\
            FROM {reg.host}/base/busybox:1
            ARG GREETING
            RUN echo "$GREETING" > /greeting
            CMD ["sh", "-c", "cat /greeting; exec sleep 3600"]
            """), args="{GREETING: hello-from-compose}")
        out = moor("stack", "deploy", "--build", "-c", path, name, timeout=600)
        assert out.returncode == 0, out.stderr + out.stdout
        assert f'stack "{name}" deployed' in out.stdout

        def running():
            return [p for p in items(moor, "pods", "-n", name)
                    if p["status"].get("phase") == "Running"]

        (pod,) = wait_until(running, 120, "the stack's pod Running")
        logs = wait_until(lambda: moor("logs", "-n", name, pod["metadata"]["name"]).stdout,
                          30, "its log")
        assert logs.splitlines() == ["hello-from-compose"]
    finally:
        moor("stack", "rm", name)
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        stop_process(reg.proc)
        shutil.rmtree(root, ignore_errors=True)
