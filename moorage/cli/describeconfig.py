"""How `moor describe pod` (and deployment) shows a pod's use of ConfigMaps and Secrets, in
kubectl's words: where each variable comes from (never a Secret's value), envFrom, mounts and
volumes."""

from __future__ import annotations


def _optional(flag: bool) -> str:
    return f"Optional: {'true' if flag else 'false'}"


def environment(c) -> dict[str, str]:
    out = {}
    for e in c.env:
        if e.value_from.HasField("secret_key_ref"):
            ref = e.value_from.secret_key_ref
            out[e.name] = (f"<set to the key '{ref.key}' in secret '{ref.name}'>  "
                           f"{_optional(ref.optional)}")
        elif e.value_from.HasField("config_map_key_ref"):
            ref = e.value_from.config_map_key_ref
            out[e.name] = (f"<set to the key '{ref.key}' of config map '{ref.name}'>  "
                           f"{_optional(ref.optional)}")
        else:
            out[e.name] = e.value
    return out


def env_from(c) -> list[str]:
    out = []
    for src in c.env_from:
        if src.HasField("config_map_ref"):
            kind, ref = "ConfigMap", src.config_map_ref
        else:
            kind, ref = "Secret", src.secret_ref
        prefix = f"  Prefix: {src.prefix}" if src.prefix else ""
        out.append(f"{ref.name}  {kind}  {_optional(ref.optional)}{prefix}")
    return out


def mounts(c, spec) -> list[str]:
    # configMap and secret volumes are always mounted read-only, whatever readOnly says.
    read_only = {v.name for v in spec.volumes if v.HasField("config_map") or v.HasField("secret")}
    out = []
    for m in c.volume_mounts:
        flags = "ro" if m.read_only or m.name in read_only else "rw"
        if m.sub_path:
            flags += f',path="{m.sub_path}"'
        out.append(f"{m.mount_path} from {m.name} ({flags})")
    return out


def volumes(w, spec) -> None:
    if not spec.volumes:
        w.field(0, "Volumes", "")
        return
    w.line(0, "Volumes:")
    for v in spec.volumes:
        w.line(1, f"{v.name}:")
        if v.HasField("secret"):
            w.field(2, "Type", "Secret (a volume populated by a Secret)")
            w.field(2, "SecretName", v.secret.secret_name)
            w.field(2, "Optional", "true" if v.secret.optional else "false")
        elif v.HasField("config_map"):
            w.field(2, "Type", "ConfigMap (a volume populated by a ConfigMap)")
            w.field(2, "Name", v.config_map.name)
            w.field(2, "Optional", "true" if v.config_map.optional else "false")
