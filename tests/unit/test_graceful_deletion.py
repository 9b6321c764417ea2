"""Graceful deletion, pure: what deleting a pod writes, and how the Deployment reconciler counts
Terminating pods (not replicas, not available, but against maxSurge; Recreate waits)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.controllers.deployment import reconcile
from moorage.model.deployments import TEMPLATE_HASH_LABEL, template_hash
from moorage.model.pods import graceful_delete, is_terminating, spec_grace, stop_grace
from moorage.model.timestamps import parse_rfc3339, rfc3339
from moorage.v1 import objects_pb2 as pb
from tests.builders import pb_pod
from tests.unit.test_deployment_controller import NOW, make_deployment, make_pod


def pod(node: str = "n1", phase: str = "Running", grace: int | None = None) -> pb.Pod:
    return pb_pod("web", node=node, phase=phase, grace=grace)


@pytest.mark.parametrize("p, grace, want", [
    pytest.param(pod(), None, 30, id="default-30s"),
    pytest.param(pod(grace=5), None, 5, id="spec-grace"),
    pytest.param(pod(grace=5), 2, 2, id="override"),
    pytest.param(pod(grace=5), 0, None, id="force"),
    pytest.param(pod(grace=0), None, None, id="spec-zero"),
    pytest.param(pod(node=""), None, None, id="unscheduled"),
    pytest.param(pod(phase="Succeeded"), None, None, id="finished"),
    pytest.param(pod(phase="Failed"), 10, None, id="failed"),
])
def test_graceful_delete(p, grace, want):
    marked = graceful_delete(p, grace, NOW)
    if want is None:
        assert marked is None
        return
    assert marked is not p and not is_terminating(p)       # the input is left alone
    assert is_terminating(marked)
    assert marked.metadata.deletion_grace_period_seconds == want
    assert parse_rfc3339(marked.metadata.deletion_timestamp) == NOW + want
    assert stop_grace(marked) == want and spec_grace(marked) == spec_grace(p)


def test_a_second_delete_only_ever_shortens():
    first = graceful_delete(pod(grace=30), None, NOW)
    assert graceful_delete(first, 60, NOW + 1) is first          # later deadline: unchanged
    shorter = graceful_delete(first, 5, NOW + 1)
    assert parse_rfc3339(shorter.metadata.deletion_timestamp) == NOW + 6
    assert shorter.metadata.deletion_grace_period_seconds == 5
    assert graceful_delete(first, 0, NOW + 1) is None            # force: removed at once


def test_timestamps_round_trip():
    assert rfc3339(NOW) == "2023-11-14T22:13:20Z"
    assert parse_rfc3339(rfc3339(NOW)) == NOW
    assert parse_rfc3339("") is None and parse_rfc3339("yesterday") is None


def terminating(p: pb.Pod) -> pb.Pod:
    return graceful_delete(p, None, NOW)


def test_terminating_pods_are_not_replicas_and_are_never_deleted_again():
    d = make_deployment(replicas=2)
    pods = [make_pod(d, "a"), make_pod(d, "b"), terminating(make_pod(d, "c"))]
    plan = reconcile(d, pods, NOW, iter(["x"]))
    assert not plan.create and not plan.delete
    assert plan.status.replicas == 2 and plan.status.terminating_replicas == 1
    # Scaling up does not wait for them (as a ReplicaSet does not).
    d.spec.replicas = 3
    assert len(reconcile(d, pods, NOW, iter(["x"])).create) == 1


def test_rollout_counts_terminating_pods_against_surge():
    d = make_deployment(replicas=2, surge=1, unavailable=0)
    old_hash = template_hash(d.spec.template)
    d2 = make_deployment(replicas=2, image="nginx:2", surge=1, unavailable=0)
    new_hash = template_hash(d2.spec.template)
    new = make_pod(d2, "n1")
    old = [make_pod(d, "o1", hash_=old_hash), terminating(make_pod(d, "o2", hash_=old_hash))]
    # 1 new + 1 old + 1 terminating = replicas + surge: no room to create the second new pod.
    plan = reconcile(d2, [new, *old], NOW, iter(["x", "y"]))
    assert not plan.create
    # Once the terminating pod is gone, the next new one comes.
    plan = reconcile(d2, [new, old[0]], NOW, iter(["x", "y"]))
    assert len(plan.create) == 1 and plan.create[0].metadata.labels[TEMPLATE_HASH_LABEL] == \
        new_hash


def test_recreate_waits_for_old_pods_to_be_gone():
    d = make_deployment(replicas=2, strategy="Recreate")
    old_hash = template_hash(d.spec.template)
    d2 = make_deployment(replicas=2, image="nginx:2", strategy="Recreate")
    going = [terminating(make_pod(d, "o1", hash_=old_hash))]
    assert not reconcile(d2, going, NOW, iter(["x", "y"])).create
    assert len(reconcile(d2, [], NOW, iter(["x", "y"])).create) == 2


@settings(max_examples=200, deadline=None)
@given(replicas=st.integers(1, 6), surge=st.integers(0, 3), unavailable=st.integers(0, 3),
       n_old=st.integers(0, 6), n_term=st.integers(0, 4), n_new=st.integers(0, 6))
def test_a_rollout_step_never_exceeds_replicas_plus_surge(replicas, surge, unavailable, n_old,
                                                         n_term, n_new):
    d = make_deployment(replicas=replicas, surge=surge, unavailable=unavailable)
    old_hash = "oldhash"
    pods = [make_pod(d, f"o{i}", hash_=old_hash) for i in range(n_old)]
    pods += [terminating(make_pod(d, f"t{i}", hash_=old_hash)) for i in range(n_term)]
    pods += [make_pod(d, f"n{i}") for i in range(n_new)]
    before = n_old + n_term + n_new
    plan = reconcile(d, pods, NOW, (f"s{i}" for i in range(100)))
    if n_old:
        effective_surge = surge if surge or unavailable else 0
        limit = max(before, replicas + effective_surge)
        assert before + len(plan.create) <= limit
