"""The build machine's registry settings: <root>/registries.json, Docker's config.json
credentials and the --insecure-registry flags, made one RegistryConfig (the agent's type).

registries.json (mode 0600: it holds passwords), written by `moor login` and by
`moor registry deploy`:

  {"mirrors":  {"registry.cluster.local:5000": ["http://10.0.0.5:30500"]},
   "insecure": ["registry.cluster.local:5000", "10.0.0.5:30500"],
   "auths":    {"reg.example:5000": {"username": "ci", "password": "..."}
                                     (or Docker's {"auth": base64("user:password")})}}

Mirrors are tried in order before the registry itself on pull, as Docker's registry mirrors.
Unlike Docker, a push also goes to the first mirror of the image's exact registry name (other
than docker.io, whose mirrors are pull-through caches): here a "mirror" of a name that is not a
real host, such as the cluster registry's registry.cluster.local:5000, is that name's address.

Credentials from registries.json win over those of $DOCKER_CONFIG/config.json (default
~/.docker/config.json); a registry on a loopback address speaks plain HTTP, as in Docker.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable

from builder.errors import BuildError
from builder.paths import BuildRoot
from nodeagent.runtime.images.dockerconfig import parse_auths, registry_host
from nodeagent.runtime.images.reference import DOCKER_HUB
from nodeagent.runtime.images.registry import (
    Credentials,
    Endpoint,
    RegistryConfig,
    RegistryError,
)

FILE_MODE = 0o600
_KEYS = {"mirrors", "insecure", "auths"}


def docker_config_path() -> str:
    return os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"),
                        "config.json")


def read(root: BuildRoot) -> dict:
    """registries.json as a dict ({} when absent); BuildError naming the file if malformed."""
    path = root.registries
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise BuildError(f"{path}: cannot read: {e}") from None
    if not isinstance(doc, dict):
        raise BuildError(f"{path}: want a JSON object with {', '.join(sorted(_KEYS))}")
    return doc


def _mirrors(doc: dict, path: str) -> dict[str, list[str]]:
    mirrors = doc.get("mirrors") or {}
    if not isinstance(mirrors, dict):
        raise BuildError(f"{path}: mirrors: want a map of registry name -> list of URLs")
    for name, urls in mirrors.items():
        if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
            raise BuildError(f"{path}: mirrors.{name}: want a list of URLs")
    return {registry_host(k): list(v) for k, v in mirrors.items()}


def _strings(doc: dict, key: str, path: str) -> list[str]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"{path}: {key}: want a list of host[:port]")
    return value


def _auths(doc: dict, path: str) -> dict[str, Credentials]:
    auths = doc.get("auths") or {}
    if not isinstance(auths, dict):
        raise BuildError(f"{path}: auths: want a map of registry -> credentials")
    out = {}
    for name, entry in auths.items():
        where = f"{path}: auths.{name}"
        if not isinstance(entry, dict):
            raise BuildError(f"{where}: want {{\"username\", \"password\"}} or {{\"auth\"}}")
        user, password = entry.get("username"), entry.get("password", "")
        if not user and isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode(
                ).partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise BuildError(f"{where}.auth: not base64 of user:password") from None
        if not isinstance(user, str) or not user or not isinstance(password, str):
            raise BuildError(f"{where}: want a username and a password")
        out[registry_host(name)] = Credentials(user, password)
    return out


def _docker_auths() -> dict[str, Credentials]:
    try:
        with open(docker_config_path(), "rb") as f:
            return parse_auths(f.read(1 << 20))
    except OSError:
        return {}


def load(root: BuildRoot, insecure: Iterable[str] = ()) -> RegistryConfig:
    """The settings push, pull, login and FROM use; BuildError naming the file if bad."""
    doc = read(root)
    path = root.registries
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise BuildError(f"{path}: {unknown[0]}: unknown key (want {', '.join(sorted(_KEYS))})")
    credentials = {**_docker_auths(), **_auths(doc, path)}
    hosts = frozenset(_strings(doc, "insecure", path)) | {registry_host(h) for h in insecure}
    try:
        return RegistryConfig(mirrors=_mirrors(doc, path), credentials=credentials,
                              insecure=hosts, insecure_loopback=True)
    except RegistryError as e:
        raise BuildError(f"{path}: {e}") from None


def push_endpoint(config: RegistryConfig, domain: str) -> Endpoint:
    """Where a push of an image named under `domain` goes: its first mirror (the name's
    address, see the module docstring), or the registry itself. Docker Hub's mirrors are
    pull-through caches, never pushed to."""
    endpoints = config.endpoints(domain)
    return endpoints[0] if domain != DOCKER_HUB else endpoints[-1]


def where(endpoint: Endpoint, domain: str, root: BuildRoot) -> str:
    """For messages: the host, and when a mirror stands for the name, which file said so."""
    if endpoint.host == domain or not endpoint.mirror:
        return endpoint.host
    return f"{endpoint.host} (the address of {domain} in {root.registries})"


def update(root: BuildRoot, change: Callable[[dict], None]) -> None:
    """Read-modify-write registries.json under a lock, written whole (0600) and renamed in, so
    `moor login` and `moor registry deploy` running at once both keep their change."""
    os.makedirs(root.root, exist_ok=True)
    lock = os.open(root.registries + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = read(root)
        change(doc)
        tmp = f"{root.registries}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.rename(tmp, root.registries)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    finally:
        os.close(lock)


def save_login(root: BuildRoot, server: str, username: str, password: str) -> str:
    """Stores the credentials for server (as Docker does, base64 "auth"); returns the host."""
    host = registry_host(server)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()

    def change(doc: dict) -> None:
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            auths = doc["auths"] = {}
        auths[host] = {"auth": token}

    update(root, change)
    return host
