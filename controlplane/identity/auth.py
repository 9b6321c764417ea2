"""Who is calling (from the verified TLS client certificate) and what they may do.

Listeners (grpc-python cannot *optionally* request a client certificate:
`require_client_auth=False` means the server never asks for one, so a client cert would be
invisible; hence certificate-less calls get their own listeners on the same grpc.aio.Server):
  API    `server_credentials`       mTLS, client cert required: admins and nodes
  join   `join_server_credentials`  TLS, no client cert: anonymous Join (token + CSR)
  CA     insecure port              plaintext: anonymous GetCA only (the agent pins the digest)
`authorize` applies the same rules whichever listener a call arrived on; `tls=False` marks a
plaintext call so Join (which carries the token secret) is refused there.

Rules: admin may do anything. A node may Get/List/Watch only its own Node and the Pods bound to
it, Apply only its own Node and the status of its own Pods, and Renew its own certificate.
Anonymous callers may only GetCA and Join. Everything else is PERMISSION_DENIED (known caller)
or UNAUTHENTICATED (no certificate), each with a one-line message.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import grpc
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from controlplane.identity.ca import ADMIN_CN, ADMIN_ORG, NODE_CN_PREFIX, NODE_ORG, split_bundle
from moorage import kinds

ANONYMOUS_METHODS = frozenset({"GetCA", "Join"})
_READS = frozenset({"Get", "List", "Watch"})
_NODE_KINDS = frozenset({"Node", "Pod"})


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str   # "node" or "admin"
    name: str   # the node name, or "admin"

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the caller must do. When allowed, two obligations may remain for the servicer:

    filter_owned: drop every object for which `owns(identity, obj)` is False: Get answers
      PERMISSION_DENIED, List leaves it out of `items`, Watch skips the event (a RESYNC keeps
      only owned items). The request alone cannot say which pods are bound to the node.
    check_writes: after parsing the manifests call `authorize_write(identity, obj)` for every
      object (authoritative; `authorize` only pre-screens the raw text), and for a Pod load the
      stored one and write `status_only(stored, incoming)` instead of the incoming object.
    """

    allowed: bool
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    filter_owned: bool = False
    check_writes: bool = False


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
    with open(path, "rb") as f:
        cert, key, ca = split_bundle(f.read())
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


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
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    if ca_cert is not None:
        now = now or dt.datetime.now(dt.UTC)
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
    return identity_of_cert(cert)


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


def _write_rule(identity: Identity, kind: str | None, name: str, node_name: str) -> Decision:
    # Shared by the pre-screen on raw manifests and the check on parsed objects.
    if kind == "Node":
        if name == identity.name:
            return ALLOW
        return _deny(f"{identity} may not write node {name!r}")
    if kind == "Pod":
        if node_name == identity.name:
            return ALLOW
        return _deny(f"{identity} may only write the status of pods bound to it "
                     f"(pod {name!r} is bound to {node_name or 'no node'!r})")
    return _deny(f"{identity} may not write {kind or 'unknown'} objects")


def authorize_write(identity: Identity | None, obj) -> Decision:
    """The authoritative per-object check for Apply, on a parsed protobuf object."""
    if identity is None:
        return Decision(False, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    if identity.kind == "admin":
        return ALLOW
    kind = kinds.kind_of(obj).name
    node_name = obj.spec.node_name if kind == "Pod" else ""
    return _write_rule(identity, kind, obj.metadata.name, node_name)


def status_only(stored, incoming):
    """What a node's Pod write may change: the stored pod with only its status replaced."""
    out = type(stored)()
    out.CopyFrom(stored)
    out.status.CopyFrom(incoming.status)
    return out


def _raw_documents(manifest) -> list:
    # Pre-screen only: the servicer's strict parser remains the authority (see check_writes).
    text = manifest.content
    try:
        return [json.loads(text)]
    except ValueError:
        return [d for d in yaml.safe_load_all(text) if d is not None]


def _authorize_apply(identity: Identity, request) -> Decision:
    for m in request.manifests:
        try:
            docs = _raw_documents(m)
        except yaml.YAMLError:
            return _deny(f"{identity} sent a manifest that cannot be parsed ({m.source})")
        for doc in docs:
            if not isinstance(doc, dict):
                return _deny(f"{identity} sent a manifest that is not an object ({m.source})")
            meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
            name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
            node = str(spec.get("nodeName", "")) if isinstance(spec, dict) else ""
            decision = _write_rule(identity, _kind(str(doc.get("kind", ""))), name, node)
            if not decision.allowed:
                return decision
    return Decision(True, check_writes=True)


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
    if short in _READS:
        kind = _kind(getattr(request, "kind", ""))
        if kind not in _NODE_KINDS:
            return _deny(f"{identity} may not {short.lower()} {kind or 'unknown'} objects")
        if short == "Get" and kind == "Node":
            if request.name == identity.name:
                return ALLOW
            return _deny(f"{identity} may not read node {request.name!r}")
        return Decision(True, filter_owned=True)
    if short == "Apply":
        return _authorize_apply(identity, request)
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
