"""Scrape cost of the agent's /metrics with 100 running containers, against Debian's
prometheus-node-exporter on the same host in the same run (needs root; `make bench` installs
the exporter). Both are scraped over HTTP on loopback, alternately, as Prometheus would."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from moorage.v1 import objects_pb2 as pb
from nodeagent.metrics import collector as metrics
from nodeagent.pods.worker import container_id
from nodeagent.runtime import cgroups
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.spec import ContainerSpec

CONTAINERS = int(os.environ.get("BENCH_CONTAINERS", "100"))
SCRAPES = int(os.environ.get("BENCH_SCRAPES", "50"))
TARGET_MS = 50
PREFIX = "moortest-bench-"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_rootfs(base: str) -> str:
    root = os.path.join(base, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sleep"))
    return root


def scrape(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def wait_up(url: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            scrape(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    if os.geteuid() != 0:
        print("metrics_scrape: needs root (cgroups, containers); skipped")
        return 0
    base = tempfile.mkdtemp(prefix=PREFIX)
    cg_root = PREFIX + uuid.uuid4().hex[:8]
    rt = Runtime(os.path.join(base, "state"), cgroup_root=cg_root)
    exporter = None
    try:
        rootfs = make_rootfs(base)
        pods: dict[str, pb.Pod] = {}
        specs = []
        for i in range(CONTAINERS):
            uid = str(uuid.uuid4())
            pods[uid] = pb.Pod(metadata=pb.ObjectMeta(namespace="default", name=f"bench-{i}",
                                                      uid=uid))
            specs.append(ContainerSpec(id=container_id(uid, "main", 0, "00000000"),
                                       args=("/bin/sleep", "600"), lower_dirs=(rootfs,),
                                       memory_limit=64 * 2**20))

        def launch(spec: ContainerSpec):
            rt.create(spec)
            return rt.start(spec.id)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(launch, specs))
        running = sum(1 for i in rt.list() if i.status.state == "running")
        agent_port, ne_port = free_port(), free_port()
        collector = metrics.AgentCollector(rt, lambda: pods, "bench-node", base)
        metrics.serve(f"127.0.0.1:{agent_port}", collector)
        exporter = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{ne_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        agent_url = f"http://127.0.0.1:{agent_port}/metrics"
        ne_url = f"http://127.0.0.1:{ne_port}/metrics"
        wait_up(agent_url)
        wait_up(ne_url)
        with urllib.request.urlopen(agent_url) as r:
            series = sum(1 for ln in r.read().decode().splitlines()
                         if ln.startswith("container_cpu_usage_seconds_total{"))
        ours, theirs = [], []
        for _ in range(SCRAPES):
            ours.append(scrape(agent_url))
            theirs.append(scrape(ne_url))
        p50, ne50 = statistics.median(ours), statistics.median(theirs)
        print(f"{running} containers running, {series} container_cpu series per scrape, "
              f"{SCRAPES} scrapes each")
        print(f"agent scrape p90 {sorted(ours)[int(0.9 * len(ours))]:.1f} ms; "
              f"node-exporter p90 {sorted(theirs)[int(0.9 * len(theirs))]:.1f} ms")
        verdict = "" if p50 <= TARGET_MS else "  MISSED"
        print(f"agent scrape with {CONTAINERS} containers: p50 {p50:.1f} ms "
              f"(target <= {TARGET_MS} ms); node-exporter p50 {ne50:.1f} ms{verdict}")
        return 0
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(10)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(rt.remove, [i.id for i in rt.list()]))
        rt.close()
        cgroups.remove_parent(cg_root)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
