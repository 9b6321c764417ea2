"""Table tests for each scheduler scorer, with the arithmetic beside every case."""

from __future__ import annotations

import pytest

from controlplane.scheduler import (
    BINPACK,
    NodeSelectorTerm,
    PreferredTerm,
    Requirement,
    ScoreContext,
    Weights,
    least_allocated,
    most_allocated,
    prefer_node_affinity,
    prefer_spread,
    prefer_zone_spread,
    score_node,
)
from tests.builders import make_node, make_pod

ZONE_KEY = "topology.kubernetes.io/zone"
CTX = ScoreContext()


@pytest.mark.parametrize(
    "pod, node, want",
    [
        # cpu free (4000-0-1000)/4000=0.75, mem free (8Gi-0-2Gi)/8Gi=0.75 -> avg 0.75
        pytest.param(make_pod(cpu="1", mem="2Gi"), make_node(), 0.75, id="empty-node"),
        # cpu free (4000-1000-500)/4000=0.625, mem free (8Gi-4Gi-1Gi)/8Gi=0.375 -> avg 0.5
        pytest.param(
            make_pod(cpu="500m", mem="1Gi"),
            make_node(bound=[make_pod(cpu="1", mem="4Gi")]),
            0.5,
            id="half-used",
        ),
        # cpu free (4000-0-4000)/4000=0, mem free (8Gi-0-8Gi)/8Gi=0 -> 0
        pytest.param(make_pod(cpu="4", mem="8Gi"), make_node(), 0.0, id="fills-node"),
        # cpu free (1000-2000-0)/1000=-1 -> clamped 0, mem free (1Gi-0-0)/1Gi=1 -> avg 0.5
        pytest.param(
            make_pod(cpu=0, mem=0),
            make_node(cpu="1", mem="1Gi", bound=[make_pod(cpu="2", mem=0)]),
            0.5,
            id="overcommitted-cpu-clamped",
        ),
        # cpu allocatable 0 -> nothing free (0), mem free (1Gi-0-0)/1Gi=1 -> avg 0.5
        pytest.param(make_pod(cpu=0, mem=0), make_node(cpu=0, mem="1Gi"), 0.5, id="no-cpu"),
    ],
)
def test_least_allocated(pod, node, want):
    assert least_allocated(pod, node, CTX) == pytest.approx(want)


@pytest.mark.parametrize(
    "pod, node, want",
    [
        # used (0+1000)/4000=0.25 cpu, (0+2Gi)/8Gi=0.25 mem -> 1 - 0.75 = 0.25
        pytest.param(make_pod(cpu="1", mem="2Gi"), make_node(), 0.25, id="empty-node"),
        # used (1000+500)/4000=0.375 cpu, (4Gi+1Gi)/8Gi=0.625 mem -> avg 0.5
        pytest.param(
            make_pod(cpu="500m", mem="1Gi"),
            make_node(bound=[make_pod(cpu="1", mem="4Gi")]),
            0.5,
            id="half-used",
        ),
        # used 4000/4000=1, 8Gi/8Gi=1 -> 1
        pytest.param(make_pod(cpu="4", mem="8Gi"), make_node(), 1.0, id="fills-node"),
    ],
)
def test_most_allocated(pod, node, want):
    assert most_allocated(pod, node, ScoreContext(BINPACK)) == pytest.approx(want)


def spread_pods(n, key="default/web"):
    return [make_pod(f"web-{i}", spread_key=key) for i in range(n)]


@pytest.mark.parametrize(
    "spread_key, bound, busiest, want",
    [
        # (max 4 - 1 here) / 4 = 0.75
        pytest.param("default/web", spread_pods(1), 4, 0.75, id="one-of-four"),
        # (4 - 0) / 4 = 1
        pytest.param("default/web", [], 4, 1.0, id="none-here"),
        # (4 - 4) / 4 = 0
        pytest.param("default/web", spread_pods(4), 4, 0.0, id="busiest"),
        # other Deployments' pods don't count: (2 - 0) / 2 = 1
        pytest.param("default/web", spread_pods(2, "default/db"), 2, 1.0, id="other-key"),
        # max 0 among candidates: all equally good
        pytest.param("default/web", [], 0, 1.0, id="no-pods-anywhere"),
        # no spread key: no preference
        pytest.param(None, spread_pods(3), 3, 1.0, id="no-key"),
    ],
)
def test_prefer_spread(spread_key, bound, busiest, want):
    pod = make_pod(spread_key=spread_key)
    ctx = ScoreContext(max_spread_count=busiest)
    assert prefer_spread(pod, make_node(bound=bound), ctx) == pytest.approx(want)


ZONE_CTX = ScoreContext(zone_counts={"zone-a": 2, "zone-b": 4}, max_zone_count=4)


@pytest.mark.parametrize(
    "spread_key, zone, ctx, want",
    [
        # (max 4 - 2 in zone-a) / 4 = 0.5
        pytest.param("default/web", "zone-a", ZONE_CTX, 0.5, id="zone-a"),
        # (4 - 4) / 4 = 0
        pytest.param("default/web", "zone-b", ZONE_CTX, 0.0, id="busiest-zone"),
        # zone-c has none: (4 - 0) / 4 = 1
        pytest.param("default/web", "zone-c", ZONE_CTX, 1.0, id="empty-zone"),
        # no zone label: neutral 0.5
        pytest.param("default/web", None, ZONE_CTX, 0.5, id="unlabelled-neutral"),
        # max 0: all zones equally good
        pytest.param("default/web", "zone-a", ScoreContext(), 1.0, id="no-pods-anywhere"),
        # no spread key: no preference
        pytest.param(None, "zone-b", ZONE_CTX, 1.0, id="no-key"),
    ],
)
def test_prefer_zone_spread(spread_key, zone, ctx, want):
    pod = make_pod(spread_key=spread_key)
    assert prefer_zone_spread(pod, make_node(zone=zone), ctx) == pytest.approx(want)


SSD = PreferredTerm(30, NodeSelectorTerm((Requirement("disktype", "In", ("ssd",)),)))
ZONE_A = PreferredTerm(70, NodeSelectorTerm((Requirement(ZONE_KEY, "In", ("zone-a",)),)))


@pytest.mark.parametrize(
    "terms, labels, zone, want",
    [
        # 30 / (30 + 70) = 0.3
        pytest.param([SSD, ZONE_A], {"disktype": "ssd"}, "zone-b", 0.3, id="ssd-only"),
        # 70 / 100 = 0.7
        pytest.param([SSD, ZONE_A], {}, "zone-a", 0.7, id="zone-only"),
        # (30 + 70) / 100 = 1
        pytest.param([SSD, ZONE_A], {"disktype": "ssd"}, "zone-a", 1.0, id="both"),
        # 0 / 100 = 0
        pytest.param([SSD, ZONE_A], {}, None, 0.0, id="neither"),
        # no preferences: every node is as good
        pytest.param([], {}, None, 1.0, id="no-terms"),
    ],
)
def test_prefer_node_affinity(terms, labels, zone, want):
    pod = make_pod(preferred_affinity=terms)
    node = make_node(labels=labels, zone=zone)
    assert prefer_node_affinity(pod, node, CTX) == pytest.approx(want)


def test_score_node_weighs_each_scorer():
    pod = make_pod(cpu="1", mem="2Gi", spread_key="default/web", preferred_affinity=[SSD])
    node = make_node(zone="zone-a", bound=spread_pods(1))
    ctx = ScoreContext(max_spread_count=2, zone_counts={"zone-a": 1}, max_zone_count=2)
    total, breakdown = score_node(pod, node, ctx, Weights(1, 2, 3, 4))
    # least_allocated: cpu (4000-100-1000)/4000=0.725, mem (8Gi-128Mi-2Gi)/8Gi=0.734375
    #   -> avg 0.7296875; spread (2-1)/2=0.5; zone (2-1)/2=0.5; affinity 0/30=0
    assert dict(breakdown) == pytest.approx(
        {
            "least_allocated": 0.7296875,
            "prefer_spread": 0.5,
            "prefer_zone_spread": 0.5,
            "prefer_node_affinity": 0.0,
        }
    )
    # 1*0.7296875 + 2*0.5 + 3*0.5 + 4*0 = 3.2296875
    assert total == pytest.approx(3.2296875)


def test_score_context_build_counts_candidates_and_cluster_zones():
    pod = make_pod(spread_key="default/web")
    a1 = make_node("a1", zone="zone-a", bound=spread_pods(3))
    a2 = make_node("a2", zone="zone-a", bound=spread_pods(1))
    b1 = make_node("b1", zone="zone-b", bound=spread_pods(2))
    c1 = make_node("c1", zone="zone-c", bound=spread_pods(5))
    ctx = ScoreContext.build(pod, [a2, b1], [a1, a2, b1, c1])
    # busiest candidate node b1 has 2; zones over the cluster a=3+1, b=2, c=5;
    # busiest candidate zone is zone-a with 4 (zone-c has no candidate)
    assert ctx.max_spread_count == 2
    assert dict(ctx.zone_counts) == {"zone-a": 4, "zone-b": 2, "zone-c": 5}
    assert ctx.max_zone_count == 4
