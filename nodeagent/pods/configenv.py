"""A container's variables from ConfigMaps, Secrets and the pod's own fields (envFrom, then
env in order, as the kubelet builds them), resolved when the container is created; pure.

Each variable says whether its value came from a Secret, so the worker can keep those values
off the disk (ContainerSpec.env_file on the pod's tmpfs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from moorage.model import configs, podvolumes
from moorage.v1 import objects_pb2 as pb

# The kubelet's rule for names imported with envFrom (others are skipped, with an Event).
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

Lookup = Callable[[str, str], object | None]   # (kind, name) -> the object, or None


@dataclass
class Resolved:
    # name -> (value, from a Secret); later entries replaced earlier ones.
    values: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # Why the container cannot be created (CreateContainerConfigError), or "".
    problem: str = ""
    # Warnings for an Event: envFrom keys that are not valid variable names.
    skipped: list[str] = field(default_factory=list)


def _missing(kind: str, name: str) -> str:
    return f'{kind.lower()} "{name}" not found'


def resolve(c: pb.Container, namespace: str, lookup: Lookup, pod: pb.Pod | None = None,
            pod_ip: str = "") -> Resolved:
    """`pod` (and its address) resolve env[].valueFrom.fieldRef, the downward API."""
    out = Resolved()
    for src in c.env_from:
        if src.HasField("config_map_ref"):
            kind, ref = configs.CONFIG_MAP, src.config_map_ref
        else:
            kind, ref = configs.SECRET, src.secret_ref
        obj = lookup(kind, ref.name)
        if obj is None:
            if not ref.optional:
                out.problem = out.problem or _missing(kind, ref.name)
            continue
        secret = kind == configs.SECRET
        data = {k: v.decode(errors="replace") for k, v in obj.data.items()} if secret \
            else dict(obj.data)
        bad = []
        for key in sorted(data):
            name = src.prefix + key
            if _ENV_NAME.match(name):
                out.values[name] = (data[key], secret)
            else:
                bad.append(name)
        if bad:
            out.skipped.append(
                f"Keys [{', '.join(bad)}] from the EnvFrom {kind.lower()} {namespace}/"
                f"{ref.name} were skipped since they are considered invalid environment "
                "variable names.")
    for e in c.env:
        if not e.HasField("value_from"):
            out.values[e.name] = (e.value, False)
            continue
        if e.value_from.HasField("field_ref"):
            if pod is not None:
                out.values[e.name] = (podvolumes.field_value(
                    pod, e.value_from.field_ref.field_path, pod_ip), False)
            continue
        if e.value_from.HasField("config_map_key_ref"):
            kind, sel = configs.CONFIG_MAP, e.value_from.config_map_key_ref
        else:
            kind, sel = configs.SECRET, e.value_from.secret_key_ref
        obj = lookup(kind, sel.name)
        if obj is None:
            if not sel.optional:
                out.problem = out.problem or _missing(kind, sel.name)
            continue
        if sel.key not in obj.data:
            if not sel.optional:
                out.problem = out.problem or (
                    f"couldn't find key {sel.key} in {kind} {namespace}/{sel.name}")
            continue
        raw = obj.data[sel.key]
        out.values[e.name] = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw,
                              kind == configs.SECRET)
    return out
