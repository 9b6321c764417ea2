"""Object counts by kind and nodes by condition, for /metrics.

A scrape must not hit etcd, so `count_forever` refreshes a cache every REFRESH_SECONDS (count-only
ranges, and one list of the nodes) and the collector reports the cache as it is at scrape time,
with `moorage_inventory_age_seconds` saying how old it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.store import StoreError
from moorage.model import kinds

log = logging.getLogger("moorage.controlplane.inventory")

REFRESH_SECONDS = 15.0
CONDITION_STATUSES = ("True", "False", "Unknown")


@dataclass(slots=True)
class Inventory:
    objects: dict[str, int] = field(default_factory=dict)               # kind -> count
    nodes: dict[tuple[str, str], int] = field(default_factory=dict)     # (condition, status)
    at: float = 0.0                                                      # monotonic


def node_conditions(nodes) -> dict[tuple[str, str], int]:
    """How many nodes have each (condition type, status); a node that reports no Ready
    condition yet counts as Ready=Unknown, as `moor get nodes` shows it."""
    out: dict[tuple[str, str], int] = {}
    for node in nodes:
        types = set()
        for c in node.status.conditions:
            status = c.status if c.status in CONDITION_STATUSES else "Unknown"
            out[(c.type, status)] = out.get((c.type, status), 0) + 1
            types.add(c.type)
        if "Ready" not in types:
            out[("Ready", "Unknown")] = out.get(("Ready", "Unknown"), 0) + 1
    for status in CONDITION_STATUSES:   # always report Ready, so alerts see a 0, not nothing
        out.setdefault(("Ready", status), 0)
    return out


async def count_once(store) -> Inventory:
    counts = {}
    for kind in kinds.KINDS:
        counts[kind.name] = await store.count(kind)
    nodes, _ = await store.list(kinds.BY_NAME["Node"])
    return Inventory(counts, node_conditions(nodes), time.monotonic())


async def count_forever(store, period: float = REFRESH_SECONDS) -> None:
    """Keeps CURRENT fresh; etcd trouble is logged and retried next period."""
    global CURRENT
    while True:
        try:
            CURRENT = await count_once(store)
        except StoreError as err:   # metrics must never stop the control plane
            log.debug("counting objects: %s", err)
        await asyncio.sleep(period)

CURRENT = Inventory()


class InventoryCollector(Collector):
    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        inv = CURRENT
        if not inv.at:
            return
        objects = GaugeMetricFamily("moorage_objects", "API objects stored, by kind.",
                                    labels=["kind"])
        for kind, n in sorted(inv.objects.items()):
            objects.add_metric([kind], n)
        yield objects
        nodes = GaugeMetricFamily("moorage_nodes", "Nodes by condition and its status.",
                                  labels=["condition", "status"])
        for (cond, status), n in sorted(inv.nodes.items()):
            nodes.add_metric([cond, status], n)
        yield nodes
        yield GaugeMetricFamily("moorage_inventory_age_seconds",
                                "Age of the object and node counts above.",
                                value=time.monotonic() - inv.at)


REGISTRY.register(InventoryCollector())
