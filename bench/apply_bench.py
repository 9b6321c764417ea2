"""Apply latency and throughput against a raw etcd Txn, measured in one run on one etcd.

Prints p50/p99 of a single Deployment apply over gRPC next to a raw aetcd Txn writing the same
bytes with the same compare, and applies per second with 8 concurrent clients. Every apply
changes the object (an annotation counter), so each one is a real etcd write.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import aetcd
import grpc
import yaml
from aetcd import rpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from controlplane.etcd_local import LocalEtcd, free_port
from moorage import manifest
from moorage.v1 import api_pb2, api_pb2_grpc

SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "400"))
CONCURRENT_CLIENTS = 8
CONCURRENT_SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: web}}
  annotations: {{bench/counter: "{n}"}}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.14.2
        ports:
        - containerPort: 80
        resources:
          requests: {{cpu: 100m, memory: 64Mi}}
          limits: {{memory: 128Mi}}
"""


def as_sent(n: int, name: str) -> str:
    """The manifest as `moor apply` sends it: each YAML document as JSON."""
    return json.dumps(yaml.load(DEPLOYMENT.format(name=name, n=n), Loader=manifest._Loader))


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


async def raw_txn(endpoint: str) -> list[float]:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    value = manifest.parse([("b.yaml", DEPLOYMENT.format(name="raw", n=0))])[0].obj
    data = value.SerializeToString()
    key = b"/bench-raw/deployments/default/raw"
    rev = 0
    samples = []
    for i in range(SEQUENTIAL + 20):
        t = time.perf_counter()
        resp = await client.kvstub.Txn(rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                 mod_revision=rev)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]))
        if i >= 20:
            samples.append(time.perf_counter() - t)
        assert resp.succeeded
        rev = resp.header.revision
    await client.close()
    return samples


async def api_sequential(address: str) -> list[float]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = api_pb2_grpc.ClusterStub(ch)
        samples = []
        for i in range(SEQUENTIAL + 20):
            req = api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                source="bench.yaml", content=as_sent(i, "seq"))])
            t = time.perf_counter()
            resp = await stub.Apply(req)
            if i >= 20:
                samples.append(time.perf_counter() - t)
            assert resp.results[0].action in ("created", "configured")
        return samples


async def api_concurrent(address: str) -> tuple[int, float]:
    deadline = time.perf_counter() + CONCURRENT_SECONDS
    counts = [0] * CONCURRENT_CLIENTS

    async def client(c: int):
        async with grpc.aio.insecure_channel(address) as ch:
            stub = api_pb2_grpc.ClusterStub(ch)
            n = 0
            while time.perf_counter() < deadline:
                await stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                    source="bench.yaml", content=as_sent(n, f"c{c}"))]))
                n += 1
            counts[c] = n
    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(CONCURRENT_CLIENTS)))
    return sum(counts), time.perf_counter() - t


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="moorbench-")
    etcd = LocalEtcd(os.path.join(tmp, "etcd")).start()
    port = free_port()
    address = f"127.0.0.1:{port}"
    cp = subprocess.Popen(
        [sys.executable, "-m", "controlplane.server", "--listen", address, "--metrics-listen",
         "", "--state-dir", os.path.join(tmp, "cp"), "--etcd-endpoints", etcd.endpoint,
         "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=20)
        raw = asyncio.run(raw_txn(etcd.endpoint))
        api = asyncio.run(api_sequential(address))
        total, elapsed = asyncio.run(api_concurrent(address))
    finally:
        cp.terminate()
        cp.wait()
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    r50, r99, a50, a99 = (pct(raw, .5), pct(raw, .99), pct(api, .5), pct(api, .99))
    print(f"raw aetcd Txn      p50 {r50 * 1e3:6.2f} ms  p99 {r99 * 1e3:6.2f} ms  (n={len(raw)})")
    print(f"apply over gRPC    p50 {a50 * 1e3:6.2f} ms  p99 {a99 * 1e3:6.2f} ms  (n={len(api)}, "
          f"mean {statistics.mean(api) * 1e3:.2f} ms)")
    print(f"apply/raw ratio    p50 {a50 / r50:.2f}x  p99 {a99 / r99:.2f}x  (target p50 <= 2x)")
    print(f"throughput         {total / elapsed:.0f} applies/s with {CONCURRENT_CLIENTS} "
          f"concurrent clients over {elapsed:.1f}s (target >= 1000)")


if __name__ == "__main__":
    main()
