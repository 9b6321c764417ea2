"""Container start cost: `busybox true` start-to-exit via a live Runtime vs `runc run`, then
concurrent starts with the agent's RSS and the per-container supervision RSS/PSS (needs root)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nodeagent.runtime import cgroups
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.spec import ContainerSpec

N = int(os.environ.get("BENCH_N", "30"))
CONCURRENT = int(os.environ.get("BENCH_CONCURRENT", "100"))
MiB = 1024 * 1024
RUNC = shutil.which("runc") or "/usr/sbin/runc"
PREFIX = "moortest-bench-"


def make_rootfs(base: str) -> str:
    root = os.path.join(base, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for name in ("sh", "true", "sleep"):
        os.symlink("busybox", os.path.join(root, "bin", name))
    return root


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def smaps(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc/<pid>/smaps_rollup; PSS splits shared pages among users."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss = int(rest.split()[0]) * 1024
            elif key == "Pss":
                pss = int(rest.split()[0]) * 1024
    return rss, pss


def own_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


def bench_ours(rt: Runtime, rootfs: str) -> list[float]:
    """Sequential create+start+wait through the live Runtime, as the agent calls it."""
    times = []
    # One untimed container first: it starts the fork server, which a running agent already has.
    for i in range(N + 1):
        spec = ContainerSpec(id=f"c{i}", args=("/bin/true",), lower_dirs=(rootfs,))
        t0 = time.perf_counter()
        rt.create(spec)
        rt.start(spec.id)
        st = rt.wait(spec.id, poll=0.001)
        if i:
            times.append(time.perf_counter() - t0)
        assert st.exit_code == 0, st
        rt.remove(spec.id)
    return times


def bench_concurrent(rt: Runtime, rootfs: str) -> tuple[float, int, float, float]:
    """CONCURRENT long-running containers started from as many threads at once.

    Returns total seconds, the agent's RSS, and per running container the supervision RSS
    (mean over shims) and PSS (mean over shims plus the fork server's share).
    """
    specs = [ContainerSpec(id=f"s{i}", args=("/bin/sleep", "30"), lower_dirs=(rootfs,))
             for i in range(CONCURRENT)]

    def launch(spec: ContainerSpec):
        rt.create(spec)
        return rt.start(spec.id)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            started = list(pool.map(launch, specs))
        total = time.perf_counter() - t0
        agent_rss = own_rss()
        shims = [smaps(st.shim_pid) for st in started]
        zygote = rt.zygote.pid()
        zygote_pss = smaps(zygote)[1] if zygote else 0
        rss = statistics.mean(r for r, _ in shims)
        pss = statistics.mean(p for _, p in shims) + zygote_pss / len(shims)
        assert all(st.state == "running" for st in started)
    finally:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(rt.remove, [s.id for s in specs]))
    return total, agent_rss, rss, pss


def bench_runc(base: str, rootfs: str) -> list[float]:
    bundle = os.path.join(base, "bundle")
    os.makedirs(bundle)
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["root"]["path"] = rootfs  # absolute: the same busybox tree our runtime uses
    with open(path, "w") as f:
        json.dump(config, f)
    state = os.path.join(base, "runc-state")
    times = []
    for i in range(N):
        t0 = time.perf_counter()
        subprocess.run([RUNC, "--root", state, "run", "--bundle", bundle, f"{PREFIX}{i}"],
                       stdin=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    if os.geteuid() != 0 or not os.path.exists("/bin/busybox") or not os.path.exists(RUNC):
        print("container_start: needs root, /bin/busybox and runc; skipped")
        return 0
    base = tempfile.mkdtemp(prefix=PREFIX)
    cg_root = PREFIX + "cg"
    rt = Runtime(os.path.join(base, "state"), cgroup_root=cg_root)
    try:
        rootfs = make_rootfs(base)
        ours = bench_ours(rt, rootfs)
        runc = bench_runc(base, rootfs)
        total, agent_rss, rss, pss = bench_concurrent(rt, rootfs)
    finally:
        for info in rt.list():
            rt.remove(info.id)
        rt.close()
        cgroups.remove_parent(cg_root)
        shutil.rmtree(base, ignore_errors=True)
    ms = 1000
    print(f"start-to-exit of busybox true, N={N} (cgroup v{cgroups.detect_version()}): "
          f"moorage p50 {pct(ours, 50) * ms:.1f} ms p95 {pct(ours, 95) * ms:.1f} ms; "
          f"runc p50 {pct(runc, 50) * ms:.1f} ms p95 {pct(runc, 95) * ms:.1f} ms; "
          f"ratio p50 {pct(ours, 50) / pct(runc, 50):.2f}x (target <= 0.5x)")
    print(f"{CONCURRENT} concurrent starts: {total:.1f} s total; agent RSS {agent_rss / MiB:.1f} "
          f"MiB; supervision per container RSS {rss / MiB:.1f} MiB, PSS {pss / MiB:.1f} MiB "
          f"(target RSS <= 8 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
