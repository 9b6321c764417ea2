"""Checks for ConfigMaps and Secrets, and for how a pod spec uses them (env, envFrom,
volumes, volumeMounts, imagePullSecrets). No message here ever quotes a Secret's value."""

from __future__ import annotations

import json
import posixpath

from moorage.manifest import storagechecks
from moorage.manifest.convert import describe, join
from moorage.model import configs, podvolumes, quantities
from moorage.model import names as naming

# The types whose keys Kubernetes checks; any other non-empty type is accepted as it is there
# (Helm stores releases as helm.sh/release.v1).
_REQUIRED_KEYS = {
    configs.TLS: ("tls.crt", "tls.key"),
    configs.SSH_AUTH: ("ssh-privatekey",),
    configs.DOCKER_CONFIG_JSON: (configs.DOCKER_CONFIG_JSON_KEY,),
    configs.DOCKER_CFG: (".dockercfg",),
}


def config_map(obj, errs) -> None:
    _keys(obj.data, "data", errs)
    _keys(obj.binary_data, "binaryData", errs)
    for key in obj.data:
        if key in obj.binary_data:
            errs.add(join("data", key), f"{describe(key)}: duplicate of key present in "
                                        "binaryData")
    # Values only, as Kubernetes counts.
    size = sum(len(v.encode()) for v in obj.data.values()) + \
        sum(len(v) for v in obj.binary_data.values())
    if size > configs.MAX_DATA_BYTES:
        errs.add("data", f"too long: must have at most {configs.MAX_DATA_BYTES} bytes "
                         f"(has {size})")


def secret(obj, errs) -> None:
    _keys(obj.data, "data", errs)
    _keys(obj.string_data, "stringData", errs)
    merged = dict(obj.data)
    merged.update({k: v.encode() for k, v in obj.string_data.items()})
    size = sum(len(v) for v in merged.values())
    if size > configs.MAX_DATA_BYTES:
        errs.add("data", f"too long: must have at most {configs.MAX_DATA_BYTES} bytes "
                         f"(has {size})")
    type_ = obj.type or configs.OPAQUE
    if type_ == configs.SERVICE_ACCOUNT_TOKEN:
        errs.add("type", f"{describe(type_)} is not supported by Moorage (it has no service "
                         "accounts)")
    for key in _REQUIRED_KEYS.get(type_, ()):
        if key not in merged:
            errs.add(join("data", key), f"is required for type {type_}")
    if type_ == configs.BASIC_AUTH and "username" not in merged and "password" not in merged:
        errs.add('data["username"]', f"username or password is required for type {type_}")
    for key in (configs.DOCKER_CONFIG_JSON_KEY, ".dockercfg"):
        if key in merged and type_ in (configs.DOCKER_CONFIG_JSON, configs.DOCKER_CFG):
            try:
                parsed = json.loads(merged[key])
            except ValueError as err:
                errs.add(join("data", key), f"is not valid JSON: {err.msg} at position "
                                            f"{err.pos}")
                continue
            if not isinstance(parsed, dict):
                errs.add(join("data", key), "must be a JSON object")


def _keys(data, field: str, errs) -> None:
    for key in data:
        reason = configs.key_problem(key)
        if reason:
            errs.add(join(field, key), f"{describe(key)}: {reason}")


# ---- in pods ----

def _object_name(name: str, path: str, what: str, errs) -> None:
    if not name:
        errs.add(path, "is required")
    elif "/" in name:
        errs.add(path, f"{describe(name)}: a pod can only use {what}s of its own namespace, "
                       f"by name; create the {what} there")
    else:
        reason = naming.dns1123_subdomain(name)
        if reason:
            errs.add(path, reason)


def _mode(value: int, path: str, errs) -> None:
    if not 0 <= value <= configs.MAX_MODE:
        errs.add(path, f"{value} must be a number between 0 and 0777 (octal), both inclusive")


def volumes(spec, path: str, errs) -> dict[str, object]:
    """Checks spec.volumes; returns the volumes by name (for the mounts' checks)."""
    out: dict[str, object] = {}
    for i, v in enumerate(spec.volumes):
        vp = f"{path}.volumes[{i}]"
        if errs.required(f"{vp}.name", v.name, naming.dns1123_label) and v.name in out:
            errs.add(f"{vp}.name", f"{describe(v.name)}: duplicate volume name")
        out.setdefault(v.name, v)
        sources = [s for s, _ in podvolumes.SOURCES if v.HasField(s)]
        if not sources:
            errs.add(vp, "must specify a volume type (" +
                     ", ".join(f for _, f in podvolumes.SOURCES) + ")")
        elif len(sources) > 1:
            errs.add(vp, "may not specify more than 1 volume type")
        if v.HasField("config_map"):
            _projection(v.config_map, v.config_map.name, f"{vp}.configMap", "name",
                        "ConfigMap", errs)
        if v.HasField("secret"):
            _projection(v.secret, v.secret.secret_name, f"{vp}.secret", "secretName",
                        "Secret", errs)
        if v.HasField("empty_dir"):
            _empty_dir(v.empty_dir, f"{vp}.emptyDir", errs)
        if v.HasField("host_path"):
            _host_path(v.host_path, f"{vp}.hostPath", errs)
        if v.HasField("persistent_volume_claim"):
            storagechecks.claim_source(v.persistent_volume_claim,
                                       f"{vp}.persistentVolumeClaim", errs)
    for i, ref in enumerate(spec.image_pull_secrets):
        _object_name(ref.name, f"{path}.imagePullSecrets[{i}].name", "Secret", errs)
    return out


def _supported(value: str, allowed) -> str:
    return (f"Unsupported value: {describe(value)}: supported values: " +
            ", ".join(describe(a) for a in allowed))


def _empty_dir(src, path: str, errs) -> None:
    if src.medium not in podvolumes.MEDIA:
        errs.add(f"{path}.medium", _supported(src.medium, podvolumes.MEDIA))
    if src.size_limit:
        try:
            size = quantities.memory_bytes(src.size_limit)
        except quantities.QuantityError as err:
            errs.add(f"{path}.sizeLimit", str(err))
        else:
            if size <= 0:
                errs.add(f"{path}.sizeLimit", f"{describe(src.size_limit)}: must be greater "
                                              "than zero")


def _host_path(src, path: str, errs) -> None:
    if not src.path:
        errs.add(f"{path}.path", "is required")
    elif not src.path.startswith("/"):
        errs.add(f"{path}.path", f"{describe(src.path)}: must be an absolute path")
    elif ".." in src.path.split("/"):
        errs.add(f"{path}.path", f"{describe(src.path)}: must not contain '..'")
    if src.type not in podvolumes.HOST_PATH_TYPES:
        errs.add(f"{path}.type", _supported(src.type, podvolumes.HOST_PATH_TYPES))


def _projection(src, name: str, path: str, name_field: str, what: str, errs) -> None:
    _object_name(name, f"{path}.{name_field}", what, errs)
    if src.HasField("default_mode"):
        _mode(src.default_mode, f"{path}.defaultMode", errs)
    paths: set[str] = set()
    for j, item in enumerate(src.items):
        ip = f"{path}.items[{j}]"
        if not item.key:
            errs.add(f"{ip}.key", "is required")
        else:
            reason = configs.key_problem(item.key)
            if reason:
                errs.add(f"{ip}.key", f"{describe(item.key)}: {reason}")
        reason = configs.relative_path_problem(item.path)
        if reason:
            errs.add(f"{ip}.path", f"{describe(item.path)}: {reason}" if item.path else reason)
        elif posixpath.normpath(item.path) in paths:
            errs.add(f"{ip}.path", f"{describe(item.path)}: duplicate path")
        paths.add(posixpath.normpath(item.path))
        if item.HasField("mode"):
            _mode(item.mode, f"{ip}.mode", errs)


def mounts(c, path: str, vols: dict[str, object], errs) -> None:
    """A container's volumeMounts: known volumes, absolute paths, each used once; subPath and
    subPathExpr relative and inside the volume. Mounts may nest (/data and /data/logs), as in
    Kubernetes: the agent mounts the outer one first."""
    seen: dict[str, int] = {}
    for i, m in enumerate(c.volume_mounts):
        mp = f"{path}.volumeMounts[{i}]"
        if not m.name:
            errs.add(f"{mp}.name", "is required")
        elif m.name not in vols:
            errs.add(f"{mp}.name", f"{describe(m.name)}: no volume of this pod has this name")
        for value, field in ((m.sub_path, "subPath"), (m.sub_path_expr, "subPathExpr")):
            reason = configs.relative_path_problem(value) if value else ""
            if reason:
                errs.add(f"{mp}.{field}", f"{describe(value)}: {reason}")
        if m.sub_path and m.sub_path_expr:
            errs.add(f"{mp}.subPathExpr", "subPathExpr and subPath are mutually exclusive")
        if not m.mount_path:
            errs.add(f"{mp}.mountPath", "is required")
            continue
        if not m.mount_path.startswith("/") or ".." in m.mount_path.split("/"):
            errs.add(f"{mp}.mountPath", f"{describe(m.mount_path)}: must be an absolute path "
                                        "without '..'")
            continue
        target = posixpath.normpath(m.mount_path)
        if target == "/":
            errs.add(f"{mp}.mountPath", "may not be /")
            continue
        if target in seen:
            errs.add(f"{mp}.mountPath", f"{describe(m.mount_path)}: must be unique "
                                        f"(volumeMounts[{seen[target]}] mounts there too)")
        seen.setdefault(target, i)


def env_sources(c, path: str, errs) -> None:
    """env[].valueFrom and envFrom."""
    for i, e in enumerate(c.env):
        if not e.HasField("value_from"):
            continue
        ep = f"{path}.env[{i}]"
        refs = [r for r in ("config_map_key_ref", "secret_key_ref") if e.value_from.HasField(r)]
        field_ref = e.value_from.HasField("field_ref")
        if len(refs) + field_ref != 1:
            errs.add(f"{ep}.valueFrom", "needs exactly one of configMapKeyRef, secretKeyRef or "
                                        "fieldRef")
        if e.value:
            errs.add(f"{ep}.valueFrom", "may not be specified when `value` is not empty")
        if field_ref:
            ref = e.value_from.field_ref
            if ref.api_version not in ("", "v1"):
                errs.add(f"{ep}.valueFrom.fieldRef.apiVersion",
                         f'{describe(ref.api_version)}: only "v1" is supported')
            if not ref.field_path:
                errs.add(f"{ep}.valueFrom.fieldRef.fieldPath", "is required")
            else:
                reason = podvolumes.field_path_problem(ref.field_path)
                if reason:
                    errs.add(f"{ep}.valueFrom.fieldRef.fieldPath", reason)
        for r in refs:
            sel = getattr(e.value_from, r)
            what = "ConfigMap" if r == "config_map_key_ref" else "Secret"
            rp = f"{ep}.valueFrom.{'configMapKeyRef' if what == 'ConfigMap' else 'secretKeyRef'}"
            _object_name(sel.name, f"{rp}.name", what, errs)
            if not sel.key:
                errs.add(f"{rp}.key", "is required")
            else:
                reason = configs.key_problem(sel.key)
                if reason:
                    errs.add(f"{rp}.key", f"{describe(sel.key)}: {reason}")
    for i, src in enumerate(c.env_from):
        sp = f"{path}.envFrom[{i}]"
        refs = [r for r in ("config_map_ref", "secret_ref") if src.HasField(r)]
        if len(refs) != 1:
            errs.add(sp, "needs exactly one of configMapRef or secretRef")
        if "=" in src.prefix:
            errs.add(f"{sp}.prefix", f"{describe(src.prefix)}: may not contain '='")
        if src.HasField("config_map_ref"):
            _object_name(src.config_map_ref.name, f"{sp}.configMapRef.name", "ConfigMap", errs)
        if src.HasField("secret_ref"):
            _object_name(src.secret_ref.name, f"{sp}.secretRef.name", "Secret", errs)
