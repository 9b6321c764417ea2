"""`moor-agent run --join` against a fake Dispatcher: Hello, heartbeats, assigned pods run and
report status, removed pods go, and a restarted control plane gets a new Hello while pods run."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid

import grpc
import pytest

from controlplane.identity import ClusterCA, server_credentials
from controlplane.store.local import free_port
from moorage.v1 import agent_pb2, agent_pb2_grpc
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import sandbox
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.syscalls import LibcSyscalls
from nodeagent.session.identity import NodeIdentity
from tests import imagebuild
from tests.conftest import TEST_PREFIX, unique
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")
# Its own pod-namespace prefix: other tests' clean-ups never touch it, nor it theirs.
SANDBOXES = sandbox.Sandboxes(LibcSyscalls())


NETNS_PREFIX = unique("ns") + "-"

NODE = TEST_PREFIX + "node"


class FakeDispatcher(agent_pb2_grpc.DispatcherServicer):
    """Records what agents send; answers each session with settings and the full pod set, then
    whatever `push` sends. Its grpc.aio server runs on an event loop in a thread of its own."""

    def __init__(self, port: int, credentials: grpc.ServerCredentials):
        self.port = port
        self.credentials = credentials
        self.pods: dict[str, pb.Pod] = {}
        self.hellos: list[agent_pb2.Hello] = []
        self.heartbeats = 0
        self.reports: list[agent_pb2.PodStatusReport] = []
        self.queues: list[asyncio.Queue] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = None

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        async def start():
            self.server = grpc.aio.server()
            agent_pb2_grpc.add_DispatcherServicer_to_server(self, self.server)
            self.server.add_secure_port(f"127.0.0.1:{self.port}", self.credentials)
            await self.server.start()
        self._call(start())

    def stop(self) -> None:
        async def stop():
            await self.server.stop(None)
            self.queues.clear()
        self._call(stop())

    def close(self) -> None:
        if self.server is not None:
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def push(self, assignments: agent_pb2.Assignments) -> None:
        for p in assignments.pods:
            self.pods[p.metadata.uid] = p
        for uid in assignments.removed_uids:
            self.pods.pop(uid, None)
        msg = agent_pb2.DispatcherMessage(assignments=assignments)
        for q in list(self.queues):
            self.loop.call_soon_threadsafe(q.put_nowait, msg)

    async def Session(self, request_iterator, context):
        first = await anext(request_iterator)
        assert first.WhichOneof("message") == "hello"
        self.hellos.append(first.hello)
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.append(queue)

        async def receive():
            async for msg in request_iterator:
                if msg.WhichOneof("message") == "heartbeat":
                    self.heartbeats += 1
                elif msg.WhichOneof("message") == "pod_status":
                    self.reports.append(msg.pod_status)
        reader = asyncio.create_task(receive())
        try:
            yield agent_pb2.DispatcherMessage(
                settings=agent_pb2.SessionSettings(heartbeat_period_ms=200))
            yield agent_pb2.DispatcherMessage(assignments=agent_pb2.Assignments(
                full=True, pods=list(self.pods.values())))
            while True:
                yield await queue.get()
        finally:
            reader.cancel()


def busybox_pod(uid: str, name: str = "hi") -> pb.Pod:
    p = pb.Pod(api_version="v1", kind="Pod")
    p.metadata.namespace, p.metadata.name, p.metadata.uid = "default", name, uid
    p.spec.node_name = NODE
    p.spec.termination_grace_period_seconds = 1   # sh as PID 1 ignores SIGTERM
    p.spec.containers.add(name="app", image="busybox:test", image_pull_policy="Never",
                          command=["sh", "-c", "echo hi; sleep 300"])
    return p


@pytest.fixture
def env():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "join-")
    state = os.path.join(root, "state")
    cgroup_root = TEST_PREFIX + "join"
    base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", state,
            "--cgroup-root", cgroup_root, "--netns-prefix", NETNS_PREFIX]
    # The agent already holds a node certificate from this CA (as after a join), so it goes
    # straight to an mTLS session with the fake.
    ca = ClusterCA.load_or_create(os.path.join(root, "ca"))
    ident = NodeIdentity.load_or_create(state, NODE)
    ident.save(ca.sign_node_csr(ident.csr_pem(), NODE), ca.cert_pem)
    cert, key = ca.server_cert(["127.0.0.1"])
    fake = FakeDispatcher(free_port(), server_credentials(ca, cert, key))
    procs = []

    def cli(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                              check=True)

    def start_agent():
        with open(os.path.join(root, "agent.log"), "ab") as log:
            procs.append(subprocess.Popen(
                [*base, "run", "--join", f"127.0.0.1:{fake.port}", "--node-name", NODE,
                 "--advertise-address", "127.0.0.1", "--labels", "zone=a", "--pod-network", "none"],
                stdout=log, stderr=log))
        return procs[-1]
    yield fake, cli, start_agent, root
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    fake.close()
    Runtime(os.path.join(state, "containers"), cgroup_root=cgroup_root).remove_all()
    for name in sandbox.existing(NETNS_PREFIX):
        SANDBOXES.remove(name)
    shutil.rmtree(root, ignore_errors=True)




def running(cli) -> list[str]:
    rows = [r.split() for r in cli("ps").stdout.splitlines()[1:]]
    return [r[0] for r in rows if r[3] == "running"]


def test_join_runs_assigned_pods_and_survives_a_control_plane_restart(env):
    fake, cli, start_agent, root = env
    tar = imagebuild.busybox_tar(root)
    cli("import", tar)
    fake.start()
    agent = start_agent()

    hello = wait_until(lambda: fake.hellos and fake.hellos[0])
    assert hello.node_name == NODE and dict(hello.labels) == {"zone": "a"}
    assert hello.capacity["cpu"] == str(os.cpu_count()) and hello.capacity["pods"] == "110"
    assert int(hello.capacity["memory"]) > 0
    assert ("InternalIP", "127.0.0.1") in [(a.type, a.address) for a in hello.addresses]
    assert hello.node_info.operating_system == "linux" and not hello.running_pod_uids
    wait_until(lambda: fake.heartbeats >= 3)

    uid = str(uuid.uuid4())
    fake.push(agent_pb2.Assignments(full=True, pods=[busybox_pod(uid)]))
    (cid,) = wait_until(lambda: running(cli))
    report = wait_until(lambda: next((r for r in fake.reports if r.uid == uid
                                      and r.status.phase == "Running"), None))
    assert (report.namespace, report.name) == ("default", "hi")
    assert report.status.host_ip == "127.0.0.1" and report.status.start_time
    assert [(c.name, c.state) for c in report.status.container_statuses] == [("app", "running")]

    fake.stop()                                  # the control plane goes away...
    # A barrier: the agent has noticed (its log says the session ended)...
    log_path = os.path.join(root, "agent.log")
    wait_until(lambda: "session ended" in pathlib.Path(log_path).read_text())
    assert running(cli) == [cid]                 # ...and the pod keeps running
    fake.start()
    hello = wait_until(lambda: len(fake.hellos) == 2 and fake.hellos[1])
    assert list(hello.running_pod_uids) == [uid]
    # The new session hears every pod's status again, and the pod was never restarted.
    wait_until(lambda: [r for r in fake.reports if r.status.phase == "Running"][1:])
    # A barrier: a second pod, started by a pass that also looked at the first one again.
    uid2 = str(uuid.uuid4())
    fake.push(agent_pb2.Assignments(pods=[busybox_pod(uid2, name="hi2")]))
    wait_until(lambda: len(running(cli)) == 2)
    assert cid in running(cli) and agent.poll() is None

    fake.push(agent_pb2.Assignments(removed_uids=[uid, uid2]))
    wait_until(lambda: cli("ps").stdout.count("\n") == 1)   # header only: all gone
    assert not sandbox.existing(NETNS_PREFIX)
    with open(os.path.join(root, "agent.log")) as f:
        log = f.read()
    # It already had a certificate: no join, straight to the mTLS session.
    assert "connecting to" in log and "joining" not in log
    # e.g. "child process is dead": a fork crashed by the session's gRPC threads.
    assert " ERROR " not in log, log
