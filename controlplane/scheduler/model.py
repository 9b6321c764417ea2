"""The scheduler's data model: immutable, hashable pictures of pods and nodes.

Everything here is frozen (dataclasses with slots, or the read-only `Labels` mapping), so a
snapshot can be shared between decisions, used as a cache key, and never changes behind the
scheduler's back. Constructors coerce convenient inputs (dicts, lists) into hashable ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"

NO_SCHEDULE = "NoSchedule"
PREFER_NO_SCHEDULE = "PreferNoSchedule"
NO_EXECUTE = "NoExecute"
TAINT_EFFECTS = (NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE)

EQUAL = "Equal"
EXISTS = "Exists"
TOLERATION_OPERATORS = (EQUAL, EXISTS)

IN, NOT_IN, DOES_NOT_EXIST, GT, LT = "In", "NotIn", "DoesNotExist", "Gt", "Lt"
REQUIREMENT_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT)

WILDCARD_IPS = ("", "0.0.0.0")


class Labels(Mapping[str, str]):
    """A read-only, hashable str -> str mapping (labels and node selectors)."""

    __slots__ = ("_d", "_hash")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._d: dict[str, str] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._d.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._d.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._d!r})"


EMPTY_LABELS = Labels()


def as_labels(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Return `value` as `Labels` (no copy when it already is one)."""
    if type(value) is Labels:
        return value
    return Labels(value or ())


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of schedulable resources: cpu in millicores, memory in bytes, pod slots."""

    cpu: int = 0
    memory: int = 0
    pods: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.pods + other.pods)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.pods - other.pods)

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu and self.memory <= other.memory and self.pods <= other.pods


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint; pods must tolerate NoSchedule and NoExecute taints to land there."""

    key: str
    value: str = ""
    effect: str = NO_SCHEDULE

    def __post_init__(self) -> None:
        if self.effect not in TAINT_EFFECTS:
            raise ValueError(f"taint effect {self.effect!r} is not one of {TAINT_EFFECTS}")

    def __str__(self) -> str:
        kv = f"{self.key}={self.value}" if self.value else self.key
        return f"{kv}:{self.effect}"


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration, matched against taints with Kubernetes' rules."""

    key: str = ""
    operator: str = EQUAL
    value: str = ""
    effect: str = ""

    def __post_init__(self) -> None:
        if self.operator not in TOLERATION_OPERATORS:
            raise ValueError(f"toleration operator {self.operator!r} is not Equal or Exists")
        if self.effect and self.effect not in TAINT_EFFECTS:
            raise ValueError(f"toleration effect {self.effect!r} is not one of {TAINT_EFFECTS}")

    def tolerates(self, taint: Taint) -> bool:
        # An empty effect matches every effect; an empty key with Exists matches every key.
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == EXISTS
        if self.key != taint.key:
            return False
        return self.operator == EXISTS or self.value == taint.value


def _as_int(text: str | None) -> int | None:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement (`key operator values`), used by node and pod selectors."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.operator not in REQUIREMENT_OPERATORS:
            raise ValueError(f"operator {self.operator!r} is not one of {REQUIREMENT_OPERATORS}")
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))
        if self.operator in (GT, LT) and (len(self.values) != 1 or _as_int(self.values[0]) is None):
            raise ValueError(f"{self.operator} needs exactly one integer value, got {self.values}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == IN:
            return value is not None and value in self.values
        if op == NOT_IN:
            return value is None or value not in self.values
        if op == EXISTS:
            return value is not None
        if op == DOES_NOT_EXIST:
            return value is None
        number = _as_int(value)
        if number is None:
            return False
        bound = int(self.values[0])
        return number > bound if op == GT else number < bound

    def __str__(self) -> str:
        if self.operator in (EXISTS, DOES_NOT_EXIST):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} ({', '.join(self.values)})"


@dataclass(frozen=True, slots=True)
class NodeSelectorTerm:
    """Requirements that must all hold (an empty term matches no node, as in Kubernetes)."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.requirements, tuple):
            object.__setattr__(self, "requirements", tuple(self.requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return bool(self.requirements) and all(r.matches(labels) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class PreferredTerm:
    """A weighted (1..100) node-affinity preference."""

    weight: int
    term: NodeSelectorTerm

    def __post_init__(self) -> None:
        if not 1 <= self.weight <= 100:
            raise ValueError(f"preferred term weight {self.weight} is outside 1..100")


@dataclass(frozen=True, slots=True)
class PodAntiAffinityTerm:
    """Keep away from pods matching `selector` within a topology domain of `topology_key`.

    An empty selector selects every pod; empty `namespaces` means the owning pod's namespace.
    """

    selector: tuple[Requirement, ...]
    topology_key: str
    namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("selector", "namespaces"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def selects(self, owner_namespace: str, pod: PodInfo) -> bool:
        """Does this term (held by a pod in `owner_namespace`) select `pod`?"""
        if pod.namespace not in (self.namespaces or (owner_namespace,)):
            return False
        labels = pod.labels
        return all(r.matches(labels) for r in self.selector)


class HostPort(NamedTuple):
    """A host port a pod binds; an empty or 0.0.0.0 host IP means every address."""

    port: int
    protocol: str = "TCP"
    host_ip: str = ""

    def __str__(self) -> str:
        where = f"{self.host_ip}:" if self.host_ip not in WILDCARD_IPS else ""
        return f"{where}{self.port}/{self.protocol}"


def _as_host_port(value: HostPort | int | tuple) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if isinstance(value, int):
        return HostPort(value)
    return HostPort(*value)


@dataclass(frozen=True, slots=True)
class VolumeNeeds:
    """What a pod's volumes ask of a node: `pinned` (claim, node) pairs for its bound claims,
    `new_bytes` of local storage for the claims that bind where it lands, the hostPath paths it
    mounts, and `blocked` (aggregate, detail) when no node can help (a missing claim...)."""

    pinned: tuple[tuple[str, str], ...] = ()
    new_bytes: int = 0
    host_paths: tuple[str, ...] = ()
    blocked: tuple[str, str] | None = None
    # The unbound claims (namespace/name) that bind with this pod.
    unbound: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod as the scheduler sees it; `requests.pods` is always at least 1."""

    namespace: str
    name: str
    labels: Labels = EMPTY_LABELS
    requests: Resources = Resources()
    node_selector: Labels = EMPTY_LABELS
    required_affinity: tuple[NodeSelectorTerm, ...] = ()
    preferred_affinity: tuple[PreferredTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    host_ports: tuple[HostPort, ...] = ()
    anti_affinity: tuple[PodAntiAffinityTerm, ...] = ()
    spread_key: str | None = None
    priority: int = 0
    creation_index: int = 0
    # None: the pod uses no claim and no hostPath.
    volumes: VolumeNeeds | None = None

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if type(self.labels) is not Labels:
            setattr_(self, "labels", as_labels(self.labels))
        if type(self.node_selector) is not Labels:
            setattr_(self, "node_selector", as_labels(self.node_selector))
        for name in ("required_affinity", "preferred_affinity", "tolerations", "anti_affinity"):
            if not isinstance(getattr(self, name), tuple):
                setattr_(self, name, tuple(getattr(self, name)))
        if self.host_ports:
            setattr_(self, "host_ports", tuple(_as_host_port(p) for p in self.host_ports))
        elif not isinstance(self.host_ports, tuple):
            setattr_(self, "host_ports", ())
        if self.requests.pods < 1:
            setattr_(self, "requests", Resources(self.requests.cpu, self.requests.memory, 1))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node and the pods already bound to it; `requested` is the sum of their requests."""

    name: str
    labels: Labels = EMPTY_LABELS
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    allocatable: Resources = Resources()
    requested: Resources = Resources()
    pods: tuple[PodInfo, ...] = ()
    # Bytes of moorage.io/local-storage not yet given to a PersistentVolume here.
    local_storage_free: int = 0
    # The agent's --allowed-host-paths.
    allowed_host_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.labels) is not Labels:
            object.__setattr__(self, "labels", as_labels(self.labels))
        for name in ("taints", "pods", "allowed_host_paths"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def free(self) -> Resources:
        return self.allocatable - self.requested

    def with_pod(self, pod: PodInfo) -> NodeInfo:
        """Return a copy of this node with `pod` bound to it."""
        return NodeInfo(
            self.name,
            self.labels,
            self.ready,
            self.unschedulable,
            self.taints,
            self.allocatable,
            self.requested + pod.requests,
            self.pods + (pod,),
            self.local_storage_free - (pod.volumes.new_bytes if pod.volumes else 0),
            self.allowed_host_paths,
        )
