"""Leader election on a real etcd: one leader, quick hand-over, stale leaders' writes refused."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import signal
import tempfile
import time
import urllib.request

import pytest

from controlplane.ha.leader import Election, run_while_leader
from controlplane.store import NotFound, NotLeader, Op, Store
from moorage.model import kinds
from moorage.v1 import api_pb2
from tests.conftest import (
    TEST_PREFIX,
    ControlPlane,
    etcd_client,
    run,
    start_controlplane,
    stop_process,
    unique,
)
from tests.integration.test_scheduler_shell import node, pod
from tests.wait import wait_until as _wait

POD = kinds.BY_NAME["Pod"]
TTL = 2


async def stores(make, n: int) -> list[Store]:
    return [await make() for _ in range(n)]


async def close(*items) -> None:
    for item in items:
        if isinstance(item, Election):
            await item.close()
        else:
            await item.client.close()


async def first_leader(elections: list[Election], timeout: float = 5) -> Election:
    tasks = {asyncio.ensure_future(e.campaign()): e for e in elections}
    done, pending = await asyncio.wait(tasks, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
    assert done, "nobody became the leader"
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return tasks[next(iter(done))]


async def wait_leading(election: Election, timeout: float) -> float:
    """Campaigns and returns how long it took to lead."""
    start = time.monotonic()
    await asyncio.wait_for(election.campaign(), timeout)
    return time.monotonic() - start


def test_one_leader_and_resigning_hands_over_at_once(store_factory):
    async def go():
        s1, s2 = await stores(store_factory, 2)
        a, b = Election(s1, "replica-a", ttl=TTL), Election(s2, "replica-b", ttl=TTL)
        try:
            leader = await first_leader([a, b])
            other = b if leader is a else a
            # The loser keeps campaigning but must not win while the leader is alive.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(other.campaign(), TTL * 1.5)
            assert leader.is_leader and not other.is_leader
            assert await other.leader() == leader.name
            campaign = asyncio.ensure_future(other.campaign())
            await asyncio.sleep(0.2)
            start = time.monotonic()
            await leader.resign()
            await asyncio.wait_for(campaign, TTL)
            assert time.monotonic() - start < 1.0  # the watch saw the delete: no TTL wait
            assert other.is_leader and not leader.is_leader
            assert await leader.leader() == other.name
        finally:
            await close(a, b, s1, s2)

    run(go())


def test_a_crashed_leader_is_replaced_after_its_ttl(store_factory):
    async def go():
        s1, s2 = await stores(store_factory, 2)
        a, b = Election(s1, "replica-a", ttl=TTL), Election(s2, "replica-b", ttl=TTL)
        try:
            await a.campaign()
            # A crash: the keepalives stop, the key stays until the lease runs out.
            a._keepalive.cancel()
            took = await wait_leading(b, TTL * 3)
            assert took >= TTL / 2, f"took over after {took:.2f}s, before the lease expired"
            assert await b.leader() == "replica-b"
        finally:
            await close(b, s1, s2)

    run(go())


def test_a_leader_whose_lease_is_revoked_knows_it_lost(store_factory):
    async def go():
        s1, s2 = await stores(store_factory, 2)
        a, b = Election(s1, "replica-a", ttl=TTL), Election(s2, "replica-b", ttl=TTL)
        reasons = []
        a.on_lost.append(reasons.append)
        try:
            await a.campaign()
            await s2.client.revoke_lease(a.lease_id)
            await wait_leading(b, TTL)
            await asyncio.wait_for(a.lost.wait(), TTL)
            assert not a.is_leader and reasons
            with pytest.raises(NotLeader):
                a.leader_guard()
        finally:
            await close(a, b, s1, s2)

    run(go())


def test_a_write_guarded_by_a_stale_leadership_is_refused_and_changes_nothing(store_factory):
    async def go():
        s1, s2 = await stores(store_factory, 2)
        a, b = Election(s1, "replica-a", ttl=TTL), Election(s2, "replica-b", ttl=TTL)
        try:
            await a.campaign()
            guarded = s1.with_guard(*a.leader_guard())
            assert s1.guard is None  # the plain store stays unguarded
            first = await guarded.create(pod("first"))
            await a.resign()
            await wait_leading(b, TTL)
            before = (await s2.get(POD, "default", "first")).metadata.resource_version
            with pytest.raises(NotLeader):
                await guarded.create(pod("second"))
            changed = pod("first")
            changed.metadata.labels["stale"] = "yes"
            changed.metadata.resource_version = first.metadata.resource_version
            with pytest.raises(NotLeader):
                await guarded.update(changed)
            # Even when the other compares fail too, the lost leadership is what is reported.
            with pytest.raises(NotLeader):
                await guarded.commit([Op(guarded.key_of(changed), changed, 1)])
            with pytest.raises(NotFound):
                await s2.get(POD, "default", "second")
            after = await s2.get(POD, "default", "first")
            assert after.metadata.resource_version == before
            assert "stale" not in after.metadata.labels
            # The new leader's guard works, concurrently (group commit keeps each guard).
            fresh = s2.with_guard(*b.leader_guard())
            await asyncio.gather(*(fresh.create(pod(f"p{i}")) for i in range(20)))
            pods, _ = await s2.list(POD, "default")
            assert len(pods) == 21
        finally:
            await close(a, b, s1, s2)

    run(go())


def test_run_while_leader_stops_its_tasks_on_loss_and_campaigns_again(store_factory):
    async def go():
        s1, s2 = await stores(store_factory, 2)
        a = Election(s1, "replica-a", ttl=TTL)
        terms: list[Store] = []
        cancelled = asyncio.Event()

        async def work(store: Store) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        def factory(store: Store):
            terms.append(store)
            return [work(store)]

        runner = asyncio.ensure_future(run_while_leader(a, factory))
        try:
            await asyncio.wait_for(a.elected.wait(), TTL)
            await asyncio.sleep(0.1)
            assert len(terms) == 1 and terms[0].guard == a.leader_guard()
            await s2.client.revoke_lease(a.lease_id)
            await asyncio.wait_for(cancelled.wait(), TTL * 2)
            # Campaigning again (nobody else is), it wins the next term with a new guard.
            for _ in range(100):
                if len(terms) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(terms) == 2 and terms[1].guard != terms[0].guard
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            assert not a.is_leader
            assert await a.leader() is None  # cancelling resigned: the key is gone
            await close(a, s1, s2)

    run(go())


# ---- two real control planes ----

def _metric_leader(cp) -> str | None:
    text = urllib.request.urlopen(f"http://{cp.metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("moorage_leader{") and line.endswith(" 1.0"):
            return line.split('replica="', 1)[1].split('"', 1)[0]
    return None




def _apply_pods(cp, names) -> None:
    docs = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {n}, namespace: default}}\n"
        "spec:\n  containers:\n  - name: c\n    image: busybox\n"
        "    resources: {requests: {cpu: 10m, memory: 16Mi}}\n" for n in names)
    cp.stub().Apply(api_pb2.ApplyRequest(
        manifests=[api_pb2.Manifest(source="pods.yaml", content=docs)]))


def _pods(cp) -> dict[str, str]:
    resp = cp.stub().List(api_pb2.ListRequest(kind="Pod", namespace="default"))
    return {o.pod.metadata.name: o.pod.spec.node_name for o in resp.items}


def test_killing_the_leader_process_hands_over_and_loses_nothing(etcd_endpoint):
    prefix = "/" + unique("ha-")
    dirs = [tempfile.mkdtemp(prefix=TEST_PREFIX + "ha-") for _ in range(2)]
    procs = []
    try:
        async def add_node():
            client = etcd_client(etcd_endpoint)
            await client.connect()
            try:
                await Store(client, prefix=prefix).create(node("n1", cpu="8"))
            finally:
                await client.close()
        run(add_node())
        cps = []
        for i, d in enumerate(dirs):
            cp = start_controlplane(etcd_endpoint, d, prefix=prefix, extra_args=(
                "--no-node-lifecycle", "--leader-lease-ttl", str(TTL),
                "--replica-name", f"replica-{i}"))
            procs.append(cp.proc)
            cps.append(cp)

        def leaders():
            found = [n for n in map(_metric_leader, cps) if n]
            return found if found else None
        # One cluster CA for both replicas: each trusts the other's admin credential.
        ca_files = [pathlib.Path(d, "pki", "ca.crt").read_bytes() for d in dirs]
        assert ca_files[0] == ca_files[1]
        cross = ControlPlane(cps[1].address, "", prefix, etcd_endpoint, None, dirs[0])
        assert cross.stub().Version(api_pb2.VersionRequest()).version

        found = _wait(leaders, 10, "a leader")
        assert len(found) == 1, found
        leader = cps[int(found[0].rsplit("-", 1)[1])]
        survivor = cps[1 - cps.index(leader)]
        assert _metric_leader(survivor) is None

        # Applied through the follower's API, scheduled by the leader.
        _apply_pods(survivor, [f"before-{i}" for i in range(5)])
        _wait(lambda: all(_pods(survivor).values()), 15, "pods bound before the kill")

        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        _apply_pods(survivor, [f"after-{i}" for i in range(5)])
        _wait(lambda: _metric_leader(survivor), TTL * 4, "the survivor to lead")
        pods = _wait(lambda: (p := _pods(survivor)) and len(p) == 10 and all(p.values()) and p,
                     20, "pods applied after the kill to be bound")
        assert set(pods) == {f"before-{i}" for i in range(5)} | {f"after-{i}" for i in range(5)}
        assert set(pods.values()) == {"n1"}

        # A graceful stop resigns: the key goes at once, not after the TTL.
        assert stop_process(survivor.proc) == 0
        assert not [k for k, _, _ in survivor.snapshot() if k == f"{prefix}/leader".encode()]
    finally:
        for proc in procs:
            stop_process(proc)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
