"""Service virtual IPs and node ports: leased in etcd, one key per address or port.

Invariant: an address or port has at most one owner. A lease is the key `<prefix>/ipam/
serviceips/<ip>` or `<prefix>/ipam/nodeports/<port>` holding "namespace/name", written in the
same Txn as the Service (compared absent, or at the revision read), so two applies can never
take the same one. Deleting a Service deletes its leases in the Txn that deletes it. A deleted
namespace takes its Services with it but not their leases: such a lease is stale (its owner no
longer uses it) and is taken over, again by a compared Txn, when someone asks for it or the
range runs out (Kubernetes' allocator repair, done lazily).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controlplane.store import ABSENT, NotFound, Op, Store
from controlplane.store.errors import check_version
from moorage.manifest import ManifestError, located
from moorage.manifest.convert import FieldError
from moorage.model import kinds
from moorage.model.network import DEFAULT_SERVICE_CIDR, NODE_PORT_RANGE

HEADLESS = "None"
SERVICE = kinds.BY_NAME["Service"]


class ServiceCIDRError(ValueError):
    """The --service-cidr flag is not a usable IPv4 network."""


def parse_service_cidr(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError as err:
        raise ServiceCIDRError(f"service CIDR {cidr!r} is not an IPv4 network (e.g. "
                               f"{DEFAULT_SERVICE_CIDR}): {err}") from err
    if net.prefixlen > 30:
        raise ServiceCIDRError(f"service CIDR {cidr} is too small: use /30 or wider")
    return net


# ---- pure core ----

def first_free(size: int, taken: Callable[[int], bool], start: int) -> int | None:
    """The first index in [0, size) at or after `start` (wrapping) that is not taken."""
    for i in range(size):
        idx = (start + i) % size
        if not taken(idx):
            return idx
    return None


@dataclass(frozen=True, slots=True)
class Pool:
    """The addresses (or ports) a lease may hold, as a numbered range."""

    kind: str                         # "serviceips" or "nodeports"
    first: int
    size: int

    @staticmethod
    def for_cidr(net: ipaddress.IPv4Network) -> Pool:
        # Not the network or broadcast address.
        return Pool("serviceips", int(net.network_address) + 1, net.num_addresses - 2)

    @staticmethod
    def node_ports(lo: int = NODE_PORT_RANGE[0], hi: int = NODE_PORT_RANGE[1]) -> Pool:
        return Pool("nodeports", lo, hi - lo + 1)

    def value(self, idx: int) -> str:
        n = self.first + idx
        return str(ipaddress.IPv4Address(n)) if self.kind == "serviceips" else str(n)

    def index(self, value: str) -> int | None:
        try:
            n = (int(ipaddress.IPv4Address(value)) if self.kind == "serviceips"
                 else int(value))
        except ValueError:
            return None
        return n - self.first if 0 <= n - self.first < self.size else None


def owner_of(obj) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def leases_of(svc) -> tuple[str | None, set[int]]:
    """The virtual IP and node ports a stored Service holds."""
    ip = svc.spec.cluster_ip if svc.spec.cluster_ip not in ("", HEADLESS) else None
    ports = {p.node_port for p in svc.spec.ports if p.node_port} \
        if svc.spec.type == "NodePort" else set()
    return ip, ports


# ---- etcd shell ----

@dataclass(slots=True)
class _Lease:
    value: str
    owner: str
    revision: int


@dataclass(slots=True)
class _Table:
    """One pool's leases as read for one apply attempt, plus what this apply claims."""

    pool: Pool
    leases: dict[str, _Lease]
    claimed: dict[str, str] = field(default_factory=dict)     # value -> owner, this apply


class ServiceAllocator:
    def __init__(self, store: Store, service_cidr: str = DEFAULT_SERVICE_CIDR,
                 rng: random.Random | None = None):
        self.store = store
        self.net = parse_service_cidr(service_cidr)
        self.ips = Pool.for_cidr(self.net)
        self.ports = Pool.node_ports()
        self.rng = rng or random.Random()

    def key(self, pool: Pool, value: str) -> bytes:
        return f"{self.store.prefix}/ipam/{pool.kind}/{value}".encode()

    def _prefix(self, pool: Pool) -> bytes:
        return f"{self.store.prefix}/ipam/{pool.kind}/".encode()

    async def _read(self, pool: Pool) -> _Table:
        start = self._prefix(pool)
        leases = {}
        for kv in await self.store.raw.list(start):
            value = kv.key[len(start):].decode()
            leases[value] = _Lease(value, kv.value.decode(), kv.mod_revision)
        return _Table(pool, leases)

    async def allocate(self, plans: Iterable) -> list[Op]:
        """Gives every planned Service its virtual IP and node ports (mutating `plan.obj`,
        and `plan.action` when that changes it) and returns the lease ops for the apply's Txn.
        Raises ManifestError naming the field when an asked-for one is outside its range or
        taken."""
        plans = [p for p in plans if kinds.kind_of(p.obj) is SERVICE]
        if not plans:
            return []
        tables = {"ip": await self._read(self.ips), "port": await self._read(self.ports)}
        ops: list[Op] = []
        problems: list[str] = []
        for plan in plans:
            before = type(plan.obj)()
            before.CopyFrom(plan.obj)
            try:
                ops += await self._allocate_one(plan, tables)
            except _FieldProblem as err:
                problems.append(located(plan.doc.source, plan.doc.index, err.error))
                continue
            if plan.obj != before and plan.action == "unchanged":
                plan.action = "configured"
        if problems:
            raise ManifestError(problems)
        return ops

    async def _allocate_one(self, plan, tables: dict[str, _Table]) -> list[Op]:
        svc, owner = plan.obj, owner_of(plan.obj)
        ops: list[Op] = []
        spec = svc.spec
        if spec.cluster_ip != HEADLESS:
            table = tables["ip"]
            if spec.cluster_ip:
                if table.pool.index(spec.cluster_ip) is None:
                    raise _FieldProblem("spec.clusterIP", f"{spec.cluster_ip} is not in the "
                                        f"service CIDR {self.net}; pick one in it or leave "
                                        "clusterIP out to get one")
                ops += await self._claim(table, spec.cluster_ip, owner, "spec.clusterIP")
            else:
                value, claim = await self._pick(table, owner, "spec.clusterIP")
                spec.cluster_ip = value
                ops += claim
        wanted: set[int] = set()
        if spec.type == "NodePort":
            table = tables["port"]
            for i, port in enumerate(spec.ports):
                path = f"spec.ports[{i}].nodePort"
                if port.node_port:
                    if table.pool.index(str(port.node_port)) is None:
                        lo, hi = NODE_PORT_RANGE
                        raise _FieldProblem(path, f"{port.node_port} is not in the node port "
                                                  f"range {lo}-{hi}")
                    if port.node_port in wanted:
                        # The same number for TCP and UDP on one service is fine.
                        continue
                    ops += await self._claim(table, str(port.node_port), owner, path)
                else:
                    value, claim = await self._pick(table, owner, path)
                    port.node_port = int(value)
                    ops += claim
                wanted.add(port.node_port)
        if plan.previous is not None:
            table = tables["port"]
            for old in sorted(leases_of(plan.previous)[1] - wanted):
                lease = table.leases.get(str(old))
                if lease is not None and lease.owner == owner:
                    ops.append(Op(self.key(table.pool, lease.value), None, lease.revision))
        return ops

    async def _claim(self, table: _Table, value: str, owner: str, path: str) -> list[Op]:
        """Ops that make `owner` hold `value`, or _FieldProblem when someone else does."""
        other = table.claimed.get(value)
        if other is not None and other != owner:
            raise _FieldProblem(path, f"{value} is already allocated to service {other}")
        table.claimed[value] = owner
        lease = table.leases.get(value)
        key = self.key(table.pool, value)
        if lease is None:
            return [Op(key, owner.encode(), ABSENT)] if other is None else []
        if lease.owner == owner:
            return []
        guard = await self._stale(table, lease)
        if guard is None:
            del table.claimed[value]
            raise _FieldProblem(path, f"{value} is already allocated to service {lease.owner}; "
                                      "pick another or leave it out to get a free one")
        return [guard, Op(key, owner.encode(), lease.revision)]

    async def _stale(self, table: _Table, lease: _Lease) -> Op | None:
        """A guard op that holds while the lease's owner does not use it (so the lease may be
        taken over), or None when the owner does use it."""
        ns, _, name = lease.owner.partition("/")
        try:
            holder = await self.store.get(SERVICE, ns, name)
        except NotFound:
            return Op(self.store.key(SERVICE, ns, name), None, ABSENT, guard_only=True)
        ip, ports = leases_of(holder)
        used = lease.value == ip if table.pool is self.ips else int(lease.value) in ports
        if used:
            return None
        return Op(self.store.key_of(holder), None, int(holder.metadata.resource_version),
                  guard_only=True)

    async def _pick(self, table: _Table, owner: str, path: str) -> tuple[str, list[Op]]:
        pool = table.pool

        def taken(idx: int) -> bool:
            value = pool.value(idx)
            return value in table.leases or value in table.claimed
        idx = first_free(pool.size, taken, self.rng.randrange(pool.size))
        if idx is not None:
            value = pool.value(idx)
            table.claimed[value] = owner
            return value, [Op(self.key(pool, value), owner.encode(), ABSENT)]
        # The range is full: take over a stale lease, if there is one.
        for lease in list(table.leases.values()):
            if lease.value in table.claimed:
                continue
            guard = await self._stale(table, lease)
            if guard is not None:
                table.claimed[lease.value] = owner
                return lease.value, [guard, Op(self.key(pool, lease.value), owner.encode(),
                                               lease.revision)]
        what = (f"service CIDR {self.net} has no free address" if pool is self.ips
                else "node port range has no free port")
        raise _FieldProblem(path, f"the {what} left; delete unused services")

    async def delete_service(self, namespace: str, name: str, expect: int | None = None):
        """Deletes a Service and its leases in one Txn; returns the deleted Service."""
        from controlplane.store import Conflict

        for _ in range(5):
            svc = await self.store.get(SERVICE, namespace, name)
            rev = int(svc.metadata.resource_version)
            check_version("services", name, expect, rev)
            ip, ports = leases_of(svc)
            keys = ([self.key(self.ips, ip)] if ip else []) + [
                self.key(self.ports, str(p)) for p in sorted(ports)]
            found, _ = await self.store.get_many(keys) if keys else ({}, 0)
            ops = [Op(self.store.key_of(svc), None, rev)]
            ops += [Op(k, None, kv.mod_revision) for k, kv in found.items()
                    if kv.value.decode() == owner_of(svc)]
            ok, _, _ = await self.store.commit(ops)
            if ok:
                return svc
        raise Conflict(f'service "{name}" kept changing while deleting it; try again')


class _FieldProblem(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.error = FieldError(path, message)
