"""Property tests of the scheduler: placements are feasible, batches never overcommit, the
fast batch engine agrees with the reference filters and scorers, and one Deployment spreads
evenly over identical nodes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler import (
    BINPACK,
    SPREAD,
    ZONE_LABEL,
    FilterContext,
    Placement,
    Resources,
    SchedulerConfig,
    Taint,
    Toleration,
    explain,
    schedule_batch,
)
from controlplane.scheduler.filters import first_failure
from tests.builders import anti_affinity_to, make_cluster, make_deployment, make_node, make_pod

APPS = ("web", "db", "cache")
TAINTS = (
    Taint("gpu", "true", "NoSchedule"),
    Taint("evict", "", "NoExecute"),
    Taint("meh", "1", "PreferNoSchedule"),
)


INDEX = st.integers(0, 10_000)


@st.composite
def pods(draw, index=INDEX):
    app = draw(st.sampled_from(APPS))
    anti = draw(
        st.sampled_from([(), (anti_affinity_to(app),), (anti_affinity_to(APPS[0], ZONE_LABEL),)])
    )
    return make_pod(
        f"{app}-{draw(index)}",
        draw(st.sampled_from(["default", "other"])),
        cpu=draw(st.sampled_from([0, 100, 500, 1000, 2500])),
        mem=draw(st.sampled_from([0, 64 << 20, 512 << 20, 2 << 30])),
        labels={"app": app},
        node_selector=draw(st.sampled_from([None, {"disktype": "ssd"}])),
        tolerations=draw(
            st.sampled_from([(), (Toleration("gpu", "Exists"),), (Toleration("", "Exists"),)])
        ),
        host_ports=draw(
            st.sampled_from([(), (80,), ((80, "TCP", "10.0.0.1"),), ((53, "UDP", ""),)])
        ),
        anti_affinity=anti,
        spread_key=f"default/{app}" if draw(st.booleans()) else None,
        priority=draw(st.integers(0, 2)),
        creation_index=draw(index),
    )


@st.composite
def nodes(draw):
    count = draw(st.integers(1, 8))
    result = []
    for i in range(count):
        node = make_node(
            f"node-{draw(st.integers(0, 99)):02d}-{i}",
            cpu=draw(st.sampled_from([1000, 2000, 4000])),
            mem=draw(st.sampled_from([1 << 30, 4 << 30])),
            pods=draw(st.integers(1, 6)),
            labels={"disktype": draw(st.sampled_from(["ssd", "hdd"]))},
            ready=draw(st.integers(0, 3)) > 0,
            unschedulable=draw(st.integers(0, 9)) == 0,
            taints=draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True)),
            zone=draw(st.sampled_from([None, "zone-a", "zone-b"])),
        )
        for pod in draw(st.lists(pods(), max_size=2)):
            if first_failure(pod, node) is None:  # only bound pods that fit
                node = node.with_pod(pod)
        result.append(node)
    return result


configs = st.builds(
    SchedulerConfig,
    strategy=st.sampled_from([SPREAD, BINPACK]),
    percentage_of_nodes_to_score=st.sampled_from([None, 100, 30]),
    min_feasible_nodes=st.integers(1, 3),
    seed=st.sampled_from([None, 7]),
)


def replay(result, start_nodes):
    """Yield (decision, nodes as they were when it was made), applying each placement."""
    current = {node.name: node for node in start_nodes}
    for decision in result.decisions:
        yield decision, list(current.values())
        if isinstance(decision, Placement):
            current[decision.node] = current[decision.node].with_pod(decision.pod)


@settings(max_examples=150, deadline=None)
@given(nodes(), st.lists(pods(), max_size=12), configs)
def test_every_placement_fits_the_state_it_was_made_in(start_nodes, batch, config):
    result = schedule_batch(batch, start_nodes, config=config)
    for decision, state in replay(result, start_nodes):
        ctx = FilterContext(state)
        if isinstance(decision, Placement):
            node = next(n for n in state if n.name == decision.node)
            assert first_failure(decision.pod, node, ctx) is None
        else:
            assert all(first_failure(decision.pod, n, ctx) is not None for n in state)
            assert decision == explain(decision.pod, state, config).outcome


@settings(max_examples=150, deadline=None)
@given(nodes(), st.lists(pods(), max_size=12), st.sampled_from([SPREAD, BINPACK]))
def test_without_sampling_the_batch_decides_like_explain(start_nodes, batch, strategy):
    config = SchedulerConfig(strategy=strategy, percentage_of_nodes_to_score=100)
    result = schedule_batch(batch, start_nodes, config=config)
    for decision, state in replay(result, start_nodes):
        assert decision == explain(decision.pod, state, config).outcome


@settings(max_examples=150, deadline=None)
@given(nodes(), st.lists(pods(), max_size=12), configs)
def test_a_batch_never_overcommits_a_node(start_nodes, batch, config):
    result = schedule_batch(batch, start_nodes, config=config)
    assert [n.name for n in result.nodes] == [n.name for n in start_nodes]
    for node in result.nodes:
        total = Resources()
        for pod in node.pods:
            total = total + pod.requests
        assert node.requested == total
        assert total.fits_in(node.allocatable)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 90),
    st.sampled_from([None, 100, 10, 50]),
    st.integers(1, 10),
    st.integers(0, 40),
)
def test_one_deployment_spreads_within_one_pod_per_node(n, replicas, pct, min_nodes, start):
    # Holds with sampling because ties go to the first node in window order (see engine).
    # Not with a seed under sampling: a random pick among the window's least-loaded nodes
    # can leave a node behind, so the seeded variant below scores every node.
    config = SchedulerConfig(percentage_of_nodes_to_score=pct, min_feasible_nodes=min_nodes)
    result = schedule_batch(
        make_deployment("web", replicas),
        make_cluster(n, cpu="64", mem="256Gi"),
        config=config,
        start=start,
    )
    assert len(result.placements) == replicas
    counts = Counter(d.node for d in result.placements)
    per_node = [counts.get(node.name, 0) for node in result.nodes]
    assert max(per_node) - min(per_node) <= 1


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(1, 90), st.integers(0, 5))
def test_one_deployment_spreads_evenly_with_seeded_ties(n, replicas, seed):
    config = SchedulerConfig(percentage_of_nodes_to_score=100, seed=seed)
    result = schedule_batch(make_deployment("web", replicas), make_cluster(n), config=config)
    counts = Counter(d.node for d in result.placements)
    per_node = [counts.get(node.name, 0) for node in result.nodes]
    assert max(per_node) - min(per_node) <= 1
