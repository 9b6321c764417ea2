"""The Dispatcher against a real control plane and etcd, with an in-test agent on the stream:
registration, liveness, assignments, status reports, NotReady and eviction."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import grpc
import pytest

from moorage.model import kinds
from moorage.v1 import agent_pb2, agent_pb2_grpc, api_pb2
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until_async as eventually

POD_YAML = """\
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default}
spec:
  containers: [{name: app, image: busybox}]
"""


@pytest.fixture(scope="module")
def cp(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "dispatch-")
    plane = start_controlplane(etcd_endpoint, state, extra_args=(
        "--heartbeat-period", "0.5", "--node-not-ready-after", "3",
        "--pod-eviction-after", "1", "--eviction-startup-grace", "0"))
    yield plane
    stop_process(plane.proc)
    shutil.rmtree(state, ignore_errors=True)


class FakeAgent:
    """Speaks the agent side of the session like a real agent would, and records what came."""

    def __init__(self, address: str, name: str, credentials, hello_name: str | None = None):
        self.address, self.name = address, name
        self.credentials = credentials
        self.hello_name = hello_name or name
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.received: list[agent_pb2.DispatcherMessage] = []
        self.desired: dict[str, pb.Pod] = {}
        self.beating = True

    async def messages(self):
        hello = agent_pb2.Hello(node_name=self.hello_name, labels={"zone": "a"},
                                capacity={"cpu": "4", "memory": "8Gi", "pods": "110"})
        hello.addresses.add(type="InternalIP", address="192.0.2.10")
        yield agent_pb2.AgentMessage(hello=hello)
        while True:
            try:
                msg = await asyncio.wait_for(self.outbox.get(), 0.3)
                yield msg
            except TimeoutError:
                if self.beating:
                    yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())

    async def run(self):
        async with grpc.aio.secure_channel(self.address, self.credentials) as ch:
            stub = agent_pb2_grpc.DispatcherStub(ch)
            async for msg in stub.Session(self.messages()):
                self.received.append(msg)
                if msg.WhichOneof("message") == "assignments":
                    a = msg.assignments
                    if a.full:
                        self.desired.clear()
                    for p in a.pods:
                        self.desired[p.metadata.uid] = p
                    for uid in a.removed_uids:
                        self.desired.pop(uid, None)




def get(stub, kind, name, ns=""):
    return kinds.unwrap(stub.Get(api_pb2.GetRequest(kind=kind, namespace=ns, name=name)))


def test_session_registers_assigns_reports_and_evicts(cp, tmp_state):
    stub = cp.stub()

    async def go():
        agent = FakeAgent(cp.address, "node-a", cp.node_credentials("node-a", tmp_state))
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: any(m.WhichOneof("message") == "settings"
                                         for m in agent.received))
            settings = agent.received[0].settings
            assert settings.heartbeat_period_ms == 500
            node = get(stub, "node", "node-a")
            ready = [c for c in node.status.conditions if c.type == "Ready"][0]
            assert ready.status == "True"
            assert node.status.allocatable["memory"] == "8Gi"
            assert node.metadata.labels["zone"] == "a"
            assert node.metadata.labels["kubernetes.io/hostname"] == "node-a"
            # Its pod subnet, leased from the cluster CIDR, and the overlay's peer list.
            assert settings.network.pod_cidr == node.spec.pod_cidr
            assert node.spec.pod_cidr.startswith("10.244.") and node.spec.pod_cidr.endswith("/24")
            assert (settings.network.vxlan_vni, settings.network.vxlan_port) == (1, 4789)
            peers = await eventually(lambda: next(
                (m.peers for m in agent.received if m.WhichOneof("message") == "peers"
                 and any(p.name == "node-a" for p in m.peers.peers)), None))
            me = next(p for p in peers.peers if p.name == "node-a")
            assert (me.underlay_ip, me.pod_cidr) == ("192.0.2.10", node.spec.pod_cidr)

            stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                source="p.yaml", content=POD_YAML % "web")]))
            pod = await eventually(lambda: next(iter(agent.desired.values()), None))
            assert pod.metadata.name == "web" and pod.spec.node_name == "node-a"

            status = pb.PodStatus(phase="Running", pod_ip="10.244.1.5", host_ip="192.0.2.10")
            status.container_statuses.add(name="app", state="running", ready=True)
            await agent.outbox.put(agent_pb2.AgentMessage(pod_status=agent_pb2.PodStatusReport(
                namespace="default", name="web", uid=pod.metadata.uid, status=status)))

            def reported():
                p = get(stub, "pod", "web", "default")
                return p if p.status.phase == "Running" else None
            p = await eventually(reported)
            conds = {c.type: c.status for c in p.status.conditions}
            assert conds == {"PodScheduled": "True", "ContainersReady": "True", "Ready": "True"}
            assert p.status.pod_ip == "10.244.1.5"

            # A report about someone else's pod is ignored. The session handles messages in
            # order, so once a later report shows, the bogus one has been dealt with.
            stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                source="q.yaml", content=POD_YAML % "other")]))
            await agent.outbox.put(agent_pb2.AgentMessage(pod_status=agent_pb2.PodStatusReport(
                namespace="default", name="other", uid="not-its-uid",
                status=pb.PodStatus(phase="Failed"))))
            later = pb.PodStatus()
            later.CopyFrom(status)
            later.pod_ip = "10.244.1.6"
            await agent.outbox.put(agent_pb2.AgentMessage(pod_status=agent_pb2.PodStatusReport(
                namespace="default", name="web", uid=pod.metadata.uid, status=later)))
            await eventually(lambda: get(stub, "pod", "web", "default").status.pod_ip
                             == "10.244.1.6")
            assert get(stub, "pod", "other", "default").status.phase != "Failed"

            # Deleting a running pod is graceful: it stays, Terminating, on the node's
            # assignments until the agent confirms that its containers stopped.
            stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace="default", name="other"))
            stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace="default", name="web"))
            marked = await eventually(lambda: next(
                (p for p in agent.desired.values() if p.metadata.name == "web"
                 and p.metadata.deletion_timestamp), None))
            assert marked.metadata.deletion_grace_period_seconds == 30
            assert get(stub, "pod", "web", "default").metadata.deletion_timestamp
            # A confirmation for a pod that is not this node's is ignored.
            other = get(stub, "pod", "other", "default")
            await agent.outbox.put(agent_pb2.AgentMessage(pod_terminated=agent_pb2.PodTerminated(
                namespace="default", name="other", uid="not-its-uid")))
            for p in list(agent.desired.values()):
                await agent.outbox.put(agent_pb2.AgentMessage(
                    pod_terminated=agent_pb2.PodTerminated(
                        namespace="default", name=p.metadata.name, uid=p.metadata.uid)))
            await eventually(lambda: not agent.desired)
            assert other.metadata.deletion_timestamp

            # Silence: the node goes NotReady, then its pods are deleted.
            stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                source="p.yaml", content=POD_YAML % "stranded")]))
            await eventually(lambda: any(p.metadata.name == "stranded"
                                         for p in agent.desired.values()))
            agent.beating = False

            def not_ready():
                n = get(stub, "node", "node-a")
                return any(c.type == "Ready" and c.status == "Unknown"
                           for c in n.status.conditions)
            await eventually(not_ready)

            def evicted():
                try:
                    get(stub, "pod", "stranded", "default")
                    return False
                except grpc.RpcError as err:
                    return err.code() == grpc.StatusCode.NOT_FOUND
            await eventually(evicted)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())


def test_a_node_may_act_only_as_itself(cp, tmp_state):
    """A node certificate opens a session only under its own name, reads only its own pods,
    writes nothing through the API; the admin credential is not a node."""
    creds = cp.node_credentials("node-x", tmp_state)
    before = cp.snapshot()

    async def session_as(credentials, hello_name: str):
        agent = FakeAgent(cp.address, "node-x", credentials, hello_name=hello_name)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(agent.run(), 10)
        return exc.value

    err = asyncio.run(session_as(creds, "node-y"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not open a session as node 'node-y'" in err.details()
    from moorage.credentials import channel_credentials

    err = asyncio.run(session_as(channel_credentials(cp.credentials), "node-x"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not a node" in err.details()

    from moorage.v1 import api_pb2_grpc

    node_stub = api_pb2_grpc.ClusterStub(grpc.secure_channel(cp.address, creds))
    for call, req in (
            (node_stub.List, api_pb2.ListRequest(kind="pods", field_selector="spec.nodeName=node-y")),
            (node_stub.List, api_pb2.ListRequest(kind="pods", all_namespaces=True)),
            (node_stub.Get, api_pb2.GetRequest(kind="node", name="node-y")),
            (node_stub.Apply, api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                source="p.yaml", content=POD_YAML % "sneaky")])),
            (node_stub.CreateToken, api_pb2.CreateTokenRequest())):
        with pytest.raises(grpc.RpcError) as exc:
            call(req, timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, exc.value.details()
    own = node_stub.List(api_pb2.ListRequest(kind="pods", all_namespaces=True,
                                             field_selector="spec.nodeName=node-x"))
    assert list(own.items) == []
    assert cp.snapshot() == before
