"""The StatefulSet controller with the real scheduler on a real etcd (a stand-in kubelet marks
bound pods Running and Ready): ordered creation, claims made per ordinal and kept over a
scale 3 -> 1 -> 3, a rolling update from the highest ordinal, history, cascade; and the
apply-time checks (a serviceName that is not headless, fixed fields)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from controlplane.api.apply import Applier
from controlplane.controllers.statefulset import is_owned_by
from controlplane.controllers.statefulsets import StatefulSetController
from controlplane.scheduler.binder import Scheduler
from controlplane.store import Conflict, Store
from moorage.manifest import ManifestError, parse
from moorage.model import kinds
from moorage.model import statefulsets as model
from moorage.model.deployments import read_history
from moorage.v1 import objects_pb2 as pb
from tests.conftest import run
from tests.integration.test_deployments import fake_kubelet
from tests.integration.test_scheduler_shell import create_all, node
from tests.wait import wait_until_async

POD = kinds.BY_NAME["Pod"]
STS = kinds.BY_NAME["StatefulSet"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
EVENT = kinds.BY_NAME["Event"]


def manifest(replicas: int = 3, image: str = "busybox:1", claims: bool = True,
             policy: str = "OrderedReady", service: str = "db") -> str:
    text = f"""\
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: default}}
spec:
  serviceName: {service}
  replicas: {replicas}
  podManagementPolicy: {policy}
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
      - name: db
        image: {image}
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
"""
    if claims:
        text += """\
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data, labels: {tier: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"""
    return text


async def apply(store: Store, text: str) -> None:
    applier = Applier(store)
    for _ in range(10):
        try:
            await applier.apply(parse([("sts.yaml", text)]))
            return
        except Conflict:
            continue   # the controller's status write came first


@contextlib.asynccontextmanager
async def cluster(store: Store):
    ns = pb.Namespace(api_version="v1", kind="Namespace")
    ns.metadata.name = "default"
    await create_all(store, [ns, node("node-0"), node("node-1"), node("node-2")])
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(StatefulSetController(store).run()),
             loop.create_task(Scheduler(store, record_events=False).run()),
             loop.create_task(fake_kubelet(store))]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def set_pods(store: Store) -> dict[str, pb.Pod]:
    sts = await store.get(STS, "default", "db")
    pods, _ = await store.list(POD, "default")
    return {p.metadata.name: p for p in pods if is_owned_by(p, sts)}


async def claims(store: Store) -> dict[str, pb.PersistentVolumeClaim]:
    items, _ = await store.list(CLAIM, "default")
    return {c.metadata.name: c for c in items}


def ready(pod: pb.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


async def settled(store: Store, names: list[str], image: str = "busybox:1"):
    async def check():
        pods = await set_pods(store)
        sts = await store.get(STS, "default", "db")
        ok = (sorted(pods) == sorted(names) and all(ready(p) for p in pods.values())
              and all(p.spec.containers[0].image == image for p in pods.values())
              and sts.status.ready_replicas == len(names)
              and sts.status.current_revision == sts.status.update_revision)
        return pods if ok else None
    return await wait_until_async(check, 30, f"pods {names} Ready at {image}")


def test_ordered_creation_claims_and_scale_3_1_3_keeps_claims(store_factory):
    async def go():
        store = await store_factory()
        created: list[tuple[str, set[str]]] = []

        async def record():
            """At each pod's creation, which of the set's pods were Ready."""
            latest: dict[str, pb.Pod] = {}
            async for ev in store.watch(POD, "default"):
                for p in (ev.items if ev.type == "RESYNC" else [ev.obj]):
                    if ev.type == "DELETED":
                        latest.pop(p.metadata.name, None)
                        continue
                    if ev.type == "ADDED" and p.metadata.name.startswith("db-"):
                        created.append((p.metadata.name,
                                        {n for n, q in latest.items() if ready(q)}))
                    latest[p.metadata.name] = p
        watcher = asyncio.get_running_loop().create_task(record())
        async with cluster(store):
            await apply(store, manifest(3))
            pods = await settled(store, ["db-0", "db-1", "db-2"])
            assert created == [("db-0", set()), ("db-1", {"db-0"}),
                               ("db-2", {"db-0", "db-1"})]
            p = pods["db-1"]
            assert (p.spec.hostname, p.spec.subdomain) == ("db-1", "db")
            assert p.metadata.labels[model.POD_NAME_LABEL] == "db-1"
            assert p.metadata.labels[model.POD_INDEX_LABEL] == "1"
            assert [v.persistent_volume_claim.claim_name for v in p.spec.volumes] == \
                ["data-db-1"]
            before = await claims(store)
            assert sorted(before) == ["data-db-0", "data-db-1", "data-db-2"]
            assert dict(before["data-db-0"].metadata.labels) == {"tier": "data", "app": "db"}
            uids = {n: c.metadata.uid for n, c in before.items()}

            await apply(store, manifest(1))
            await settled(store, ["db-0"])
            assert {n: c.metadata.uid for n, c in (await claims(store)).items()} == uids

            await apply(store, manifest(3))
            pods = await settled(store, ["db-0", "db-1", "db-2"])
            assert {n: c.metadata.uid for n, c in (await claims(store)).items()} == uids
            assert pods["db-2"].spec.volumes[0].persistent_volume_claim.claim_name == \
                "data-db-2"
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    run(go())


def test_rolling_update_goes_from_the_highest_ordinal_and_history_is_kept(store_factory):
    async def go():
        store = await store_factory()
        async with cluster(store):
            await apply(store, manifest(3, claims=False, policy="Parallel"))
            before = await settled(store, ["db-0", "db-1", "db-2"])
            await apply(store, manifest(3, image="busybox:2", claims=False, policy="Parallel"))
            after = await settled(store, ["db-0", "db-1", "db-2"], "busybox:2")
            # Replaced newest-ordinal first: db-2's new pod is the oldest of the three.
            stamps = {n: int(p.metadata.resource_version) for n, p in after.items()}
            created = sorted(after, key=lambda n: after[n].metadata.creation_timestamp +
                             f"{stamps[n]:020d}")
            assert created == ["db-2", "db-1", "db-0"]
            assert all(after[n].metadata.uid != before[n].metadata.uid for n in after)
            sts = await store.get(STS, "default", "db")
            assert sorted(read_history(sts)) == [1, 2]
            assert sts.metadata.annotations[model.REVISION_ANNOTATION] == "2"
            events, _ = await store.list(EVENT, "default")
            assert any(e.reason == "SuccessfulCreate" and
                       e.message == "create Pod db-0 in StatefulSet db successful"
                       for e in events)
            # Deleting the set deletes its pods, never its claims.
            await store.delete(STS, "default", "db")
            await wait_until_async(lambda: _none_left(store), 30, "the set's pods gone")
    run(go())


async def _none_left(store: Store) -> bool:
    pods, _ = await store.list(POD, "default")
    return not [p for p in pods if p.metadata.name.startswith("db-")]


def test_apply_refuses_a_service_that_is_not_headless_and_fixed_fields(store_factory):
    async def go():
        store = await store_factory()
        ns = pb.Namespace(api_version="v1", kind="Namespace")
        ns.metadata.name = "default"
        await create_all(store, [ns])
        svc = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: db}, clusterIP: 10.96.0.77, ports: [{port: 80}]}
"""
        applier = Applier(store)
        await applier.apply(parse([("svc.yaml", svc)]))
        with pytest.raises(ManifestError) as exc:
            await applier.apply(parse([("sts.yaml", manifest(service="web"))]))
        assert exc.value.problems == [
            'sts.yaml[0] spec.serviceName: service "web" is not headless (its clusterIP is '
            "10.96.0.77, not None): a StatefulSet's pods get their DNS names from a headless "
            "Service"]
        assert (await store.list(STS, "default"))[0] == []
        # A Service that does not exist yet is fine.
        await applier.apply(parse([("sts.yaml", manifest(service="db"))]))
        with pytest.raises(ManifestError) as exc:
            await applier.apply(parse([("sts.yaml", manifest(service="db", policy="Parallel"))]))
        assert exc.value.problems[0].startswith(
            "sts.yaml[0] spec: Forbidden: updates to statefulset spec for fields other than")
        assert (await store.get(STS, "default", "db")).spec.pod_management_policy == \
            "OrderedReady"
    run(go())
