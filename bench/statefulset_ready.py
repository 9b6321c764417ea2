"""StatefulSets: a StatefulSet of 10 from apply to all 10 pods Running and Ready, with
podManagementPolicy OrderedReady (each pod created once its predecessor is Running and Ready)
against Parallel (all at once), on this machine, in one run.

Each pod has a claim of its own from volumeClaimTemplates (the local provisioner binds it on
the node the pod lands on), so the time includes provisioning, as a database's would;
`--no-claims` measures the pods alone. The time is from the Apply RPC until the pods (polled
every 20 ms through the API) are all Ready; then the StatefulSet, its pods and claims are
deleted and the next run starts on an empty namespace. Runs alternate (OrderedReady, Parallel,
...) and the medians are printed with their ratio, and the mean step between consecutive
ordinals of OrderedReady.

The cluster (local etcd, control plane, three agents) is set up and torn down as in
bench/cluster_vs_swarm.py. Run as root: python bench/statefulset_ready.py [--no-claims]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster_vs_swarm import moorage_cluster, note  # noqa: E402

from moorage.model import kinds  # noqa: E402
from moorage.v1 import api_pb2  # noqa: E402
from tests import imagebuild  # noqa: E402

REPLICAS = 10
ROUNDS = 3
NAME = "bench-sts"
NAMESPACE = "default"
POLL = 0.02
TIMEOUT = 300
LABELS = {"app": NAME}
POLICIES = ("OrderedReady", "Parallel")


def manifests(policy: str, claims: bool) -> list[dict]:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME},
               "spec": {"clusterIP": "None", "selector": LABELS}}
    container = {"name": "app", "image": "busybox:bench", "imagePullPolicy": "Never",
                 "command": ["sleep", "3600"]}
    spec: dict = {"replicas": REPLICAS, "serviceName": NAME, "podManagementPolicy": policy,
                  "selector": {"matchLabels": LABELS},
                  "template": {"metadata": {"labels": LABELS},
                               "spec": {"terminationGracePeriodSeconds": 0,
                                        "containers": [container]}}}
    if claims:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumeClaimTemplates"] = [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "16Mi"}}}}]
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete",
                                                        "whenScaled": "Delete"}
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": NAME},
           "spec": spec}
    return [service, sts]


def apply(stub, objs: list[dict]) -> None:
    stub.Apply(api_pb2.ApplyRequest(manifests=[
        api_pb2.Manifest(source="bench", index=i, content=json.dumps(o))
        for i, o in enumerate(objs)]), timeout=30)


def pods(stub) -> list:
    items = stub.List(api_pb2.ListRequest(kind="Pod", namespace=NAMESPACE,
                                          label_selector=f"app={NAME}"), timeout=10).items
    return [kinds.unwrap(i) for i in items]


def ready(pod) -> bool:
    return pod.status.phase == "Running" and not pod.metadata.deletion_timestamp and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def ordinal(pod) -> int:
    return int(pod.metadata.name.rsplit("-", 1)[1])


def run_once(stub, policy: str, claims: bool) -> tuple[float, list[float]]:
    """Seconds from apply to all Ready, and when each ordinal first was Ready."""
    began = time.perf_counter()
    apply(stub, manifests(policy, claims))
    first_ready: dict[int, float] = {}
    deadline = began + TIMEOUT
    while len(first_ready) < REPLICAS:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"{policy}: only {sorted(first_ready)} Ready after {TIMEOUT} s")
        for p in pods(stub):
            if ready(p):
                first_ready.setdefault(ordinal(p), now - began)
        time.sleep(POLL)
    return time.perf_counter() - began, [first_ready[i] for i in sorted(first_ready)]


def delete_all(stub, claims: bool) -> None:
    for kind, name in (("StatefulSet", NAME), ("Service", NAME)):
        try:
            stub.Delete(api_pb2.DeleteRequest(kind=kind, namespace=NAMESPACE, name=name),
                        timeout=10)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:    # none yet before the first run
                note(f"deleting {kind} {name}: {err.details()}")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        left = pods(stub)
        for p in left:      # the controller deletes them in order; speed the end up
            try:
                stub.Delete(api_pb2.DeleteRequest(kind="Pod", namespace=NAMESPACE,
                                                  name=p.metadata.name,
                                                  grace_period_seconds=0), timeout=10)
            except Exception:  # noqa: BLE001 - already going
                pass
        claims_left = stub.List(api_pb2.ListRequest(
            kind="PersistentVolumeClaim", namespace=NAMESPACE), timeout=10).items
        if claims and claims_left:
            for c in claims_left:
                name = kinds.unwrap(c).metadata.name
                try:
                    stub.Delete(api_pb2.DeleteRequest(kind="PersistentVolumeClaim",
                                                      namespace=NAMESPACE, name=name),
                                timeout=10)
                except Exception:  # noqa: BLE001 - already going
                    pass
        if not left and not (claims and claims_left):
            return
        time.sleep(0.3)
    raise RuntimeError("the StatefulSet's pods or claims did not go")


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the agents make namespaces, cgroups and mounts", file=sys.stderr)
        return 2
    claims = "--no-claims" not in sys.argv[1:]
    root = tempfile.mkdtemp(prefix="moorbench-sts-")
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    steps: list[float] = []
    try:
        tar = os.path.join(root, "busybox.tar")
        imagebuild.write_docker_save(tar, imagebuild.make_image(), ["busybox:bench"])
        with moorage_cluster(root, tar) as (stub, _address, _agents):
            try:
                for n in range(ROUNDS):
                    for policy in POLICIES:
                        note(f"round {n + 1}/{ROUNDS}: {policy}")
                        took, ready_at = run_once(stub, policy, claims)
                        times[policy].append(took)
                        if policy == "OrderedReady":
                            steps += [b - a for a, b in zip(ready_at, ready_at[1:])]
                        delete_all(stub, claims)
            finally:
                delete_all(stub, claims)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with_claims = "a 16Mi claim per pod (volumeClaimTemplates)" if claims else "no claims"
    print(f"# StatefulSet of {REPLICAS}, {with_claims}, 3 agents, one control plane on a local "
          f"etcd, same machine ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the "
          f"end); median of {ROUNDS} alternated runs")
    ordered, parallel = (statistics.median(times[p]) for p in POLICIES)
    print(f"apply -> {REPLICAS}/{REPLICAS} Ready: OrderedReady {ordered:.2f} s (mean step "
          f"between ordinals {statistics.mean(steps) * 1000:.0f} ms), Parallel "
          f"{parallel:.2f} s, ratio OrderedReady/Parallel {ordered / parallel:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
