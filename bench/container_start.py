"""Container start-to-exit latency of `busybox true`: Moorage's runtime against `runc run`.

Both run the same busybox rootfs, N times each, sequentially, in one run on one machine, and the
script prints p50/p90 of each and their ratio. Ours includes what the agent pays per container:
state dir, config, detached shim (a fresh Python), cgroup, overlay, namespaces, wait for exit.
runc runs on the plain rootfs (no overlay) with the config `runc spec` writes. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nodeagent.runtime import cgroups
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.spec import ContainerSpec

N = int(os.environ.get("BENCH_N", "30"))
RUNC = shutil.which("runc") or "/usr/sbin/runc"
PREFIX = "moortest-bench-"


def make_rootfs(base: str) -> str:
    root = os.path.join(base, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for name in ("sh", "true"):
        os.symlink("busybox", os.path.join(root, "bin", name))
    return root


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_ours(base: str, rootfs: str) -> list[float]:
    cg_root = PREFIX + "cg"
    rt = Runtime(os.path.join(base, "state"), cgroup_root=cg_root)
    times = []
    try:
        for i in range(N):
            spec = ContainerSpec(id=f"c{i}", args=("/bin/true",), lower_dirs=(rootfs,))
            t0 = time.perf_counter()
            rt.create(spec)
            rt.start(spec.id)
            st = rt.wait(spec.id, poll=0.001)
            times.append(time.perf_counter() - t0)
            assert st.exit_code == 0, st
            rt.remove(spec.id)
    finally:
        for info in rt.list():
            rt.remove(info.id)
        cgroups.remove_parent(cg_root)
    return times


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
    try:
        rootfs = make_rootfs(base)
        ours = bench_ours(base, rootfs)
        runc = bench_runc(base, rootfs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"container start-to-exit of /bin/true, N={N} each (cgroup v{cgroups.detect_version()})")
    for name, xs in (("moorage", ours), ("runc", runc)):
        print(f"  {name:8s} p50 {pct(xs, 50) * 1000:7.1f} ms   p90 {pct(xs, 90) * 1000:7.1f} ms")
    print(f"  ratio moorage/runc: p50 {pct(ours, 50) / pct(runc, 50):.2f}x   "
          f"p90 {pct(ours, 90) / pct(runc, 90):.2f}x   (mean {statistics.mean(ours) * 1000:.1f} "
          f"vs {statistics.mean(runc) * 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
