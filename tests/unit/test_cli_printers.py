"""Unit tests of the pure `moor` printers: ages, tables, ports, names and document shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from moorage.cli import describe, printers
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def stamp(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (303, "5m3s"), (599, "9m59s"),
    (720, "12m"), (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 300, "3h5m"),
    (10 * 3600, "10h"), (47 * 3600, "47h"), (5 * 86400, "5d"), (5 * 86400 + 3 * 3600, "5d3h"),
    (30 * 86400, "30d"), (3 * 365 * 86400, "3y"), (3 * 365 * 86400 + 86400, "3y1d"),
    (9 * 365 * 86400, "9y"), (-1, "0s"), (-5, "<invalid>"),
])
def test_human_duration(seconds, text):
    assert printers.human_duration(seconds) == text


def test_format_age_reads_rfc3339_forms():
    assert printers.format_age(stamp(timedelta(seconds=45)), NOW) == "45s"
    assert printers.format_age("2024-05-01T11:48:00.123456Z", NOW) == "11m"
    assert printers.format_age("2024-05-01T14:00:00+02:00", NOW) == "0s"
    assert printers.format_age("", NOW) == "<unknown>"
    assert printers.format_age("yesterday", NOW) == "<unknown>"


def test_render_table_aligns_left_three_spaces_apart_without_trailing_space():
    lines = printers.render_table([["NAME", "READY", "STATUS"],
                                   ["web-7c9f8d-x2k4q", "1/1", "Running"],
                                   ["db", "0/1", ""]])
    assert lines == [
        "NAME               READY   STATUS",
        "web-7c9f8d-x2k4q   1/1     Running",
        "db                 0/1",
    ]


def test_format_row_keeps_earlier_widths_for_watch_rows():
    widths = printers.column_widths([["NAME", "AGE"], ["web", "3h"]])
    assert printers.format_row(["a-much-longer-name", "1s"], widths) == "a-much-longer-name   1s"
    assert printers.format_row(["x", "1s"], widths) == "x      1s"


def service(ports, **spec) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name="web", namespace="default",
                                            creation_timestamp=stamp(timedelta(minutes=12))))
    svc.spec.type = spec.get("type", "")
    svc.spec.cluster_ip = spec.get("cluster_ip", "")
    svc.spec.selector.update(spec.get("selector", {}))
    for port in ports:
        svc.spec.ports.add(**port)
    return svc


def test_service_ports():
    svc = service([{"port": 80}, {"port": 80, "node_port": 30080, "protocol": "TCP"},
                   {"port": 53, "protocol": "UDP"}])
    assert printers.format_service_ports(svc.spec) == "80/TCP,80:30080/TCP,53/UDP"
    assert printers.format_service_ports(service([]).spec) == "<none>"


def test_service_row_and_wide_selector():
    kind = kinds.lookup("svc")
    svc = service([{"port": 80}], cluster_ip="10.96.0.10", selector={"app": "web", "b": "c"})
    assert printers.table_header(kind) == ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]
    assert printers.table_row(svc, kind, now=NOW) == [
        "web", "ClusterIP", "10.96.0.10", "80/TCP", "12m"]
    assert printers.table_row(svc, kind, wide=True, now=NOW)[-1] == "app=web,b=c"


def pod() -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web-1", namespace="shop",
                                      creation_timestamp=stamp(timedelta(hours=3))))
    p.spec.node_name = "node-1"
    p.spec.containers.add(name="web", image="nginx:1.25")
    p.spec.containers.add(name="sidecar", image="busybox")
    p.status.phase = "Running"
    p.status.pod_ip = "10.1.0.5"
    p.status.container_statuses.add(name="web", state="running", ready=True, restart_count=2)
    p.status.container_statuses.add(name="sidecar", state="running", ready=False,
                                    restart_count=1)
    return p


def test_pod_row_with_namespace_column_and_wide():
    kind = kinds.lookup("po")
    assert printers.table_header(kind, wide=True, all_namespaces=True) == [
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert printers.table_row(pod(), kind, wide=True, all_namespaces=True, now=NOW) == [
        "shop", "web-1", "1/2", "Running", "3", "3h", "10.1.0.5", "node-1"]


def test_pod_status_prefers_a_waiting_reason():
    p = pod()
    p.status.container_statuses[1].state = "waiting"
    p.status.container_statuses[1].reason = "CrashLoopBackOff"
    assert printers.pod_status(p) == "CrashLoopBackOff"
    assert printers.pod_status(pb.Pod()) == "Pending"


def test_node_status_and_roles():
    node = pb.Node(metadata=pb.ObjectMeta(name="node-1"))
    assert printers.node_status(node) == "Unknown"
    node.status.conditions.add(type="Ready", status="True")
    node.metadata.labels["node-role.kubernetes.io/control-plane"] = ""
    assert printers.node_status(node) == "Ready"
    assert printers.node_roles(node) == "control-plane"
    node.spec.unschedulable = True
    node.status.conditions[0].status = "False"
    assert printers.node_status(node) == "NotReady,SchedulingDisabled"


def test_deployment_row_defaults_replicas_to_one():
    kind = kinds.lookup("deploy")
    deploy = pb.Deployment(metadata=pb.ObjectMeta(name="web"))
    deploy.status.ready_replicas = 1
    assert printers.table_row(deploy, kind, now=NOW)[:4] == ["web", "1/1", "0", "0"]
    deploy.spec.replicas = 3
    deploy.spec.selector.match_labels["app"] = "web"
    deploy.spec.selector.match_expressions.add(key="tier", operator="In", values=["a", "b"])
    deploy.spec.template.spec.containers.add(name="web", image="nginx:1.25")
    row = printers.table_row(deploy, kind, wide=True, now=NOW)
    assert row[1] == "1/3"
    assert row[-3:] == ["web", "nginx:1.25", "app=web,tier in (a,b)"]


def test_resource_names():
    assert printers.resource_ref(kinds.lookup("deploy"), "web") == "deployment.apps/web"
    assert printers.resource_ref(kinds.lookup("svc"), "web") == "service/web"
    assert printers.object_ref(pb.Namespace(metadata=pb.ObjectMeta(name="shop"))) == \
        "namespace/shop"


def test_object_json_shape():
    data = json.loads(printers.dump(printers.object_dict(pod()), "json"))
    assert list(data)[:3] == ["apiVersion", "kind", "metadata"]
    assert data["kind"] == "Pod" and data["apiVersion"] == "v1"
    assert data["metadata"]["name"] == "web-1"
    assert data["spec"]["nodeName"] == "node-1"
    assert data["status"]["podIP"] == "10.1.0.5"


def test_list_json_shape_is_indented_like_kubectl():
    deploy = pb.Deployment(metadata=pb.ObjectMeta(name="web"))
    text = printers.dump(printers.list_dict([deploy, pod()], "42"), "json")
    assert text.startswith('{\n    "apiVersion": "v1",\n    "kind": "List",\n')
    data = json.loads(text)
    assert list(data) == ["apiVersion", "kind", "items", "metadata"]
    assert data["metadata"] == {"resourceVersion": "42"}
    assert [(i["apiVersion"], i["kind"]) for i in data["items"]] == [
        ("apps/v1", "Deployment"), ("v1", "Pod")]


def test_yaml_keeps_kubectl_key_order():
    text = printers.dump(printers.object_dict(pod()), "yaml")
    assert text.startswith("apiVersion: v1\nkind: Pod\nmetadata:\n")
    assert yaml.safe_load(text)["spec"]["containers"][1]["name"] == "sidecar"


def test_events_sort_oldest_first_and_show_their_object():
    kind = kinds.lookup("ev")
    old, new = pb.Event(), pb.Event()
    old.last_timestamp = stamp(timedelta(minutes=5))
    new.last_timestamp = stamp(timedelta(seconds=3))
    new.involved_object.kind = "Pod"
    new.involved_object.name = "web-1"
    new.reason, new.type, new.message = "Pulled", "Normal", "pulled\nthe image"
    assert printers.sort_for_display(kind, [new, old]) == [old, new]
    assert printers.table_row(new, kind, now=NOW) == [
        "3s", "Normal", "Pulled", "pod/web-1", "pulled the image"]
    assert printers.table_header(kind, wide=True)[-1] == "MESSAGE"


def test_describe_aligns_sections_and_lists_events():
    p = pod()
    p.status.conditions.add(type="PodScheduled", status="False", reason="Unschedulable",
                            message="0/3 nodes are available")
    event = pb.Event(reason="FailedScheduling", type="Warning", message="no nodes", count=2,
                     first_timestamp=stamp(timedelta(minutes=10)),
                     last_timestamp=stamp(timedelta(minutes=5)))
    event.involved_object.kind = "Pod"
    event.involved_object.name = "web-1"
    text = describe.describe(p, [event], now=NOW)
    lines = text.splitlines()
    assert lines[0] == "Name:               web-1"
    assert "Message:            0/3 nodes are available" in lines
    assert "  Warning  FailedScheduling  5m (x2 over 10m)  <none>  no nodes" in lines
    assert describe.describe(pod(), [], now=NOW).rstrip().endswith("Events: <none>")


def test_describe_service_lists_endpoints_per_port():
    from moorage.model.endpoints import service_entry

    svc = service([{"name": "web", "port": 80}, {"name": "metrics", "port": 9100}],
                  cluster_ip="10.96.0.10", selector={"app": "web"})
    svc.spec.ports[1].target_port.str_val = "metrics"
    pods = []
    for i in range(5):
        p = pod()
        p.metadata.name, p.metadata.namespace = f"web-{i}", "default"
        p.metadata.labels["app"] = "web"
        p.status.phase, p.status.pod_ip = "Running", f"10.244.1.{i + 2}"
        p.status.conditions.add(type="Ready", status="True" if i != 4 else "False")
        if i == 0:   # only this one declares the named port
            p.spec.containers[0].ports.add(name="metrics", container_port=9000)
        pods.append(p)
    text = describe.describe(svc, [], now=NOW, endpoints=service_entry(svc, pods))
    lines = [ln for ln in text.splitlines() if ln.startswith("Endpoints:")]
    assert lines == [
        "Endpoints:          10.244.1.2:80,10.244.1.3:80,10.244.1.4:80 + 1 more...",
        "Endpoints:          10.244.1.2:9000"], text
    empty = describe.describe(svc, [], now=NOW, endpoints=service_entry(svc, []))
    assert "Endpoints:          <none>" in empty.splitlines()
    # Pods that could not be listed: no Endpoints line rather than a wrong one.
    assert "Endpoints:" not in describe.describe(svc, [], now=NOW)
