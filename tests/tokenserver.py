"""A token server for Debian's docker-registry in token-auth mode (the distribution spec's
Bearer flow): it checks a Basic username and password and hands out JWTs (RS256, the signing
certificate in the x5c header) granting the scopes asked for. The registry trusts the
certificate through its `rootcertbundle`, so a push or pull works only with a real token."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ISSUER = "moortest-issuer"
SERVICE = "moortest-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenServer:
    """Serves /token on loopback; `scopes` records every scope asked for, in order."""

    def __init__(self, directory: str, users: dict[str, str]):
        self.users = users
        self.scopes: list[str] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moortest token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.bundle = os.path.join(directory, "token-signer.pem")
        with open(self.bundle, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))
        self.port = _free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self._reply(404, {})
                    return
                if not server._authenticated(self.headers.get("Authorization", "")):
                    self._reply(401, {"details": "bad credentials"})
                    return
                scopes = [v for k, v in urllib.parse.parse_qsl(url.query) if k == "scope"]
                server.scopes += scopes
                self._reply(200, {"token": server.token(scopes), "expires_in": 300})

            def _reply(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def registry_auth(self) -> str:
        """The `auth:` section of the registry's config.yml."""
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {self.bundle}\n")

    def _authenticated(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.users.get(user) == password

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT",
                  "x5c": [base64.b64encode(self.cert.public_bytes(
                      serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": "moortest", "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." +
                         _b64url(json.dumps(claims).encode()))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
