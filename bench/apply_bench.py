"""Apply latency and throughput against a raw etcd Txn, measured in one run on one etcd.

Prints p50/p99 of a single Deployment apply over gRPC (sent as `moor apply` sends it: the YAML
document as JSON, through grpc's sync client) next to a raw aetcd Txn writing the same bytes
with the same compare, and applies per second with 8 concurrent clients. Every apply changes the
object (an annotation counter), so each one is a real etcd write.

It also measures the floor Python's gRPC puts under any such API on this machine: a server
whose handler does nothing but that same raw Txn. The gap between the floor and the raw Txn is
gRPC's cost, not Moorage's.
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

from controlplane.store.local import LocalEtcd, free_port, free_port_block
from moorage import manifest  # noqa: E402
from moorage.manifest import yamlload  # noqa: E402
from moorage.v1 import api_pb2, api_pb2_grpc  # noqa: E402

SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "400"))
WARMUP = 50
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
    return json.dumps(yaml.load(DEPLOYMENT.format(name=name, n=n), Loader=yamlload.Loader))


def deployment_bytes() -> bytes:
    return manifest.parse([("b.yaml", DEPLOYMENT.format(name="raw", n=0))])[0].obj \
        .SerializeToString()


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def txn_request(key: bytes, rev: int, data: bytes) -> rpc.TxnRequest:
    return rpc.TxnRequest(
        compare=[rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                             mod_revision=rev)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))])


async def raw_txn(endpoint: str) -> list[float]:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    data, key, rev, samples = deployment_bytes(), b"/bench-raw/deployments/default/raw", 0, []
    for i in range(SEQUENTIAL + WARMUP):
        t = time.perf_counter()
        resp = await client.kvstub.Txn(txn_request(key, rev, data))
        if i >= WARMUP:
            samples.append(time.perf_counter() - t)
        assert resp.succeeded
        rev = resp.header.revision
    await client.close()
    return samples


def floor_server(address: str, endpoint: str) -> None:
    """A gRPC server whose Apply does only the raw Txn: Python gRPC's floor for this API."""
    async def serve():
        host, port = endpoint.rsplit(":", 1)
        client = aetcd.Client(host=host, port=int(port))
        await client.connect()
        data, revs = deployment_bytes(), {}

        class Floor(api_pb2_grpc.ClusterServicer):
            async def Apply(self, request, context):
                key = b"/bench-floor/" + request.manifests[0].source.encode()
                resp = await client.kvstub.Txn(txn_request(key, revs.get(key, 0), data))
                revs[key] = resp.header.revision
                return api_pb2.ApplyResponse(revision=resp.header.revision)

        server = grpc.aio.server()
        api_pb2_grpc.add_ClusterServicer_to_server(Floor(), server)
        server.add_insecure_port(address)
        await server.start()
        await server.wait_for_termination()
    asyncio.run(serve())


def channel(address: str, credentials: str | None):
    """mTLS as admin to the control plane; plaintext to the floor server."""
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    from moorage.credentials import channel_credentials

    return grpc.aio.secure_channel(address, channel_credentials(credentials))


def sync_channel(address: str, credentials: str | None):
    if credentials is None:
        return grpc.insecure_channel(address)
    from moorage.credentials import channel_credentials

    return grpc.secure_channel(address, channel_credentials(credentials))


def sequential(address: str, credentials: str | None = None,
               source: str = "bench.yaml") -> list[float]:
    stub = api_pb2_grpc.ClusterStub(sync_channel(address, credentials))
    requests = [api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
        source=source, content=as_sent(i, "seq"))]) for i in range(SEQUENTIAL + WARMUP)]
    samples = []
    for i, req in enumerate(requests):
        t = time.perf_counter()
        stub.Apply(req)
        if i >= WARMUP:
            samples.append(time.perf_counter() - t)
    return samples


async def concurrent(address: str, credentials: str | None = None) -> float:
    """Applies per second from 8 clients, each with its own channel, for a fixed time."""
    bodies = {c: [as_sent(n, f"c{c}") for n in range(200)] for c in range(CONCURRENT_CLIENTS)}
    deadline = time.perf_counter() + CONCURRENT_SECONDS
    counts = [0] * CONCURRENT_CLIENTS

    async def client(c: int):
        async with channel(address, credentials) as ch:
            stub = api_pb2_grpc.ClusterStub(ch)
            n = 0
            while time.perf_counter() < deadline:
                await stub.Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
                    source=f"c{c}", content=bodies[c][n % 200])]))
                n += 1
            counts[c] = n
    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(CONCURRENT_CLIENTS)))
    return sum(counts) / (time.perf_counter() - t)


def start(args: list[str], address: str) -> subprocess.Popen:
    """Starts a server and waits until `address` answers in plaintext (the floor server, or
    the control plane's CA listener)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL)
    grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
    return proc


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--floor-server":
        floor_server(sys.argv[2], sys.argv[3])
        return
    tmp = tempfile.mkdtemp(prefix="moorbench-")
    etcd = LocalEtcd(os.path.join(tmp, "etcd")).start()
    port = free_port_block(4)
    cp_addr, floor_addr = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    creds = os.path.join(tmp, "cp", "admin.pem")
    procs = []
    try:
        procs.append(start(["-m", "controlplane.server", "--listen", cp_addr, "--metrics-listen",
                            "", "--state-dir", os.path.join(tmp, "cp"), "--etcd-endpoints",
                            etcd.endpoint, "--log-level", "warning"], f"127.0.0.1:{port + 3}"))
        procs.append(start([os.path.abspath(__file__), "--floor-server", floor_addr,
                            etcd.endpoint], floor_addr))
        raw = asyncio.run(raw_txn(etcd.endpoint))
        floor = sequential(floor_addr)
        api = sequential(cp_addr, creds)
        floor_rate = asyncio.run(concurrent(floor_addr))
        api_rate = asyncio.run(concurrent(cp_addr, creds))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    r50, r99 = pct(raw, .5), pct(raw, .99)
    f50, f99 = pct(floor, .5), pct(floor, .99)
    a50, a99 = pct(api, .5), pct(api, .99)
    print(f"raw aetcd Txn            p50 {r50 * 1e3:6.2f} ms  p99 {r99 * 1e3:6.2f} ms  "
          f"(n={len(raw)})")
    print(f"gRPC floor (Txn only)    p50 {f50 * 1e3:6.2f} ms  p99 {f99 * 1e3:6.2f} ms  "
          f"= {f50 / r50:.2f}x raw")
    print(f"moorage apply over gRPC  p50 {a50 * 1e3:6.2f} ms  p99 {a99 * 1e3:6.2f} ms  "
          f"(mean {statistics.mean(api) * 1e3:.2f} ms)")
    print(f"apply/raw ratio          p50 {a50 / r50:.2f}x  p99 {a99 / r99:.2f}x  "
          f"(target p50 <= 2x); apply/floor p50 {a50 / f50:.2f}x")
    print(f"throughput               {api_rate:.0f} applies/s with {CONCURRENT_CLIENTS} "
          f"concurrent clients (target >= 1000); gRPC floor {floor_rate:.0f}/s")


if __name__ == "__main__":
    main()
