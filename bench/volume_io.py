"""Persistent volumes: what a claim costs a writer against a plain directory of the same host
filesystem, on this machine, in one run.

A pod mounts a PersistentVolumeClaim of the default class (the local provisioner) and writes a
marker into it; the benchmark finds the directory the pod's mount shows (where the node's agent
mounts the volume, checked by the marker) and runs the same two workloads there and in a new
directory in the agent's state dir (the filesystem the volumes' images are files of):

- sequential write: 256 MiB in 1 MiB blocks, one fsync at the end (bandwidth);
- fsync-heavy small writes: 4,000 writes of 4 KiB, each followed by fsync (writes per second),
  what a database's log does.

A bind mount adds nothing to the I/O path, so the directory the container sees and the one the
benchmark writes are the same storage: the ratio is what the volume itself (its image file or
quota, its filesystem) costs. `fio` (Debian's) when installed, else GNU `dd`. Runs alternate
(host, claim, host, claim, ...) and the medians are compared; target >= 0.9x for both.

The cluster (local etcd, control plane, three agents) is set up and torn down as in
bench/cluster_vs_swarm.py. Run as root: python bench/volume_io.py
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
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster_vs_swarm import moorage_cluster, note  # noqa: E402

from moorage.v1 import api_pb2  # noqa: E402
from nodeagent.runtime.syscalls import LibcSyscalls  # noqa: E402
from nodeagent.storage.localvolumes import unmount_all  # noqa: E402
from tests import imagebuild  # noqa: E402

SEQ_MIB = 256
SMALL_WRITES = 4000
SMALL_BS = 4096
ROUNDS = 3
TARGET = 0.9
CLAIM_SIZE = "1Gi"
NAME = "bench-io"


def apply(stub, *objs) -> None:
    stub.Apply(api_pb2.ApplyRequest(manifests=[
        api_pb2.Manifest(source="bench", index=i, content=json.dumps(o))
        for i, o in enumerate(objs)]), timeout=30)


def objects(marker: str) -> list[dict]:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": NAME},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": CLAIM_SIZE}}}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME},
           "spec": {"terminationGracePeriodSeconds": 0,
                    "volumes": [{"name": "data",
                                 "persistentVolumeClaim": {"claimName": NAME}}],
                    "containers": [{"name": "app", "image": "busybox:bench",
                                    "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", f"echo {marker} > /data/.marker "
                                                "&& sync && exec sleep 3600"],
                                    "volumeMounts": [{"name": "data",
                                                      "mountPath": "/data"}]}]}}
    return [claim, pod]


def get(stub, kind: str, name: str, namespace: str = "default"):
    from moorage.model import kinds

    got = stub.Get(api_pb2.GetRequest(kind=kind, namespace=namespace, name=name), timeout=10)
    return kinds.unwrap(got)


def wait_running(stub, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = get(stub, "Pod", NAME)
        if pod.status.phase == "Running":
            return pod
        time.sleep(0.2)
    raise RuntimeError(f"the writer pod is not Running ({pod.status.phase or 'Pending'}); "
                       "see moor describe pod")


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def volume_dir(stub, agent_state: str, marker: str) -> str:
    """The directory the pod's /data shows, proved by the marker: where the agent mounts the
    claim's volume (<state>/local-volumes/<pv>/mount), else its PersistentVolume's path."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        claim = get(stub, "PersistentVolumeClaim", NAME)
        if claim.spec.volume_name:
            pv = get(stub, "PersistentVolume", claim.spec.volume_name, "")
            for path in (os.path.join(agent_state, "local-volumes", claim.spec.volume_name,
                                      "mount"), pv.spec.local.path):
                if path and read(os.path.join(path, ".marker")) == marker:
                    return path
        time.sleep(0.5)
    raise RuntimeError("could not find the directory behind the pod's volume")


def fio(directory: str, job: str) -> float:
    """MiB/s for `seq`, writes/s for `fsync`."""
    common = ["fio", "--name", job, "--directory", directory, "--ioengine", "psync",
              "--rw", "write", "--output-format", "json", "--unlink", "1"]
    if job == "seq":
        args = ["--bs", "1M", "--size", f"{SEQ_MIB}M", "--end_fsync", "1"]
    else:
        args = ["--bs", str(SMALL_BS), "--size", str(SMALL_WRITES * SMALL_BS), "--fsync", "1"]
    out = subprocess.run(common + args, capture_output=True, text=True, check=True, timeout=600)
    write = json.loads(out.stdout)["jobs"][0]["write"]
    return write["bw_bytes"] / 2**20 if job == "seq" else write["iops"]


def dd(directory: str, job: str) -> float:
    path = os.path.join(directory, f"dd-{job}")
    if job == "seq":
        cmd = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={SEQ_MIB}", "conv=fsync"]
    else:
        cmd = ["dd", "if=/dev/zero", f"of={path}", f"bs={SMALL_BS}", f"count={SMALL_WRITES}",
               "oflag=dsync"]
    began = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, timeout=600)
    took = time.perf_counter() - began
    os.unlink(path)
    return SEQ_MIB / took if job == "seq" else SMALL_WRITES / took


def measure(tool, host: str, claim: str) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {"seq": ([], []), "fsync": ([], [])}
    for n in range(ROUNDS):
        for job in ("seq", "fsync"):
            note(f"round {n + 1}/{ROUNDS}: {job}")
            results[job][0].append(tool(host, job))
            results[job][1].append(tool(claim, job))
    return results


def unmount_volumes(agents) -> None:
    """The claims' loop-mounted images left under the agents' state dirs (a safety net: an
    agent removes a volume when its claim is deleted, which cleanup() asks for)."""
    for a in agents:
        unmount_all(LibcSyscalls(), os.path.join(a.state, "local-volumes"))


def cleanup(stub) -> None:
    for kind in ("Pod", "PersistentVolumeClaim"):
        try:
            stub.Delete(api_pb2.DeleteRequest(kind=kind, namespace="default", name=NAME,
                                              grace_period_seconds=0), timeout=10)
        except Exception as err:  # noqa: BLE001 - keep tearing down
            note(f"deleting {kind} {NAME}: {err}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(stub, "PersistentVolumeClaim", NAME)
        except Exception:  # noqa: BLE001 - NotFound: gone
            return
        time.sleep(0.3)


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the agents make namespaces, cgroups and mounts", file=sys.stderr)
        return 2
    tool, tool_name = (fio, "fio") if shutil.which("fio") else (dd, "dd")
    root = tempfile.mkdtemp(prefix="moorbench-volumes-")
    marker = uuid.uuid4().hex
    agents: list = []
    try:
        tar = os.path.join(root, "busybox.tar")
        imagebuild.write_docker_save(tar, imagebuild.make_image(), ["busybox:bench"])
        with moorage_cluster(root, tar) as (stub, _address, agents):
            try:
                apply(stub, *objects(marker))
                pod = wait_running(stub)
                agent = next(a for a in agents if a.name == pod.spec.node_name)
                claim_dir = volume_dir(stub, agent.state, marker)
                host_dir = tempfile.mkdtemp(prefix="host-", dir=agent.state)
                note(f"claim at {claim_dir} on {agent.name}; host directory {host_dir}; "
                     f"{tool_name}")
                results = measure(tool, host_dir, claim_dir)
            finally:
                cleanup(stub)
    finally:
        unmount_volumes(agents)
        shutil.rmtree(root, ignore_errors=True)
    print(f"# one pod on a claim of the local class ({CLAIM_SIZE}), against a directory of the "
          f"filesystem under the agent's state dir; {tool_name}, median of {ROUNDS} alternated "
          f"runs; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end")
    ok = True
    for job, unit, what in (("seq", "MiB/s", f"sequential write {SEQ_MIB} MiB, bs 1M, fsync "
                                             "at the end"),
                            ("fsync", "writes/s", f"{SMALL_WRITES} writes of 4 KiB, fsync "
                                                  "each")):
        host, claim = (statistics.median(v) for v in results[job])
        ratio = claim / host
        ok = ok and ratio >= TARGET
        print(f"{what}: claim {claim:.0f} {unit}, host directory {host:.0f} {unit}, "
              f"ratio {ratio:.2f}x (target >= {TARGET}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
