"""The node agent's identity: its key, its CA-signed client certificate and the pinned cluster CA.

Join flow (`moor-agent --join <addr> --token <t>`; `<addr>` is the control plane's CA listener):
  1. `NodeIdentity.load_or_create(state_dir, node_name)` makes (or reloads) the EC P-256 key,
     mode 0600, and a CSR with CN=system:node:<node_name>.
  2. Over a plaintext channel to `<addr>`, call GetCA() -> ca_pem. Nothing from this channel is
     trusted yet: `pin_ca(ca_pem, token)` accepts the CA only if sha256(CA DER) equals the digest
     in the token, so a man in the middle can at most make the join fail.
  3. Open a TLS channel to the join listener trusting exactly that CA
     (`join_channel_credentials(ca_pem)`); only now do the token secret and the CSR leave the
     machine: Join(token, csr, node_name) -> (cert_pem, ca_pem).
  4. `save(cert_pem, ca_pem)` checks that the cert was issued by the pinned CA for our key and
     name, and writes it; from then on every connection uses `channel_credentials()` (mTLS).
  5. Periodically, `needs_renewal(now)` (less than 1/3 of the validity left) -> call Renew(csr)
     over the mTLS channel and `save` the result. The key is kept; only the cert is replaced.
A restarted agent with a saved, unexpired cert skips steps 2-4.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from moorage.fsutil import write_atomic
from moorage.model import hostport
from moorage.model.jointoken import parse_token

NODE_CN_PREFIX = "system:node:"
# Renew once less than this fraction of the certificate's lifetime remains.
RENEW_FRACTION = 1 / 3


class IdentityError(Exception):
    """The CA or certificate we were given cannot be trusted; the message says why."""


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def pin_ca(ca_pem: bytes, token: str) -> bytes:
    """Returns `ca_pem` if it is the CA the token names (sha256 of its DER); else IdentityError."""
    want, _secret = parse_token(token)
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        raise IdentityError(f"the control plane sent something that is not a certificate: {e}"
                            ) from None
    got = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    if not hmac.compare_digest(got, want):
        raise IdentityError("the control plane's CA does not match the join token's CA digest "
                            "(wrong cluster, or someone is intercepting the connection)")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise IdentityError("the pinned certificate is not a CA certificate")
    return cert.public_bytes(serialization.Encoding.PEM)


def join_channel_credentials(ca_pem: bytes) -> grpc.ChannelCredentials:
    """TLS trusting only the pinned CA, without a client cert: for the Join call."""
    return grpc.ssl_channel_credentials(root_certificates=ca_pem)


class NodeIdentity:
    """Files under `<state_dir>/pki/`: node.key (0600), node.crt, ca.crt."""

    def __init__(self, state_dir: str, node_name: str, key: ec.EllipticCurvePrivateKey,
                 cert_pem: bytes | None, ca_pem: bytes | None):
        self.state_dir = state_dir
        self.pki_dir = os.path.join(state_dir, "pki")
        self.node_name = node_name
        self.key = key
        self.cert_pem = cert_pem
        self.ca_pem = ca_pem

    @classmethod
    def load_or_create(cls, state_dir: str, node_name: str) -> NodeIdentity:
        pki = os.path.join(state_dir, "pki")
        os.makedirs(pki, mode=0o700, exist_ok=True)
        key_path = os.path.join(pki, "node.key")
        key_pem = _read(key_path)
        if key_pem is None:
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomic(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), 0o600)
        else:
            key = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise IdentityError(f"{key_path} is not an EC private key")
        cert_pem = _read(os.path.join(pki, "node.crt"))
        ca_pem = _read(os.path.join(pki, "ca.crt"))
        ident = cls(state_dir, node_name, key, cert_pem, ca_pem)
        if cert_pem is not None:
            # A renamed node must join again rather than keep acting under its old name.
            name = ident.certified_name()
            if name != node_name:
                raise IdentityError(f"{pki}/node.crt is for node {name!r}, not {node_name!r}; "
                                    f"remove {pki} to join again under the new name")
        return ident

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def csr_pem(self) -> bytes:
        """A CSR for CN=system:node:<name>, signed by our key (fresh each call; cheap)."""
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.COMMON_NAME, NODE_CN_PREFIX + self.node_name)]))
               .sign(self.key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)

    def certificate(self) -> x509.Certificate | None:
        return x509.load_pem_x509_certificate(self.cert_pem) if self.cert_pem else None

    def certified_name(self) -> str | None:
        cert = self.certificate()
        if cert is None:
            return None
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else ""
        return cn[len(NODE_CN_PREFIX):] if cn.startswith(NODE_CN_PREFIX) else None

    @property
    def joined(self) -> bool:
        return self.cert_pem is not None and self.ca_pem is not None

    def save(self, cert_pem: bytes, ca_pem: bytes) -> None:
        """Stores a certificate from Join/Renew after checking it is ours and from this CA."""
        if self.ca_pem is not None and ca_pem != self.ca_pem:
            # CA rotation is not supported yet; never silently switch trust anchors.
            raise IdentityError("the control plane returned a different CA than the pinned one")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            ca = x509.load_pem_x509_certificate(ca_pem)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise IdentityError(f"the certificate was not issued by the pinned CA: {e}") from None
        if cert.public_key().public_numbers() != self.key.public_key().public_numbers():
            raise IdentityError("the certificate is not for this node's key")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or cns[0].value != NODE_CN_PREFIX + self.node_name:
            raise IdentityError(f"the certificate is not for node {self.node_name!r}")
        # CA first: a cert on disk without its CA would be unusable after a crash.
        write_atomic(os.path.join(self.pki_dir, "ca.crt"), ca_pem, 0o644)
        write_atomic(os.path.join(self.pki_dir, "node.crt"), cert_pem, 0o644)
        self.cert_pem, self.ca_pem = cert_pem, ca_pem

    def needs_renewal(self, now: dt.datetime | None = None) -> bool:
        """True without a certificate, or once less than 1/3 of its validity remains."""
        cert = self.certificate()
        if cert is None:
            return True
        now = now or dt.datetime.now(dt.UTC)
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return end - now < (end - start) * RENEW_FRACTION

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS to the API listener: trust only the pinned CA, present our certificate."""
        if not self.joined:
            raise IdentityError("this node has not joined a cluster yet")
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem,
                                            private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)


# ---- talking to the control plane ----

# The control plane serves its CA in plaintext on its API port + 3 (moor-controlplane
# --ca-listen); GetCA then says where the TLS join listener is.
CA_PORT_OFFSET = 3
JOIN_ATTEMPT_SECONDS = 60.0


def _split(address: str) -> tuple[str, int]:
    try:
        host, port = hostport.split(address)
    except hostport.HostPortError as err:
        raise IdentityError(f"--join: {err}") from None
    if not host:
        raise IdentityError(f"--join {address!r} is not HOST:PORT")
    return host, port


def _fatal(err: grpc.RpcError) -> bool:
    return err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
                          grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED)


def join(ident: NodeIdentity, address: str, token: str,
         give_up_after: float = JOIN_ATTEMPT_SECONDS) -> None:
    """Pins the CA with the token, then trades the token and a CSR for our certificate.

    Retries while the control plane is unreachable (it may be starting); a refused token or
    a CA that does not match raises IdentityError at once. Blocking gRPC on purpose: the
    session's grpc.aio channels then live in one event loop only (channels of a loop that has
    ended can stall the next loop's first calls)."""
    import time

    from moorage.v1 import agent_pb2, agent_pb2_grpc

    parse_token(token)  # a malformed token is the operator's typo: say so before dialling
    host, port = _split(address)
    deadline = time.monotonic() + give_up_after
    delay = 0.2
    while True:
        try:
            with grpc.insecure_channel(hostport.join(host, port + CA_PORT_OFFSET)) as ch:
                got = agent_pb2_grpc.BootstrapStub(ch).GetCA(agent_pb2.GetCARequest(),
                                                             timeout=5)
            ca_pem = pin_ca(got.ca_pem, token)
            join_at = hostport.join(host, got.join_port or port + 2)
            with grpc.secure_channel(join_at, join_channel_credentials(ca_pem)) as ch:
                resp = agent_pb2_grpc.BootstrapStub(ch).Join(agent_pb2.JoinRequest(
                    token=token, csr_pem=ident.csr_pem(), node_name=ident.node_name),
                    timeout=10)
            ident.save(resp.cert_pem, ca_pem)
            return
        except grpc.RpcError as err:
            if _fatal(err):
                raise IdentityError(f"joining {address} was refused: {err.details()}") from None
            if time.monotonic() + delay > deadline:
                raise IdentityError(f"cannot reach the control plane at {address} to join: "
                                    f"{err.code().name} {err.details()}") from None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


async def renew(ident: NodeIdentity, channel: grpc.aio.Channel) -> None:
    """A fresh certificate for our key over the node's mTLS channel."""
    from moorage.v1 import agent_pb2, agent_pb2_grpc

    resp = await agent_pb2_grpc.BootstrapStub(channel).Renew(
        agent_pb2.RenewRequest(csr_pem=ident.csr_pem()), timeout=10)
    ident.save(resp.cert_pem, resp.ca_pem)


def secure_channel_factory(ident: NodeIdentity, options=()):
    """What Session dials with: mTLS with the node's current certificate."""
    def make(address: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(address, ident.channel_credentials(), options=options)
    return make


def renewal_interval(ident: NodeIdentity, now: dt.datetime | None = None) -> float:
    """How long until the next look at whether the certificate needs renewing: a quarter of
    what is left of it, between 1 second and 1 hour."""
    cert = ident.certificate()
    if cert is None:
        return 60.0
    left = (cert.not_valid_after_utc - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return max(1.0, min(3600.0, left / 4))


async def keep_renewed(ident: NodeIdentity, channel: Callable[[], grpc.aio.Channel | None],
                       stop, log) -> None:
    """Renews the certificate over the live session's channel whenever it needs it."""
    import asyncio

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), renewal_interval(ident))
            return
        except TimeoutError:
            pass
        ch = channel()
        if ch is None or not ident.needs_renewal():
            continue
        try:
            await renew(ident, ch)
            log.info("renewed the node certificate; it is valid until %s",
                     ident.certificate().not_valid_after_utc.isoformat())
        except (grpc.aio.AioRpcError, IdentityError) as err:
            detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
            log.warning("renewing the node certificate failed: %s", detail)
