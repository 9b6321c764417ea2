"""Tests of the scheduler entry points: messages, ordering, ties, batches, sampling, explain."""

from __future__ import annotations

import pytest

from controlplane.scheduler import (
    BINPACK,
    Placement,
    SchedulerConfig,
    explain,
    feasible_nodes_to_find,
    place,
    schedule_batch,
)
from tests.builders import anti_affinity_to, make_cluster, make_deployment, make_node, make_pod

ALL_NODES = SchedulerConfig(percentage_of_nodes_to_score=100)


def placed_on(result) -> dict[str, str]:
    return {d.pod.name: d.node for d in result.decisions if isinstance(d, Placement)}


def test_unschedulable_message_counts_first_failures_most_first():
    nodes = [make_node(f"node-{i}", mem="256Mi", labels={"disktype": "hdd"}) for i in (1, 2, 3)]
    nodes += [make_node(f"node-{i}") for i in (4, 5)]
    decision = place(make_pod(mem="512Mi", node_selector={"disktype": "hdd"}), nodes)
    assert decision.message == (
        "0/5 nodes available: 3 Insufficient memory, 2 node(s) didn't match node selector."
    )


def test_unschedulable_message_breaks_count_ties_alphabetically():
    nodes = [
        make_node("a", ready=False),
        make_node("b", unschedulable=True),
        make_node("c", ready=False, unschedulable=True, cpu="1"),  # counted once: NotReady
        make_node("d", unschedulable=True),
        make_node("e", cpu="1"),
    ]
    decision = place(make_pod(cpu="2"), nodes)
    assert decision.message == (
        "0/5 nodes available: 2 node(s) were not ready, 2 node(s) were unschedulable, "
        "1 Insufficient cpu."
    )


def test_unschedulable_details_are_sorted_by_node_name():
    nodes = [make_node(name, mem="256Mi") for name in ("node-3", "node-1", "node-2")]
    nodes[1] = make_node("node-1", ready=False)
    decision = place(make_pod(mem="512Mi"), nodes)
    assert decision.details == (
        ("node-1", "node is NotReady"),
        ("node-2", "needs 512Mi memory, 256Mi free"),
        ("node-3", "needs 512Mi memory, 256Mi free"),
    )


def test_no_nodes():
    assert place(make_pod(), []).message == "0/0 nodes available: no nodes in the cluster."


def test_ties_go_to_the_first_node_by_name():
    nodes = make_cluster(3)[::-1]
    assert place(make_pod(), nodes).node == "node-1"


def test_seeded_ties_are_reproducible():
    pods = make_deployment("web", 6) + make_deployment("db", 6, first_index=10)
    runs = {
        seed: [
            placed_on(schedule_batch(pods, make_cluster(20), config=SchedulerConfig(seed=seed)))
            for _ in range(2)
        ]
        for seed in range(5)
    }
    for first, second in runs.values():
        assert first == second
    assert len({tuple(sorted(first.items())) for first, _ in runs.values()}) > 1


def test_explain_draws_the_same_seeded_tie_as_place():
    config = SchedulerConfig(seed=3, percentage_of_nodes_to_score=100)
    nodes = make_cluster(10)
    assert (
        explain(make_pod(), nodes, config).outcome.node
        == place(make_pod(), nodes, config=config).node
    )


def test_higher_priority_pods_are_decided_first():
    low = make_pod("low", cpu="3", creation_index=0)
    high = make_pod("high", cpu="3", creation_index=1, priority=10)
    result = schedule_batch([low, high], [make_node(cpu="4")])
    assert [d.pod.name for d in result.decisions] == ["high", "low"]
    assert isinstance(result.decisions[0], Placement)
    assert result.decisions[1].message == "0/1 nodes available: 1 Insufficient cpu."


def test_equal_priority_keeps_creation_order_then_name():
    pods = [
        make_pod("b", creation_index=1),
        make_pod("c", creation_index=0),
        make_pod("a", creation_index=1),
    ]
    assert [d.pod.name for d in schedule_batch(pods, make_cluster(2)).decisions] == ["c", "a", "b"]


def test_batch_never_overcommits_and_reports_the_rest():
    pods = make_deployment("web", 5, cpu="1500m", mem="1Gi")
    result = schedule_batch(pods, make_cluster(2, cpu="4"))
    assert len(result.placements) == 4  # two 1.5-core pods per 4-core node
    assert result.unschedulable[0].message == "0/2 nodes available: 2 Insufficient cpu."
    assert result.unschedulable[0].details[0] == ("node-1", "needs 1500m cpu, 1 free")


def test_batch_spreads_a_deployment_using_earlier_placements():
    result = schedule_batch(make_deployment("web", 6), make_cluster(3))
    assert sorted(placed_on(result).values()) == [
        "node-1",
        "node-1",
        "node-2",
        "node-2",
        "node-3",
        "node-3",
    ]


def test_batch_binpack_fills_a_node_first():
    result = schedule_batch(
        make_deployment("web", 4, cpu="1"),
        make_cluster(3),
        config=SchedulerConfig(strategy=BINPACK),
    )
    assert set(placed_on(result).values()) == {"node-1"}


def test_batch_respects_anti_affinity_between_pods_of_the_batch():
    pods = make_deployment("web", 3, anti_affinity=[anti_affinity_to("web")])
    result = schedule_batch(pods, make_cluster(2))
    assert sorted(placed_on(result).values()) == ["node-1", "node-2"]
    assert result.unschedulable[0].message == (
        "0/2 nodes available: 2 node(s) didn't match pod anti-affinity rules."
    )


def test_batch_respects_host_ports_taken_in_the_batch():
    pods = make_deployment("proxy", 2, host_ports=[80]) + [
        make_pod("other", host_ports=[80], creation_index=5)
    ]
    result = schedule_batch(pods, make_cluster(2))
    assert len(result.placements) == 2
    assert result.unschedulable[0].details[0] == ("node-1", "host port 80/TCP is already in use")


def test_batch_is_pure_and_returns_the_new_node_states():
    nodes = make_cluster(2)
    before = list(nodes)
    result = schedule_batch(make_deployment("web", 3), nodes)
    assert nodes == before and all(not node.pods for node in nodes)
    assert sum(len(node.pods) for node in result.nodes) == 3
    assert result.nodes[0].requested.cpu == sum(p.requests.cpu for p in result.nodes[0].pods)


def test_placement_carries_the_score_breakdown():
    decision = place(make_pod(cpu="1", mem="2Gi", spread_key="default/web"), [make_node()])
    # least_allocated 0.75 (see test_scheduler_scores); other scorers have nothing to compare
    assert dict(decision.scores) == {
        "least_allocated": 0.75,
        "prefer_spread": 1.0,
        "prefer_zone_spread": 0.5,  # node has no zone label
        "prefer_node_affinity": 1.0,
    }
    assert decision.score == pytest.approx(1 * 0.75 + 2 * 1.0 + 1 * 0.5 + 2 * 1.0)


@pytest.mark.parametrize(
    "n, pct, want",
    [
        pytest.param(50, None, 50, id="small-cluster-all"),
        pytest.param(100, None, 100, id="100-all"),
        pytest.param(1000, None, 420, id="1000-is-42pct"),  # 50 - 1000/125 = 42%
        pytest.param(5000, None, 500, id="5000-is-10pct"),  # 50 - 5000/125 = 10%
        pytest.param(10000, None, 500, id="10000-floor-5pct"),  # max(5, 50 - 80) = 5%
        pytest.param(1000, 100, 1000, id="all-nodes"),
        pytest.param(1000, 1, 100, id="at-least-100"),
    ],
)
def test_feasible_nodes_to_find(n, pct, want):
    assert feasible_nodes_to_find(n, SchedulerConfig(percentage_of_nodes_to_score=pct)) == want


def test_sampled_searches_visit_nodes_round_robin():
    config = SchedulerConfig(percentage_of_nodes_to_score=10, min_feasible_nodes=2)
    nodes = make_cluster(10)
    start, chosen = 0, []
    for i in range(5):
        result = schedule_batch([make_pod(f"p{i}")], nodes, config=config, start=start)
        chosen.append(result.decisions[0].node)
        start = result.next_start
    # windows of 2 feasible nodes: [1,2] [3,4] [5,6] [7,8] [9,10]; ties go to the first name
    assert chosen == ["node-01", "node-03", "node-05", "node-07", "node-09"]
    assert start == 0


def test_sampled_search_still_explains_every_node_when_nothing_fits():
    config = SchedulerConfig(percentage_of_nodes_to_score=10, min_feasible_nodes=1)
    decision = place(make_pod(cpu="8"), make_cluster(30), config=config)
    assert decision.message == "0/30 nodes available: 30 Insufficient cpu."
    assert len(decision.details) == 30


def test_unschedulable_pods_of_one_deployment_share_the_verdict():
    result = schedule_batch(make_deployment("big", 3, cpu="8"), make_cluster(2))
    first, second, third = result.unschedulable
    assert first.message == second.message == third.message
    assert [d.pod.name for d in result.unschedulable] == ["big-0", "big-1", "big-2"]


def test_overcommitted_nodes_are_scored_with_clamping():
    full = make_node("node-1", cpu="1", bound=[make_pod(cpu="2", mem=0)])
    decision = place(make_pod(cpu=0, mem=0), [full])
    # cpu free (1000-2000-0)/1000 clamped to 0, mem free 8Gi/8Gi=1 -> avg 0.5
    assert decision.node == "node-1"
    assert dict(decision.scores)["least_allocated"] == pytest.approx(0.5)


def test_explain_lists_every_node_with_reason_or_scores():
    nodes = [make_node("node-2"), make_node("node-1", ready=False), make_node("node-3", cpu="1")]
    explanation = explain(make_pod(cpu="2"), nodes)
    verdicts = {v.node: v for v in explanation.verdicts}
    assert [v.node for v in explanation.verdicts] == ["node-1", "node-2", "node-3"]
    assert verdicts["node-1"].reason.detail == "node is NotReady"
    assert verdicts["node-3"].reason.detail == "needs 2 cpu, 1 free"
    assert verdicts["node-2"].reason is None and verdicts["node-2"].score is not None
    assert explanation.outcome.node == "node-2"
    assert explanation.outcome == place(make_pod(cpu="2"), nodes, config=ALL_NODES)


def test_explain_of_an_unschedulable_pod_matches_place():
    nodes = make_cluster(3, mem="256Mi")
    assert explain(make_pod(), nodes).outcome == place(make_pod(), nodes)
