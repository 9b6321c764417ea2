"""Each overlay pod's /etc/resolv.conf and /etc/hosts, as the kubelet writes them: kept under
the agent's state dir per pod and bound read-only into every container of the pod.

The render functions are pure; `write` and `remove` touch only the pod's own directory.
"""

from __future__ import annotations

import os
import shutil

from moorage.fsutil import write_atomic
from nodeagent.network.dns import CLUSTER_DOMAIN

NDOTS = 5
RESOLV_CONF, HOSTS = "/etc/resolv.conf", "/etc/hosts"


def resolv_conf(nameserver: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """ndots:5, as in Kubernetes: `web`, `web.default` and `web.default.svc` all try the
    search domains before the name as given."""
    return (f"nameserver {nameserver}\n"
            f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
            f"options ndots:{NDOTS}\n")


def hosts(pod_ip: str, hostname: str) -> str:
    return ("127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{pod_ip}\t{hostname}\n")


def write(directory: str, *, nameserver: str, namespace: str, pod_ip: str,
          hostname: str) -> tuple[tuple[str, str], ...]:
    """Writes both files into `directory`; returns the ContainerSpec.files pairs for them."""
    os.makedirs(directory, exist_ok=True)
    out = []
    for path, text in ((RESOLV_CONF, resolv_conf(nameserver, namespace)),
                       (HOSTS, hosts(pod_ip, hostname))):
        host = os.path.join(directory, os.path.basename(path))
        write_atomic(host, text.encode())
        out.append((path, host))
    return tuple(out)


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
