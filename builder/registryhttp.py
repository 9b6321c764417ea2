"""HTTP to one registry repository for pushes: persistent connections (one per thread, so
parallel uploads each keep theirs), bodies streamed from files, and auth answered once through
the agent's Authorizer (Basic, or a Bearer token for the scopes the push needs).

Requests are not retried; a connection the server closed while idle is reopened once, before
anything of the request was answered. Errors are RegistryHTTPError with Docker's wording of
the registry's error (`unauthorized: authentication required`)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.runtime.images.auth import AuthError, Authorizer
from nodeagent.runtime.images.registry import Endpoint, RegistryConfig, describe_network

BLOCK = 1 << 20  # what http.client reads from a file body at once
MAX_BODY = 4 << 20


class RegistryHTTPError(Exception):
    """One line: what the registry said (or why it could not be reached)."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    reason: str = ""

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""


def _login_advice(host: str) -> str:
    return f"log in first (moor login {host} -u USER)"


def registry_error(status: int, body: bytes, reason: str = "") -> tuple[str, str]:
    """(Docker's wording, the first error code) of a registry's error body: code in lower case
    with spaces, then the message, e.g. `blob unknown: blob unknown to registry`."""
    found = []
    first = ""
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    for err in errors if isinstance(errors, list) else []:
        if not isinstance(err, dict):
            continue
        code = str(err.get("code") or "")
        first = first or code
        message = str(err.get("message") or "").strip()
        text = code.lower().replace("_", " ")
        found.append(f"{text}: {message}" if message and text else message or text)
    if found:
        return "; ".join(found), first
    return f"HTTP {status}{' ' + reason if reason else ''}", ""


class Session:
    """Requests to `endpoint` for one repository; `scopes` are the token scopes asked for on a
    Bearer challenge (`repository:<name>:pull,push`, plus pull of mount sources)."""

    def __init__(self, config: RegistryConfig, endpoint: Endpoint, domain: str,
                 scopes: Sequence[str]):
        self.config = config
        self.endpoint = endpoint
        self.domain = domain
        self.scopes = list(scopes)
        self._authorizer = Authorizer(config, _login_advice)
        self._auth: str | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        base = urllib.parse.urlsplit(endpoint.base_url)
        self._base = (base.scheme, base.netloc)
        self._prefix = base.path.rstrip("/")

    # ---- connections ----

    def _connection(self, scheme: str, netloc: str, fresh: bool = False):
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((scheme, netloc))
        if conn is not None and not fresh:
            return conn, True
        if conn is not None:
            conn.close()
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=self.config.timeout,
                                               context=ssl.create_default_context(),
                                               blocksize=BLOCK)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self.config.timeout,
                                              blocksize=BLOCK)
        conns[(scheme, netloc)] = conn
        with self._auth_lock:
            self._all.append(conn)
        return conn, False

    def close(self) -> None:
        with self._auth_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    # ---- requests ----

    def url(self, path: str) -> str:
        """`/v2/...` under the endpoint's base (a mirror may carry a path prefix)."""
        scheme, netloc = self._base
        return f"{scheme}://{netloc}{self._prefix}{path}"

    def resolve(self, location: str) -> str:
        """A Location header, which may be relative, made absolute."""
        return urllib.parse.urljoin(self.url("/"), location)

    def request(self, method: str, url: str, body=None, headers: dict | None = None,
                ok: Sequence[int] = (200, 201, 202, 204), what: str = "") -> Response:
        """One request; a 401 with a challenge is answered once and the request sent again
        (a file body is rewound). Anything not in `ok` raises RegistryHTTPError."""
        for attempt in (1, 2):
            resp = self._send(method, url, body, headers or {})
            if resp.status == 401 and attempt == 1 and resp.header("WWW-Authenticate"):
                self.authorize(resp.header("WWW-Authenticate"))
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            if resp.status in ok:
                return resp
            message, code = registry_error(resp.status, resp.body, resp.reason)
            raise RegistryHTTPError(message + (f" ({what})" if what and not code else ""),
                                    resp.status, code)
        raise AssertionError("unreachable")

    def authorize(self, challenge: str) -> None:
        with self._auth_lock:
            try:
                self._auth = self._authorizer.authorize(self.endpoint, self.domain, challenge,
                                                        self.scopes)
            except AuthError as e:
                raise RegistryHTTPError(str(e), 401, "UNAUTHORIZED") from None

    def _send(self, method: str, url: str, body, headers: dict) -> Response:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = dict(headers)
        # The token goes only to the registry itself, never to a storage host a Location or
        # redirect names.
        if self._auth and (parts.scheme, parts.netloc) == self._base:
            headers["Authorization"] = self._auth
        if body is None and method in ("PUT", "POST", "PATCH"):
            headers.setdefault("Content-Length", "0")
        conn, reused = self._connection(parts.scheme, parts.netloc)
        try:
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # A keep-alive connection the server closed while idle: open a new one.
                if hasattr(body, "seek"):
                    body.seek(0)
                conn, _ = self._connection(parts.scheme, parts.netloc, fresh=True)
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            data = resp.read(MAX_BODY)  # a HEAD's is empty; reading it frees the connection
            if resp.will_close or not resp.isclosed():
                conn.close()  # the server ends it, or sent more than we read: start afresh
            return Response(resp.status, resp.headers, data, resp.reason)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryHTTPError(_network(e, parts.netloc, self.endpoint)) from None


def _network(e: Exception, netloc: str, endpoint: Endpoint) -> str:
    if netloc != endpoint.host:
        endpoint = Endpoint(f"//{netloc}", netloc, False)
    if isinstance(e, http.client.HTTPException | ConnectionResetError | BrokenPipeError):
        return f"connection to {endpoint.host} broke off: {e or type(e).__name__}"
    if isinstance(e, socket.timeout):
        return f"timed out talking to {endpoint.host}"
    return describe_network(e, endpoint)


class FileSlice:
    """`length` bytes of a file from `offset`, read in blocks: a PATCH chunk's body."""

    def __init__(self, path: str, offset: int, length: int):
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset, self._left, self._length = offset, length, length
        self._f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def seek(self, _pos: int) -> None:
        self._f.seek(self._offset)
        self._left = self._length

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def file_size(path: str) -> int:
    return os.stat(path).st_size
