"""Explain: where manifests' pods would land on a real control plane, and `moor explain`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile

import grpc
import pytest

from controlplane.api.explain import cluster_nodes, expand, plan
from controlplane.scheduler import SchedulerConfig, schedule_batch
from controlplane.scheduler.objects import pod_info
from controlplane.store import Store
from moorage import manifest
from moorage.cli import describe
from moorage.cli import explain as render
from moorage.model import kinds
from moorage.model.deployments import template_hash
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb
from tests.conftest import TEST_PREFIX, etcd_client, start_controlplane, stop_process

NODE_KIND = kinds.BY_NAME["Node"]
POD_KIND = kinds.BY_NAME["Pod"]


def make_node(name, ready=True, unschedulable=False, taint=None, memory="8Gi"):
    node = pb.Node(api_version="v1", kind="Node")
    node.metadata.name = name
    node.metadata.labels["pool"] = "general"
    node.spec.unschedulable = unschedulable
    if taint:
        key, _, rest = taint.partition("=")
        value, _, effect = rest.partition(":")
        node.spec.taints.add(key=key, value=value, effect=effect)
    node.status.allocatable.update({"cpu": "4", "memory": memory, "pods": "110"})
    node.status.conditions.add(type="Ready", status="True" if ready else "False")
    return node


def bound_pod(name, node, memory, phase="Running"):
    pod = pb.Pod(api_version="v1", kind="Pod")
    pod.metadata.name, pod.metadata.namespace = name, "default"
    pod.spec.node_name = node
    container = pod.spec.containers.add(name="app", image="busybox")
    container.resources.requests["memory"] = memory
    pod.status.phase = phase
    return pod


def deployment_yaml(name, replicas, memory="128Mi", extra=""):
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: busybox
        resources: {{requests: {{cpu: 100m, memory: {memory}}}}}
{extra}"""


def pod_yaml(name, memory, selector=""):
    pinned = f"  nodeSelector: {{kubernetes.io/hostname: {selector}}}\n" if selector else ""
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
{pinned}  containers:
  - name: app
    image: busybox
    resources: {{requests: {{memory: {memory}}}}}
"""


def docs(*texts):
    return manifest.parse([(f"m{i}.yaml", t) for i, t in enumerate(texts)])


# ---- the pure part: expansion and planning ----------------------------------------------------

def test_deployment_expands_into_owned_replicas_and_other_kinds_into_none():
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"
    new = expand(docs(deployment_yaml("web", 3), pod_yaml("solo", "1Gi"), service))
    assert [(p.kind, p.name, p.pod.metadata.name) for p in new] == [
        ("Deployment", "web", "web-1"), ("Deployment", "web", "web-2"),
        ("Deployment", "web", "web-3"), ("Pod", "solo", "solo")]
    replica = new[0].pod
    assert replica.metadata.namespace == "default"
    # Labelled as the controller labels its pods, pod-template-hash included.
    assert dict(replica.metadata.labels) == {
        "app": "web", "pod-template-hash": template_hash(docs(deployment_yaml("web", 3))[0]
                                                         .obj.spec.template)}
    assert replica.spec.containers[0].resources.requests["memory"] == "128Mi"
    ref = replica.metadata.owner_references[0]
    assert (ref.api_version, ref.kind, ref.name, ref.controller) == (
        "apps/v1", "Deployment", "web", True)
    assert pod_info(replica).spread_key == "default/Deployment/web"
    assert expand(docs(deployment_yaml("none", 0))) == []


def test_plan_agrees_with_schedule_batch_and_counts_only_bound_pods():
    nodes = [make_node(f"n{i}", memory=f"{i + 2}Gi") for i in range(4)]
    pods = [bound_pod("old", "n3", "3Gi"), bound_pod("done", "n2", "4Gi", phase="Succeeded"),
            bound_pod("pending", "", "4Gi", phase="Pending")]
    state = cluster_nodes(nodes, pods)
    assert [n.requested.memory for n in state] == [0, 0, 0, 3 << 30]
    new = expand(docs(deployment_yaml("web", 5, memory="1Gi"), pod_yaml("big", "4Gi")))
    answers = plan(new, state, SchedulerConfig())
    # In manifest order, as plan() decides them (the order a controller would create them).
    infos = [dataclasses.replace(pod_info(p.pod), creation_index=i) for i, p in enumerate(new)]
    batch = schedule_batch(infos, state, config=SchedulerConfig(percentage_of_nodes_to_score=100))
    decided = {d.pod.name: getattr(d, "node", "") for d in batch.decisions}
    assert {a.pod: a.node for a in answers} == decided
    assert [a.pod for a in answers] == ["web-1", "web-2", "web-3", "web-4", "web-5", "big"]
    for a in answers:
        assert [c.score for c in a.candidates] == sorted((c.score for c in a.candidates),
                                                         reverse=True)
        assert {c.node for c in a.candidates} | {r.node for r in a.rejected} == \
            {"n0", "n1", "n2", "n3"}


def test_no_nodes_means_unschedulable_with_the_scheduler_message():
    (answer,) = plan(expand(docs(pod_yaml("x", "1Gi"))), [], SchedulerConfig())
    assert (answer.node, answer.message) == (
        "", "0/0 nodes available: no nodes in the cluster.")
    lines, placed = render.render(api_pb2.ExplainResponse(pods=[answer]))
    assert lines == ["pod/x: unschedulable: 0/0 nodes available: no nodes in the cluster."]
    assert not placed


def test_render_caps_long_lists():
    answer = api_pb2.PodExplanation(kind="Pod", name="p", pod="p", node="a", score=1.5)
    for i in range(25):
        answer.rejected.add(node=f"n{i:02}", reason="node is NotReady")
    answer.candidates.add(node="a", score=1.5)
    lines, placed = render.render(api_pb2.ExplainResponse(pods=[answer]))
    assert placed
    assert lines[0] == "pod/p -> a   score 1.50"
    assert lines[1] == "  not on n00: node is NotReady"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more"


def test_describe_pod_shows_scheduling_details():
    pod = bound_pod("big", "", "16Gi", phase="Pending")
    pod.status.conditions.add(type="PodScheduled", status="False", reason="Unschedulable",
                              message="0/2 nodes available: 2 Insufficient memory.")
    pod.status.scheduling_details.add(node="node-1", reason="needs 16Gi memory, 8Gi free")
    pod.status.scheduling_details.add(node="node-2", reason="needs 16Gi memory, 2Gi free")
    lines = describe.describe(pod, []).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Scheduling:"))
    assert lines[at].split(None, 1)[1] == "0/2 nodes available: 2 Insufficient memory."
    assert lines[at + 1].split() == ["node-1:", "needs", "16Gi", "memory,", "8Gi", "free"]
    assert lines[at + 2].startswith("  node-2:")
    assert lines[at].index("0/2") == lines[at + 1].index("needs")
    assert not any(line.startswith("Scheduling:") for line in
                   describe.describe(bound_pod("ok", "node-1", "1Gi"), []).splitlines())


# ---- a control plane of its own: the nodes made here must not leak into other tests --------

NODES = [
    make_node("node-1"), make_node("node-2"), make_node("node-3"),
    make_node("node-4", taint="gpu=true:NoSchedule"),
    make_node("node-5", unschedulable=True),
    make_node("node-6", ready=False),
]
EXPECTED_REJECTIONS = {
    "node-4": "taint gpu=true:NoSchedule is not tolerated",
    "node-5": "node is cordoned (unschedulable)",
    "node-6": "node is NotReady",
}


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "explain-")
    # Nodes here are written straight to etcd with no agent behind them: no lifecycle.
    cp = start_controlplane(etcd_endpoint, state, extra_args=("--no-node-lifecycle",))

    async def seed():
        client = etcd_client(cp.etcd)
        try:
            store = Store(client, prefix=cp.prefix)
            for node in NODES:
                await store.create(node)
            # Holds 6Gi of node-1; the finished pod on node-2 holds nothing any more.
            await store.create(bound_pod("resident", "node-1", "6Gi"))
            await store.create(bound_pod("finished", "node-2", "7Gi", phase="Succeeded"))
        finally:
            await client.close()

    try:
        asyncio.run(seed())
        yield cp
    finally:
        stop_process(cp.proc)
        shutil.rmtree(state, ignore_errors=True)


def explain(cp, *texts):
    request = api_pb2.ExplainRequest(manifests=[
        api_pb2.Manifest(source=f"m{i}.yaml", content=t) for i, t in enumerate(texts)])
    return cp.stub().Explain(request, timeout=30)


def test_replicas_spread_one_per_ready_node_and_the_rest_say_why(cluster):
    response = explain(cluster, deployment_yaml("web", 3))
    assert response.nodes == 6
    assert [p.pod for p in response.pods] == ["web-1", "web-2", "web-3"]
    assert sorted(p.node for p in response.pods) == ["node-1", "node-2", "node-3"]
    for p in response.pods:
        assert (p.kind, p.namespace, p.name, p.message) == ("Deployment", "default", "web", "")
        assert {r.node: r.reason for r in p.rejected} == EXPECTED_REJECTIONS
        assert [c.node for c in p.candidates][0] == p.node
        assert p.score == p.candidates[0].score
        scores = [(-c.score, c.node) for c in p.candidates]
        assert scores == sorted(scores)


def test_a_pod_too_big_for_any_node_is_unschedulable_with_details(cluster):
    (p,) = explain(cluster, pod_yaml("big", "16Gi")).pods
    assert p.node == "" and p.kind == "Pod" and p.pod == "big"
    assert p.message == ("0/6 nodes available: 3 Insufficient memory, 1 node(s) had untolerated "
                         "taint {gpu=true:NoSchedule}, 1 node(s) were not ready, "
                         "1 node(s) were unschedulable.")
    reasons = {r.node: r.reason for r in p.rejected}
    assert [r.node for r in p.rejected] == [n.metadata.name for n in NODES]
    assert reasons["node-1"] == "needs 16Gi memory, 2Gi free"
    assert reasons["node-2"] == "needs 16Gi memory, 8Gi free"
    assert list(p.candidates) == []


def test_bound_pods_take_room_and_finished_ones_do_not(cluster):
    response = explain(cluster, pod_yaml("on-1", "4Gi", selector="node-1"),
                       pod_yaml("on-2", "4Gi", selector="node-2"))
    first, second = response.pods
    assert first.node == "" and second.node == "node-2"
    assert {r.node: r.reason for r in first.rejected}["node-1"] == "needs 4Gi memory, 2Gi free"
    assert {r.node: r.reason for r in first.rejected}["node-3"] == \
        "nodeSelector kubernetes.io/hostname=node-1: node has kubernetes.io/hostname=node-3"


def test_explain_writes_nothing(cluster):
    before = cluster.snapshot()
    explain(cluster, deployment_yaml("web", 3), pod_yaml("big", "16Gi"))
    assert cluster.snapshot() == before


def test_invalid_manifests_are_rejected_like_apply(cluster):
    with pytest.raises(grpc.RpcError) as info:
        explain(cluster, deployment_yaml("web", 3, memory="12XB"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "m0.yaml[0]" in info.value.details()


def moor(cluster, tmp_path, *texts):
    path = tmp_path / "m.yaml"
    path.write_text("---\n".join(texts))
    env = cluster.env(MOOR_CONFIG=str(tmp_path / "none.yaml"))
    env.pop("MOOR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "explain", "-f", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_moor_explain_prints_placements_and_exits_0(cluster, tmp_path):
    proc = moor(cluster, tmp_path, deployment_yaml("web", 3))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "deployment.apps/web (3 pods):"
    placed = [line.split() for line in lines[1:4]]
    assert [words[:2] for words in placed] == [["web-1", "->"], ["web-2", "->"], ["web-3", "->"]]
    assert sorted(words[2] for words in placed) == ["node-1", "node-2", "node-3"]
    assert "(other candidates:" in lines[1] and "other candidates" not in lines[2]
    assert lines[4:] == [f"  not on {node}: {reason}"
                         for node, reason in EXPECTED_REJECTIONS.items()]


def test_moor_explain_exits_1_when_a_pod_fits_nowhere(cluster, tmp_path):
    proc = moor(cluster, tmp_path, pod_yaml("big", "16Gi"), pod_yaml("small", "1Gi"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("pod/big: unschedulable: 0/6 nodes available: 3 Insufficient")
    assert "  node-1: needs 16Gi memory, 2Gi free" in lines
    assert any(line.startswith("pod/small -> node-") for line in lines)
    assert proc.stderr == ""


def test_moor_explain_reports_bad_manifests_on_one_line(cluster, tmp_path):
    proc = moor(cluster, tmp_path, json.dumps({"apiVersion": "v1", "kind": "Pod"}))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_render_replicas_some_of_which_fit_nowhere():
    def pod(name, node="", message=""):
        p = api_pb2.PodExplanation(kind="Deployment", namespace="default", name="web", pod=name,
                                   node=node, score=2.5 if node else 0, message=message)
        if node:
            p.candidates.add(node=node, score=2.5)
            p.rejected.add(node="b", reason="node is NotReady")
        else:
            p.rejected.add(node="a", reason="needs 1Gi memory, 0 free")
            p.rejected.add(node="b", reason="node is NotReady")
        return p

    msg = "0/2 nodes available: 1 Insufficient memory, 1 node(s) were not ready."
    lines, placed = render.render(api_pb2.ExplainResponse(
        pods=[pod("web-1", "a"), pod("web-2", message=msg)], nodes=2))
    assert not placed
    assert lines == [
        "deployment.apps/web (2 pods, 1 unschedulable):",
        "  web-1 -> a   score 2.50",
        f"  web-2    unschedulable: {msg}",
        "  not on b: node is NotReady",
        "  web-2 fits no node:",
        "    a: needs 1Gi memory, 0 free",
        "    b: node is NotReady",
    ]
    lines, _ = render.render(api_pb2.ExplainResponse(
        pods=[pod("web-1", message=msg), pod("web-2", message=msg)], nodes=2))
    assert lines == [f"deployment.apps/web (2 pods): unschedulable: {msg}",
                     "  a: needs 1Gi memory, 0 free", "  b: node is NotReady"]


class FakeStore:
    """Just the reads explain_manifests makes; any write would fail loudly."""

    def __init__(self, nodes, pods):
        self.items = {"Node": nodes, "Pod": pods}

    async def list(self, kind, namespace=None, revision=0):
        assert namespace is None
        return list(self.items[kind.name]), 7


def test_explain_manifests_replaces_same_named_pods_and_bounds_the_work(monkeypatch):
    from controlplane.api import explain as server_explain

    store = FakeStore([make_node("a", memory="4Gi")], [bound_pod("api", "a", "3Gi")])
    response = asyncio.run(server_explain.explain_manifests(
        store, docs(pod_yaml("api", "3Gi")), SchedulerConfig()))
    # The manifest's "api" would take the stored one's place, so the node has room for it.
    assert (response.nodes, response.pods[0].node) == (1, "a")
    monkeypatch.setattr(server_explain, "MAX_POD_NODE_PAIRS", 2)
    with pytest.raises(server_explain.TooLarge, match="3 pods over 1 nodes"):
        asyncio.run(server_explain.explain_manifests(
            store, docs(deployment_yaml("web", 3)), SchedulerConfig()))
