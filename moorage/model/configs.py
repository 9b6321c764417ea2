"""ConfigMaps and Secrets as pods use them: key rules, sizes, the Secret types, and which
objects a pod spec references (for delivery to nodes, node authorization and restarts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

CONFIG_MAP, SECRET = "ConfigMap", "Secret"
# Kubernetes' cap on a ConfigMap's or a Secret's data, all keys together.
MAX_DATA_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 253
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

OPAQUE = "Opaque"
TLS = "kubernetes.io/tls"
DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
BASIC_AUTH = "kubernetes.io/basic-auth"
SSH_AUTH = "kubernetes.io/ssh-auth"
SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"

# Modes of projected files when the volume says none (Kubernetes' default; Compose secrets
# and configs are 0444, as Swarm mounts them).
DEFAULT_MODE = 0o644
MAX_MODE = 0o777

# A Deployment with this annotation "true" rolls its pods when a ConfigMap or Secret its pod
# template references changes.
RESTART_ON_CHANGE = "moorage.io/restart-on-config-change"
CONFIG_HASH = "moorage.io/config-hash"


def key_problem(key: str) -> str:
    """Why `key` is not a valid ConfigMap or Secret key (also a file name), or ""."""
    if len(key) > MAX_KEY_LENGTH:
        return f"must be no more than {MAX_KEY_LENGTH} characters"
    if not _KEY.match(key):
        return ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                "(e.g. 'key.name', 'KEY_NAME' or 'key-name'; regex used for validation is "
                "'[-._a-zA-Z0-9]+')")
    if key == ".":
        return "must not be '.'"
    if key == "..":
        return "must not be '..'"
    if key.startswith(".."):
        return "must not start with '..'"
    return ""


def relative_path_problem(path: str) -> str:
    """Why `path` is not a relative path that stays inside its volume, or ""."""
    if not path:
        return "is required"
    if path.startswith("/"):
        return "must be a relative path"
    if ".." in path.split("/"):
        return "must not contain '..'"
    if path.split("/")[0].startswith(".."):
        return "must not start with '..'"
    return ""


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """A ConfigMap or Secret of the pod's own namespace."""

    kind: str
    name: str


def references(spec) -> set[Ref]:
    """Every ConfigMap and Secret a PodSpec names (optional ones too): env, envFrom, volumes
    and imagePullSecrets."""
    out: set[Ref] = set()
    for c in spec.containers:
        for e in c.env:
            if e.value_from.HasField("config_map_key_ref"):
                out.add(Ref(CONFIG_MAP, e.value_from.config_map_key_ref.name))
            if e.value_from.HasField("secret_key_ref"):
                out.add(Ref(SECRET, e.value_from.secret_key_ref.name))
        for src in c.env_from:
            if src.HasField("config_map_ref"):
                out.add(Ref(CONFIG_MAP, src.config_map_ref.name))
            if src.HasField("secret_ref"):
                out.add(Ref(SECRET, src.secret_ref.name))
    for v in spec.volumes:
        if v.HasField("config_map"):
            out.add(Ref(CONFIG_MAP, v.config_map.name))
        if v.HasField("secret"):
            out.add(Ref(SECRET, v.secret.secret_name))
    for s in spec.image_pull_secrets:
        out.add(Ref(SECRET, s.name))
    return out


def data_of(obj) -> dict[str, bytes]:
    """A ConfigMap's or a Secret's keys and their bytes (a ConfigMap's data as UTF-8)."""
    if type(obj).__name__ == "ConfigMap":
        out = {k: v.encode() for k, v in obj.data.items()}
        out.update(obj.binary_data)
        return out
    return dict(obj.data)
