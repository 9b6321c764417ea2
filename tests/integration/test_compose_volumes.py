"""Compose volumes end to end: a real control plane on a real etcd, two real agents and real
containers. A stack whose service mounts a named volume runs as a one-replica StatefulSet whose
pod writes into its claim; the data outlives the pod and `moor stack rm`, a new deploy finds it,
and `moor volume` lists, inspects and removes it as `docker volume` would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from nodeagent.runtime.syscalls import LibcSyscalls
from nodeagent.storage.localvolumes import unmount_all
from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process, unique
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

COMPOSE = textwrap.dedent("""\
    volumes:
      data:
        driver_opts: {size: 64M}
    services:
      db:
        image: busybox:test
        command: ["sh", "-c", "echo started >> /data/log && sync && exec sleep 3600"]
        volumes:
          - data:/data
          - type: tmpfs
            target: /run/db
            tmpfs: {size: 8m}
          - /scratch
    """)


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "compose-vol-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    nodes = [unique("cv-a"), unique("cv-b")]
    binds = os.path.join(root, "binds")
    os.makedirs(binds)
    agents = start_agents(cp, root, nodes, imagebuild.busybox_tar(root),
                          extra_args=("--allowed-host-paths", binds))
    env = cp.env()

    def moor(*args, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                              capture_output=True, text=True, env=env, timeout=timeout)

    try:
        wait_until(lambda: len(_ready_nodes(moor)) == 2, 60, "two Ready nodes")
        yield moor, binds
    finally:
        for a in agents:
            a.cleanup()
            # The claims' loop-mounted images, should a test have stopped before removing them.
            unmount_all(LibcSyscalls(), os.path.join(a.state, "local-volumes"))
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


def _ready_nodes(moor) -> list[str]:
    out = moor("get", "nodes", "-o", "json")
    items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
    return [n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n["status"].get("conditions", []))]


def items(moor, *args) -> list[dict]:
    out = moor("get", *args, "-o", "json")
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def running(moor, ns: str, name: str, not_uid: str = "") -> dict | None:
    for p in items(moor, "pods", "-n", ns):
        if p["metadata"]["name"] == name and p["status"].get("phase") == "Running" \
                and p["metadata"]["uid"] != not_uid \
                and not p["metadata"].get("deletionTimestamp"):
            return p
    return None


def log_lines(moor, ns: str) -> list[str]:
    out = moor("exec", "-n", ns, "db-0", "--", "cat", "/data/log")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_a_stack_with_a_named_volume_keeps_its_data(cluster, tmp_path):
    moor, _ = cluster
    stack = unique("vol")
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    try:
        out = moor("stack", "deploy", "-c", str(tmp_path / "compose.yaml"), stack)
        assert out.returncode == 0, out.stderr
        assert "statefulset" in out.stdout and "persistentvolumeclaim/data created" in \
            out.stdout, out.stdout
        assert [d["metadata"]["name"] for d in items(moor, "deployments", "-n", stack)] == []
        (sts,) = items(moor, "statefulsets", "-n", stack)
        assert sts["metadata"]["name"] == "db" and sts["spec"]["replicas"] == 1
        assert sts["spec"]["serviceName"] == "db"

        first = wait_until(lambda: running(moor, stack, "db-0"), 120, "db-0 Running")
        node = first["spec"]["nodeName"]
        assert log_lines(moor, stack) == ["started"]
        mounts = moor("exec", "-n", stack, "db-0", "--", "cat", "/proc/mounts")
        assert any(line.split()[1:3] == ["/run/db", "tmpfs"]
                   for line in mounts.stdout.splitlines()), mounts.stdout

        ls = moor("volume", "ls", "-n", stack)
        assert ls.returncode == 0, ls.stderr
        assert ls.stdout.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME", "SIZE",
                                                     "USED", "NODE"]
        assert ls.stdout.splitlines()[1].split()[:3] == ["local", "data", "64Mi"]
        assert ls.stdout.splitlines()[1].split()[-1] == node
        (info,) = json.loads(moor("volume", "inspect", "-n", stack, "data").stdout)
        assert info["Driver"] == "local" and info["Status"]["Phase"] == "Bound"
        assert info["Status"]["Node"] == node and info["Mountpoint"]
        bound = info["Status"]["PersistentVolume"]
        assert bound

        busy = moor("volume", "rm", "-n", stack, "data")
        assert busy.returncode == 1
        assert busy.stderr.strip() == ("Error response from daemon: remove data: volume is in "
                                       "use - [pod db-0]")

        # A new pod of the StatefulSet: the same claim, the same node, the data still there.
        assert moor("delete", "pod", "db-0", "-n", stack).returncode == 0
        second = wait_until(lambda: running(moor, stack, "db-0", first["metadata"]["uid"]),
                            120, "a new db-0 Running")
        assert second["spec"]["nodeName"] == node
        assert log_lines(moor, stack) == ["started", "started"]

        # rm keeps the volume; a new deploy finds it.
        out = moor("stack", "rm", stack)
        assert out.returncode == 0, out.stderr
        assert f"volumes kept: data (remove them with `moor volume rm -n {stack} data`" in \
            out.stdout, out.stdout
        assert [c["metadata"]["name"] for c in items(moor, "pvc", "-n", stack)] == ["data"]
        wait_until(lambda: not items(moor, "pods", "-n", stack), 120, "the stack's pods gone")
        out = moor("stack", "deploy", "-c", str(tmp_path / "compose.yaml"), stack)
        assert out.returncode == 0, out.stderr
        (claim,) = items(moor, "pvc", "-n", stack)
        assert claim["spec"]["volumeName"] == bound and claim["status"]["phase"] == "Bound"
        third = wait_until(lambda: running(moor, stack, "db-0", second["metadata"]["uid"]),
                           120, "db-0 Running again")
        assert third["spec"]["nodeName"] == node
        assert log_lines(moor, stack) == ["started", "started", "started"]

        assert moor("stack", "rm", stack).returncode == 0
        wait_until(lambda: not items(moor, "pods", "-n", stack), 120, "the stack's pods gone")
        out = moor("volume", "rm", "-n", stack, "data")
        assert out.returncode == 0 and out.stdout == "data\n", out.stderr
        wait_until(lambda: not items(moor, "pvc", "-n", stack), 60, "the claim gone")
    finally:
        moor("delete", "namespace", stack, "--timeout", "60s")


def test_external_volume_must_exist(cluster, tmp_path):
    moor, _ = cluster
    stack = unique("vol")
    (tmp_path / "compose.yaml").write_text(
        "volumes: {old: {external: true, name: legacy}}\n"
        "services: {db: {image: busybox:test, volumes: [old:/data]}}\n")
    out = moor("stack", "deploy", "-c", str(tmp_path / "compose.yaml"), stack)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: {tmp_path / 'compose.yaml'}: volumes.old: external: no PersistentVolumeClaim "
        f"'legacy' in namespace '{stack}'; create it (moor apply -f claim.yaml) or drop "
        "`external` to have the stack create it")
    assert moor("get", "namespace", stack).returncode != 0


def test_bind_mounts_from_the_compose_files_directory(cluster):
    moor, binds = cluster
    stack = unique("bind")
    project = os.path.join(binds, stack)
    os.makedirs(os.path.join(project, "site"))
    with open(os.path.join(project, "site", "index.html"), "w") as f:
        f.write("hello from the host\n")
    with open(os.path.join(project, "compose.yaml"), "w") as f:
        f.write(textwrap.dedent("""\
            services:
              web:
                image: busybox:test
                command: ["sh", "-c", "echo made > /out/file && exec sleep 3600"]
                volumes:
                  - ./site:/www:ro
                  - type: bind
                    source: ./out
                    target: /out
                    bind: {create_host_path: true}
            """))
    try:
        out = moor("stack", "deploy", "-c", os.path.join(project, "compose.yaml"), stack)
        assert out.returncode == 0, out.stderr

        def web():
            pods = [p for p in items(moor, "pods", "-n", stack)
                    if p["status"].get("phase") == "Running"]
            return pods[0]["metadata"]["name"] if pods else None
        name = wait_until(web, 120, "the web pod Running")
        read = moor("exec", "-n", stack, name, "--", "cat", "/www/index.html")
        assert read.returncode == 0 and read.stdout == "hello from the host\n", read.stderr
        write = moor("exec", "-n", stack, name, "--", "touch", "/www/nope")
        assert write.returncode != 0 and "Read-only file system" in write.stdout + write.stderr
        wait_until(lambda: os.path.exists(os.path.join(project, "out", "file")), 30,
                   "the file the pod wrote in the created directory")
        with open(os.path.join(project, "out", "file")) as f:
            assert f.read() == "made\n"
    finally:
        moor("stack", "rm", stack)
        wait_until(lambda: not items(moor, "pods", "-n", stack), 120, "the stack's pods gone")
