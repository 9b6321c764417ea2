"""Who is calling (from the verified TLS client certificate) and what they may do.

Listeners (grpc-python cannot *optionally* request a client certificate:
`require_client_auth=False` means the server never asks for one, so a client cert would be
invisible; hence certificate-less calls get their own listeners on the same grpc.aio.Server):
  API    `server_credentials`       mTLS, client cert required: admins and nodes
  join   `join_server_credentials`  TLS, no client cert: anonymous Join (token + CSR)
  CA     insecure port              plaintext: anonymous GetCA only (the agent pins the digest)
`authorize` applies the same rules whichever listener a call arrived on; `tls=False` marks a
plaintext call so Join (which carries the token secret) is refused there.

Rules: admin may do anything. A node may Get its own Node, the Pods bound to it and the
ConfigMaps and Secrets those pods use, List Nodes (its own only) and Pods with
`fieldSelector spec.nodeName=<itself>`, and Renew its own certificate; it writes its Node and
its pods' status only through its Dispatcher session, which checks the same ownership.
Anonymous callers may only GetCA and Join. Everything else is PERMISSION_DENIED (known caller)
or UNAUTHENTICATED (no certificate), each with a one-line message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from controlplane.identity.ca import ADMIN_CN, ADMIN_ORG, NODE_CN_PREFIX, NODE_ORG
from moorage.credentials import channel_credentials
from moorage.model import kinds

ANONYMOUS_METHODS = frozenset({"GetCA", "Join"})
_NODE_KINDS = frozenset({"Node", "Pod"})


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str   # "node" or "admin"
    name: str   # the node name, or "admin"

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the caller must do. When allowed, one obligation may remain for the servicer:

    filter_owned: drop every object for which `owns(identity, obj)` is False: Get answers
      PERMISSION_DENIED, List leaves it out of `items`. The request alone cannot say which
      pods are bound to the node.
    """

    allowed: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    filter_owned: bool = False
    # A node reading a ConfigMap or Secret: allowed only if one of its pods uses it, which
    # the servicer checks against the pods bound to it.
    used_by_node: bool = False


ALLOW = Decision(True)


def _deny(message: str) -> Decision:
    return Decision(False, grpc.StatusCode.PERMISSION_DENIED, message)


# ---- credentials ----

def server_credentials(ca, serving_cert: bytes, key: bytes) -> grpc.ServerCredentials:
    """mTLS for the API listener: clients must present a certificate issued by the cluster CA.
    `ca` is a ClusterCA or the CA certificate PEM."""
    ca_pem = ca if isinstance(ca, bytes) else ca.cert_pem
    return grpc.ssl_server_credentials([(key, serving_cert)], root_certificates=ca_pem,
                                       require_client_auth=True)


def join_server_credentials(serving_cert: bytes, key: bytes) -> grpc.ServerCredentials:
    """Server-authenticated TLS for the join listener: agents without a certificate yet."""
    return grpc.ssl_server_credentials([(key, serving_cert)], require_client_auth=False)


def admin_channel_credentials(path: str) -> grpc.ChannelCredentials:
    """Channel credentials for `moor` from an admin.pem bundle (cert + key + CA)."""
    return channel_credentials(path)


# ---- who is calling ----

def is_tls(context) -> bool:
    return context.auth_context().get("transport_security_type") == [b"ssl"]


def identity_of_cert(cert: x509.Certificate) -> Identity | None:
    """The Identity a certificate's subject names, or None for any other subject."""
    def one(oid) -> str | None:
        attrs = cert.subject.get_attributes_for_oid(oid)
        return attrs[0].value if len(attrs) == 1 and isinstance(attrs[0].value, str) else None

    cn, org = one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATION_NAME)
    if org == ADMIN_ORG and cn == ADMIN_CN:
        return Identity("admin", ADMIN_CN)
    if org == NODE_ORG and cn and cn.startswith(NODE_CN_PREFIX) and len(cn) > len(NODE_CN_PREFIX):
        return Identity("node", cn[len(NODE_CN_PREFIX):])
    return None


# Verified certificates by (PEM, CA): a verify costs an ECDSA check, and every call of a
# session-long client presents the same certificate. Bounded; cleared when full.
_VERIFIED: dict[tuple[bytes, int], tuple[Identity | None, dt.datetime, dt.datetime]] = {}
_VERIFIED_MAX = 4096


def _verified(pem: bytes, ca_cert: x509.Certificate | None
              ) -> tuple[Identity | None, dt.datetime, dt.datetime] | None:
    key = (pem, id(ca_cert))
    hit = _VERIFIED.get(key)
    if hit is not None:
        return hit
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    if ca_cert is not None:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    hit = _VERIFIED[key] = (identity_of_cert(cert), cert.not_valid_before_utc,
                            cert.not_valid_after_utc)
    return hit


def peer_identity(context, ca_cert: x509.Certificate | None = None,
                  now: dt.datetime | None = None) -> Identity | None:
    """The caller's Identity from its TLS client certificate; None means anonymous.

    The API listener's TLS layer has already verified the chain; passing `ca_cert` re-checks
    issuer and validity here too, so a listener misconfigured without client verification
    cannot turn a self-made "admin" certificate into an admin."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if auth.get("transport_security_type") != [b"ssl"] or not pems:
        return None
    found = _verified(pems[0], ca_cert)
    if found is None:
        return None
    identity, not_before, not_after = found
    if ca_cert is not None:
        now = now or dt.datetime.now(dt.UTC)
        if not not_before <= now <= not_after:
            return None
    return identity


# ---- what they may do ----

def owns(identity: Identity | None, obj) -> bool:
    """Whether `identity` may see `obj` (a protobuf Node/Pod or a pb.Object wrapper)."""
    if identity is None:
        return False
    if identity.kind == "admin":
        return True
    if hasattr(obj, "WhichOneof") and obj.DESCRIPTOR.name == "Object":
        obj = kinds.unwrap(obj)
    kind = kinds.kind_of(obj).name
    if kind == "Node":
        return obj.metadata.name == identity.name
    if kind == "Pod":
        return obj.spec.node_name == identity.name
    return False


def _kind(name: str) -> str | None:
    try:
        return kinds.lookup(name).name
    except kinds.UnknownKind:
        return None


def authorize(identity: Identity | None, method: str, request, *, tls: bool = True) -> Decision:
    """Pure: may `identity` call `method` (short "Get" or full "/moorage.v1.Cluster/Get")
    with `request`? `tls` is False for calls on the plaintext CA listener."""
    short = method.rsplit("/", 1)[-1]
    if identity is None:
        if short == "GetCA":
            return ALLOW
        if short == "Join":
            if tls:
                return ALLOW
            return _deny("Join carries the token secret: use the TLS join listener")
        return Decision(False, grpc.StatusCode.UNAUTHENTICATED,
                        f"{short} needs a client certificate (join the cluster, or use admin.pem)")
    if identity.kind == "admin":
        return ALLOW
    if identity.kind != "node":
        return _deny(f"unknown identity kind {identity.kind!r}")
    if short in ANONYMOUS_METHODS or short == "Renew":
        return ALLOW
    if short == "Get":
        kind = _kind(getattr(request, "kind", ""))
        if kind == "Node" and request.name != identity.name:
            return _deny(f"{identity} may not read node {request.name!r}")
        if kind in _NODE_KINDS:
            return Decision(True, filter_owned=True)
        if kind in ("ConfigMap", "Secret"):
            return Decision(True, used_by_node=True)
        return _deny(f"{identity} may not get {kind or 'unknown'} objects")
    if short == "List":
        kind = _kind(getattr(request, "kind", ""))
        if kind == "Node":
            return Decision(True, filter_owned=True)
        if kind == "Pod":
            own = f"spec.nodeName={identity.name}"
            if request.field_selector.replace(" ", "") != own:
                return _deny(f"{identity} may only list pods with fieldSelector {own}")
            return Decision(True, filter_owned=True)
        return _deny(f"{identity} may not list {kind or 'unknown'} objects")
    if short == "Apply":
        return _deny(f"{identity} may not apply objects: nodes report their status through "
                     "their Dispatcher session")
    return _deny(f"{identity} may not call {short}")


async def enforce(context, decision: Decision) -> None:
    """Aborts the RPC when `decision` denies it (use inside grpc.aio handlers)."""
    if not decision.allowed:
        await context.abort(decision.code, decision.message)


async def guard(context, method: str, request, ca_cert: x509.Certificate | None = None
                ) -> tuple[Identity | None, Decision]:
    """The first line of every handler: who is calling, and what they must still filter;
    aborts the RPC (PERMISSION_DENIED/UNAUTHENTICATED) when the call is not allowed at all."""
    identity = peer_identity(context, ca_cert)
    decision = authorize(identity, method, request, tls=is_tls(context))
    await enforce(context, decision)
    return identity, decision
