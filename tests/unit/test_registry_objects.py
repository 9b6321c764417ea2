"""The cluster registry, as pure parts: the objects `moor registry deploy` applies (they
validate as manifests), the image's build context, its tag, the node it picks, the build
machine's registries.json, the aliases the control plane derives from Services, and the agents'
merge of them into their pull settings."""

from __future__ import annotations

import json
import os

import pytest

from controlplane.identity.auth import Identity, authorize
from moorage.cli import registryobjects as ro
from moorage.manifest import parse
from moorage.model.registries import CLUSTER_REGISTRY, REGISTRY_ANNOTATION, aliases
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.runtime.images.registry import RegistryConfig
from nodeagent.session.registries import NodeRegistries, merge

SETTINGS = ro.Settings(node="node-2", storage="5Gi", node_port=30555,
                       image="registry.cluster.local:5000/moorage/registry:2.8.2")


def _docs():
    return parse([("moor registry deploy", "\n---\n".join(
        json.dumps(o) for o in ro.objects(SETTINGS)))])


def test_objects_validate_as_manifests():
    docs = _docs()
    assert [type(d.obj).__name__ for d in docs] == ["Namespace", "Service", "Service",
                                                   "StatefulSet"]
    _, headless, svc, sts = (d.obj for d in docs)
    assert svc.spec.type == "NodePort"
    assert [(p.port, p.node_port) for p in svc.spec.ports] == [(5000, 30555)]
    assert svc.metadata.annotations[REGISTRY_ANNOTATION] == CLUSTER_REGISTRY
    assert headless.spec.cluster_ip == "None"
    assert sts.spec.service_name == headless.metadata.name
    assert sts.spec.replicas == 1
    pod = sts.spec.template.spec
    assert dict(pod.node_selector) == {"kubernetes.io/hostname": "node-2"}
    [c] = pod.containers
    assert c.image == SETTINGS.image and c.image_pull_policy == "IfNotPresent"
    assert c.readiness_probe.http_get.path == "/v2/"
    assert [(m.name, m.mount_path) for m in c.volume_mounts] == [("data", "/var/lib/registry")]
    [tmpl] = sts.spec.volume_claim_templates
    assert tmpl.spec.resources.requests["storage"] == "5Gi"
    assert ro.claim_name() == "data-registry-0"
    assert {d.obj.metadata.namespace for d in docs[1:]} == {"moorage-system"}


def test_dockerfile_copies_the_binary_and_its_glibc_from_the_context():
    text = ro.dockerfile()
    assert text.splitlines()[2] == "FROM scratch"
    for rel, source in ro.context_files().items():
        if source:
            assert f"COPY {rel} {source}" in text
    assert "COPY config.yml /etc/docker/registry/config.yml" in text
    assert 'ENTRYPOINT ["/usr/bin/docker-registry"]' in text
    assert "VOLUME /var/lib/registry" in text and "EXPOSE 5000" in text
    assert "rootdirectory: /var/lib/registry" in ro.CONFIG_YML
    assert "addr: :5000" in ro.CONFIG_YML
    assert "delete:\n    enabled: true" in ro.CONFIG_YML


@pytest.mark.parametrize("version, tag", [
    ("2.8.2+ds1", "2.8.2"), ("2.8.2+ds1-1", "2.8.2"), ("2.8.2-1", "2.8.2"),
    ("v3.0.0", "3.0.0"), ("3.0.0-rc.1", "3.0.0-rc.1"), ("2.7.1~bpo1", "2.7.1"),
])
def test_image_tag(version, tag):
    assert ro.image_tag(version) == tag


def test_image_tag_refuses_what_no_tag_can_be():
    with pytest.raises(ValueError):
        ro.image_tag("+ds1")


def node(name: str, ready: bool = True, room: str = "", cordoned: bool = False) -> pb.Node:
    n = pb.Node()
    n.metadata.name = name
    n.spec.unschedulable = cordoned
    n.status.conditions.add(type="Ready", status="True" if ready else "False")
    if room:
        n.status.allocatable["moorage.io/local-storage"] = room
    return n


NODES = [node("a", room="10Gi"), node("b", room="50Gi"), node("c", room="90Gi", ready=False),
         node("d", room="80Gi", cordoned=True), node("e", room="50Gi")]


@pytest.mark.parametrize("requested, current, want", [
    pytest.param("", "", "b", id="most-room-then-name"),
    pytest.param("a", "", "a", id="asked-for"),
    pytest.param("", "c", "c", id="where-its-data-is"),
    pytest.param("c", "c", "c", id="asked-where-its-data-is"),
])
def test_pick_node(requested, current, want):
    assert ro.pick_node(NODES, requested, current) == want


@pytest.mark.parametrize("nodes, requested, current, reason", [
    pytest.param(NODES, "a", "b", "the registry's data is on node b", id="data-elsewhere"),
    pytest.param(NODES, "x", "", 'nodes "x" not found', id="unknown"),
    pytest.param(NODES, "c", "", "node c is not Ready", id="not-ready"),
    pytest.param([node("c", ready=False)], "", "", "no node is Ready", id="none"),
])
def test_pick_node_refuses(nodes, requested, current, reason):
    with pytest.raises(ValueError, match=reason):
        ro.pick_node(nodes, requested, current)


def test_registries_json_merges_with_what_is_there():
    current = {"mirrors": {"docker.io": ["https://mirror.example"],
                           CLUSTER_REGISTRY: ["http://10.0.0.9:30500"]},
               "insecure": ["10.0.0.9:30500"], "auths": {"x": 1}}
    got = ro.registries_json(current, "10.0.0.11", 30500)
    assert got["mirrors"] == {"docker.io": ["https://mirror.example"],
                              CLUSTER_REGISTRY: ["http://10.0.0.11:30500"]}
    assert got["insecure"] == ["10.0.0.9:30500", CLUSTER_REGISTRY, "10.0.0.11:30500"]
    assert got["auths"] == {"x": 1}
    assert ro.registries_json(got, "10.0.0.11", 30500) == got   # a second deploy: the same
    assert current["mirrors"][CLUSTER_REGISTRY] == ["http://10.0.0.9:30500"]   # not mutated


# ---- the aliases ----

def service(name: str, ip: str = "10.96.0.12", annotation: str = CLUSTER_REGISTRY,
            created: str = "2026-01-01T00:00:00Z", ports=(("registry", 5000),),
            namespace: str = "moorage-system") -> pb.Service:
    svc = pb.Service()
    svc.metadata.name, svc.metadata.namespace = name, namespace
    svc.metadata.creation_timestamp = created
    if annotation:
        svc.metadata.annotations[REGISTRY_ANNOTATION] = annotation
    svc.spec.cluster_ip = ip
    for port_name, port in ports:
        svc.spec.ports.add(name=port_name, port=port, protocol="TCP")
    return svc


def test_alias_from_an_annotated_service():
    got = aliases([service("registry"), service("web", annotation="")])
    assert [(a.name, list(a.mirrors), list(a.insecure)) for a in got.aliases] == [
        (CLUSTER_REGISTRY, ["http://10.96.0.12:5000"], ["10.96.0.12:5000", CLUSTER_REGISTRY])]


@pytest.mark.parametrize("svc", [
    pytest.param(service("r", ip=""), id="no-cluster-ip-yet"),
    pytest.param(service("r", ip="None"), id="headless"),
    pytest.param(service("r", ports=()), id="no-port"),
])
def test_no_alias(svc):
    assert not aliases([svc]).aliases


def test_the_older_service_keeps_a_name_and_the_named_port_wins():
    old = service("registry", ip="10.96.0.12", ports=(("metrics", 9000), ("registry", 5000)))
    new = service("evil", ip="10.96.0.99", created="2026-06-01T00:00:00Z", namespace="x")
    [alias] = aliases([new, old]).aliases
    assert list(alias.mirrors) == ["http://10.96.0.12:5000"]


def test_agents_merge_aliases_after_their_own_mirrors():
    base = RegistryConfig(mirrors={CLUSTER_REGISTRY: ["http://own:5000"]},
                          insecure=frozenset({"own:5000"}))
    msg = agent_pb2.ClusterRegistries(aliases=[agent_pb2.RegistryAlias(
        name=CLUSTER_REGISTRY, mirrors=["http://10.96.0.12:5000"],
        insecure=[CLUSTER_REGISTRY, "10.96.0.12:5000"])])
    config, problems = merge(base, msg)
    assert problems == []
    assert [e.base_url for e in config.endpoints(CLUSTER_REGISTRY)] == [
        "http://own:5000", "http://10.96.0.12:5000", f"http://{CLUSTER_REGISTRY}"]
    assert base.mirrors[CLUSTER_REGISTRY] == ["http://own:5000"]   # not mutated


def test_an_unusable_alias_is_left_out_with_its_reason():
    msg = agent_pb2.ClusterRegistries(aliases=[agent_pb2.RegistryAlias(
        name=CLUSTER_REGISTRY, mirrors=["http://10.96.0.12:5000"], insecure=[])])
    config, problems = merge(RegistryConfig(), msg)
    assert config.mirrors == {} and len(problems) == 1
    assert "plain HTTP" in problems[0]


def test_node_registries_follow_the_latest_message():
    regs = NodeRegistries(RegistryConfig())
    msg = agent_pb2.ClusterRegistries(aliases=[agent_pb2.RegistryAlias(
        name=CLUSTER_REGISTRY, mirrors=["http://10.96.0.12:5000"],
        insecure=[CLUSTER_REGISTRY, "10.96.0.12:5000"])])
    regs.apply(msg)
    assert regs().endpoints(CLUSTER_REGISTRY)[0].base_url == "http://10.96.0.12:5000"
    regs.apply(agent_pb2.ClusterRegistries())   # the registry's Service went
    assert regs().mirrors == {} and regs().insecure == frozenset()


# ---- who may load images ----

def test_only_admins_may_load_images():
    assert authorize(Identity("admin", "admin"), "/moorage.v1.Images/Load", None).allowed
    denied = authorize(Identity("node", "node-1"), "/moorage.v1.Images/Load", None)
    assert not denied.allowed and "may not call Load" in denied.message
    assert authorize(None, "/moorage.v1.Images/Load", None).code.name == "UNAUTHENTICATED"


def test_the_service_index_sends_aliases_when_they_change_only():
    import asyncio

    from controlplane.dispatcher.servicetable import ServiceIndex

    async def go():
        sent = []
        index = ServiceIndex(store=None, broadcast=lambda table: None, coalesce_seconds=0,
                             on_registries=sent.append)
        index._resync_services([service("web", annotation="")])
        index._resync_pods([])
        assert index.synced.is_set() and sent == [] and not index.registries().aliases
        index._put_service(service("registry"))
        assert [a.name for a in sent[-1].aliases] == [CLUSTER_REGISTRY]
        index._put_service(service("registry"))          # the same: nothing sent
        index._put_service(service("web", annotation=""))
        assert len(sent) == 1
        index._put_service(service("registry", ip="10.96.0.13"))
        assert list(sent[-1].aliases[0].mirrors) == ["http://10.96.0.13:5000"]
        index._delete_service(service("registry"))
        assert list(sent[-1].aliases) == [] and len(sent) == 3
        assert index.registries() == agent_pb2.ClusterRegistries()

    asyncio.run(go())


def test_the_registry_image_context_holds_what_the_dockerfile_copies(tmp_state):
    import pathlib

    from moorage.cli.registry import make_context

    tmp_path = pathlib.Path(tmp_state)
    if not all(os.path.exists(p) for p in filter(None, ro.context_files().values())):
        pytest.skip("needs Debian's docker-registry")
    make_context(str(tmp_path))
    assert (tmp_path / "Dockerfile").read_text() == ro.dockerfile()
    assert (tmp_path / "config.yml").read_text() == ro.CONFIG_YML
    for rel, source in ro.context_files().items():
        if source:
            got = tmp_path / rel
            assert got.is_file() and not got.is_symlink()
            assert got.stat().st_size == os.path.getsize(os.path.realpath(source))
            assert os.access(got, os.X_OK)
