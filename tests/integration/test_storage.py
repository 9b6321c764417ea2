"""Persistent volumes against a real control plane and etcd, with in-test agents on the
dispatcher stream: a claim binds where its first pod is scheduled, later pods follow it there,
the node gets its volumes before the pods, deletion waits for the pods, reclaim Delete removes
the volume once the node reports, and bad input is refused with nothing written."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

import grpc
import pytest

from moorage.model import kinds, storage
from moorage.v1 import agent_pb2, agent_pb2_grpc, api_pb2
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process, unique
from tests.wait import wait_until_async as eventually


@pytest.fixture(scope="module")
def cp(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "storage-")
    plane = start_controlplane(etcd_endpoint, state, extra_args=("--heartbeat-period", "0.5"))
    yield plane
    stop_process(plane.proc)
    with open(os.path.join(state, "controlplane.log"), errors="replace") as f:
        print(f.read()[-6000:])
    shutil.rmtree(state, ignore_errors=True)


class VolumeAgent:
    """The agent side of a session: records assignments and volumes in arrival order."""

    def __init__(self, address: str, name: str, credentials, local_storage: str,
                 allowed: tuple[str, ...] = ()):
        self.address, self.name, self.credentials = address, name, credentials
        self.local_storage, self.allowed = local_storage, allowed
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.pods: dict[str, pb.Pod] = {}
        self.volumes: dict[str, agent_pb2.LocalVolume] = {}
        self.deleted: list[str] = []
        # Each pod's arrival, with the volumes known at that moment.
        self.arrivals: list[tuple[str, set[str]]] = []

    async def messages(self):
        hello = agent_pb2.Hello(node_name=self.name, allowed_host_paths=list(self.allowed),
                                capacity={"cpu": "4", "memory": "8Gi", "pods": "110",
                                          storage.LOCAL_STORAGE: self.local_storage})
        hello.addresses.add(type="InternalIP", address="192.0.2.10")
        yield agent_pb2.AgentMessage(hello=hello)
        while True:
            try:
                yield await asyncio.wait_for(self.outbox.get(), 0.3)
            except TimeoutError:
                yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())

    async def run(self):
        async with grpc.aio.secure_channel(self.address, self.credentials) as ch:
            async for msg in agent_pb2_grpc.DispatcherStub(ch).Session(self.messages()):
                which = msg.WhichOneof("message")
                if which == "volumes":
                    if msg.volumes.full:
                        self.volumes.clear()
                    for v in msg.volumes.volumes:
                        self.volumes[v.name] = v
                    for name in msg.volumes.deleted:
                        self.volumes.pop(name, None)
                        self.deleted.append(name)
                elif which == "assignments":
                    if msg.assignments.full:
                        self.pods.clear()
                    for p in msg.assignments.pods:
                        if p.metadata.uid not in self.pods:
                            self.arrivals.append((p.metadata.name, set(self.volumes)))
                        self.pods[p.metadata.uid] = p
                        if p.metadata.deletion_timestamp:   # "its containers stopped"
                            self.outbox.put_nowait(agent_pb2.AgentMessage(
                                pod_terminated=agent_pb2.PodTerminated(
                                    namespace=p.metadata.namespace, name=p.metadata.name,
                                    uid=p.metadata.uid)))
                    for uid in msg.assignments.removed_uids:
                        self.pods.pop(uid, None)


def apply(stub, text: str):
    return stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(source="s.yaml",
                                                                         content=text)]))


def refused(stub, text: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        apply(stub, text)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details()


def get(stub, kind, name, ns=""):
    try:
        return kinds.unwrap(stub.Get(api_pb2.GetRequest(kind=kind, namespace=ns, name=name)))
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def events(stub, ns: str, name: str) -> list[tuple[str, str]]:
    resp = stub.List(api_pb2.ListRequest(kind="event", namespace=ns))
    out = []
    for item in resp.items:
        ev = kinds.unwrap(item)
        if ev.involved_object.name == name:
            out.append((ev.reason, ev.message))
    return out


def claim(ns: str, name: str, size: str = "1Gi", extra: str = "",
          modes: str = "[ReadWriteOnce]") -> str:
    return f"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {ns}}}
spec:
  accessModes: {modes}
  resources: {{requests: {{storage: {size}}}}}
{extra}"""


def pod(ns: str, name: str, claim_name: str = "", host_path: str = "") -> str:
    source = f"persistentVolumeClaim: {{claimName: {claim_name}}}" if claim_name else \
        f"hostPath: {{path: {host_path}}}"
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  containers: [{{name: c, image: busybox, volumeMounts: [{{name: d, mountPath: /data}}]}}]
  volumes: [{{name: d, {source}}}]
"""


def moor(cp, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                          capture_output=True, text=True, env=cp.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def details(stub, ns: str, name: str) -> dict[str, str] | None:
    p = get(stub, "pod", name, ns)
    return {d.node: d.reason for d in p.status.scheduling_details} or None


def test_claims_bind_follow_protect_and_reclaim(cp, tmp_state):
    stub = cp.stub()
    ns = unique("st")
    apply(stub, f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n")

    # Bad input: one line with the field path, nothing written.
    line = refused(stub, claim(ns, "fast", extra="  storageClassName: fast"))
    assert line == 's.yaml[0] spec.storageClassName: storageclass.storage.k8s.io "fast" ' \
                   "not found"
    line = refused(stub, claim(ns, "shared", modes="[ReadWriteMany]"))
    assert line.startswith('s.yaml[0] spec.accessModes[0]: "ReadWriteMany": local volumes')
    assert get(stub, "pvc", "fast", ns) is None and get(stub, "pvc", "shared", ns) is None

    sc = get(stub, "sc", "local")
    assert sc.provisioner == "moorage.io/local" and storage.is_default(sc)
    assert sc.volume_binding_mode == "WaitForFirstConsumer" and sc.allow_volume_expansion

    async def go():
        small = VolumeAgent(cp.address, "node-1", cp.node_credentials("node-1", os.path.join(tmp_state, "1")),
                            "5Gi", ("/srv",))
        big = VolumeAgent(cp.address, "node-2", cp.node_credentials("node-2", os.path.join(tmp_state, "2")),
                          "20Gi")
        agents = {"node-1": small, "node-2": big}
        tasks = [asyncio.create_task(a.run()) for a in agents.values()]
        try:
            await eventually(lambda: all(get(stub, "node", n) for n in agents))
            node1 = get(stub, "node", "node-1")
            assert node1.metadata.annotations[storage.ALLOWED_HOST_PATHS_ANNOTATION] == "/srv"

            apply(stub, claim(ns, "data", "1Gi"))
            data = get(stub, "pvc", "data", ns)
            assert data.spec.storage_class_name == "local"
            assert list(data.metadata.finalizers) == [storage.PVC_PROTECTION]
            assert data.status.phase == "Pending"
            await eventually(lambda: ("WaitForFirstConsumer",
                                      "waiting for first consumer to be created before "
                                      "binding") in events(stub, ns, "data"))

            # The first pod binds the claim where it lands; the volume reaches the node first.
            apply(stub, pod(ns, "first", "data"))
            bound = await eventually(lambda: (c := get(stub, "pvc", "data", ns)).status.phase
                                     == "Bound" and c)
            first = get(stub, "pod", "first", ns)
            where = first.spec.node_name
            pv = get(stub, "pv", bound.spec.volume_name)
            assert pv.metadata.name == f"pvc-{bound.metadata.uid}"
            assert storage.pv_node(pv) == where
            assert pv.spec.capacity["storage"] == "1Gi"
            assert pv.spec.persistent_volume_reclaim_policy == "Delete"
            assert (pv.spec.claim_ref.namespace, pv.spec.claim_ref.name) == (ns, "data")
            assert pv.status.phase == "Bound"
            assert bound.status.capacity["storage"] == "1Gi"
            assert any(r == "ProvisioningSucceeded" for r, _ in events(stub, ns, "data"))
            agent = agents[where]
            await eventually(lambda: any(n == "first" for n, _ in agent.arrivals))
            assert ("first", {pv.metadata.name}) in agent.arrivals
            assert agent.volumes[pv.metadata.name].capacity_bytes == 2**30
            assert agent.volumes[pv.metadata.name].claim_name == "data"

            # Later pods of the claim go only there, whatever the other node offers.
            for i in range(3):
                apply(stub, pod(ns, f"later-{i}", "data"))
            for i in range(3):
                p = await eventually(lambda i=i: (x := get(stub, "pod", f"later-{i}", ns))
                                     .spec.node_name and x)
                assert p.spec.node_name == where

            # moor explain tells the same story before anything is applied.
            resp = stub.Explain(api_pb2.ExplainRequest(manifests=[api_pb2.Manifest(
                source="e.yaml", content=pod(ns, "asked", "data"))]))
            [answer] = resp.pods
            other = "node-2" if where == "node-1" else "node-1"
            assert answer.node == where
            assert {r.node: r.reason for r in answer.rejected} == {
                other: f"volume data is on {where}"}

            # Used bytes reported by the node become the claim's status.
            await agent.outbox.put(agent_pb2.AgentMessage(volumes=agent_pb2.VolumeReport(
                usage=[agent_pb2.VolumeUsage(name=pv.metadata.name, used_bytes=4096,
                                             capacity_bytes=2**30)])))
            await eventually(lambda: get(stub, "pvc", "data", ns).status.used_bytes == 4096)

            # moor get and describe.
            out = moor(cp, "get", "pvc", "-n", ns).splitlines()
            assert out[0].split() == ["NAME", "STATUS", "VOLUME", "CAPACITY", "USED", "ACCESS",
                                      "MODES", "STORAGECLASS", "AGE"]
            row = next(line.split() for line in out if line.startswith("data "))
            assert row[:7] == ["data", "Bound", pv.metadata.name, "1Gi", "4Ki", "RWO", "local"]
            row = next(line.split() for line in moor(cp, "get", "pv").splitlines()
                       if line.startswith(pv.metadata.name))
            assert row[1:7] == ["1Gi", "RWO", "Delete", "Bound", f"{ns}/data", "local"]
            assert any(line.split()[:2] == ["local", "(default)"]
                       for line in moor(cp, "get", "sc").splitlines())
            text = moor(cp, "describe", "pvc", "data", "-n", ns)
            assert "ProvisioningSucceeded" in text and "Used:" in text
            text = moor(cp, "describe", "pv", pv.metadata.name)
            assert f"Claim: {ns}/data" in [" ".join(line.split()) for line in text.splitlines()]

            # A claim may grow (the class allows it) but never shrink.
            line = refused(stub, claim(ns, "data", "512Mi"))
            assert line == "s.yaml[0] spec.resources.requests.storage: field can not be less " \
                           "than previous value"
            line = refused(stub, claim(ns, "data", "1Gi", modes="[ReadWriteOncePod]"))
            assert line == "s.yaml[0] spec: spec is immutable after creation except " \
                           "resources.requests for bound claims"
            apply(stub, claim(ns, "data", "2Gi"))
            await eventually(lambda: get(stub, "pv", pv.metadata.name).spec.capacity[
                "storage"] == "2Gi")
            await eventually(lambda: agent.volumes[pv.metadata.name].capacity_bytes == 2**31)
            assert get(stub, "pvc", "data", ns).status.capacity["storage"] == "2Gi"

            # Scheduling facts: a pod stays Pending and says why on each node.
            apply(stub, pod(ns, "nowhere", "missing"))
            d = await eventually(lambda: details(stub, ns, "nowhere"))
            assert d == {"node-1": 'persistentvolumeclaim "missing" not found',
                         "node-2": 'persistentvolumeclaim "missing" not found'}
            apply(stub, claim(ns, "huge", "15Gi"))
            apply(stub, pod(ns, "hungry", "huge"))
            big_free = 20 - (2 if where == "node-2" else 0)
            small_free = 5 - (2 if where == "node-1" else 0)
            d = await eventually(lambda: details(stub, ns, "hungry") if big_free < 15 else
                                 get(stub, "pod", "hungry", ns).spec.node_name or None)
            if big_free >= 15:
                assert d == "node-2"
            else:
                assert d["node-1"] == f"needs 15Gi local storage, {small_free}Gi free"
            apply(stub, pod(ns, "hosty", host_path="/etc"))
            d = await eventually(lambda: details(stub, ns, "hosty"))
            assert d == {"node-1": "hostPath /etc is not allowed here (allowed: /srv)",
                         "node-2": "hostPath /etc is not allowed here (allowed: none)"}
            apply(stub, claim(ns, "solo", modes="[ReadWriteOncePod]"))
            apply(stub, pod(ns, "solo-a", "solo"))
            await eventually(lambda: get(stub, "pod", "solo-a", ns).spec.node_name)
            apply(stub, pod(ns, "solo-b", "solo"))
            d = await eventually(lambda: details(stub, ns, "solo-b"))
            assert set(d.values()) == {"claim solo is ReadWriteOncePod and used by pod solo-a"}

            # Deleting the claim waits for its pods. A marker claim, deleted while its own pod
            # holds it, is the barrier: the controller follows pods on one ordered watch, so
            # once the marker goes (its pod deleted last) it has seen every deletion before.
            apply(stub, claim(ns, "marker"))
            apply(stub, pod(ns, "marker-user", "marker"))
            stub.Delete(api_pb2.DeleteRequest(kind="pvc", namespace=ns, name="marker"))
            stub.Delete(api_pb2.DeleteRequest(kind="pvc", namespace=ns, name="data"))
            held = get(stub, "pvc", "data", ns)
            assert held.metadata.deletion_timestamp
            assert get(stub, "pvc", "marker", ns).metadata.deletion_timestamp
            users = ["first"] + [f"later-{i}" for i in range(3)]
            for name in [*users[:-1], "marker-user"]:
                stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace=ns, name=name,
                                                  grace_period_seconds=0))
            await eventually(lambda: get(stub, "pvc", "marker", ns) is None)
            assert get(stub, "pvc", "data", ns) is not None
            assert get(stub, "pv", pv.metadata.name).status.phase == "Bound"
            stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace=ns, name=users[-1],
                                              grace_period_seconds=0))
            await eventually(lambda: get(stub, "pvc", "data", ns) is None)

            # Released, reclaim Delete: the node is told, reports, and the volume goes.
            released = get(stub, "pv", pv.metadata.name)
            assert released.status.phase == "Released"
            await eventually(lambda: pv.metadata.name in agent.deleted)
            assert get(stub, "pv", pv.metadata.name) is not None   # until the node reports
            await agent.outbox.put(agent_pb2.AgentMessage(volumes=agent_pb2.VolumeReport(
                deleted=[pv.metadata.name])))
            await eventually(lambda: get(stub, "pv", pv.metadata.name) is None)

            # The namespace deleted: its claims go through their finalizers once its pods are
            # gone, and their volumes are released.
            solo = get(stub, "pvc", "solo", ns)
            stub.Delete(api_pb2.DeleteRequest(kind="namespace", name=ns))
            assert get(stub, "namespace", ns) is not None
            await eventually(lambda: get(stub, "namespace", ns) is None)
            assert get(stub, "pvc", "solo", ns) is None
            solo_agent = agents[get(stub, "pv", solo.spec.volume_name).spec.node_affinity
                                .required.node_selector_terms[0].match_expressions[0]
                                .values[0]]
            await eventually(lambda: solo.spec.volume_name in solo_agent.deleted)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                stub.Delete(api_pb2.DeleteRequest(kind="namespace", name=ns))
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    asyncio.run(go())


def test_finalizers_hold_a_deleted_object_until_the_last_goes(cp):
    stub = cp.stub()
    name = unique("held")
    cm = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, finalizers: [%s]}}\n"
    apply(stub, cm % "example.com/a, example.com/b")
    stub.Delete(api_pb2.DeleteRequest(kind="configmap", namespace="default", name=name))
    held = get(stub, "configmap", name, "default")
    assert held.metadata.deletion_timestamp
    assert list(held.metadata.finalizers) == ["example.com/a", "example.com/b"]
    # A manifest without finalizers leaves them alone; one that drops one keeps the object.
    apply(stub, f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n")
    apply(stub, cm % "example.com/b")
    assert list(get(stub, "configmap", name, "default").metadata.finalizers) == \
        ["example.com/b"]
    [result] = apply(stub, cm % "").results
    assert result.action == "deleted"
    assert get(stub, "configmap", name, "default") is None
