"""The agent's collector against a fake runtime state dir and cgroup tree (v1 and v2 layouts),
checked through the text exposition as Prometheus would parse it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from moorage.v1 import objects_pb2 as pb
from nodeagent.metrics import collector as metrics
from nodeagent.network import overlay
from nodeagent.pods.worker import container_id
from nodeagent.runtime import stats
from nodeagent.runtime.cgroups import Cgroup
from nodeagent.runtime.spec import Status, proc_start_time

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OTHER_UID = "11111111-2222-3333-4444-555555555555"
MiB = 1 << 20
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0
{veth}:     111       3    0    0    0     0          0         0      222       4    0    0    0     0       0          0
"""

WANT_TYPES = {
    "container_cpu_usage_seconds": "counter",
    "container_memory_working_set_bytes": "gauge",
    "container_memory_usage_bytes": "gauge",
    "container_spec_memory_limit_bytes": "gauge",
    "container_oom_events": "counter",
    "kube_pod_container_status_restarts": "counter",
    "kube_pod_container_status_running": "gauge",
    "container_network_receive_bytes": "counter",
    "container_network_transmit_bytes": "counter",
    "node_cpu_seconds": "counter",
    "node_memory_MemTotal_bytes": "gauge",
    "node_memory_MemAvailable_bytes": "gauge",
    "node_filesystem_avail_bytes": "gauge",
    "node_filesystem_size_bytes": "gauge",
    "container_start_duration_seconds": "histogram",
    "moorage_image_pull_duration_seconds": "histogram",
    "moorage_image_pull_bytes": "counter",
}


class FakeRuntime:
    """Runtime's state dir layout, with cgroups under a temp dir instead of /sys/fs/cgroup."""

    def __init__(self, base: str, version: int):
        self.state_dir = os.path.join(base, "containers")
        self.cg_mount = os.path.join(base, "cgroup")
        self.version = version
        os.makedirs(self.state_dir)
        # The real reader over this layout: only the cgroup mount is faked.
        self.stats_reader = stats.StatsReader(self)

    def cgroup(self, cid: str) -> Cgroup:
        if self.version == 2:
            return Cgroup(2, (("", os.path.join(self.cg_mount, "moorage", cid)),))
        return Cgroup(1, tuple((c, os.path.join(self.cg_mount, c, "moorage", cid))
                               for c in ("memory", "cpuacct")))

    def add(self, cid: str, status: Status, *, cpu_s: float = 0, usage: int = 0,
            inactive: int = 0, limit: int | None = None, oom_kills: int = 0) -> None:
        d = os.path.join(self.state_dir, cid)
        os.makedirs(d)
        _put(os.path.join(d, "config.json"), "{}")
        _put(os.path.join(d, "status.json"), json.dumps(dataclasses.asdict(status)))
        cg = self.cgroup(cid)
        if self.version == 2:
            p = cg.path("")
            _put(os.path.join(p, "cpu.stat"), f"usage_usec {int(cpu_s * 1e6)}\nuser_usec 1\n")
            _put(os.path.join(p, "memory.current"), f"{usage}\n")
            _put(os.path.join(p, "memory.stat"), f"anon 5\nactive_file 7\n"
                 f"inactive_file {inactive}\n")
            _put(os.path.join(p, "memory.max"), f"{limit}\n" if limit else "max\n")
            _put(os.path.join(p, "memory.events"), f"low 0\nhigh 0\nmax 3\noom 1\n"
                 f"oom_kill {oom_kills}\n")
        else:
            acct, mem = cg.path("cpuacct"), cg.path("memory")
            _put(os.path.join(acct, "cpuacct.usage"), f"{int(cpu_s * 1e9)}\n")
            _put(os.path.join(mem, "memory.usage_in_bytes"), f"{usage}\n")
            _put(os.path.join(mem, "memory.stat"), f"cache 1\ninactive_file 9\n"
                 f"total_inactive_file {inactive}\n")
            _put(os.path.join(mem, "memory.limit_in_bytes"),
                 f"{limit or 9223372036854771712}\n")
            _put(os.path.join(mem, "memory.oom_control"),
                 f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n")


def _put(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _running() -> Status:
    # The shim is this test process: alive, with its real start time.
    return Status("running", pid=os.getpid(), shim_pid=os.getpid(),
                  shim_start=proc_start_time(os.getpid()))


def _pod(uid: str, name: str) -> pb.Pod:
    return pb.Pod(metadata=pb.ObjectMeta(namespace="moortest-ns", name=name, uid=uid))


def _scrape(collector) -> dict:
    text = generate_latest(metrics.registry_for(collector)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    hits = [s.value for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())
            and not s.name.endswith("_created")]
    assert len(hits) == 1, (family.name, labels, family.samples)
    return hits[0]


@pytest.fixture(params=[1, 2], ids=["cgroup-v1", "cgroup-v2"])
def node(request, tmp_state):
    rt = FakeRuntime(tmp_state, request.param)
    # web: its second attempt runs; the first was OOM-killed. side: exited. Another pod's
    # container, which the agent does not know, must not show up.
    rt.add(container_id(UID, "web", 0, "aaaa0000"),
           Status("exited", exit_code=137, reason="OOMKilled"))
    rt.add(container_id(UID, "web", 1, "aaaa0000"), _running(), cpu_s=2.5, usage=30 * MiB,
           inactive=10 * MiB, limit=64 * MiB, oom_kills=1)
    rt.add(container_id(UID, "side", 0, "bbbb0000"), Status("exited", exit_code=0))
    rt.add(container_id(OTHER_UID, "x", 0, "cccc0000"), _running(), cpu_s=1)
    proc = os.path.join(tmp_state, "proc")
    veth = overlay.host_ifname(overlay.DEFAULT_VETH_PREFIX, UID)
    os.makedirs(proc)
    for name in ("stat", "meminfo"):
        shutil.copy(f"/proc/{name}", os.path.join(proc, name))
    _put(os.path.join(proc, "net", "dev"), NET_DEV.format(veth=veth))
    collector = metrics.AgentCollector(rt, lambda: {UID: _pod(UID, "moortest-web")},
                                       "moortest-node", tmp_state, proc=proc)
    return collector


def test_names_and_types(node):
    families = _scrape(node)
    for name, kind in WANT_TYPES.items():
        assert name in families, name
        assert families[name].type == kind, name


def test_container_values_and_labels(node):
    f = _scrape(node)
    web = dict(namespace="moortest-ns", pod="moortest-web", container="web",
               node="moortest-node")
    assert _value(f["container_cpu_usage_seconds"], **web) == 2.5
    assert _value(f["container_memory_working_set_bytes"], **web) == 20 * MiB
    assert _value(f["container_memory_usage_bytes"], **web) == 30 * MiB
    assert _value(f["container_spec_memory_limit_bytes"], **web) == 64 * MiB
    # One OOM kill ended attempt 0, one more happened inside the running attempt.
    assert _value(f["container_oom_events"], **web) == 2
    assert _value(f["kube_pod_container_status_restarts"], **web) == 1
    assert _value(f["kube_pod_container_status_running"], **web) == 1
    side = dict(web, container="side")
    assert _value(f["kube_pod_container_status_running"], **side) == 0
    assert not [s for s in f["container_cpu_usage_seconds"].samples
                if s.labels["container"] == "side"]
    # The host veth's tx is what the pod received.
    pod = dict(namespace="moortest-ns", pod="moortest-web", interface="eth0")
    assert _value(f["container_network_receive_bytes"], **pod) == 222
    assert _value(f["container_network_transmit_bytes"], **pod) == 111
    pods_seen = {s.labels.get("pod") for fam in f.values() for s in fam.samples}
    assert pods_seen <= {None, "moortest-web"}


def test_node_metrics(node):
    f = _scrape(node)
    modes = {s.labels["mode"] for s in f["node_cpu_seconds"].samples}
    assert {"user", "system", "idle"} <= modes
    assert _value(f["node_memory_MemTotal_bytes"], node="moortest-node") > 0
    size = _value(f["node_filesystem_size_bytes"], node="moortest-node")
    assert 0 < _value(f["node_filesystem_avail_bytes"], node="moortest-node") <= size


def test_unlimited_memory_reads_as_zero(tmp_state):
    rt = FakeRuntime(tmp_state, 1)
    rt.add(container_id(UID, "web", 0, "aaaa0000"), _running(), usage=MiB)
    collector = metrics.AgentCollector(rt, lambda: {UID: _pod(UID, "moortest-web")},
                                       "moortest-node", tmp_state)
    f = _scrape(collector)
    assert _value(f["container_spec_memory_limit_bytes"], container="web") == 0


@pytest.mark.parametrize("text, key, want", [
    pytest.param(b"usage_usec 42\nuser_usec 7\n", b"usage_usec", 42, id="first"),
    pytest.param(b"total_inactive_file 3\ninactive_file 9\n", b"inactive_file", 9,
                 id="not-a-suffix-match"),
    pytest.param(b"oom 1\noom_kill 4", b"oom_kill", 4, id="last-no-newline"),
    pytest.param(b"oom 1\n", b"oom_kill", 0, id="absent"),
])
def test_field(text, key, want):
    assert stats._field(text, key) == want


def test_parse_cpu_modes_skips_total():
    text = "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 200 0 100 1000 4 0 0 0 0 0\nintr 1\n"
    got = metrics.parse_cpu_modes(text, 100)
    assert ("0", "user", 2.0) in got and ("0", "idle", 10.0) in got
    assert all(cpu == "0" for cpu, _, _ in got)
