"""ConfigMaps and Secrets: how fast an update reaches a running pod's files, and what sealing
Secrets costs an apply, on this machine, in one run.

- update -> visible: a pod mounts a ConfigMap; each of 50 updates is applied through the API
  (an Apply RPC, no CLI start-up) and timed until the new value is in the file the pod's
  volume mount shows (read on the node through the same tmpfs the container binds, polled
  every 5 ms). Target p95 <= 2 s; the kubelet's default sync period is about 60 s.
- apply latency: 200 applies of a Secret against 200 of a ConfigMap carrying the same 4 KiB
  of data, interleaved, each a changed value (so each is a write); the ratio of the medians
  is what sealing with AES-GCM costs (target <= 1.2x).

The cluster (local etcd, control plane, three agents) is set up and torn down as in
bench/cluster_vs_swarm.py. Run as root: python bench/config_update.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster_vs_swarm import moorage_cluster, note  # noqa: E402

from moorage.v1 import api_pb2  # noqa: E402
from tests import imagebuild  # noqa: E402

UPDATES = 50
APPLIES = 200
PAYLOAD = 4096
TARGET_P95 = 2.0
TARGET_RATIO = 1.2
POLL = 0.005


def apply(stub, *objs) -> float:
    began = time.perf_counter()
    stub.Apply(api_pb2.ApplyRequest(manifests=[
        api_pb2.Manifest(source="bench", index=i, content=json.dumps(o))
        for i, o in enumerate(objs)]), timeout=30)
    return time.perf_counter() - began


def config_map(value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench-cfg"},
            "data": {"v": value}}


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench-reader"},
       "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 0,
                "volumes": [{"name": "cfg", "configMap": {"name": "bench-cfg"}}],
                "containers": [{"name": "app", "image": "busybox:bench",
                                "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}}


def pod_uid(stub) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = stub.Get(api_pb2.GetRequest(kind="Pod", namespace="default", name="bench-reader"))
        if got.pod.status.phase == "Running":
            return got.pod.metadata.uid
        time.sleep(0.1)
    raise RuntimeError("the reader pod did not start")


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def update_latency(stub, agents) -> list[float]:
    apply(stub, config_map("0"), POD)
    path = os.path.join(agents[0].state, "volumes", pod_uid(stub), "cfg", "v")
    out = []
    for n in range(1, UPDATES + 1):
        began = time.perf_counter()
        apply(stub, config_map(str(n)))
        deadline = began + 30
        while read(path) != str(n):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"update {n} never reached the pod")
            time.sleep(POLL)
        out.append(time.perf_counter() - began)
    return out


def apply_latency(stub) -> tuple[list[float], list[float]]:
    secrets, maps = [], []
    for n in range(APPLIES):
        value = f"{n:08d}" + "x" * (PAYLOAD - 8)
        maps.append(apply(stub, {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "bench-plain"}, "data": {"v": value}}))
        secrets.append(apply(stub, {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": "bench-sealed"},
                                    "stringData": {"v": value}}))
    return secrets, maps


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the agents make namespaces, cgroups and mounts", file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="moorbench-configs-")
    try:
        tar = os.path.join(root, "busybox.tar")
        imagebuild.write_docker_save(tar, imagebuild.make_image(), ["busybox:bench"])
        with moorage_cluster(root, tar) as (stub, _address, agents):
            note("measuring update -> visible")
            updates = update_latency(stub, agents)
            note("measuring Secret and ConfigMap applies")
            secrets, maps = apply_latency(stub)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"# 3 agents, one control plane on a local etcd, same machine ({os.cpu_count()} CPUs,"
          f" load {os.getloadavg()[0]:.1f} at the end)")
    print(f"ConfigMap update -> new file content in the pod's mount, {UPDATES} updates: "
          f"p50 {pct(updates, 50) * 1000:.0f} ms, p95 {pct(updates, 95) * 1000:.0f} ms, max "
          f"{max(updates) * 1000:.0f} ms (target p95 <= {TARGET_P95:.0f} s; the kubelet's "
          "default sync is about 60 s)")
    ratio = statistics.median(secrets) / statistics.median(maps)
    print(f"apply of a {PAYLOAD // 1024} KiB Secret vs the same ConfigMap, {APPLIES} each: "
          f"median {statistics.median(secrets) * 1000:.2f} ms vs "
          f"{statistics.median(maps) * 1000:.2f} ms, ratio {ratio:.2f}x "
          f"(target <= {TARGET_RATIO}x)")
    ok = pct(updates, 95) <= TARGET_P95 and ratio <= TARGET_RATIO
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
