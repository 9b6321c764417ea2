"""Logs, exec and top without a cluster: container selection, log lines and tails, top's
number formats, and the control plane's stream broker with a fake dispatcher."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from controlplane.dispatcher.streams import PodStreams, StreamError, choose_container, status_code
from moorage.cli.streams import format_cpu, format_memory, format_percent, node_rows, pod_rows
from moorage.v1 import agent_pb2, api_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.worker import container_id
from nodeagent.streams.common import PodIOError, coalesce, select_container
from nodeagent.streams.logs import log_lines, read_logs, tail
from nodeagent.streams.top import parse_meminfo, parse_proc_stat

UID = "0f3c9a2e-1111-2222-3333-444455556666"
OTHER = "9a9a9a9a-1111-2222-3333-444455556666"


def cids(*specs):
    return [container_id(uid, name, attempt, "h1") for uid, name, attempt in specs]


# ---- which container ----

@pytest.mark.parametrize("previous, want", [
    pytest.param(False, 2, id="current-is-highest-attempt"),
    pytest.param(True, 1, id="previous-is-the-one-before"),
])
def test_select_container(previous, want):
    ids = cids((UID, "app", 0), (UID, "app", 2), (UID, "app", 1), (UID, "side", 5),
               (OTHER, "app", 9))
    got = select_container(ids, UID, "web", "app", previous)
    assert got == container_id(UID, "app", want, "h1")


def test_no_previous_instance_is_worded_like_kubectl():
    with pytest.raises(PodIOError) as err:
        select_container(cids((UID, "app", 0)), UID, "web", "app", previous=True)
    assert err.value.message == 'previous terminated container "app" in pod "web" not found'


def test_container_not_started_yet():
    with pytest.raises(PodIOError, match="waiting to start"):
        select_container(cids((OTHER, "app", 0)), UID, "web", "app")


def make_pod(*names, node="node-1"):
    pod = pb.Pod()
    pod.metadata.name = "web"
    pod.spec.node_name = node
    for n in names:
        pod.spec.containers.add(name=n)
    return pod


@pytest.mark.parametrize("names, asked, want", [
    pytest.param(("app",), "", "app", id="only-one"),
    pytest.param(("a", "b"), "b", "b", id="named"),
])
def test_choose_container(names, asked, want):
    assert choose_container(make_pod(*names), asked) == want


@pytest.mark.parametrize("names, asked, message", [
    pytest.param(("a", "b"), "",
                 "a container name must be specified for pod web, choose one of: [a b]",
                 id="several"),
    pytest.param(("a",), "x", "container x is not valid for pod web", id="unknown"),
])
def test_choose_container_errors(names, asked, message):
    with pytest.raises(StreamError) as err:
        choose_container(make_pod(*names), asked)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.message == message


def test_status_code_names():
    assert status_code("NOT_FOUND") == grpc.StatusCode.NOT_FOUND
    assert status_code("nonsense") == grpc.StatusCode.UNKNOWN
    assert status_code("") == grpc.StatusCode.UNKNOWN


# ---- log lines ----

RECORDS = [
    "2024-01-01T00:00:00.000000001Z stdout F one\n",
    "2024-01-01T00:00:00.000000002Z stderr P par\n",
    "2024-01-01T00:00:00.000000003Z stdout F two\n",
    "2024-01-01T00:00:00.000000004Z stderr F tial\n",
    "2024-01-01T00:00:00.000000005Z stdout F \n",
]


def test_log_lines_join_partials_and_keep_streams():
    assert list(log_lines(RECORDS, timestamps=False)) == [
        (1, b"one\n"), (1, b"two\n"), (2, b"partial\n"), (1, b"\n")]


def test_log_lines_with_timestamps_use_the_first_record_time():
    got = list(log_lines(RECORDS[1:4], timestamps=True))
    assert got == [(1, b"2024-01-01T00:00:00.000000003Z two\n"),
                   (2, b"2024-01-01T00:00:00.000000002Z partial\n")]


@pytest.mark.parametrize("n, want", [
    pytest.param(0, [1, 2, 3], id="zero-is-all"),
    pytest.param(2, [2, 3], id="last-two"),
    pytest.param(5, [1, 2, 3], id="more-than-there-are"),
])
def test_tail(n, want):
    assert tail([1, 2, 3], n) == want


def test_coalesce_joins_runs_of_one_fd():
    assert coalesce([(1, b"a"), (1, b"b"), (2, b"c"), (1, b"d")], limit=10) == [
        (1, b"ab"), (2, b"c"), (1, b"d")]
    assert coalesce([(1, b"aaa"), (1, b"bbb")], limit=4) == [(1, b"aaa"), (1, b"bbb")]


def test_read_logs_tail_without_follow(tmp_path):
    path = tmp_path / "container.log"
    path.write_text("".join(f"2024-01-01T00:00:00.{i:09d}Z stdout F line {i}\n"
                            for i in range(10)))
    got = b"".join(d for _, d in read_logs(str(path), False, 3, False, lambda: False,
                                           threading.Event()))
    assert got == b"line 7\nline 8\nline 9\n"


def test_read_logs_follow_tails_then_streams_until_stopped(tmp_path):
    path = tmp_path / "container.log"
    path.write_text("".join(f"2024-01-01T00:00:00.{i:09d}Z stdout F old {i}\n"
                            for i in range(5)))
    running = threading.Event()
    running.set()
    lines = read_logs(str(path), True, 2, False, running.is_set, threading.Event())
    assert [next(lines)[1], next(lines)[1]] == [b"old 3\n", b"old 4\n"]
    with open(path, "a") as f:
        f.write("2024-01-01T00:00:01.000000000Z stdout F new\n")
    assert next(lines)[1] == b"new\n"
    running.clear()   # the container stopped: the follow ends at EOF
    assert list(lines) == []


# ---- node numbers ----

def test_parse_proc_stat():
    text = "cpu  100 5 50 1000 30 1 2 3 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n"
    # busy = user+nice+system+irq+softirq+steal = 100+5+50+1+2+3 = 161 jiffies
    assert parse_proc_stat(text, 100) == pytest.approx(1.61)


def test_parse_meminfo():
    text = "MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  400 kB\n"
    assert parse_meminfo(text) == 600 * 1024


# ---- top formatting ----

@pytest.mark.parametrize("cores, want", [(0.125, "125m"), (0, "0m"), (2.0004, "2000m")])
def test_format_cpu(cores, want):
    assert format_cpu(cores) == want


@pytest.mark.parametrize("nbytes, want", [(432013312, "412Mi"), (0, "0Mi"), (2**20 - 1, "0Mi")])
def test_format_memory(nbytes, want):
    assert format_memory(nbytes) == want


@pytest.mark.parametrize("used, cap, want", [(0.125, 4, "3%"), (1, 0, "<unknown>"),
                                              (2, 2, "100%")])
def test_format_percent(used, cap, want):
    assert format_percent(used, cap) == want


def test_node_and_pod_rows():
    n = api_pb2.NodeUsage(name="node-1", cpu_cores=0.125, memory_working_set_bytes=412 * 2**20,
                          cpu_capacity_cores=4, memory_capacity_bytes=4096 * 2**20)
    assert node_rows([n])[1] == ["node-1", "125m", "3%", "412Mi", "10%"]
    p = api_pb2.PodUsage(namespace="shop", name="web", containers=[
        api_pb2.ContainerUsage(name="a", cpu_cores=0.001, memory_working_set_bytes=2**20),
        api_pb2.ContainerUsage(name="b", cpu_cores=0.002, memory_working_set_bytes=2**21)])
    assert pod_rows([p]) == [["NAME", "CPU(cores)", "MEMORY(bytes)"], ["web", "3m", "3Mi"]]
    assert pod_rows([p], all_namespaces=True)[1] == ["shop", "web", "3m", "3Mi"]
    assert pod_rows([p], containers=True)[1:] == [["web", "a", "1m", "1Mi"],
                                                  ["web", "b", "2m", "2Mi"]]


# ---- the broker ----

class FakeDispatcher:
    def __init__(self, nodes=("node-1",)):
        self.sessions = {n: None for n in nodes}
        self.sent: list[tuple[str, agent_pb2.DispatcherMessage]] = []

    def send(self, node, msg) -> bool:
        if node not in self.sessions:
            return False
        self.sent.append((node, msg))
        return True


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code, message):
        raise Aborted(code, message)


async def agent_frames(*frames):
    for f in frames:
        yield f
        await asyncio.sleep(0)


def test_broker_pumps_both_ways_and_cleans_up():
    async def scenario():
        dispatcher = FakeDispatcher()
        streams = PodStreams(None, dispatcher, connect_seconds=5)

        async def caller():
            async with streams.open("node-1", agent_pb2.OpenStream(pod_uid=UID)) as link:
                link.send(api_pb2.StreamFrame(fd=0, data=b"in"))
                return [f async for f in link.frames()]

        task = asyncio.create_task(caller())
        while not dispatcher.sent:
            await asyncio.sleep(0)
        id_ = dispatcher.sent[0][1].open_stream.id
        from_agent = agent_frames(api_pb2.StreamFrame(id=id_),
                                  api_pb2.StreamFrame(fd=1, data=b"out"),
                                  api_pb2.StreamFrame(exited=True, exit_code=3))
        to_agent = [f async for f in streams.agent_stream("node-1", from_agent, FakeContext())]
        got = await task
        assert [f.data for f in to_agent] == [b"in"]
        assert [(f.data, f.exited, f.exit_code) for f in got] == [(b"out", False, 0),
                                                                 (b"", True, 3)]
        assert streams._pending == {}
    asyncio.run(scenario())


def test_broker_refuses_another_nodes_stream_and_unknown_ids():
    async def scenario():
        dispatcher = FakeDispatcher(("node-1", "node-2"))
        streams = PodStreams(None, dispatcher, connect_seconds=0.2)

        async def caller():
            async with streams.open("node-1", agent_pb2.OpenStream(pod_uid=UID)):
                pass

        task = asyncio.create_task(caller())
        while not dispatcher.sent:
            await asyncio.sleep(0)
        id_ = dispatcher.sent[0][1].open_stream.id
        with pytest.raises(Aborted) as err:
            [f async for f in streams.agent_stream(
                "node-2", agent_frames(api_pb2.StreamFrame(id=id_)), FakeContext())]
        assert err.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(Aborted) as err:
            [f async for f in streams.agent_stream(
                "node-1", agent_frames(api_pb2.StreamFrame(id="nope")), FakeContext())]
        assert err.value.args[0] == grpc.StatusCode.NOT_FOUND
        # Nobody connected in time: UNAVAILABLE, and the pending entry is gone.
        with pytest.raises(StreamError) as err:
            await task
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.message == "node node-1 did not open the stream"
        assert streams._pending == {}
    asyncio.run(scenario())


def test_broker_cancelled_caller_removes_pending_and_unknown_node_is_unavailable():
    async def scenario():
        streams = PodStreams(None, FakeDispatcher(), connect_seconds=5)

        async def caller(node):
            async with streams.open(node, agent_pb2.OpenStream(pod_uid=UID)):
                pass

        task = asyncio.create_task(caller("node-1"))
        await asyncio.sleep(0.01)
        assert len(streams._pending) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert streams._pending == {}
        with pytest.raises(StreamError) as err:
            await caller("node-9")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    asyncio.run(scenario())


def test_stats_report_resolves_only_the_asked_node():
    async def scenario():
        dispatcher = FakeDispatcher(("node-1", "node-2"))
        streams = PodStreams(None, dispatcher)
        task = asyncio.create_task(streams.stats("node-1", timeout=5))
        while not dispatcher.sent:
            await asyncio.sleep(0)
        id_ = dispatcher.sent[0][1].stats_request.id
        streams.stats_report("node-2", agent_pb2.StatsReport(id=id_))   # not its to answer
        assert not task.done()
        report = agent_pb2.StatsReport(id=id_)
        report.node.memory_working_set_bytes = 7
        streams.stats_report("node-1", report)
        assert (await task).node.memory_working_set_bytes == 7
        assert streams._stats == {}
        with pytest.raises(StreamError):
            await streams.stats("node-1", timeout=0.05)
        assert streams._stats == {}
    asyncio.run(scenario())
