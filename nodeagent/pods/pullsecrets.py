"""Registry credentials from a pod's imagePullSecrets (kubernetes.io/dockerconfigjson and the
older dockercfg), as the kubelet reads them; pure."""

from __future__ import annotations

from collections.abc import Callable

from moorage.model import configs
from nodeagent.runtime.images.dockerconfig import parse_auths, registry_host
from nodeagent.runtime.images.registry import Credentials

__all__ = ["credentials", "parse_auths", "registry_host"]

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
