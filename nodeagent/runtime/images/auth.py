"""Registry authentication, shared by the agent's pulls and the build machine's pushes: turns a
401's WWW-Authenticate challenge into the Authorization header to send again, Basic from stored
credentials or a Bearer token from the challenge's token server (the distribution spec's token
flow, with the scopes the caller needs: `repository:<name>:pull`, `...:pull,push`).

Passwords and tokens travel over HTTPS, or plain HTTP only to a host listed as insecure or on
a loopback address (which no one else on the network can read)."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_TOKEN_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str  # scheme://host[:port][/path], no trailing slash
    host: str  # host[:port], what messages and credentials use
    mirror: bool


class RegistryConfig(Protocol):
    """What authentication needs of the registry settings (registry.RegistryConfig)."""

    timeout: float

    def credentials_for(self, host: str, domain: str) -> Credentials | None: ...

    def is_insecure(self, host: str) -> bool: ...


def describe_network(e: Exception, endpoint: Endpoint) -> str:
    reason = getattr(e, "reason", e)
    where = f"mirror {endpoint.host}" if endpoint.mirror else endpoint.host
    if isinstance(reason, ssl.SSLError):
        return (f"TLS handshake with {where} failed ({reason.reason or reason}); if it serves "
                "plain HTTP, list it as an insecure registry")
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {where}: {reason.strerror}"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"timed out talking to {where}"
    return f"cannot reach {where}: {reason}"


_CHALLENGE_RE = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, params_text = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): a or b for k, a, b in _CHALLENGE_RE.findall(params_text)}


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port (`[::1]:5000`)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def basic_header(creds: Credentials | None) -> str | None:
    if not creds:
        return None
    pair = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class AuthError(Exception):
    """No usable credentials or token; the message says which host and what to do."""


class Authorizer:
    """Answers challenges for one registry configuration. `no_credentials(host)` is the advice
    printed when a registry wants a password we do not have (the agent points at
    imagePullSecrets, the build machine at `moor login`)."""

    def __init__(self, config: RegistryConfig, no_credentials: Callable[[str], str],
                 opener: urllib.request.OpenerDirector | None = None):
        self.config = config
        self.no_credentials = no_credentials
        self._opener = opener or urllib.request.build_opener()

    def authorize(self, endpoint: Endpoint, domain: str, challenge: str,
                  scopes: Sequence[str]) -> str:
        """The Authorization header value the challenge asks for. A Bearer challenge's own
        scope is used when the caller gives none."""
        scheme, params = parse_challenge(challenge)
        basic = basic_header(self.config.credentials_for(endpoint.host, domain))
        if scheme == "basic":
            if not basic:
                raise AuthError(f"{endpoint.host} wants a username and password: "
                                f"{self.no_credentials(endpoint.host)}")
            return basic
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(f"{endpoint.host} asks for unsupported auth {challenge!r}")
        wanted = list(scopes) or ([params["scope"]] if params.get("scope") else [])
        return "Bearer " + self.token(endpoint, params, wanted, basic)

    def token(self, endpoint: Endpoint, params: dict[str, str], scopes: Sequence[str],
              basic: str | None) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme != "https" and not (realm.scheme == "http" and (
                self.config.is_insecure(realm.netloc) or is_loopback(realm.netloc))):
            raise AuthError(f"{endpoint.host} sends us for a token to {params['realm']}, "
                            "which is neither https nor an insecure registry")
        query = [("service", params.get("service", ""))] + [("scope", s) for s in scopes]
        url = params["realm"] + ("&" if realm.query else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        if basic:
            # Unredirected: a token server's redirect must not carry our password elsewhere.
            req.add_unredirected_header("Authorization", basic)
        what = " ".join(scopes) or "the registry"
        try:
            with self._opener.open(req, timeout=self.config.timeout) as resp:
                raw = resp.read(MAX_TOKEN_BYTES)
        except urllib.error.HTTPError as e:
            e.close()
            raise AuthError(f"token server {realm.netloc} refused a token for {what} "
                            f"(HTTP {e.code}); check the credentials for {endpoint.host}"
                            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise AuthError(describe_network(e, Endpoint(params["realm"], realm.netloc,
                                                         False))) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm.netloc} answered without a token")
        return token
