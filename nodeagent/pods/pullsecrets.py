"""Registry credentials from a pod's imagePullSecrets (kubernetes.io/dockerconfigjson and the
older dockercfg), as the kubelet reads them; pure."""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Callable

from moorage.model import configs
from nodeagent.runtime.images.reference import DOCKER_HUB
from nodeagent.runtime.images.registry import Credentials

# Names Docker's config files use for Docker Hub.
_HUB_NAMES = {"index.docker.io", "registry-1.docker.io", "docker.io"}


def registry_host(name: str) -> str:
    """`https://index.docker.io/v1/` -> docker.io; `reg.example.com:5000/x` -> the host."""
    parsed = urllib.parse.urlsplit(name if "://" in name else "//" + name)
    host = parsed.netloc or name
    return DOCKER_HUB if host in _HUB_NAMES else host


def parse_auths(raw: bytes) -> dict[str, Credentials]:
    """The credentials in a .dockerconfigjson ({"auths": {...}}) or .dockercfg ({...})."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
    out: dict[str, Credentials] = {}
    for name, entry in (auths.items() if isinstance(auths, dict) else ()):
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username", ""), entry.get("password", "")
        if not user and isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                continue
        if user:
            out[registry_host(name)] = Credentials(user, password)
    return out


def credentials(refs, lookup: Callable[[str, str], object | None]
                ) -> tuple[dict[str, Credentials], list[str]]:
    """Every registry's credentials from the Secrets `refs` name (the first Secret naming a
    registry wins, as in the kubelet); and the names of Secrets that are missing."""
    found: dict[str, Credentials] = {}
    missing = []
    for ref in refs:
        secret = lookup(configs.SECRET, ref.name)
        if secret is None:
            missing.append(ref.name)
            continue
        for key in (configs.DOCKER_CONFIG_JSON_KEY, ".dockercfg"):
            if key in secret.data:
                for host, creds in parse_auths(secret.data[key]).items():
                    found.setdefault(host, creds)
    return found, missing
