"""What an agent says about its host in Hello: CPUs, memory, addresses, OS; read once at start."""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field

import moorage
from moorage.fsutil import read_text_or_empty
from moorage.model.network import DEFAULT_MAX_PODS
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb

MAX_PODS = str(DEFAULT_MAX_PODS)


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as given to --labels; raises ValueError naming the bad item."""
    labels: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--labels {item!r}: want KEY=VALUE")
        labels[key] = value
    return labels


@dataclass(frozen=True)
class HostFacts:
    """What Hello says about the machine; read once by `read_host_facts`, or made up in tests."""

    cpus: int
    memory_bytes: int
    internal_ip: str
    hostname: str
    kernel_version: str = ""
    os_image: str = ""
    architecture: str = ""
    extra_capacity: dict[str, str] = field(default_factory=dict)


def build_hello(node_name: str, labels: dict[str, str], facts: HostFacts,
                running_pod_uids: list[str]) -> agent_pb2.AgentMessage:
    capacity = {"cpu": str(facts.cpus), "memory": str(facts.memory_bytes), "pods": MAX_PODS,
                **facts.extra_capacity}
    hello = agent_pb2.Hello(
        node_name=node_name, labels=labels, capacity=capacity,
        addresses=[pb.NodeAddress(type="InternalIP", address=facts.internal_ip),
                   pb.NodeAddress(type="Hostname", address=facts.hostname)],
        node_info=pb.NodeSystemInfo(
            kernel_version=facts.kernel_version, os_image=facts.os_image,
            architecture=facts.architecture, operating_system="linux",
            agent_version=moorage.__version__),
        running_pod_uids=sorted(running_pod_uids))
    return agent_pb2.AgentMessage(hello=hello)


def meminfo_total(text: str) -> int:
    """MemTotal from /proc/meminfo's text, in bytes (the file says kB)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no MemTotal in /proc/meminfo")


def os_release_name(text: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')
    return "Linux"


def default_route_address() -> str:
    """The address this host's default route leaves from; connecting a UDP socket sends
    nothing but makes the kernel pick the source address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))   # TEST-NET-1: never routed anywhere real
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def read_host_facts(advertise_address: str | None = None) -> HostFacts:
    uname = os.uname()
    return HostFacts(
        cpus=os.cpu_count() or 1,
        memory_bytes=meminfo_total(read_text_or_empty("/proc/meminfo")),
        internal_ip=advertise_address or default_route_address(), hostname=socket.gethostname(),
        kernel_version=uname.release,
        os_image=os_release_name(read_text_or_empty("/etc/os-release")),
        architecture=platform.machine())
