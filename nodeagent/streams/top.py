"""`moor top` on the agent: node and container CPU (a rate over a short window) and memory
working set, from /proc and the runtime's cgroup stats."""

from __future__ import annotations

import os
import time

from moorage.v1 import agent_pb2, api_pb2
from nodeagent.pods.worker import UID_CHARS, parse_container_id
from nodeagent.streams.common import RUNNING

# How long the stats sample is: CPU cores are a rate over it.
STATS_WINDOW = 0.5


def cpu_rate(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Cores used between two (wall seconds, cpu seconds) samples."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) / wall) if wall > 0 else 0.0


def parse_proc_stat(text: str, user_hz: int) -> float:
    """Busy CPU seconds of all CPUs from /proc/stat (everything but idle and iowait)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(x) for x in fields[1:9]]
            busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
            return busy / user_hz
    return 0.0


def parse_meminfo(text: str) -> int:
    """Working set of the node in bytes: MemTotal - MemAvailable."""
    info = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    return max(0, info.get("MemTotal", 0) - info.get("MemAvailable", 0))


class Sampler:
    def __init__(self, runtime, node_name: str, window: float = STATS_WINDOW):
        self.runtime, self.node_name, self.window = runtime, node_name, window

    def _sample(self) -> tuple[float, float, dict[str, float]]:
        with open("/proc/stat") as f:
            node_cpu = parse_proc_stat(f.read(), os.sysconf("SC_CLK_TCK"))
        containers = {}
        for info in self.runtime.list():
            if info.status.state != RUNNING or parse_container_id(info.id) is None:
                continue
            try:
                containers[info.id] = self.runtime.stats(info.id)
            except OSError:
                continue
        return time.monotonic(), node_cpu, containers

    def measure(self, desired: dict) -> agent_pb2.StatsReport:
        t0, cpu0, before = self._sample()
        time.sleep(self.window)
        t1, cpu1, after = self._sample()
        with open("/proc/meminfo") as f:
            node_mem = parse_meminfo(f.read())
        report = agent_pb2.StatsReport()
        report.node.name = self.node_name
        report.node.cpu_cores = cpu_rate((t0, cpu0), (t1, cpu1))
        report.node.memory_working_set_bytes = node_mem
        pods = {uid.replace("-", "")[:UID_CHARS]: pod
                for uid, pod in desired.items()}
        usage: dict[str, api_pb2.PodUsage] = {}
        for cid, now in sorted(after.items()):
            prefix, name, _, _ = parse_container_id(cid)
            pod = pods.get(prefix)
            if pod is None:
                continue
            item = usage.get(pod.metadata.uid)
            if item is None:
                item = usage[pod.metadata.uid] = api_pb2.PodUsage(
                    namespace=pod.metadata.namespace, name=pod.metadata.name,
                    uid=pod.metadata.uid, node=report.node.name)
            was = before.get(cid)
            cores = cpu_rate((t0, was.cpu_seconds), (t1, now.cpu_seconds)) if was else 0.0
            item.containers.append(api_pb2.ContainerUsage(
                name=name, cpu_cores=cores, memory_working_set_bytes=now.memory_working_set))
        report.pods.extend(usage.values())
        return report
