"""Events against a real etcd: repeats of one event become one Event with a count."""

from __future__ import annotations

from controlplane import events as ev
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb
from tests.conftest import run

EVENT = kinds.BY_NAME["Event"]


def test_repeats_aggregate_into_one_event_with_a_count(store_factory):
    now = [1_800_000_000.0]

    async def go():
        store = await store_factory()
        recorder = ev.EventRecorder(store, "agent", clock=lambda: now[0])
        pod = pb.Pod()
        pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = "web-1", "default", "u-1"
        try:
            for _ in range(5):
                await recorder.record(pod, ev.WARNING, "Unhealthy", "Liveness probe failed")
                now[0] += 10
            await recorder.record(pod, ev.WARNING, "Unhealthy", "Readiness probe failed")
            stored, _ = await store.list(EVENT, "default")
            by_message = {e.message: e for e in stored}
            assert len(stored) == 2
            live = by_message["Liveness probe failed"]
            assert live.count == 5
            assert live.first_timestamp == ev.rfc3339(1_800_000_000.0)
            assert live.last_timestamp == ev.rfc3339(1_800_000_040.0)
            assert by_message["Readiness probe failed"].count == 1
            # After the aggregation window a repeat starts a new Event.
            now[0] += ev.AGGREGATE_SECONDS
            await recorder.record(pod, ev.WARNING, "Unhealthy", "Liveness probe failed")
            stored, _ = await store.list(EVENT, "default")
            assert sorted(e.count for e in stored if e.message == "Liveness probe failed") \
                == [1, 5]
        finally:
            await store.client.delete_prefix(store.prefix.encode())
            await store.client.close()
    run(go())
