"""The pure StatefulSet reconciler: ordered and parallel creation, scale-down order, rolling
updates with partition and maxUnavailable, OnDelete, claims, history, at most one pod per
ordinal, and a revert that unblocks a stuck rollout. A small world applies each plan as the
store and the agents would, and fails on a second object of one name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.controllers.statefulset import next_history, reconcile
from moorage.model import statefulsets as model
from moorage.model.deployments import HISTORY_ANNOTATION, read_history
from moorage.model.timestamps import rfc3339
from moorage.v1 import objects_pb2 as pb

NOW = 1_700_000_000.0


def make_sts(replicas: int = 3, image: str = "db:1", policy: str = "", strategy: str = "",
             partition: int | None = None, max_unavailable: int | None = None,
             claims: tuple[str, ...] = (), start: int = 0, when_scaled: str = "",
             storage: str = "1Gi") -> pb.StatefulSet:
    s = pb.StatefulSet(api_version="apps/v1", kind="StatefulSet")
    s.metadata.name, s.metadata.namespace, s.metadata.uid = "db", "default", "uid-db"
    s.metadata.generation = 1
    s.spec.replicas = replicas
    s.spec.service_name = "db"
    s.spec.selector.match_labels["app"] = "db"
    s.spec.template.metadata.labels["app"] = "db"
    s.spec.template.spec.containers.add(name="db", image=image)
    s.spec.pod_management_policy = policy
    s.spec.update_strategy.type = strategy
    if partition is not None:
        s.spec.update_strategy.rolling_update.partition = partition
    if max_unavailable is not None:
        s.spec.update_strategy.rolling_update.max_unavailable.int_val = max_unavailable
    s.spec.ordinals.start = start
    s.spec.persistent_volume_claim_retention_policy.when_scaled = when_scaled
    for name in claims:
        t = s.spec.volume_claim_templates.add()
        t.metadata.name = name
        t.metadata.labels["tier"] = "data"
        t.spec.access_modes.append("ReadWriteOnce")
        t.spec.resources.requests["storage"] = storage
    return s


class World:
    """The store and the agents, reduced to what the reconciler sees."""

    def __init__(self, sts: pb.StatefulSet):
        self.sts = sts
        self.pods: dict[str, pb.Pod] = {}
        self.claims: dict[str, pb.PersistentVolumeClaim] = {}
        self.created: list[str] = []
        self.rv = 1

    def step(self, now: float = NOW):
        plan = reconcile(self.sts, list(self.pods.values()), list(self.claims.values()), now)
        self.sts.status.CopyFrom(plan.status)
        if plan.annotations:
            self.sts.metadata.annotations.update(plan.annotations)
        for c in plan.create_claims:
            assert c.metadata.name not in self.claims, "a claim made twice"
            self._stamp(c)
            self.claims[c.metadata.name] = c
        for p in plan.create:
            assert p.metadata.name not in self.pods, f"a second {p.metadata.name}"
            for v in p.spec.volumes:
                if v.HasField("persistent_volume_claim"):
                    assert v.persistent_volume_claim.claim_name in self.claims
            self._stamp(p)
            self.pods[p.metadata.name] = p
            self.created.append(p.metadata.name)
        for p in plan.delete:
            cur = self.pods[p.metadata.name]
            if cur.status.phase in ("Failed", "Succeeded") or not cur.spec.node_name:
                del self.pods[p.metadata.name]
            else:
                cur.metadata.deletion_timestamp = rfc3339(now + 30)
        for c in plan.resize_claims:
            self.claims[c.metadata.name] = c
        for c in plan.delete_claims:
            del self.claims[c.metadata.name]
        return plan

    def _stamp(self, obj) -> None:
        self.rv += 1
        obj.metadata.resource_version = str(self.rv)

    def run(self, name: str, ready: bool = True) -> None:
        p = self.pods[name]
        p.spec.node_name = "n1"
        p.status.phase = "Running"
        del p.status.conditions[:]
        p.status.conditions.add(type="Ready", status="True" if ready else "False",
                                last_transition_time=rfc3339(NOW))

    def gone(self, name: str) -> None:
        """The agent confirmed a Terminating pod stopped."""
        assert self.pods[name].metadata.deletion_timestamp
        del self.pods[name]

    def settle(self, limit: int = 50) -> None:
        """Steps, running every new pod Ready and finishing every deletion, until quiet."""
        for _ in range(limit):
            plan = self.step()
            moved = False
            for p in self.pods.values():
                if not p.metadata.deletion_timestamp and p.status.phase != "Running":
                    self.run(p.metadata.name)
                    moved = True
            for name in [n for n, p in self.pods.items() if p.metadata.deletion_timestamp]:
                self.gone(name)
                moved = True
            if not plan.changes_objects and not moved:
                return
        raise AssertionError("never settled")

    def revisions(self) -> dict[str, str]:
        return {n: p.metadata.labels[model.REVISION_LABEL] for n, p in sorted(self.pods.items())}


def names(pods) -> list[str]:
    return [p.metadata.name for p in pods]


def test_ordered_ready_creates_each_after_its_predecessor_is_ready():
    w = World(make_sts(3))
    assert names(w.step().create) == ["db-0"]
    assert names(w.step().create) == []          # db-0 still Pending
    w.run("db-0", ready=False)
    assert names(w.step().create) == []          # Running but not Ready
    w.run("db-0")
    assert names(w.step().create) == ["db-1"]
    w.run("db-1")
    assert names(w.step().create) == ["db-2"]
    w.run("db-2")
    plan = w.step()
    assert not plan.changes_objects
    assert (plan.status.replicas, plan.status.ready_replicas,
            plan.status.available_replicas) == (3, 3, 3)


def test_parallel_creates_all_at_once():
    w = World(make_sts(3, policy=model.PARALLEL))
    assert names(w.step().create) == ["db-0", "db-1", "db-2"]


def test_pods_carry_names_labels_hostname_subdomain_and_owner():
    w = World(make_sts(2, start=5, policy=model.PARALLEL))
    pods = w.step().create
    assert names(pods) == ["db-5", "db-6"]
    p = pods[1]
    assert p.spec.hostname == "db-6" and p.spec.subdomain == "db"
    assert p.metadata.labels[model.POD_NAME_LABEL] == "db-6"
    assert p.metadata.labels[model.POD_INDEX_LABEL] == "6"
    assert p.metadata.labels["app"] == "db"
    assert p.metadata.labels[model.REVISION_LABEL] == \
        model.revision_name(w.sts, model.update_hash(w.sts))
    ref = p.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("StatefulSet", "db", "uid-db", True)


def test_claims_are_made_before_their_pod_and_named_per_template_and_pod():
    w = World(make_sts(2, claims=("data", "logs")))
    plan = w.step()
    assert names(plan.create_claims) == ["data-db-0", "logs-db-0"] and not plan.create
    claim = plan.create_claims[0]
    assert dict(claim.metadata.labels) == {"tier": "data", "app": "db"}
    assert claim.spec.resources.requests["storage"] == "1Gi"
    plan = w.step()
    assert not plan.create_claims and names(plan.create) == ["db-0"]
    vols = {v.name: v.persistent_volume_claim.claim_name for v in plan.create[0].spec.volumes}
    assert vols == {"data": "data-db-0", "logs": "logs-db-0"}


def test_scale_down_goes_from_the_highest_one_at_a_time_and_keeps_claims():
    w = World(make_sts(3, claims=("data",)))
    w.settle()
    w.sts.spec.replicas = 1
    assert names(w.step().delete) == ["db-2"]
    assert names(w.step().delete) == []          # db-2 still Terminating
    w.gone("db-2")
    w.run("db-0", ready=False)
    assert names(w.step().delete) == []          # not while another is unready
    w.run("db-0")
    assert names(w.step().delete) == ["db-1"]
    w.gone("db-1")
    assert not w.step().changes_objects
    assert sorted(w.claims) == ["data-db-0", "data-db-1", "data-db-2"]
    # Scaling back up finds the same claims: none is made again.
    w.sts.spec.replicas = 3
    plan = w.step()
    assert names(plan.create) == ["db-1"] and not plan.create_claims


def test_parallel_scale_down_removes_every_surplus_pod_at_once():
    w = World(make_sts(4, policy=model.PARALLEL))
    w.settle()
    w.sts.spec.replicas = 1
    assert names(w.step().delete) == ["db-3", "db-2", "db-1"]


def test_when_scaled_delete_removes_claims_once_their_pod_is_gone():
    w = World(make_sts(2, claims=("data",), when_scaled=model.DELETE))
    w.settle()
    w.sts.spec.replicas = 1
    plan = w.step()
    assert names(plan.delete) == ["db-1"] and not plan.delete_claims
    w.gone("db-1")
    assert names(w.step().delete_claims) == ["data-db-1"]
    assert sorted(w.claims) == ["data-db-0"]


def test_rolling_update_from_the_highest_ordinal_one_at_a_time():
    w = World(make_sts(3))
    w.settle()
    old = model.revision_name(w.sts, model.update_hash(w.sts))
    w.sts.spec.template.spec.containers[0].image = "db:2"
    new = model.revision_name(w.sts, model.update_hash(w.sts))
    assert names(w.step().delete) == ["db-2"]
    assert w.sts.status.current_revision == old and w.sts.status.update_revision == new
    assert names(w.step().delete) == []
    w.gone("db-2")
    created = w.step().create
    assert names(created) == ["db-2"] and created[0].spec.containers[0].image == "db:2"
    assert names(w.step().delete) == []          # db-2 not Ready yet
    w.run("db-2")
    assert names(w.step().delete) == ["db-1"]
    w.settle()
    assert set(w.revisions().values()) == {new}
    assert w.sts.status.current_revision == new
    assert (w.sts.status.current_replicas, w.sts.status.updated_replicas) == (3, 3)


def test_partition_keeps_lower_ordinals_and_recreates_them_at_the_current_revision():
    w = World(make_sts(3, partition=2))
    w.settle()
    old = model.revision_name(w.sts, model.update_hash(w.sts))
    w.sts.spec.template.spec.containers[0].image = "db:2"
    new = model.revision_name(w.sts, model.update_hash(w.sts))
    w.settle()
    assert w.revisions() == {"db-0": old, "db-1": old, "db-2": new}
    assert w.sts.status.current_revision == old
    # A lower pod that goes is made again from the current revision's template.
    w.pods["db-0"].status.phase = "Failed"
    w.settle()
    assert w.revisions()["db-0"] == old
    assert w.pods["db-0"].spec.containers[0].image == "db:1"


def test_max_unavailable_replaces_that_many_at_once():
    w = World(make_sts(4, max_unavailable=2))
    w.settle()
    w.sts.spec.template.spec.containers[0].image = "db:2"
    assert names(w.step().delete) == ["db-3", "db-2"]


def test_on_delete_waits_for_the_user_and_recreates_at_the_update_revision():
    w = World(make_sts(3, strategy=model.ON_DELETE))
    w.settle()
    w.sts.spec.template.spec.containers[0].image = "db:2"
    new = model.revision_name(w.sts, model.update_hash(w.sts))
    assert not w.step().delete
    w.pods["db-1"].metadata.deletion_timestamp = rfc3339(NOW)   # the user deletes it
    w.gone("db-1")
    w.settle()
    assert w.revisions()["db-1"] == new
    assert w.revisions()["db-0"] != new and w.revisions()["db-2"] != new


def test_failed_pods_are_recreated():
    w = World(make_sts(2))
    w.settle()
    w.pods["db-1"].status.phase = "Failed"
    plan = w.step()
    assert names(plan.delete) == ["db-1"]
    assert any(e[1] == "RecreatingFailedPod" for e in plan.events)
    assert names(w.step().create) == ["db-1"]


def test_a_name_held_by_another_object_is_never_planned():
    w = World(make_sts(2, policy=model.PARALLEL))
    stranger = pb.Pod()
    stranger.metadata.name, stranger.metadata.namespace = "db-0", "default"
    w.pods["db-0"] = stranger
    assert names(w.step().create) == ["db-1"]
    # A Terminating pod of the set holds its ordinal until it is gone.
    w2 = World(make_sts(1))
    w2.settle()
    w2.pods["db-0"].metadata.deletion_timestamp = rfc3339(NOW)
    w2.pods["db-0"].status.phase = "Running"
    assert not w2.step().create
    w2.gone("db-0")
    assert names(w2.step().create) == ["db-0"]


def test_an_old_claim_still_terminating_holds_back_its_pod():
    w = World(make_sts(1, claims=("data",)))
    old = pb.PersistentVolumeClaim()
    old.metadata.name, old.metadata.namespace = "data-db-0", "default"
    old.metadata.deletion_timestamp = rfc3339(NOW)
    w.claims["data-db-0"] = old
    assert not w.step().create


def test_reverting_the_template_unblocks_a_rollout_stuck_on_a_broken_pod():
    w = World(make_sts(3))
    w.settle()
    good = model.revision_name(w.sts, model.update_hash(w.sts))
    w.sts.spec.template.spec.containers[0].image = "db:broken"
    assert names(w.step().delete) == ["db-2"]
    w.gone("db-2")
    assert names(w.step().create) == ["db-2"]
    w.run("db-2", ready=False)                    # never gets Ready
    for _ in range(3):
        assert not w.step().changes_objects       # stuck, as in Kubernetes
    w.sts.spec.template.spec.containers[0].image = "db:1"
    assert model.revision_name(w.sts, model.update_hash(w.sts)) == good
    assert names(w.step().delete) == ["db-2"]     # the broken pod is replaced
    w.gone("db-2")
    created = w.step().create
    assert names(created) == ["db-2"] and created[0].spec.containers[0].image == "db:1"
    w.settle()
    assert set(w.revisions().values()) == {good}


def test_a_broken_pod_is_not_replaced_when_the_template_moves_to_an_untried_revision():
    w = World(make_sts(2))
    w.settle()
    w.sts.spec.template.spec.containers[0].image = "db:broken"
    w.step()
    w.gone("db-1")
    w.step()
    w.run("db-1", ready=False)
    w.sts.spec.template.spec.containers[0].image = "db:3"   # never Ready before
    assert not w.step().changes_objects


def test_history_numbers_revisions_and_a_revert_moves_to_a_new_number():
    w = World(make_sts(1))
    w.settle()
    w.sts.spec.template.spec.containers[0].image = "db:2"
    w.settle()
    w.sts.spec.template.spec.containers[0].image = "db:1"
    w.settle()
    history = read_history(w.sts)
    assert sorted(history) == [2, 3]
    assert w.sts.metadata.annotations[model.REVISION_ANNOTATION] == "3"
    assert all(e.get("ready") for e in history.values())


def test_history_keeps_the_limit():
    s = make_sts(1)
    s.spec.revision_history_limit = 2
    for i in range(6):
        s.spec.template.spec.containers[0].image = f"db:{i}"
        s.metadata.annotations.update(next_history(s, model.update_hash(s)))
    assert sorted(read_history(s)) == [4, 5, 6]
    assert HISTORY_ANNOTATION in s.metadata.annotations


def test_a_grown_claim_template_raises_existing_claims():
    w = World(make_sts(2, claims=("data",)))
    w.settle()
    w.sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] = "2Gi"
    plan = w.step()
    assert sorted(names(plan.resize_claims)) == ["data-db-0", "data-db-1"]
    assert {c.spec.resources.requests["storage"] for c in w.claims.values()} == {"2Gi"}
    assert not w.step().resize_claims


def test_min_ready_seconds_counts_availability_from_the_ready_transition():
    s = make_sts(1)
    s.spec.min_ready_seconds = 30
    w = World(s)
    w.settle()
    assert reconcile(w.sts, list(w.pods.values()), [], NOW + 10).status.available_replicas == 0
    assert reconcile(w.sts, list(w.pods.values()), [], NOW + 31).status.available_replicas == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["step", "ready", "unready", "finish", "fail",
                                           "scale", "image", "force"]),
                          st.integers(0, 4)), max_size=40),
       st.sampled_from([model.ORDERED_READY, model.PARALLEL]))
def test_never_two_pods_of_one_ordinal(events, policy):
    """Whatever happens, World.step fails on a second object of one name."""
    w = World(make_sts(3, policy=policy, claims=("data",)))
    for what, n in events:
        name = f"db-{n}"
        if what == "step":
            w.step()
        elif what in ("ready", "unready") and name in w.pods:
            w.run(name, ready=what == "ready")
        elif what == "finish" and name in w.pods and w.pods[name].metadata.deletion_timestamp:
            w.gone(name)
        elif what == "fail" and name in w.pods:
            w.pods[name].status.phase = "Failed"
        elif what == "force" and name in w.pods:
            del w.pods[name]
        elif what == "scale":
            w.sts.spec.replicas = n
        elif what == "image":
            w.sts.spec.template.spec.containers[0].image = f"db:{n}"
        pods_by_ordinal = [p for p in w.pods.values() if not p.metadata.deletion_timestamp]
        assert len(pods_by_ordinal) <= max(5, w.sts.spec.replicas)


@pytest.mark.parametrize("pod, want", [("db-0", 0), ("db-12", 12), ("db-01", None),
                                       ("db-x", None), ("dbx-1", None), ("db-", None)])
def test_ordinal_of(pod, want):
    assert model.ordinal_of("db", pod) == want
