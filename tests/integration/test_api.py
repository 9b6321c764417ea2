"""The Cluster API through real gRPC against a real etcd: apply, get, list, delete, watch."""

from __future__ import annotations

import pathlib
import threading

import grpc
import pytest
import yaml

from moorage import protogen
from moorage.manifest.convert import object_to_dict
from moorage.model import kinds
from moorage.v1 import api_pb2, api_pb2_grpc
from moorage.v1 import objects_pb2 as pb

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "k8s"


def apply(stub, *files: tuple[str, str], dry_run: bool = False):
    return stub.Apply(api_pb2.ApplyRequest(
        manifests=[api_pb2.Manifest(source=s, content=c) for s, c in files], dry_run=dry_run))


def ns_doc(name: str) -> tuple[str, str]:
    return (f"{name}.yaml", f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")


def in_ns(path: pathlib.Path, ns: str) -> tuple[str, str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d["kind"] != "Namespace":
            d["metadata"]["namespace"] = ns
        if d["kind"] == "Service":
            # Node ports are cluster-wide: a copy in another namespace gets a free one.
            for port in d["spec"].get("ports", []):
                port.pop("nodePort", None)
    return path.name, yaml.safe_dump_all(docs)


def test_generated_api_is_not_stale():
    assert protogen.stale() == [], "run `make proto` and commit the result"


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.iterdir()))
def test_real_kubernetes_manifests_apply_unchanged_and_read_back(controlplane, fixture, request):
    stub = controlplane.stub()
    ns = "k8s-" + request.node.callspec.id.split(".")[0].replace("_", "-")[:40]
    path = FIXTURES / fixture
    source, text = in_ns(path, ns) if fixture != "namespace.json" else (fixture, path.read_text())
    resp = apply(stub, ns_doc(ns), (source, text))
    assert {r.action for r in resp.results} == {"created"}
    originals = [d for d in yaml.safe_load_all(text) if d]
    for doc in originals:
        kind = kinds.lookup(doc["kind"])
        got = kinds.unwrap(stub.Get(api_pb2.GetRequest(
            kind=kind.name, namespace=doc["metadata"].get("namespace", ""),
            name=doc["metadata"]["name"])))
        shape = object_to_dict(got)
        # Everything the user wrote reads back as written (defaults may be added around it).
        assert _contains(shape, doc), (shape, doc)
        assert shape["metadata"]["uid"] and shape["metadata"]["resourceVersion"]
    again = apply(stub, (source, text))
    assert {r.action for r in again.results} == {"unchanged"}
    assert again.revision == 0


def _contains(have, want) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(
            _contains(h, w) for h, w in zip(have, want))
    if isinstance(want, (int, float)) and isinstance(have, str):
        return str(want) == have  # quantities are stored as strings, as Kubernetes prints them
    return have == want


def test_apply_configure_keeps_identity_and_bumps_generation(controlplane):
    stub = controlplane.stub()
    text = (FIXTURES / "nginx-deployment.yaml").read_text()
    apply(stub, ns_doc("gen"), in_ns(FIXTURES / "nginx-deployment.yaml", "gen"))
    first = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="deploy", namespace="gen",
                                                     name="nginx-deployment")))
    assert first.metadata.generation == 1 and first.spec.replicas == 3
    changed = text.replace("nginx:1.14.2", "nginx:1.16.1").replace("  replicas: 3\n", "")
    changed = changed.replace("labels:\n    app: nginx\nspec",
                              "labels:\n    app: nginx\n  namespace: gen\nspec")
    dry = apply(stub, ("nginx.yaml", changed), dry_run=True)
    assert dry.results[0].previous.deployment.spec.template.spec.containers[0].image == "nginx:1.14.2"
    resp = apply(stub, ("nginx.yaml", changed))
    assert [r.action for r in resp.results] == ["configured"]
    assert not resp.results[0].HasField("previous")
    second = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="deployments", namespace="gen",
                                                      name="nginx-deployment")))
    assert second.metadata.uid == first.metadata.uid
    assert second.metadata.creation_timestamp == first.metadata.creation_timestamp
    assert second.metadata.generation == 2
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    # replicas left out of the manifest keep the cluster's value, as kubectl apply does.
    assert second.spec.replicas == 3


def test_dry_run_reports_but_writes_nothing(controlplane):
    stub = controlplane.stub()
    before = controlplane.snapshot()
    resp = apply(stub, ns_doc("dry"), in_ns(FIXTURES / "service.yaml", "dry"), dry_run=True)
    assert [r.action for r in resp.results] == ["created"] * 4
    assert resp.revision == 0
    assert controlplane.snapshot() == before


def test_multi_object_apply_is_all_or_nothing_against_a_concurrent_change(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("atomic"))
    with pytest.raises(grpc.RpcError) as err:
        apply(stub, ns_doc("atomic2"), in_ns(FIXTURES / "pod.yaml", "atomic"),
              ("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n"))
    assert "bad.yaml[0] spec.containers: at least one container is required" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Get(api_pb2.GetRequest(kind="namespace", name="atomic2"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pod_spec_is_immutable_except_image(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("immut"), in_ns(FIXTURES / "pod.yaml", "immut"))
    _, text = in_ns(FIXTURES / "pod.yaml", "immut")
    resp = apply(stub, ("pod.yaml", text.replace("nginx:1.14.2", "nginx:1.16.1")))
    assert resp.results[0].action == "configured"
    with pytest.raises(grpc.RpcError) as err:
        apply(stub, ("pod.yaml", text.replace("disktype: ssd", "disktype: hdd")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("pod.yaml[0] spec: a pod's spec cannot change")


def test_list_filters_by_label_and_field_selector_at_one_revision(controlplane):
    stub = controlplane.stub()
    pods = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: sel, "
        f"labels: {{tier: {'web' if i % 2 else 'db'}}}}}\n"
        f"spec: {{nodeName: n{i % 3}, containers: [{{name: c, image: busybox}}]}}\n"
        for i in range(6))
    apply(stub, ns_doc("sel"), ("pods.yaml", pods))
    resp = stub.List(api_pb2.ListRequest(kind="pods", namespace="sel", label_selector="tier=web"))
    assert [kinds.unwrap(o).metadata.name for o in resp.items] == ["p1", "p3", "p5"]
    assert int(resp.resource_version) >= max(
        int(kinds.unwrap(o).metadata.resource_version) for o in resp.items)
    resp = stub.List(api_pb2.ListRequest(kind="po", namespace="sel",
                                         field_selector="spec.nodeName=n0"))
    assert [kinds.unwrap(o).metadata.name for o in resp.items] == ["p0", "p3"]
    resp = stub.List(api_pb2.ListRequest(kind="pods", namespace="sel",
                                         label_selector="tier in (web,db),tier!=db"))
    assert len(resp.items) == 3
    everywhere = stub.List(api_pb2.ListRequest(kind="namespaces"))
    assert {"default", "sel"} <= {kinds.unwrap(o).metadata.name for o in everywhere.items}
    with pytest.raises(grpc.RpcError) as err:
        stub.List(api_pb2.ListRequest(kind="pods", label_selector="tier in web"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.List(api_pb2.ListRequest(kind="ingresses"))
    assert 'doesn\'t have a resource type "ingresses"' in err.value.details()


def test_delete_with_version_precondition_and_namespace_cascade(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("gone"), in_ns(FIXTURES / "service.yaml", "gone"))
    svc = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="svc", namespace="gone",
                                                   name="my-service")))
    with pytest.raises(grpc.RpcError) as err:
        stub.Delete(api_pb2.DeleteRequest(kind="svc", namespace="gone", name="my-service",
                                          resource_version="1"))
    assert err.value.code() == grpc.StatusCode.ABORTED
    stub.Delete(api_pb2.DeleteRequest(kind="svc", namespace="gone", name="my-service",
                                      resource_version=svc.metadata.resource_version))
    with pytest.raises(grpc.RpcError) as err:
        stub.Delete(api_pb2.DeleteRequest(kind="svc", namespace="gone", name="my-service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stub.Delete(api_pb2.DeleteRequest(kind="ns", name="gone"))
    left = stub.List(api_pb2.ListRequest(kind="services", namespace="gone"))
    assert list(left.items) == []
    with pytest.raises(grpc.RpcError) as err:
        stub.Delete(api_pb2.DeleteRequest(kind="ns", name="default"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_watch_streams_changes_from_a_resource_version(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("watched"))
    start = stub.List(api_pb2.ListRequest(kind="pods", namespace="watched")).resource_version
    events, done = [], threading.Event()
    call = stub.Watch(api_pb2.WatchRequest(kind="pods", namespace="watched",
                                           resource_version=start))

    def pull():
        for ev in call:
            events.append((ev.type, kinds.unwrap(ev.object).metadata.name))
            if len(events) == 3:
                done.set()
                return
    t = threading.Thread(target=pull, daemon=True)
    t.start()
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: w, namespace: watched}\nspec: {containers: [{name: c, image: %s}]}\n"
    apply(stub, ("w.yaml", pod % "busybox"))
    apply(stub, ("w.yaml", pod % "busybox:1.36"))
    stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace="watched", name="w"))
    assert done.wait(10), events
    call.cancel()
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_watch_without_version_lists_then_bookmarks(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("wl"), ("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: wl}\nspec: {containers: [{name: c, image: busybox}]}\n"))
    call = stub.Watch(api_pb2.WatchRequest(kind="pods", namespace="wl"))
    first, second = next(call), next(call)
    call.cancel()
    assert (first.type, kinds.unwrap(first.object).metadata.name) == ("ADDED", "a")
    assert second.type == "BOOKMARK" and int(second.resource_version) > 0


def test_get_json_shape_is_kubectls(controlplane):
    stub = controlplane.stub()
    apply(stub, ns_doc("shape"), in_ns(FIXTURES / "nginx-deployment.yaml", "shape"))
    obj = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="deployment", namespace="shape",
                                                   name="nginx-deployment")))
    d = object_to_dict(obj)
    assert list(d)[:3] == ["apiVersion", "kind", "metadata"]
    assert d["apiVersion"] == "apps/v1" and d["kind"] == "Deployment"
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": "25%", "maxSurge": "25%"}
    assert d["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}]
    assert isinstance(obj, pb.Deployment)


def test_metrics_count_requests_by_method_and_code(controlplane):
    import urllib.request

    stub = controlplane.stub()
    with pytest.raises(grpc.RpcError):
        stub.Get(api_pb2.GetRequest(kind="pod", namespace="default", name="nope"))
    body = urllib.request.urlopen(f"http://{controlplane.metrics}/metrics").read().decode()
    assert 'moorage_api_requests_total{code="NOT_FOUND",method="Get"}' in body
    assert "moorage_api_request_duration_seconds_bucket" in body


def test_health_service_reports_serving(controlplane):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # Over mTLS as admin, and in plaintext on the CA listener (for load balancers' checks).
    for channel in (controlplane.channel(), grpc.insecure_channel(controlplane.ca_address)):
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service="moorage.v1.Cluster"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_no_anonymous_calls(controlplane, tmp_path):
    """Plaintext reaches only GetCA; the API port will not even finish a handshake without a
    certificate from the cluster CA; a certificate from another CA is refused the same way."""
    from controlplane.identity import ClusterCA
    from moorage.credentials import split_bundle
    from moorage.v1 import agent_pb2, agent_pb2_grpc

    before = controlplane.snapshot()
    anon = grpc.insecure_channel(controlplane.ca_address)
    ca_pem = agent_pb2_grpc.BootstrapStub(anon).GetCA(agent_pb2.GetCARequest()).ca_pem
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    for call, req in ((api_pb2_grpc.ClusterStub(anon).Apply, api_pb2.ApplyRequest(
            manifests=[api_pb2.Manifest(content='{"apiVersion":"v1","kind":"Namespace",'
                                                '"metadata":{"name":"anon"}}')])),
                      (api_pb2_grpc.ClusterStub(anon).List, api_pb2.ListRequest(kind="pods")),
                      (api_pb2_grpc.ClusterStub(anon).CreateToken, api_pb2.CreateTokenRequest())):
        with pytest.raises(grpc.RpcError) as exc:
            call(req, timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED, exc.value.details()
        assert "client certificate" in exc.value.details()
    # TLS to the API port with only the CA trusted (no client certificate).
    server_only = grpc.secure_channel(controlplane.address,
                                      grpc.ssl_channel_credentials(root_certificates=ca_pem))
    # A complete admin bundle from a foreign CA.
    foreign = ClusterCA.load_or_create(str(tmp_path / "other"))
    fcert, fkey, _ = split_bundle(pathlib.Path(foreign.admin_credentials()).read_bytes())
    impostor = grpc.secure_channel(controlplane.address, grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=fkey, certificate_chain=fcert))
    for channel in (server_only, impostor):
        with pytest.raises(grpc.RpcError) as exc:
            api_pb2_grpc.ClusterStub(channel).List(api_pb2.ListRequest(kind="pods"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert controlplane.snapshot() == before


def test_watch_from_a_compacted_version_resyncs_through_the_api(controlplane):
    import asyncio

    from tests.conftest import etcd_client

    stub = controlplane.stub()
    apply(stub, ns_doc("compacted"))
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: compacted}\n"
           "spec: {containers: [{name: c, image: busybox}]}\n")
    apply(stub, ("a.yaml", pod % "a"))
    old = stub.List(api_pb2.ListRequest(kind="pods", namespace="compacted")).resource_version
    apply(stub, ("b.yaml", pod % "b"))
    stub.Delete(api_pb2.DeleteRequest(kind="pod", namespace="compacted", name="a"))
    now = stub.List(api_pb2.ListRequest(kind="pods", namespace="compacted")).resource_version

    async def compact():
        client = etcd_client(controlplane.etcd)
        await client.connect()
        await client.compact(int(now), physical=True)
        await client.close()
    asyncio.run(compact())
    call = stub.Watch(api_pb2.WatchRequest(kind="pods", namespace="compacted",
                                           resource_version=old))
    first, second, third = next(call), next(call), next(call)
    call.cancel()
    assert first.type == "RESYNC"
    assert (second.type, kinds.unwrap(second.object).metadata.name) == ("ADDED", "b")
    assert third.type == "BOOKMARK" and int(third.resource_version) >= int(now)


def test_apply_with_a_fresh_resource_version_succeeds_after_an_outside_write(controlplane):
    import asyncio

    from controlplane.store import Store
    from tests.conftest import etcd_client

    stub = controlplane.stub()
    apply(stub, ("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: pinned}\n"))

    async def outside_write():   # a writer that is not this API server (its cache goes stale)
        store = Store(etcd_client(controlplane.etcd), prefix=controlplane.prefix)
        ns = await store.get(kinds.lookup("ns"), "", "pinned")
        ns.metadata.labels["by"] = "controller"
        await store.update(ns)
        await store.client.close()
    asyncio.run(outside_write())
    fresh = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="ns", name="pinned")))
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: pinned, resourceVersion: "
            f"'{fresh.metadata.resource_version}', labels: {{by: me}}}}\n")
    resp = apply(stub, ("ns.yaml", text))
    assert resp.results[0].action == "configured"
    with pytest.raises(grpc.RpcError) as err:       # the old version is now stale
        apply(stub, ("ns.yaml", text))
    assert err.value.code() == grpc.StatusCode.ABORTED


def test_apply_keeps_annotations_the_cluster_owns(controlplane):
    import asyncio

    from controlplane.store import Store
    from tests.conftest import etcd_client

    stub = controlplane.stub()
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: owned, annotations: {mine: x}}\n"
    apply(stub, ("ns.yaml", text))

    async def controller_writes():
        store = Store(etcd_client(controlplane.etcd), prefix=controlplane.prefix)
        ns = await store.get(kinds.lookup("ns"), "", "owned")
        ns.metadata.annotations["deployment.kubernetes.io/revision"] = "3"
        await store.update(ns)
        await store.client.close()
    asyncio.run(controller_writes())
    assert apply(stub, ("ns.yaml", text)).results[0].action == "unchanged"
    got = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="ns", name="owned")))
    assert dict(got.metadata.annotations) == {"mine": "x",
                                              "deployment.kubernetes.io/revision": "3"}
    # Annotations the user set are still the manifest's to remove.
    apply(stub, ("ns.yaml", text.replace("mine: x", "other: y")))
    got = kinds.unwrap(stub.Get(api_pb2.GetRequest(kind="ns", name="owned")))
    assert "mine" not in got.metadata.annotations
