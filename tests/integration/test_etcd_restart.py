"""etcd outages under a running control plane: it rides out an external etcd's restart (one
WARNING, one line when it is back, UNAVAILABLE `etcd is unavailable` meanwhile, no
tracebacks), restarts its own local etcd after kill -9 losing nothing acknowledged, and exits
non-zero with one line when its local etcd cannot be brought back."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

from controlplane.store import Store
from controlplane.store.local import LocalEtcd
from moorage.model import kinds
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, etcd_client, start_controlplane, stop_process

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: %s}\nspec: {containers: [{name: c, image: busybox}]}\n"


def test_control_plane_survives_an_etcd_restart():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-restart-")
    etcd = LocalEtcd(os.path.join(tmp, "etcd")).start()
    cp = start_controlplane(etcd.endpoint, os.path.join(tmp, "cp"),
                            extra_args=("--no-node-lifecycle", "--log-level", "info"))
    try:
        async def add_node():
            store = Store(etcd_client(etcd.endpoint), prefix=cp.prefix)
            node = pb.Node(api_version="v1", kind="Node")
            node.metadata.name = "n1"
            node.status.allocatable.update({"cpu": "4", "memory": "8Gi", "pods": "110"})
            node.status.conditions.add(type="Ready", status="True")
            await store.create(node)
            await store.client.close()
        asyncio.run(add_node())
        stub = cp.stub()
        stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(source="a",
                                                                    content=POD % "before")]))
        etcd.stop()
        # Meanwhile every request fails fast, UNAVAILABLE, saying why, marked as answered.
        for _ in range(5):
            try:
                stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                    source="c", content=POD % "during")]), timeout=10)
                raise AssertionError("an apply succeeded without etcd")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert err.details().startswith("etcd is unavailable: "), err.details()
                assert ("moorage-error", "etcd-unavailable") in tuple(err.trailing_metadata())
        cli = subprocess.run([sys.executable, "-m", "moorage.cli.main", "get", "pods"],
                             env=cp.env(), capture_output=True, text=True, timeout=30)
        assert cli.returncode == 1
        assert cli.stderr.startswith(f"error: the control plane at {cp.address} answered, but "
                                     "its etcd is unavailable ("), cli.stderr
        assert len(cli.stderr.splitlines()) == 1
        for attempt in range(3):    # a loaded machine can make etcd's own restart fail
            try:
                etcd.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(1)
        assert cp.proc.poll() is None, "the control plane died with etcd"
        deadline = time.time() + 30
        while True:
            try:
                stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                    source="b", content=POD % "after")]), timeout=10)
                break
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED), err
                assert time.time() < deadline
                time.sleep(0.5)

        def node_of(name):
            return kinds.unwrap(stub.Get(api_pb2.GetRequest(
                kind="pod", namespace="default", name=name))).spec.node_name
        while not (node_of("before") and node_of("after")):
            assert time.time() < deadline, "pods were not scheduled after the restart"
            time.sleep(0.2)
        assert node_of("before") == node_of("after") == "n1"
        with open(os.path.join(cp.state_dir, "controlplane.log")) as f:
            log = f.read()
        assert "Traceback" not in log, log[-3000:]
        outage = [line for line in log.splitlines() if "controlplane.etcd:" in line]
        assert len(outage) == 2, outage             # one WARNING, then one line when back
        assert "WARNING" in outage[0] and "etcd is unavailable" in outage[0]
        assert "answering again" in outage[1]
    finally:
        stop_process(cp.proc)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def etcd_child(cp) -> int:
    """The pid of the control plane's own etcd."""
    for task in os.listdir(f"/proc/{cp.proc.pid}/task"):   # started from any of its threads
        with open(f"/proc/{cp.proc.pid}/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if c.read().split(b"\0")[0].endswith(b"etcd"):
                        return int(pid)
    raise AssertionError("the control plane has no etcd child")


def metric(cp, name: str) -> float:
    with urllib.request.urlopen(f"http://{cp.metrics}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def moor(cp, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=cp.env(),
                          input=stdin, capture_output=True, text=True, timeout=60)


NAMESPACES = "".join(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: kept-{i}}}\n"
                     for i in range(20))


def test_local_etcd_killed_is_restarted_and_nothing_acknowledged_is_lost():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-kill-")
    cp = start_controlplane("", os.path.join(tmp, "cp"))
    try:
        applied = moor(cp, "apply", "-f", "-", stdin=NAMESPACES)
        assert applied.returncode == 0, applied.stderr
        child = etcd_child(cp)
        os.kill(child, 9)
        began = time.monotonic()
        # The API answers at once, and says what is wrong, in one line.
        out = moor(cp, "get", "namespaces")
        if out.returncode != 0:
            assert "answered, but its etcd is unavailable" in out.stderr, out.stderr
            assert len(out.stderr.splitlines()) == 1
        # etcd is back within 10 s (the old one reaped, not left a zombie) ...
        while moor(cp, "get", "namespaces").returncode != 0:
            assert time.monotonic() - began < 10, "etcd was not back within 10s"
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{child}"), "the killed etcd was left a zombie"
        assert etcd_child(cp) != child
        # ... writes succeed after, and everything acknowledged before is there.
        later = moor(cp, "apply", "-f", "-",
                     stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: after}\n")
        assert later.returncode == 0, later.stderr
        names = moor(cp, "get", "namespaces", "-o", "name").stdout.split()
        assert {f"namespace/kept-{i}" for i in range(20)} | {"namespace/after"} <= set(names)
        assert metric(cp, "moorage_local_etcd_restarts_total") == 1
        assert metric(cp, "moorage_etcd_up") == 1
        assert cp.proc.poll() is None
    finally:
        stop_process(cp.proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_local_etcd_that_cannot_come_back_makes_the_control_plane_exit():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-lost-")
    cp = start_controlplane("", os.path.join(tmp, "cp"))
    squatter = socket.socket()
    try:
        with open(os.path.join(cp.state_dir, "etcd", "ports.json")) as f:
            client_port = json.load(f)["client"]
        child = etcd_child(cp)
        os.kill(child, 9)
        # Something else takes etcd's port at once: every restart fails.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                squatter.bind(("127.0.0.1", client_port))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        squatter.listen()
        # While it tries, the health service says NOT_SERVING.
        with grpc.insecure_channel(cp.ca_address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                    health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health never went NOT_SERVING"
                time.sleep(0.1)
        code = cp.proc.wait(60)
        assert code == 1
        with open(os.path.join(cp.state_dir, "controlplane.log")) as f:
            lines = [line for line in f.read().splitlines()
                     if line.startswith("moor-controlplane: ") and "serving on" not in line]
        assert len(lines) == 1, lines
        assert "local etcd" in lines[0] and "could not be started again" in lines[0], lines
    finally:
        squatter.close()
        stop_process(cp.proc)
        shutil.rmtree(tmp, ignore_errors=True)
