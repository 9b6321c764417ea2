"""Credentials in Docker's config formats (config.json's "auths", a .dockerconfigjson, the
older .dockercfg), as Docker and the kubelet read them; pure. Used for imagePullSecrets on
the node and for ~/.docker/config.json on the build machine."""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse

from .reference import DOCKER_HUB
from .registry import Credentials

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
