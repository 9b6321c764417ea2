"""The control plane's half of joining and renewal: check the token or identity, sign the CSR.

These are plain functions so the servicer stays a thin adapter (the RPCs are added later):
  GetCA()                       -> ca_pem                      (anonymous, any listener)
  Join(token, csr, node_name)   -> handle_join(...)            (anonymous, TLS join listener)
  Renew(csr)                    -> handle_renew(identity, ...) (node, mTLS API listener)
Errors carry the gRPC status code the servicer should abort with.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc

from controlplane.identity.auth import Identity
from controlplane.identity.ca import DEFAULT_NODE_VALIDITY, CAError, ClusterCA
from controlplane.identity.tokens import TokenError, verify_token


class JoinError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class JoinResult:
    cert_pem: bytes     # the node's client certificate
    ca_pem: bytes       # the cluster CA, for the agent to trust from now on


async def handle_join(store, ca: ClusterCA, token: str, csr_pem: bytes, node_name: str,
                      now: float | None = None,
                      validity: dt.timedelta = DEFAULT_NODE_VALIDITY) -> JoinResult:
    """Verifies the join token, then signs the CSR for `node_name`.

    Token errors are PERMISSION_DENIED (malformed: INVALID_ARGUMENT) and CSR errors
    INVALID_ARGUMENT; messages are safe to return to the agent."""
    try:
        await verify_token(store, token, ca.ca_digest(), now)
    except TokenError as e:
        code = (grpc.StatusCode.INVALID_ARGUMENT if str(e).startswith("malformed")
                else grpc.StatusCode.PERMISSION_DENIED)
        raise JoinError(code, str(e)) from None
    issued_at = None if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    try:
        cert = ca.sign_node_csr(csr_pem, node_name, validity, now=issued_at)
    except CAError as e:
        raise JoinError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    return JoinResult(cert, ca.cert_pem)


def handle_renew(ca: ClusterCA, identity: Identity | None, csr_pem: bytes,
                 validity: dt.timedelta = DEFAULT_NODE_VALIDITY) -> JoinResult:
    """A fresh certificate for the calling node; its current, still-valid cert is the proof, so
    a node can only ever renew itself (the CSR's CN must name the caller)."""
    if identity is None or identity.kind != "node":
        raise JoinError(grpc.StatusCode.PERMISSION_DENIED,
                        "only a node can renew a node certificate")
    try:
        cert = ca.sign_node_csr(csr_pem, identity.name, validity)
    except CAError as e:
        raise JoinError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    return JoinResult(cert, ca.cert_pem)
