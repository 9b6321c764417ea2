"""Pure parts of the Prometheus integration: file_sd targets from nodes, nodes by condition."""

from __future__ import annotations

import pytest

from controlplane.inventory import node_conditions
from moorage.cli.prometheus import file_sd, server_host
from moorage.v1 import objects_pb2 as pb


def make_node(name: str, ip: str = "", ready: str | None = "True") -> pb.Node:
    node = pb.Node(metadata=pb.ObjectMeta(name=name))
    if ip:
        node.status.addresses.add(type="InternalIP", address=ip)
    node.status.addresses.add(type="Hostname", address=name)
    if ready is not None:
        node.status.conditions.add(type="Ready", status=ready)
    return node


def test_file_sd_groups():
    nodes = [make_node("n2", "10.0.0.12"), make_node("n1", "10.0.0.11"), make_node("bare")]
    groups, warnings = file_sd(nodes, ["10.0.0.2:7441"], 10255)
    assert groups == [
        {"targets": ["10.0.0.2:7441"], "labels": {"component": "controlplane"}},
        {"targets": ["10.0.0.11:10255"], "labels": {"component": "agent", "moorage_node": "n1"}},
        {"targets": ["10.0.0.12:10255"], "labels": {"component": "agent", "moorage_node": "n2"}},
    ]
    assert warnings == ["node bare reports no InternalIP: left out"]


def test_file_sd_ipv6_brackets():
    groups, _ = file_sd([make_node("n1", "fd00::5")], [], 10255)
    assert groups[0]["targets"] == ["[fd00::5]:10255"]


@pytest.mark.parametrize("server, want", [
    pytest.param("10.0.0.2:7440", "10.0.0.2", id="v4"),
    pytest.param("[fd00::2]:7440", "fd00::2", id="v6"),
    pytest.param("cp.example.org:7440", "cp.example.org", id="name"),
])
def test_server_host(server, want):
    assert server_host(server) == want


def test_node_conditions_counts_and_zero_fills():
    nodes = [make_node("a"), make_node("b"), make_node("c", ready="False"),
             make_node("d", ready=None)]
    got = node_conditions(nodes)
    # a, b Ready; c NotReady; d has reported nothing yet: Unknown.
    assert got == {("Ready", "True"): 2, ("Ready", "False"): 1, ("Ready", "Unknown"): 1}
    assert node_conditions([]) == {("Ready", "True"): 0, ("Ready", "False"): 0,
                                   ("Ready", "Unknown"): 0}


def test_describe_node_shows_live_usage():
    from moorage.cli.describe import describe
    from moorage.v1 import api_pb2

    usage = api_pb2.NodeUsage(name="n1", cpu_cores=0.25, cpu_capacity_cores=2,
                              memory_working_set_bytes=512 << 20, memory_capacity_bytes=2 << 30)
    text = describe(make_node("n1", "10.0.0.11"), [], usage=usage)
    lines = [line.split() for line in text.splitlines()]
    assert ["Usage:", "(live,", "from", "the", "agent)"] in lines
    assert ["cpu", "250m", "12%"] in lines
    assert ["memory", "512Mi", "25%"] in lines
    assert "Usage:" not in describe(make_node("n1", "10.0.0.11"), [])
