"""The object kinds Moorage serves: names, API versions, etcd key layout and the wire wrapper."""

from __future__ import annotations

from dataclasses import dataclass

from moorage.v1 import objects_pb2 as pb


@dataclass(frozen=True, slots=True)
class Kind:
    name: str            # "Deployment"
    api_version: str     # "apps/v1"
    plural: str          # "deployments"; also the etcd key segment
    message: type        # the protobuf class
    namespaced: bool
    field: str           # the field of pb.Object holding it
    aliases: tuple[str, ...] = ()


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "v1", "namespaces", pb.Namespace, False, "namespace", ("ns",)),
    Kind("Deployment", "apps/v1", "deployments", pb.Deployment, True, "deployment", ("deploy",)),
    Kind("Pod", "v1", "pods", pb.Pod, True, "pod", ("po",)),
    Kind("Service", "v1", "services", pb.Service, True, "service", ("svc",)),
    Kind("Node", "v1", "nodes", pb.Node, False, "node", ("no",)),
    Kind("Event", "v1", "events", pb.Event, True, "event", ("ev",)),
    Kind("ConfigMap", "v1", "configmaps", pb.ConfigMap, True, "config_map", ("cm",)),
    Kind("Secret", "v1", "secrets", pb.Secret, True, "secret"),
    Kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims", pb.PersistentVolumeClaim, True,
         "persistent_volume_claim", ("pvc",)),
    Kind("PersistentVolume", "v1", "persistentvolumes", pb.PersistentVolume, False,
         "persistent_volume", ("pv",)),
    Kind("StorageClass", "storage.k8s.io/v1", "storageclasses", pb.StorageClass, False,
         "storage_class", ("sc",)),
    Kind("StatefulSet", "apps/v1", "statefulsets", pb.StatefulSet, True, "stateful_set",
         ("sts",)),
)

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
_LOOKUP: dict[str, Kind] = {}
for _k in KINDS:
    for _alias in (_k.name.lower(), _k.plural, *_k.aliases):
        _LOOKUP[_alias] = _k
_BY_MESSAGE: dict[type, Kind] = {k.message: k for k in KINDS}

DEFAULT_NAMESPACE = "default"
# Namespaces the control plane creates at start and refuses to delete.
SYSTEM_NAMESPACES = ("default", "moorage-system")


class UnknownKind(ValueError):
    pass


def lookup(name: str) -> Kind:
    """Finds a kind by its name, plural or short name, case-insensitively ("deploy", "Pods")."""
    kind = BY_NAME.get(name) or _LOOKUP.get(name.lower())
    if kind is None:
        known = ", ".join(k.plural for k in KINDS)
        raise UnknownKind(f'the server doesn\'t have a resource type "{name}" (known: {known})')
    return kind


def kind_of(obj) -> Kind:
    return _BY_MESSAGE[type(obj)]


def wrap(obj) -> pb.Object:
    wrapper = pb.Object()
    getattr(wrapper, kind_of(obj).field).CopyFrom(obj)
    return wrapper


def unwrap(wrapper: pb.Object):
    field = wrapper.WhichOneof("object")
    if field is None:
        raise ValueError("empty object")
    return getattr(wrapper, field)


def full_name(obj) -> str:
    """`deployment/web` or `deployment/web -n shop`-style reference used in messages."""
    kind = kind_of(obj)
    return f"{kind.name.lower()}/{obj.metadata.name}"
