"""Node subnet leases in etcd: each node gets one /24 (by default) of the cluster CIDR.

Invariant: a subnet has at most one owner. A lease is two keys written in one Txn that requires
both to be absent: `<prefix>/ipam/subnets/<net>-<len>` -> node name and `<prefix>/ipam/nodes/
<node>` -> subnet, so two concurrent callers can never take the same subnet, and the same node
never holds two.
"""

from __future__ import annotations

import ipaddress

from controlplane.store import ABSENT, Op
from controlplane.store.errors import check_version
from moorage.model.network import DEFAULT_CLUSTER_CIDR, NODE_SUBNET_PREFIX

DEFAULT_PREFIX_LEN = NODE_SUBNET_PREFIX
# A node subnet needs room for .0 (VTEP), .1 (gateway), pods and the broadcast address.
MAX_PREFIX_LEN = 30


class IPAMError(Exception):
    """The cluster CIDR is invalid or has no free subnet left."""


def _subnets_prefix(store) -> str:
    return f"{store.prefix}/ipam/subnets/"


def _subnet_key(store, subnet: ipaddress.IPv4Network) -> bytes:
    return f"{_subnets_prefix(store)}{subnet.network_address}-{subnet.prefixlen}".encode()


def _node_key(store, node_name: str) -> bytes:
    return f"{store.prefix}/ipam/nodes/{node_name}".encode()


def _parse_subnet_key(store, key: bytes) -> ipaddress.IPv4Network | None:
    tail = key.decode()[len(_subnets_prefix(store)):]
    try:
        return ipaddress.IPv4Network(tail.replace("-", "/"))
    except ValueError:
        return None


def parse_cluster(cluster_cidr: str, prefix_len: int) -> ipaddress.IPv4Network:
    try:
        cluster = ipaddress.IPv4Network(cluster_cidr)
    except ValueError as err:
        raise IPAMError(f"cluster CIDR {cluster_cidr!r} is not a valid IPv4 network "
                        f"(e.g. {DEFAULT_CLUSTER_CIDR}): {err}") from err
    if not cluster.prefixlen <= prefix_len <= MAX_PREFIX_LEN:
        raise IPAMError(f"node subnet length /{prefix_len} must be between the cluster CIDR's "
                        f"/{cluster.prefixlen} and /{MAX_PREFIX_LEN}")
    return cluster


async def _get(store, key: bytes):
    found, _ = await store.get_many([key])
    return found.get(key)


async def assign_subnet(store, node_name: str, cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
                        prefix_len: int = DEFAULT_PREFIX_LEN) -> str:
    """The node's subnet: its existing lease, or the lowest free one, taken atomically."""
    if not node_name or "/" in node_name:
        raise IPAMError(f"node name {node_name!r} must be non-empty and contain no '/'")
    cluster = parse_cluster(cluster_cidr, prefix_len)
    node_key = _node_key(store, node_name)
    while True:
        existing = await _get(store, node_key)
        if existing is not None:
            subnet = ipaddress.IPv4Network(existing.value.decode())
            if subnet.subnet_of(cluster) and subnet.prefixlen == prefix_len:
                return str(subnet)
            # Leased under another cluster CIDR: give it back and take one from this one.
            await release_subnet(store, node_name)
            continue
        keys = await store.raw.list(_subnets_prefix(store).encode(), keys_only=True)
        taken = {_parse_subnet_key(store, rec.key) for rec in keys}
        free = next((s for s in cluster.subnets(new_prefix=prefix_len) if s not in taken), None)
        if free is None:
            raise IPAMError(f"cluster CIDR {cluster} has no free /{prefix_len} left for node "
                            f"{node_name!r}: release unused nodes' subnets or widen the CIDR")
        subnet_key = _subnet_key(store, free)
        ok, _, _ = await store.commit([Op(subnet_key, node_name.encode(), ABSENT),
                                       Op(node_key, str(free).encode(), ABSENT)])
        if ok:
            return str(free)
        # Lost a race: either the subnet went to someone else or this node got one concurrently;
        # the next round sees which.


async def delete_node(store, node_name: str, expect: int | None = None):
    """Deletes a Node and gives back its subnet in one Txn; returns the deleted Node."""
    from controlplane.store import Conflict
    from moorage.model import kinds

    kind = kinds.BY_NAME["Node"]
    for _ in range(5):
        node = await store.get(kind, "", node_name)
        rev = int(node.metadata.resource_version)
        check_version("nodes", node_name, expect, rev)
        ops = [Op(store.key_of(node), None, rev)]
        node_key = _node_key(store, node_name)
        existing = await _get(store, node_key)
        if existing is not None:
            ops.append(Op(node_key, None, existing.mod_revision))
            try:
                subnet_key = _subnet_key(store, ipaddress.IPv4Network(existing.value.decode()))
            except ValueError:
                subnet_key = None
            owner = await _get(store, subnet_key) if subnet_key is not None else None
            if owner is not None and owner.value.decode() == node_name:
                ops.append(Op(subnet_key, None, owner.mod_revision))
        ok, _, _ = await store.commit(ops)
        if ok:
            return node
    raise Conflict(f'node "{node_name}" kept changing while deleting it; try again')


async def release_subnet(store, node_name: str) -> str | None:
    """Gives back the node's subnet; returns it, or None if the node held none."""
    node_key = _node_key(store, node_name)
    while True:
        existing = await _get(store, node_key)
        if existing is None:
            return None
        subnet = existing.value.decode()
        ops = [Op(node_key, None, existing.mod_revision)]
        try:
            subnet_key = _subnet_key(store, ipaddress.IPv4Network(subnet))
        except ValueError:
            subnet_key = None
        if subnet_key is not None:
            owner = await _get(store, subnet_key)
            if owner is not None and owner.value.decode() == node_name:
                ops.append(Op(subnet_key, None, owner.mod_revision))
        ok, _, _ = await store.commit(ops)
        if ok:
            return subnet
