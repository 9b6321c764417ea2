"""Table tests for each scheduler filter and the label/toleration matching under them."""

from __future__ import annotations

import pytest

from controlplane.scheduler import (
    ANTI_AFFINITY_CONFLICT,
    HOST_PORTS_TAKEN,
    NODE_SELECTOR_MISMATCH,
    NOT_READY,
    TOO_MANY_PODS,
    UNSCHEDULABLE,
    ZONE_LABEL,
    FilterContext,
    NodeSelectorTerm,
    PodAntiAffinityTerm,
    Reason,
    Requirement,
    Taint,
    Toleration,
    fits_resources,
    host_ports_free,
    matches_node_selector,
    node_is_ready,
    node_is_schedulable,
    satisfies_pod_anti_affinity,
    tolerates_taints,
)
from controlplane.scheduler.filters import first_failure
from controlplane.scheduler.units import format_cpu, format_memory
from tests.builders import anti_affinity_to, make_node, make_pod


def aggregate(reason: Reason | None) -> str | None:
    return None if reason is None else reason.aggregate


@pytest.mark.parametrize(
    "node, want",
    [
        pytest.param(make_node(ready=False), NOT_READY, id="down"),
        pytest.param(make_node(), None, id="ready"),
    ],
)
def test_node_is_ready(node, want):
    assert aggregate(node_is_ready(make_pod(), node)) == want


@pytest.mark.parametrize(
    "node, want",
    [
        pytest.param(make_node(unschedulable=True), UNSCHEDULABLE, id="cordoned"),
        pytest.param(make_node(), None, id="schedulable"),
    ],
)
def test_node_is_schedulable(node, want):
    assert aggregate(node_is_schedulable(make_pod(), node)) == want


@pytest.mark.parametrize(
    "pod, node, want",
    [
        pytest.param(make_pod(cpu="1", mem="1Gi"), make_node(cpu="1", mem="1Gi"), None, id="exact"),
        pytest.param(
            make_pod(mem="512Mi"),
            make_node(mem="768Mi", bound=[make_pod(mem="512Mi")]),
            Reason("Insufficient memory", "needs 512Mi memory, 256Mi free"),
            id="memory",
        ),
        pytest.param(
            make_pod(cpu="500m"),
            make_node(cpu="750m", bound=[make_pod(cpu="500m")]),
            Reason("Insufficient cpu", "needs 500m cpu, 250m free"),
            id="cpu",
        ),
        pytest.param(
            make_pod(cpu="2", mem="2Gi"),
            make_node(cpu="1", mem="1Gi"),
            Reason("Insufficient cpu", "needs 2 cpu, 1 free; needs 2Gi memory, 1Gi free"),
            id="cpu-and-memory-first-is-aggregate",
        ),
        pytest.param(
            make_pod(),
            make_node(pods=1, bound=[make_pod("other")]),
            Reason(TOO_MANY_PODS, "needs 1 pod slot, 0 free"),
            id="pods",
        ),
        pytest.param(
            make_pod(cpu=0, mem=0),
            make_node(cpu="1", mem="1Gi", bound=[make_pod(cpu="2", mem="2Gi")]),
            None,
            id="zero-request-fits-overcommitted-node",
        ),
    ],
)
def test_fits_resources(pod, node, want):
    assert fits_resources(pod, node) == want


SSD = {"disktype": "ssd"}
ZONE_A = NodeSelectorTerm((Requirement(ZONE_LABEL, "In", ("zone-a",)),))
BIG = NodeSelectorTerm((Requirement("cores", "Gt", ("8",)),))


@pytest.mark.parametrize(
    "pod, labels, zone, want",
    [
        pytest.param(make_pod(), {}, None, None, id="no-constraints"),
        pytest.param(make_pod(node_selector=SSD), SSD, None, None, id="selector-match"),
        pytest.param(
            make_pod(node_selector=SSD),
            {"disktype": "hdd"},
            None,
            "nodeSelector disktype=ssd: node has disktype=hdd",
            id="selector-other-value",
        ),
        pytest.param(
            make_pod(node_selector=SSD),
            {},
            None,
            "nodeSelector disktype=ssd: node has no label disktype",
            id="selector-missing-label",
        ),
        pytest.param(make_pod(required_affinity=[ZONE_A]), {}, "zone-a", None, id="affinity-in"),
        pytest.param(
            make_pod(required_affinity=[ZONE_A, BIG]), {"cores": "16"}, "zone-b", None, id="or"
        ),
        pytest.param(
            make_pod(required_affinity=[ZONE_A]),
            {},
            "zone-b",
            "required node affinity: none of 1 term(s) matched; first term needs "
            f"{ZONE_LABEL} In (zone-a), node has {ZONE_LABEL}=zone-b",
            id="affinity-miss",
        ),
        pytest.param(
            make_pod(required_affinity=[NodeSelectorTerm(())]),
            {},
            None,
            "required node affinity: none of 1 term(s) matched; "
            "the first term is empty and matches no node",
            id="empty-term-matches-nothing",
        ),
        pytest.param(
            make_pod(node_selector=SSD, required_affinity=[ZONE_A]),
            SSD,
            "zone-c",
            "required node affinity: none of 1 term(s) matched; first term needs "
            f"{ZONE_LABEL} In (zone-a), node has {ZONE_LABEL}=zone-c",
            id="selector-and-affinity-both-needed",
        ),
    ],
)
def test_matches_node_selector(pod, labels, zone, want):
    reason = matches_node_selector(pod, make_node(labels=labels, zone=zone))
    assert (reason and reason.detail) == want
    assert aggregate(reason) == (want and NODE_SELECTOR_MISMATCH)


@pytest.mark.parametrize(
    "operator, values, labels, want",
    [
        pytest.param("In", ("a", "b"), {"k": "b"}, True, id="in"),
        pytest.param("In", ("a",), {}, False, id="in-missing"),
        pytest.param("NotIn", ("a",), {}, True, id="notin-missing"),
        pytest.param("NotIn", ("a",), {"k": "a"}, False, id="notin-present"),
        pytest.param("Exists", (), {"k": ""}, True, id="exists"),
        pytest.param("DoesNotExist", (), {"k": "x"}, False, id="does-not-exist"),
        pytest.param("Gt", ("8",), {"k": "16"}, True, id="gt"),
        pytest.param("Gt", ("8",), {"k": "8"}, False, id="gt-equal"),
        pytest.param("Lt", ("8",), {"k": "4"}, True, id="lt"),
        pytest.param("Lt", ("8",), {"k": "four"}, False, id="lt-not-a-number"),
    ],
)
def test_requirement_matches(operator, values, labels, want):
    assert Requirement("k", operator, values).matches(labels) is want


GPU = Taint("gpu", "true", "NoSchedule")


@pytest.mark.parametrize(
    "toleration, taint, want",
    [
        pytest.param(Toleration("gpu", "Equal", "true"), GPU, True, id="equal"),
        pytest.param(Toleration("gpu", "Equal", "false"), GPU, False, id="equal-other-value"),
        pytest.param(Toleration("gpu", "Exists"), GPU, True, id="exists"),
        pytest.param(Toleration("", "Exists"), GPU, True, id="empty-key-exists-tolerates-all"),
        pytest.param(Toleration("", "Equal"), GPU, False, id="empty-key-equal"),
        pytest.param(Toleration("gpu", "Exists", effect="NoExecute"), GPU, False, id="effect"),
        pytest.param(Toleration("gpu", "Exists", effect="NoSchedule"), GPU, True, id="same-effect"),
        pytest.param(Toleration("other", "Exists"), GPU, False, id="other-key"),
    ],
)
def test_toleration_tolerates(toleration, taint, want):
    assert toleration.tolerates(taint) is want


@pytest.mark.parametrize(
    "tolerations, taints, want",
    [
        pytest.param((), (), None, id="untainted"),
        pytest.param(
            (),
            ["gpu=true:NoSchedule"],
            Reason(
                "node(s) had untolerated taint {gpu=true:NoSchedule}",
                "taint gpu=true:NoSchedule is not tolerated",
            ),
            id="no-schedule",
        ),
        pytest.param(
            (),
            ["evict:NoExecute"],
            Reason(
                "node(s) had untolerated taint {evict:NoExecute}",
                "taint evict:NoExecute is not tolerated",
            ),
            id="no-execute-without-value",
        ),
        pytest.param((), ["meh=1:PreferNoSchedule"], None, id="prefer-no-schedule-ignored"),
        pytest.param([Toleration("gpu", "Exists")], ["gpu=true:NoSchedule"], None, id="tolerated"),
        pytest.param(
            [Toleration("gpu", "Exists")],
            ["gpu=true:NoSchedule", "ssd=1:NoExecute"],
            Reason(
                "node(s) had untolerated taint {ssd=1:NoExecute}",
                "taint ssd=1:NoExecute is not tolerated",
            ),
            id="second-taint-untolerated",
        ),
    ],
)
def test_tolerates_taints(tolerations, taints, want):
    pod = make_pod(tolerations=tolerations)
    assert tolerates_taints(pod, make_node(taints=taints)) == want


@pytest.mark.parametrize(
    "wanted, bound, want",
    [
        pytest.param([80], [], None, id="free"),
        pytest.param([80], [80], "host port 80/TCP is already in use", id="same-port"),
        pytest.param([(80, "UDP", "")], [80], None, id="other-protocol"),
        pytest.param([81], [80], None, id="other-port"),
        pytest.param([(80, "TCP", "10.0.0.1")], [(80, "TCP", "10.0.0.2")], None, id="other-ips"),
        pytest.param(
            [(80, "TCP", "10.0.0.1")],
            [(80, "TCP", "0.0.0.0")],
            "host port 10.0.0.1:80/TCP is already in use",
            id="bound-wildcard",
        ),
        pytest.param(
            [(80, "TCP", "")],
            [(80, "TCP", "10.0.0.2")],
            "host port 80/TCP is already in use",
            id="wanted-wildcard",
        ),
        pytest.param(
            [(80, "TCP", "10.0.0.1")],
            [(80, "TCP", "10.0.0.1")],
            "host port 10.0.0.1:80/TCP is already in use",
            id="same-ip",
        ),
    ],
)
def test_host_ports_free(wanted, bound, want):
    node = make_node(bound=[make_pod("web", host_ports=bound)])
    reason = host_ports_free(make_pod(host_ports=wanted), node)
    assert (reason and reason.detail) == want
    assert aggregate(reason) == (want and HOST_PORTS_TAKEN)


def web(name="web-0", namespace="default", **fields):
    return make_pod(name, namespace, labels={"app": "web"}, **fields)


@pytest.mark.parametrize(
    "pod, bound_here, bound_elsewhere, want",
    [
        pytest.param(web(anti_affinity=[anti_affinity_to("web")]), [], [], None, id="empty-node"),
        pytest.param(
            web("web-1", anti_affinity=[anti_affinity_to("web")]),
            [web()],
            [],
            "pod default/web-0 in kubernetes.io/hostname=node-1 matches this pod's anti-affinity",
            id="own-term-same-host",
        ),
        pytest.param(
            web("web-1", anti_affinity=[anti_affinity_to("web")]),
            [web(namespace="other")],
            [],
            None,
            id="own-term-other-namespace",
        ),
        pytest.param(
            web(
                "web-1",
                anti_affinity=[
                    PodAntiAffinityTerm(
                        (Requirement("app", "In", ("web",)),),
                        "kubernetes.io/hostname",
                        ("other",),
                    )
                ],
            ),
            [web(namespace="other")],
            [],
            "pod other/web-0 in kubernetes.io/hostname=node-1 matches this pod's anti-affinity",
            id="own-term-listed-namespace",
        ),
        pytest.param(
            web("web-1", anti_affinity=[anti_affinity_to("web", ZONE_LABEL)]),
            [],
            [web()],
            f"pod default/web-0 in {ZONE_LABEL}=zone-a matches this pod's anti-affinity",
            id="own-term-same-zone-other-node",
        ),
        pytest.param(
            web("web-1"),
            [make_pod("db-0", labels={"app": "db"}, anti_affinity=[anti_affinity_to("web")])],
            [],
            "pod default/db-0 in kubernetes.io/hostname=node-1 has anti-affinity against this pod",
            id="symmetry",
        ),
        pytest.param(
            web("web-1"),
            [],
            [make_pod("db-0", labels={"app": "db"}, anti_affinity=[anti_affinity_to("web")])],
            None,
            id="symmetry-other-host",
        ),
        pytest.param(
            make_pod("api-0", labels={"app": "api"}),
            [make_pod("db-0", labels={"app": "db"}, anti_affinity=[anti_affinity_to("web")])],
            [],
            None,
            id="symmetry-not-selected",
        ),
    ],
)
def test_satisfies_pod_anti_affinity(pod, bound_here, bound_elsewhere, want):
    here = make_node("node-1", zone="zone-a", bound=bound_here)
    there = make_node("node-2", zone="zone-a", bound=bound_elsewhere)
    reason = satisfies_pod_anti_affinity(pod, here, FilterContext([here, there]))
    assert (reason and reason.detail) == want
    assert aggregate(reason) == (want and ANTI_AFFINITY_CONFLICT)


def test_anti_affinity_ignores_nodes_without_the_topology_label():
    pod = web("web-1", anti_affinity=[anti_affinity_to("web", ZONE_LABEL)])
    here, there = make_node("node-1", bound=[web()]), make_node("node-2", bound=[web("web-2")])
    assert satisfies_pod_anti_affinity(pod, here, FilterContext([here, there])) is None


def test_first_failure_reports_the_first_filter_in_order():
    node = make_node(ready=False, unschedulable=True, mem="1Mi")
    assert aggregate(first_failure(make_pod(), node)) == NOT_READY
    assert first_failure(make_pod(), make_node()) is None


@pytest.mark.parametrize(
    "text, want",
    [
        pytest.param(format_cpu(500), "500m", id="millicores"),
        pytest.param(format_cpu(2000), "2", id="cores"),
        pytest.param(format_cpu(-250), "-250m", id="negative-free"),
        pytest.param(format_memory(512 << 20), "512Mi", id="mebibytes"),
        pytest.param(format_memory(1536 << 20), "1536Mi", id="exact-smaller-unit"),
        pytest.param(format_memory(8 << 30), "8Gi", id="gibibytes"),
        pytest.param(format_memory(1_300_000_000), "1.2Gi", id="inexact"),
        pytest.param(format_memory(100), "100", id="bytes"),
    ],
)
def test_quantities_read_like_kubernetes(text, want):
    assert text == want
