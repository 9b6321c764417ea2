"""Where each control-plane replica serves its API, kept in etcd on a lease while it runs.

Every agent session starts with the list (SessionSettings.control_planes), so an agent whose
replica goes away moves its session to another one instead of waiting for the dead one, as
Swarm workers fail over between managers. A replica listening on a wildcard address has no
address worth telling unless --advertise-address gives one.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.store import Store, StoreError
from moorage.model import hostport

log = logging.getLogger(__name__)

TTL_SECONDS = 10
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised(listen: str, advertise: str) -> str:
    """The address to tell agents: --advertise-address, else --listen unless it is a
    wildcard; "" for none."""
    if advertise:
        return advertise
    return "" if hostport.host_of(listen) in WILDCARDS else listen


def _prefix(store: Store) -> bytes:
    return f"{store.prefix}/control-planes/".encode()


async def addresses(store: Store) -> list[str]:
    """The advertised API address of every running replica, sorted."""
    return sorted({rec.value.decode() for rec in await store.raw.list(_prefix(store))})


async def ordered(store: Store, own: str) -> list[str]:
    """This replica's address first, then the others'; just its own if etcd cannot say."""
    try:
        others = [a for a in await addresses(store) if a != own]
    except StoreError as err:   # a session must start even when this read fails
        log.info("listing control-plane replicas: %s", err)
        others = []
    return ([own] if own else []) + others


async def advertise_forever(store: Store, address: str, ttl: int = TTL_SECONDS) -> None:
    """Keeps `<prefix>/control-planes/<address>` alive on a lease until cancelled, then
    removes it; etcd trouble is retried."""
    key = _prefix(store) + address.encode()
    lease = None
    try:
        while True:
            try:
                if lease is None:
                    lease = await store.leases.grant(ttl)
                    await store.raw.put(key, address.encode(), lease=lease)
                elif await store.leases.refresh(lease) <= 0:
                    lease = None   # expired during a pause: register again at once
                    continue
            except StoreError as err:   # etcd down: try again next round
                log.log(min(logging.INFO, store.health.retry_level()),
                        "advertising this replica at %s: %s", address, err)
                lease = None
            await asyncio.sleep(ttl / 3)
    finally:
        if lease is not None:
            try:
                await asyncio.shield(store.leases.revoke(lease))
            except StoreError:   # it expires on its own within ttl
                pass
