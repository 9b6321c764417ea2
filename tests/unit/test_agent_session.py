"""The agent's session: assignments, back-off, Hello, status reports, and one real stream."""

from __future__ import annotations

import asyncio
import itertools
import os

import grpc
import pytest

import moorage
from moorage.v1 import agent_pb2, agent_pb2_grpc
from moorage.v1 import objects_pb2 as pb
from nodeagent.session.checkpoints import Checkpoints
from nodeagent.session.hostfacts import (
    HostFacts,
    build_hello,
    meminfo_total,
    os_release_name,
    parse_labels,
)
from nodeagent.session.reporting import StatusReporter
from nodeagent.session.stream import Session, apply_assignments, backoff_delays
from tests.builders import pb_pod


def pod(uid: str, name: str = "", image: str = "busybox") -> pb.Pod:
    return pb_pod(name or uid, uid=uid, image=image)


FACTS = HostFacts(cpus=2, memory_bytes=4 * 2**30, internal_ip="10.0.0.7", hostname="n1",
                  kernel_version="6.1.0", os_image="Debian GNU/Linux 12 (bookworm)",
                  architecture="x86_64")


def test_full_assignments_replace_everything():
    old = {"a": pod("a"), "b": pod("b")}
    got = apply_assignments(old, agent_pb2.Assignments(full=True, pods=[pod("c")]))
    assert list(got) == ["c"]
    assert list(old) == ["a", "b"]           # a new dict: other threads may hold the old one
    assert apply_assignments(old, agent_pb2.Assignments(full=True)) == {}


def test_changes_add_replace_and_remove_by_uid():
    old = {"a": pod("a"), "b": pod("b")}
    got = apply_assignments(old, agent_pb2.Assignments(
        pods=[pod("b", image="nginx"), pod("c")], removed_uids=["a", "never-had"]))
    assert sorted(got) == ["b", "c"]
    assert got["b"].spec.containers[0].image == "nginx"
    assert old["b"].spec.containers[0].image == "busybox"


def test_pods_without_uid_are_ignored():
    assert apply_assignments({}, agent_pb2.Assignments(full=True, pods=[pod("")])) == {}


def test_backoff_doubles_to_ten_seconds():
    assert list(itertools.islice(backoff_delays(), 8)) == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_parse_labels():
    assert parse_labels("") == {}
    assert parse_labels("zone=a, disk=ssd,empty=") == {"zone": "a", "disk": "ssd", "empty": ""}
    with pytest.raises(ValueError, match="'nokey'"):
        parse_labels("zone=a,nokey")


def test_hello_from_host_facts():
    msg = build_hello("node-1", {"zone": "a"}, FACTS, ["u2", "u1"])
    h = msg.hello
    assert msg.WhichOneof("message") == "hello"
    assert h.node_name == "node-1" and dict(h.labels) == {"zone": "a"}
    assert dict(h.capacity) == {"cpu": "2", "memory": str(4 * 2**30), "pods": "110"}
    assert [(a.type, a.address) for a in h.addresses] == [("InternalIP", "10.0.0.7"),
                                                          ("Hostname", "n1")]
    assert h.node_info == pb.NodeSystemInfo(
        kernel_version="6.1.0", os_image="Debian GNU/Linux 12 (bookworm)",
        architecture="x86_64", operating_system="linux", agent_version=moorage.__version__)
    assert list(h.running_pod_uids) == ["u1", "u2"]


def test_host_file_parsers():
    assert meminfo_total("MemTotal:        2014256 kB\nMemFree: 1 kB\n") == 2014256 * 1024
    with pytest.raises(ValueError):
        meminfo_total("")
    assert os_release_name('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n') \
        == "Debian GNU/Linux 12 (bookworm)"
    assert os_release_name("") == "Linux"


class FakeSession:
    def __init__(self):
        self.desired, self.connected, self.generation = {"a": pod("a")}, True, 1
        self.sent = []

    def report(self, namespace, name, uid, status):
        self.sent.append((uid, status.phase, status.host_ip, status.start_time))


def test_reporter_sends_changes_only_and_everything_again_per_session():
    s = FakeSession()
    r = StatusReporter(s, "10.0.0.7", clock=lambda: 0)
    r(pod("a"), pb.PodStatus(phase="Pending"))
    r(pod("a"), pb.PodStatus(phase="Pending"))
    r(pod("a"), pb.PodStatus(phase="Running"))
    r(pod("static"), pb.PodStatus(phase="Running"))     # not the control plane's pod
    assert s.sent == [("a", "Pending", "10.0.0.7", "1970-01-01T00:00:00Z"),
                      ("a", "Running", "10.0.0.7", "1970-01-01T00:00:00Z")]
    s.connected = False
    r(pod("a"), pb.PodStatus(phase="Failed"))
    assert len(s.sent) == 2
    s.connected, s.generation = True, 2
    assigned = pod("a")
    assigned.status.start_time = "2020-01-01T00:00:00Z"   # the control plane's wins
    r(assigned, pb.PodStatus(phase="Failed"))
    assert s.sent[-1] == ("a", "Failed", "10.0.0.7", "2020-01-01T00:00:00Z")


def test_checkpoints_round_trip(tmp_path):
    cp = Checkpoints(str(tmp_path))
    assert cp.load() == {}
    cp.save({"a": pod("a"), "b": pod("b")})
    assert sorted(cp.load()) == ["a", "b"] and cp.load()["a"] == pod("a")
    cp.drop("a")
    cp.drop("a")
    assert sorted(cp.load()) == ["b"]


def test_checkpoints_write_only_what_changed(tmp_path):
    cp = Checkpoints(str(tmp_path))
    cp.save({"a": pod("a"), "b": pod("b")})
    inodes = {n: os.stat(tmp_path / "pods" / n).st_ino for n in ("a", "b")}
    changed = pod("b")
    changed.spec.node_name = "elsewhere"
    cp.save({"a": pod("a"), "b": changed, "c": pod("c")})
    assert os.stat(tmp_path / "pods" / "a").st_ino == inodes["a"]      # untouched
    assert os.stat(tmp_path / "pods" / "b").st_ino != inodes["b"]      # rewritten
    assert cp.load()["b"].spec.node_name == "elsewhere" and "c" in cp.load()
    # A fresh instance (a restarted agent) knows what is on disk and skips it too.
    again = Checkpoints(str(tmp_path))
    again.load()
    before = os.stat(tmp_path / "pods" / "c").st_ino
    again.save({"c": pod("c")})
    assert os.stat(tmp_path / "pods" / "c").st_ino == before
    # A dropped pod assigned again is written again.
    again.drop("c")
    again.save({"c": pod("c")})
    assert (tmp_path / "pods" / "c").exists()


class Dispatcher(agent_pb2_grpc.DispatcherServicer):
    """Answers each session with settings and one full Assignments, then records messages."""

    def __init__(self, pods, control_planes=()):
        self.pods, self.messages, self.control_planes = pods, [], list(control_planes)

    async def Session(self, request_iterator, context):
        yield agent_pb2.DispatcherMessage(settings=agent_pb2.SessionSettings(
            heartbeat_period_ms=100, control_planes=self.control_planes))
        yield agent_pb2.DispatcherMessage(
            assignments=agent_pb2.Assignments(full=True, pods=self.pods))
        async for msg in request_iterator:
            self.messages.append(msg.WhichOneof("message"))


async def serve(servicer, port=0):
    server = grpc.aio.server()
    agent_pb2_grpc.add_DispatcherServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def until(fn, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if fn():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_session_keeps_desired_pods_across_a_restarted_server():
    async def main():
        first = Dispatcher([pod("a")])
        server, port = await serve(first)
        seen = []
        session = Session(f"127.0.0.1:{port}", "n1", FACTS, on_assignments=seen.append,
                          running_pod_uids=lambda: ["a"])
        stop = asyncio.Event()
        task = asyncio.create_task(session.run(stop))
        try:
            await until(lambda: first.messages.count("heartbeat") >= 3)
            assert first.messages[0] == "hello" and session.heartbeat_seconds == 0.1
            assert list(session.desired) == ["a"] and session.generation == 1
            session.report("default", "a", "a", pb.PodStatus(phase="Running"))
            await until(lambda: "pod_status" in first.messages)

            await server.stop(None)
            await until(lambda: not session.connected)
            assert list(session.desired) == ["a"]       # kept while the server is away
            second = Dispatcher([pod("b")])
            server, _ = await serve(second, port)
            await until(lambda: list(session.desired) == ["b"])
            assert second.messages[0] == "hello" and session.generation == 2
            assert [list(d) for d in seen] == [["a"], ["b"]]
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            await server.stop(None)
    asyncio.run(main())


def test_session_moves_to_another_replica_when_its_own_goes(tmp_path):
    saved = str(tmp_path / "control-planes")

    async def main():
        from controlplane.store.local import free_port

        dead = f"127.0.0.1:{free_port()}"           # a replica that is down for good
        second = Dispatcher([pod("a")])
        server2, port2 = await serve(second)
        first = Dispatcher([pod("a")])
        first.control_planes = ["placeholder", dead, f"127.0.0.1:{port2}"]
        server1, port1 = await serve(first)
        first.control_planes[0] = f"127.0.0.1:{port1}"
        session = Session(f"127.0.0.1:{port1}", "n1", FACTS, replicas_file=saved)
        stop = asyncio.Event()
        task = asyncio.create_task(session.run(stop))
        try:
            await until(lambda: "heartbeat" in first.messages)
            assert session.addresses == first.control_planes
            await server1.stop(None)
            # Its own replica, then the dead one, are tried and skipped; the third answers.
            await until(lambda: "hello" in second.messages, timeout=10)
            assert session.address == f"127.0.0.1:{port2}" and session.generation == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            await server2.stop(None)
        return first.control_planes
    listed = asyncio.run(main())
    # A restarted agent starts from its --join address and knows the rest from the file.
    again = Session(listed[0], "n1", FACTS, replicas_file=saved)
    assert again.addresses == listed
