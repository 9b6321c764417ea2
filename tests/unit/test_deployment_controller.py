"""The pure Deployment reconciler: scaling, rolling and recreate updates, status and history."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.controllers.deployment import (
    deletion_order,
    is_available,
    reconcile,
    surge_and_unavailable,
)
from moorage.model.deployments import (
    HISTORY_ANNOTATION,
    REVISION_ANNOTATION,
    TEMPLATE_HASH_LABEL,
    read_history,
    template_hash,
    template_of,
)
from moorage.v1 import objects_pb2 as pb

NOW = 1_700_000_000.0


def make_deployment(replicas: int = 3, image: str = "nginx:1", surge=None, unavailable=None,
                    strategy: str = "", annotations=None) -> pb.Deployment:
    d = pb.Deployment(api_version="apps/v1", kind="Deployment")
    d.metadata.name, d.metadata.namespace, d.metadata.uid = "web", "default", "uid-web"
    d.metadata.generation = 1
    d.metadata.annotations.update(annotations or {})
    d.spec.replicas = replicas
    d.spec.template.metadata.labels["app"] = "web"
    d.spec.template.spec.containers.add(name="web", image=image)
    d.spec.strategy.type = strategy
    for field, value in (("max_surge", surge), ("max_unavailable", unavailable)):
        if isinstance(value, int):
            getattr(d.spec.strategy.rolling_update, field).int_val = value
        elif value is not None:
            getattr(d.spec.strategy.rolling_update, field).str_val = value
    return d


def make_pod(d: pb.Deployment, name: str, ready: bool = True, node: str = "n1",
             phase: str | None = None, hash_: str | None = None, created: str = "") -> pb.Pod:
    p = pb.Pod(api_version="v1", kind="Pod")
    p.metadata.name, p.metadata.namespace = name, "default"
    p.metadata.creation_timestamp = created
    p.metadata.labels[TEMPLATE_HASH_LABEL] = hash_ or template_hash(d.spec.template)
    p.metadata.owner_references.add(kind="Deployment", name="web", uid="uid-web", controller=True)
    p.spec.CopyFrom(d.spec.template.spec)
    p.spec.node_name = node
    p.status.phase = phase or ("Running" if ready else "Pending")
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    return p


def suffixes():
    return (f"s{i:04d}" for i in itertools.count())


def stable(d: pb.Deployment, n: int, hash_: str | None = None) -> list[pb.Pod]:
    return [make_pod(d, f"old-{i}", hash_=hash_) for i in range(n)]


@pytest.mark.parametrize("replicas, have, creates, deletes", [
    pytest.param(3, 0, 3, 0, id="from-nothing"),
    pytest.param(6, 3, 3, 0, id="scale-up-3-to-6"),
    pytest.param(1, 6, 0, 5, id="scale-down-6-to-1"),
    pytest.param(3, 3, 0, 0, id="steady"),
    pytest.param(0, 2, 0, 2, id="to-zero"),
])
def test_scaling(replicas, have, creates, deletes):
    d = make_deployment(replicas)
    plan = reconcile(d, stable(d, have), NOW, suffixes())
    assert (len(plan.create), len(plan.delete)) == (creates, deletes)
    assert plan.status.replicas == replicas


@pytest.mark.parametrize("replicas, surge, unavailable, want", [
    pytest.param(4, None, None, (1, 1), id="defaults-25%-of-4"),
    # surge 25% of 10 = 2.5 -> up to 3; unavailable 25% of 10 = 2.5 -> down to 2
    pytest.param(10, None, None, (3, 2), id="defaults-round-surge-up-unavailable-down"),
    pytest.param(3, 1, 1, (1, 1), id="ints"),
    # both resolve to 0 -> unavailable 1, or nothing could ever move
    pytest.param(3, 0, "10%", (0, 1), id="both-zero"),
    pytest.param(3, "100%", 0, (3, 0), id="blue-green"),
])
def test_surge_and_unavailable(replicas, surge, unavailable, want):
    assert surge_and_unavailable(make_deployment(replicas, surge=surge,
                                                 unavailable=unavailable)) == want


@pytest.mark.parametrize("surge, unavailable, creates, deletes", [
    # 3 old ready: total may reach 3+1 = 4 -> 1 create; available 3 may drop to 3-1 = 2 -> 1 delete
    pytest.param(1, 1, 1, 1, id="surge1-unavail1"),
    # no surge: nothing created until one old pod goes; 3-1 = 2 available suffices -> 1 delete
    pytest.param(0, 1, 0, 1, id="surge0-unavail1"),
    # no unavailability: create 1 (3+1), delete none (3 available must stay 3)
    pytest.param(1, 0, 1, 0, id="surge1-unavail0"),
    # 3+3 total allowed -> 3 creates; 3-0 available -> 0 deletes
    pytest.param("100%", 0, 3, 0, id="blue-green"),
])
def test_rolling_update_first_step(surge, unavailable, creates, deletes):
    before = make_deployment(3)
    old = stable(before, 3)
    d = make_deployment(3, image="nginx:2", surge=surge, unavailable=unavailable)
    plan = reconcile(d, old, NOW, suffixes())
    assert (len(plan.create), len(plan.delete)) == (creates, deletes)
    assert all(p.metadata.labels[TEMPLATE_HASH_LABEL] == template_hash(d.spec.template)
               for p in plan.create)


def test_rolling_update_deletes_unready_old_pods_first():
    before = make_deployment(3)
    old = stable(before, 2) + [make_pod(before, "old-sick", ready=False)]
    d = make_deployment(3, image="nginx:2", surge=0, unavailable=1)
    plan = reconcile(d, old, NOW, suffixes())
    # budget 3 - (3-1) = 1, spent on the sick pod, which costs no availability
    assert [p.metadata.name for p in plan.delete] == ["old-sick"]


def test_recreate_deletes_all_old_then_creates():
    before = make_deployment(3)
    d = make_deployment(3, image="nginx:2", strategy="Recreate")
    first = reconcile(d, stable(before, 3), NOW, suffixes())
    assert (len(first.create), len(first.delete)) == (0, 3)
    second = reconcile(d, [], NOW, suffixes())
    assert len(second.create) == 3


def test_failed_pods_are_replaced():
    d = make_deployment(2)
    pods = [make_pod(d, "a"), make_pod(d, "b", phase="Failed")]
    plan = reconcile(d, pods, NOW, suffixes())
    assert [p.metadata.name for p in plan.delete] == ["b"] and len(plan.create) == 1


def test_scale_down_prefers_not_ready_then_unscheduled_then_newest():
    d = make_deployment(1)
    pods = [make_pod(d, "old-ready", created="2024-01-01T00:00:00Z"),
            make_pod(d, "new-ready", created="2024-01-02T00:00:00Z"),
            make_pod(d, "unscheduled", ready=False, node=""),
            make_pod(d, "not-ready", ready=False)]
    assert [p.metadata.name for p in deletion_order(pods)] == [
        "unscheduled", "not-ready", "new-ready", "old-ready"]
    plan = reconcile(d, pods, NOW, suffixes())
    assert {p.metadata.name for p in plan.delete} == {"unscheduled", "not-ready", "new-ready"}


def test_new_pods_are_owned_labelled_and_named():
    d = make_deployment(1)
    pod = reconcile(d, [], NOW, iter(["abcde"])).create[0]
    h = template_hash(d.spec.template)
    assert pod.metadata.name == f"web-{h}-abcde"
    assert pod.metadata.labels == {"app": "web", TEMPLATE_HASH_LABEL: h}
    ref = pod.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("Deployment", "web", "uid-web", True)
    assert pod.status.phase == "Pending" and pod.spec.containers[0].image == "nginx:1"


def test_name_collisions_take_the_next_suffix():
    d = make_deployment(2)
    h = template_hash(d.spec.template)
    plan = reconcile(d, [make_pod(d, f"web-{h}-aaaaa")], NOW, iter(["aaaaa", "bbbbb"]))
    assert [p.metadata.name for p in plan.create] == [f"web-{h}-bbbbb"]


def test_template_hash_is_stable_and_sensitive():
    a, b = make_deployment(), make_deployment(replicas=7)
    assert template_hash(a.spec.template) == template_hash(b.spec.template)
    assert template_hash(a.spec.template) != template_hash(make_deployment(image="x").spec.template)
    assert len(template_hash(a.spec.template)) == 10


def test_status_counts_and_conditions():
    d = make_deployment(3)
    pods = [make_pod(d, "a"), make_pod(d, "b"), make_pod(d, "c", ready=False)]
    plan = reconcile(d, pods, NOW, suffixes())
    s = plan.status
    assert (s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas,
            s.unavailable_replicas, s.observed_generation) == (3, 3, 2, 2, 1, 1)
    conds = {c.type: (c.status, c.reason) for c in s.conditions}
    # 2 available >= 3 - 0 (25% of 3 rounds down to 0)? no -> unavailable
    assert conds["Available"] == ("False", "MinimumReplicasUnavailable")
    assert conds["Progressing"] == ("True", "PodsUpdating")
    done = reconcile(d, [make_pod(d, n) for n in "abc"], NOW, suffixes()).status
    assert {c.type: c.reason for c in done.conditions}["Progressing"] == "NewPodsAvailable"


def test_running_pod_without_probe_or_condition_is_available():
    d = make_deployment(1)
    p = make_pod(d, "a")
    del p.status.conditions[:]
    assert is_available(p)
    p.spec.containers[0].readiness_probe.exec.command.append("true")
    assert not is_available(p)


def test_revision_history_grows_and_undo_reuses_the_old_template():
    d1 = make_deployment(image="nginx:1")
    ann1 = reconcile(d1, [], NOW, suffixes()).annotations
    assert ann1[REVISION_ANNOTATION] == "1"
    d2 = make_deployment(image="nginx:2", annotations=ann1)
    ann2 = reconcile(d2, [], NOW, suffixes()).annotations
    assert ann2[REVISION_ANNOTATION] == "2"
    assert reconcile(make_deployment(image="nginx:2", annotations=ann2), [], NOW,
                     suffixes()).annotations is None
    history = read_history(make_deployment(annotations=ann2))
    assert sorted(history) == [1, 2]
    assert template_of(history[1]).spec.containers[0].image == "nginx:1"
    # Undo: revision 1's template comes back as revision 3 and leaves slot 1.
    undone = make_deployment(annotations=ann2)
    undone.spec.template.CopyFrom(template_of(history[1]))
    ann3 = reconcile(undone, [], NOW, suffixes()).annotations
    assert ann3[REVISION_ANNOTATION] == "3"
    assert sorted(json.loads(ann3[HISTORY_ANNOTATION])) == ["2", "3"]


def test_history_keeps_revision_history_limit_old_entries():
    ann = {}
    for i in range(5):
        d = make_deployment(image=f"nginx:{i}", annotations=ann)
        d.spec.revision_history_limit = 2
        ann = reconcile(d, [], NOW, suffixes()).annotations
    assert sorted(json.loads(ann[HISTORY_ANNOTATION])) == ["3", "4", "5"]


@settings(max_examples=200, deadline=None)
@given(replicas=st.integers(1, 8), surge=st.integers(0, 3), unavailable=st.integers(0, 3),
       strategy=st.sampled_from(["", "RollingUpdate"]),
       readiness=st.lists(st.booleans(), max_size=20))
def test_rolling_update_respects_surge_and_availability(replicas, surge, unavailable, strategy,
                                                        readiness):
    before = make_deployment(replicas)
    d = make_deployment(replicas, image="nginx:2", surge=surge, unavailable=unavailable,
                        strategy=strategy)
    max_surge, max_unavailable = surge_and_unavailable(d)
    pods = stable(before, replicas)
    names = suffixes()
    coin = iter(readiness)
    # Each step draws a coin per unready pod, so 20 coins run out well before 60 steps.
    for _ in range(60):
        plan = reconcile(d, pods, NOW, names)
        gone = {p.metadata.name for p in plan.delete}
        pods = [p for p in pods if p.metadata.name not in gone] + list(plan.create)
        assert len(pods) <= replicas + max_surge
        assert sum(1 for p in pods if is_available(p)) >= replicas - max_unavailable
        # The fake kubelet: some new pods become ready between steps.
        for p in pods:
            if not is_available(p) and next(coin, True):
                p.status.phase = "Running"
                del p.status.conditions[:]
                p.status.conditions.add(type="Ready", status="True")
    new_hash = template_hash(d.spec.template)
    assert len(pods) == replicas
    assert all(p.metadata.labels[TEMPLATE_HASH_LABEL] == new_hash for p in pods)


def _rolling(generation=2, observed=2, replicas=3, updated=3, total=3, available=3):
    d = make_deployment(replicas)
    d.metadata.generation = generation
    s = d.status
    s.observed_generation, s.updated_replicas = observed, updated
    s.replicas, s.available_replicas = total, available
    return d


@pytest.mark.parametrize("d, want", [
    pytest.param(_rolling(generation=3), "Waiting for deployment spec update to be observed...",
                 id="not-observed"),
    pytest.param(_rolling(updated=1, total=4),
                 'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have '
                 "been updated...", id="updating"),
    # 4 pods, 3 updated -> 4 - 3 = 1 old one left
    pytest.param(_rolling(total=4), 'Waiting for deployment "web" rollout to finish: 1 old '
                 "replicas are pending termination...", id="old-left"),
    pytest.param(_rolling(available=1), 'Waiting for deployment "web" rollout to finish: 1 of '
                 "3 updated replicas are available...", id="becoming-available"),
    pytest.param(_rolling(), 'deployment "web" successfully rolled out', id="done"),
])
def test_rollout_status_message(d, want):
    from moorage.cli.rollout import rollout_message

    assert rollout_message(d)[0] == want
