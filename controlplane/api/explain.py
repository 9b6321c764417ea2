"""Explain: where the pods of some manifests would land, and why not on the other nodes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Set
from dataclasses import dataclass

from controlplane.controllers.deployment import new_pod
from controlplane.scheduler import (
    NodeInfo,
    Placement,
    SchedulerConfig,
    batch_order,
    explain,
)
from controlplane.scheduler.objects import node_info, pod_info
from controlplane.scheduler.volumes import claim_key
from controlplane.scheduler.volumes import needs as volume_needs
from controlplane.scheduler.volumes import storage_used as volume_storage_used
from controlplane.store import Store
from moorage.manifest import Document
from moorage.model import kinds, storage
from moorage.model.deployments import template_hash
from moorage.model.pods import TERMINAL_PHASES
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb

NODE = kinds.BY_NAME["Node"]
POD = kinds.BY_NAME["Pod"]
# Pods that have finished hold no resources on their node any more.
# Every pod is checked against every node, and the answer lists every node per pod, so this
# bounds both the work and the response (well under the server's 16 MiB message limit).
MAX_POD_NODE_PAIRS = 250_000


class TooLarge(ValueError):
    """More pods times nodes than one explain may consider."""


@dataclass(frozen=True, slots=True)
class NewPod:
    """A pod the manifests would create, with the manifest object it comes from."""

    kind: str
    namespace: str
    name: str
    pod: pb.Pod


def expand(docs: list[Document]) -> list[NewPod]:
    """The pods the documents would create, in manifest order (replicas in order)."""
    out: list[NewPod] = []
    for doc in docs:
        obj = doc.obj
        kind = kinds.kind_of(obj).name
        meta = obj.metadata
        if kind == "Pod":
            out.append(NewPod(kind, meta.namespace, meta.name, obj))
        elif kind == "Deployment":
            for i in range(1, obj.spec.replicas + 1):
                out.append(NewPod(kind, meta.namespace, meta.name, replica(obj, i)))
    return out


def replica(deployment: pb.Deployment, index: int) -> pb.Pod:
    """Replica `index` of a Deployment, as its controller would create it (the same builder:
    labels, pod-template-hash, controller reference), named `<deployment>-<index>` to read."""
    pod = new_pod(deployment, template_hash(deployment.spec.template), str(index), 0.0)
    pod.metadata.name = f"{deployment.metadata.name}-{index}"
    pod.metadata.ClearField("creation_timestamp")
    return pod


def is_bound(pod: pb.Pod) -> bool:
    return bool(pod.spec.node_name) and pod.status.phase not in TERMINAL_PHASES


def cluster_nodes(nodes: list[pb.Node], pods: list[pb.Pod],
                  replaced: Set[tuple[str, str]] = frozenset(),
                  storage_used: dict[str, int] | None = None) -> list[NodeInfo]:
    """NodeInfos with their bound pods; pods named in `replaced` are left out, since the
    manifests' pods of those names would take their place. `storage_used`: bytes given to
    PersistentVolumes per node."""
    on_node: dict[str, list] = {n.metadata.name: [] for n in nodes}
    for pod in pods:
        held = on_node.get(pod.spec.node_name)
        if held is None or not is_bound(pod):
            continue
        if (pod.metadata.namespace, pod.metadata.name) in replaced:
            continue
        held.append(pod_info(pod))
    used = storage_used or {}
    return [node_info(n, tuple(on_node[n.metadata.name]), used.get(n.metadata.name, 0))
            for n in nodes]


def plan(new: list[NewPod], nodes: list[NodeInfo], config: SchedulerConfig,
         volumes: list | None = None) -> list[api_pb2.PodExplanation]:
    """Decides the new pods one at a time in the scheduler's batch order, each against the
    nodes as the earlier ones left them, so the outcomes are those of `schedule_batch` with
    every node scored; answers in the order of `new`."""
    infos = [dataclasses.replace(pod_info(p.pod), creation_index=i,
                                 volumes=volumes[i] if volumes else None)
             for i, p in enumerate(new)]
    # Explain always scores every node, so ask for the same of the config it is given. (With
    # a `seed`, ties may still break otherwise than in one batch, which shares one Random.)
    config = dataclasses.replace(config, percentage_of_nodes_to_score=100)
    state = {n.name: n for n in nodes}
    answers: list[api_pb2.PodExplanation | None] = [None] * len(new)
    for i in sorted(range(len(new)), key=lambda j: batch_order(infos[j])):
        exp = explain(infos[i], tuple(state.values()), config)
        source = new[i]
        answer = api_pb2.PodExplanation(kind=source.kind, namespace=source.namespace,
                                        name=source.name, pod=source.pod.metadata.name)
        outcome = exp.outcome
        if isinstance(outcome, Placement):
            answer.node, answer.score = outcome.node, outcome.score
            state[outcome.node] = state[outcome.node].with_pod(infos[i])
        else:
            answer.message = outcome.message
        for verdict in exp.verdicts:  # already sorted by node
            if verdict.reason is not None:
                answer.rejected.add(node=verdict.node, reason=verdict.reason.detail)
        feasible = [v for v in exp.verdicts if v.reason is None]
        feasible.sort(key=lambda v: (-v.score, v.node))
        for verdict in feasible:
            answer.candidates.add(node=verdict.node, score=verdict.score)
        answers[i] = answer
    return answers


async def explain_manifests(store: Store, docs: list[Document], config: SchedulerConfig
                            ) -> api_pb2.ExplainResponse:
    """Where the documents' pods would land given the stored nodes and pods; writes nothing."""
    new = expand(docs)
    nodes, revision = await store.list(NODE, None)
    # Pods at the nodes' revision: one consistent picture of the cluster.
    pods, _ = await store.list(POD, None, revision=revision)
    pairs = len(new) * max(len(nodes), 1)
    if pairs > MAX_POD_NODE_PAIRS:
        raise TooLarge(f"{len(new)} pods over {len(nodes)} nodes is more than one explain "
                       f"considers ({MAX_POD_NODE_PAIRS} pod-node pairs); explain fewer "
                       "manifests or fewer replicas at a time")
    replaced = {(p.namespace, p.pod.metadata.name) for p in new}
    claims, volumes, classes = ({}, {}, {})
    if any(storage.claim_names(p.pod.spec) for p in new):
        claims, volumes, classes = await _storage(store, docs, revision)
    state = cluster_nodes(nodes, pods, replaced, volume_storage_used(volumes))
    users: dict[str, list[str]] = {}
    for pod in pods:
        if is_bound(pod) and (pod.metadata.namespace, pod.metadata.name) not in replaced:
            for name in storage.claim_names(pod.spec):
                users.setdefault(claim_key(pod.metadata.namespace, name), []).append(
                    f"{pod.metadata.namespace}/{pod.metadata.name}")
    needs_of = [volume_needs(p.pod, claims, volumes, classes, lambda k: users.get(k, []))
                for p in new]
    # Pure CPU work: a thread keeps the event loop serving other calls meanwhile.
    answers = await asyncio.to_thread(plan, new, state, config, needs_of)
    return api_pb2.ExplainResponse(pods=answers, nodes=len(nodes))


async def _storage(store: Store, docs: list[Document], revision: int):
    """Claims (by namespace/name), volumes and classes (by name) as the manifests would
    leave them: the stored ones at `revision`, with the manifests' own on top."""
    claim_kind = kinds.BY_NAME["PersistentVolumeClaim"]
    stored_claims, _ = await store.list(claim_kind, None, revision=revision)
    stored_volumes, _ = await store.list(kinds.BY_NAME["PersistentVolume"], None,
                                         revision=revision)
    stored_classes, _ = await store.list(kinds.BY_NAME["StorageClass"], None,
                                         revision=revision)
    claims = {claim_key(c.metadata.namespace, c.metadata.name): c for c in stored_claims}
    volumes = {v.metadata.name: v for v in stored_volumes}
    classes = {c.metadata.name: c for c in stored_classes}
    for doc in docs:
        kind = kinds.kind_of(doc.obj).name
        if kind == "StorageClass":
            classes[doc.obj.metadata.name] = doc.obj
        elif kind == "PersistentVolumeClaim":
            key = claim_key(doc.obj.metadata.namespace, doc.obj.metadata.name)
            claims.setdefault(key, doc.obj)   # a stored claim keeps its binding
    return claims, volumes, classes
