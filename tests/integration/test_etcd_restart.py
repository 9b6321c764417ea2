"""Restart etcd under a running control plane: it rides it out, and the cluster resumes."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import grpc

from controlplane.etcd_local import LocalEtcd
from controlplane.store import Store
from moorage import kinds
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, etcd_client, start_controlplane, stop_process

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: %s}\nspec: {containers: [{name: c, image: busybox}]}\n"


def test_control_plane_survives_an_etcd_restart():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-restart-")
    etcd = LocalEtcd(os.path.join(tmp, "etcd")).start()
    cp = start_controlplane(etcd.endpoint, os.path.join(tmp, "cp"),
                            extra_args=("--no-node-lifecycle",))
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
        time.sleep(2)
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
    finally:
        stop_process(cp.proc)
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
