"""The Deployment controller with the real scheduler on a real etcd: scale, roll, undo, cascade."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest

from controlplane.controllers.deployment import is_available
from controlplane.controllers.deployments import DeploymentController
from controlplane.scheduler.binder import Scheduler
from controlplane.store import Conflict, Store, StoreError
from moorage.model import kinds
from moorage.model.deployments import (
    HISTORY_ANNOTATION,
    REVISION_ANNOTATION,
    TEMPLATE_HASH_LABEL,
    read_history,
    template_hash,
    template_of,
)
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, etcd_client, run, start_controlplane, stop_process
from tests.integration.test_scheduler_shell import create_all, node, wait_for

POD = kinds.BY_NAME["Pod"]
DEPLOYMENT = kinds.BY_NAME["Deployment"]
EVENT = kinds.BY_NAME["Event"]


def deployment(name: str = "web", replicas: int = 3, image: str = "nginx:1",
               surge: int = 1, unavailable: int = 1) -> pb.Deployment:
    d = pb.Deployment(api_version="apps/v1", kind="Deployment")
    d.metadata.name, d.metadata.namespace = name, "default"
    d.metadata.uid, d.metadata.generation = str(uuid.uuid4()), 1
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    c = d.spec.template.spec.containers.add(name=name, image=image)
    c.resources.requests.update({"cpu": "100m", "memory": "64Mi"})
    d.spec.strategy.type = "RollingUpdate"
    d.spec.strategy.rolling_update.max_surge.int_val = surge
    d.spec.strategy.rolling_update.max_unavailable.int_val = unavailable
    return d


async def fake_kubelet(store: Store) -> None:
    """Marks bound pods Running and Ready, and removes pods being deleted (an agent's
    confirmation that their containers stopped). There are no node agents in these tests, so
    this stands in for them."""
    async for ev in store.watch(POD):
        pods = ev.items if ev.type == "RESYNC" else [ev.obj] if ev.type != "DELETED" else []
        for pod in pods:
            if pod.metadata.deletion_timestamp:
                with contextlib.suppress(StoreError):
                    await store.delete(POD, pod.metadata.namespace, pod.metadata.name,
                                       int(pod.metadata.resource_version))
            elif pod.spec.node_name and pod.status.phase == "Pending":
                pod.status.phase = "Running"
                pod.status.conditions.add(type="Ready", status="True")
                with contextlib.suppress(Conflict, StoreError):
                    await store.update(pod)


@contextlib.asynccontextmanager
async def cluster(store: Store, nodes: int = 3):
    await create_all(store, [node(f"node-{i}") for i in range(nodes)])
    controller = DeploymentController(store)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(controller.run()),
             loop.create_task(Scheduler(store, record_events=False).run()),
             loop.create_task(fake_kubelet(store))]
    try:
        yield controller
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pods_of(store: Store, name: str = "web") -> list[pb.Pod]:
    pods, _ = await store.list(POD, "default")
    return [p for p in pods if p.metadata.owner_references
            and p.metadata.owner_references[0].name == name]


async def settled(store: Store, replicas: int, image: str) -> list[pb.Pod]:
    async def check():
        d = await store.get(DEPLOYMENT, "default", "web")
        pods = await pods_of(store)
        want = template_hash(d.spec.template)
        ok = (len(pods) == replicas and all(is_available(p) for p in pods)
              and all(p.metadata.labels[TEMPLATE_HASH_LABEL] == want for p in pods)
              and all(p.spec.containers[0].image == image for p in pods)
              and d.status.available_replicas == replicas
              and d.status.updated_replicas == replicas)
        return pods if ok else None
    return await wait_for(check)


async def change(store: Store, edit) -> pb.Deployment:
    """Read-modify-write, as `moor scale` or an apply would."""
    while True:
        d = await store.get(DEPLOYMENT, "default", "web")
        edit(d)
        d.metadata.generation += 1
        try:
            return await store.update(d)
        except Conflict:
            continue


def set_replicas(n: int):
    def edit(d):
        d.spec.replicas = n
    return edit


def set_image(image: str):
    def edit(d):
        d.spec.template.spec.containers[0].image = image
    return edit


def test_three_replicas_spread_over_three_nodes_then_scale(store_factory):
    async def go():
        store = await store_factory()
        async with cluster(store):
            await store.create(deployment(replicas=3))
            pods = await settled(store, 3, "nginx:1")
            assert sorted(p.spec.node_name for p in pods) == ["node-0", "node-1", "node-2"]
            d = await store.get(DEPLOYMENT, "default", "web")
            assert d.metadata.annotations[REVISION_ANNOTATION] == "1"
            assert d.status.observed_generation == 1
            await change(store, set_replicas(6))
            pods = await settled(store, 6, "nginx:1")
            assert collections.Counter(p.spec.node_name for p in pods) == {
                "node-0": 2, "node-1": 2, "node-2": 2}
            await change(store, set_replicas(1))
            await settled(store, 1, "nginx:1")
        events, _ = await store.list(EVENT, "default")
        messages = {e.message for e in events if e.involved_object.kind == "Deployment"}
        assert {"Scaled up web to 3", "Scaled up web to 6", "Scaled down web to 1"} <= messages
    run(go())


def test_rolling_update_keeps_availability_and_undo_restores(store_factory):
    async def go():
        store = await store_factory()
        async with cluster(store):
            await store.create(deployment(replicas=3, surge=1, unavailable=1))
            first = await settled(store, 3, "nginx:1")
            old_hash = first[0].metadata.labels[TEMPLATE_HASH_LABEL]
            samples = []
            done = asyncio.Event()

            async def sample():
                while not done.is_set():
                    pods = await pods_of(store)
                    samples.append((len(pods), sum(1 for p in pods if is_available(p))))
                    await asyncio.sleep(0.01)

            sampler = asyncio.get_running_loop().create_task(sample())
            await change(store, set_image("nginx:2"))
            pods = await settled(store, 3, "nginx:2")
            done.set()
            await sampler
            assert samples and min(a for _, a in samples) >= 3 - 1
            assert max(n for n, _ in samples) <= 3 + 1
            assert all(p.metadata.labels[TEMPLATE_HASH_LABEL] != old_hash for p in pods)

            d = await store.get(DEPLOYMENT, "default", "web")
            assert d.metadata.annotations[REVISION_ANNOTATION] == "2"
            history = read_history(d)
            assert sorted(history) == [1, 2]
            # Undo, as `moor rollout undo` does: put revision 1's template back.
            await change(store, lambda d: d.spec.template.CopyFrom(template_of(history[1])))
            pods = await settled(store, 3, "nginx:1")
            assert {p.metadata.labels[TEMPLATE_HASH_LABEL] for p in pods} == {old_hash}
            d = await store.get(DEPLOYMENT, "default", "web")
            assert d.metadata.annotations[REVISION_ANNOTATION] == "3"
            assert sorted(json.loads(d.metadata.annotations[HISTORY_ANNOTATION])) == ["2", "3"]
    run(go())


def test_deleting_the_deployment_deletes_its_pods(store_factory):
    async def go():
        store = await store_factory()
        async with cluster(store):
            await store.create(deployment(replicas=2))
            await settled(store, 2, "nginx:1")
            await store.delete(DEPLOYMENT, "default", "web")

            async def gone():
                return not await pods_of(store)
            await wait_for(gone)
    run(go())


# ---- `moor scale` and `moor rollout` against a control plane process ----

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      {extra}
      containers: [{{name: c, image: "{image}"}}]
"""


class KubeletThread:
    """The fake kubelet on its own event loop, for tests whose main thread runs subprocesses."""

    def __init__(self, etcd: str, prefix: str):
        self.etcd, self.prefix = etcd, prefix
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def _run(self):
        async def main():
            client = etcd_client(self.etcd)
            await client.connect()
            store = Store(client, prefix=self.prefix)
            await create_all(store, [node(f"node-{i}") for i in range(3)])
            self.task = asyncio.current_task()
            self.ready.set()
            try:
                await fake_kubelet(store)
            finally:
                await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(20)


@pytest.fixture(scope="module")
def moor_cluster(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "cp-")
    # No node agents here, so no heartbeats: the node lifecycle controller would mark the
    # hand-written nodes NotReady.
    cp = start_controlplane(etcd_endpoint, state, extra_args=(
        "--scheduler", "--controllers", "--no-node-lifecycle"))
    kubelet = KubeletThread(etcd_endpoint, cp.prefix)
    yield cp
    kubelet.stop()
    stop_process(cp.proc)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def moor(moor_cluster, tmp_path):
    env = moor_cluster.env(MOOR_CONFIG=str(tmp_path / "none.yaml"))

    def call(*args, stdin: str | None = None):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=120)
    return call


def apply(moor, name: str, image: str, extra: str = "", replicas: str = "replicas: 2"):
    proc = moor("apply", "-f", "-", stdin=MANIFEST.format(name=name, image=image, extra=extra,
                                                          replicas=replicas))
    assert proc.returncode == 0, proc.stderr


def rolled_out(moor, name: str):
    proc = moor("rollout", "status", f"deploy/{name}", "--timeout", "60s")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout.strip().splitlines()[-1] == f'deployment "{name}" successfully rolled out'
    return proc.stdout


def images(moor, name: str) -> list[str]:
    proc = moor("get", "pods", "-l", f"app={name}", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return sorted(p["spec"]["containers"][0]["image"] for p in json.loads(proc.stdout)["items"])


def test_cli_scale_rollout_history_and_undo(moor):
    apply(moor, "web", "nginx:1")
    rolled_out(moor, "web")
    assert images(moor, "web") == ["nginx:1"] * 2

    proc = moor("scale", "deploy", "web", "--replicas=3")
    assert (proc.returncode, proc.stdout) == (0, "deployment.apps/web scaled\n"), proc.stderr
    rolled_out(moor, "web")
    assert images(moor, "web") == ["nginx:1"] * 3

    # The manifest omits replicas, so the scale survives; it drops the controller's
    # annotations, which the controller puts back.
    apply(moor, "web", "nginx:2", replicas="")
    rolled_out(moor, "web")
    assert images(moor, "web") == ["nginx:2"] * 3
    proc = moor("rollout", "history", "deployment/web")
    assert proc.returncode == 0, proc.stderr
    assert [line.split() for line in proc.stdout.splitlines()] == [
        ["deployment.apps/web"], ["REVISION", "IMAGES"], ["1", "nginx:1"], ["2", "nginx:2"]]

    proc = moor("rollout", "undo", "deploy/web")
    assert (proc.returncode, proc.stdout) == (0, "deployment.apps/web rolled back\n"), proc.stderr
    rolled_out(moor, "web")
    assert images(moor, "web") == ["nginx:1"] * 3
    proc = moor("rollout", "history", "deploy/web")
    assert [line.split()[0] for line in proc.stdout.splitlines()[2:]] == ["2", "3"]

    proc = moor("rollout", "undo", "deploy/web", "--to-revision", "9")
    assert proc.returncode == 1 and "unable to find the specified revision 9" in proc.stderr


def test_cli_rollout_status_times_out_when_pods_cannot_run(moor):
    apply(moor, "stuck", "nginx:1", extra="nodeSelector: {disk: none}")
    proc = moor("rollout", "status", "deploy/stuck", "--timeout", "2s")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == (
        'Waiting for deployment "stuck" rollout to finish: 0 of 2 updated replicas are '
        "available...")
    assert proc.stderr.strip() == 'error: timed out waiting for deployment "stuck" to roll out'
    proc = moor("scale", "pod/stuck", "--replicas", "1")
    assert proc.returncode == 1 and "works on deployments" in proc.stderr
