"""The node's registry settings: its own (--registry-mirror, --insecure-registry) with the
cluster's registry aliases from the control plane merged in, so an image named
`registry.cluster.local:5000/...` pulls from the registry that runs on the cluster.

`merge` is pure. `NodeRegistries` holds the current merged RegistryConfig, replaced whole on
each ClusterRegistries message (from the session's thread) and read by pod workers (their
threads): a reader always sees one complete configuration.
"""

from __future__ import annotations

import dataclasses
import logging

from moorage.v1 import agent_pb2
from nodeagent.runtime.images.registry import RegistryConfig, RegistryError

log = logging.getLogger("moorage.agent.registries")


def merge(base: RegistryConfig, cluster: agent_pb2.ClusterRegistries
          ) -> tuple[RegistryConfig, list[str]]:
    """`base` with every alias's mirrors after the node's own mirrors for that name, and its
    insecure names added; an alias whose mirrors are unusable is left out, with a reason."""
    config, problems = base, []
    for alias in cluster.aliases:
        mirrors = {k: list(v) for k, v in config.mirrors.items()}
        own = mirrors.get(alias.name, [])
        mirrors[alias.name] = own + [m for m in alias.mirrors if m not in own]
        try:
            config = dataclasses.replace(config, mirrors=mirrors,
                                         insecure=config.insecure | frozenset(alias.insecure))
        except RegistryError as err:
            problems.append(f"registry alias {alias.name}: {err}")
    return config, problems


class NodeRegistries:
    """The merged configuration; call it for the current one."""

    def __init__(self, base: RegistryConfig):
        self.base = base
        self._config = base
        self.aliases = agent_pb2.ClusterRegistries()

    def __call__(self) -> RegistryConfig:
        return self._config

    def apply(self, msg: agent_pb2.ClusterRegistries) -> None:
        if msg == self.aliases:
            return
        config, problems = merge(self.base, msg)
        for line in problems:
            log.warning("%s; ignored", line)
        self.aliases = agent_pb2.ClusterRegistries()
        self.aliases.CopyFrom(msg)
        self._config = config
        log.info("cluster registries: %s", ", ".join(
            f"{a.name} -> {' '.join(a.mirrors)}" for a in msg.aliases) or "none")
