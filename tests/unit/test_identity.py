"""Unit tests for the cluster CA, join tokens, CA pinning, renewal timing and `authorize`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import tempfile

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.identity import auth, tokens
from controlplane.identity.auth import Identity, authorize, owns
from controlplane.identity.ca import CAError, ClusterCA, split_bundle
from controlplane.identity.join import JoinError, handle_renew
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.session.identity import IdentityError, NodeIdentity, pin_ca
from tests.builders import pb_pod


@pytest.fixture
def tmpdir_factory_():
    made = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="moortest-identity-"))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ca(tmpdir_factory_):
    return ClusterCA.load_or_create(tmpdir_factory_())


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_csr(cn: str, key=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


# ---- CA ----

def test_ca_create_is_idempotent_and_private(tmpdir_factory_):
    state = tmpdir_factory_()
    first = ClusterCA.load_or_create(state)
    second = ClusterCA.load_or_create(state)
    assert first.cert_pem == second.cert_pem
    assert first.ca_digest() == second.ca_digest() and len(first.ca_digest()) == 32
    assert mode(os.path.join(state, "pki", "ca.key")) == 0o600
    assert mode(os.path.join(state, "pki")) == 0o700
    cert = first.cert
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life >= dt.timedelta(days=3650)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"


def test_ca_refuses_half_present_files(tmpdir_factory_):
    state = tmpdir_factory_()
    ClusterCA.load_or_create(state)
    os.unlink(os.path.join(state, "pki", "ca.crt"))
    with pytest.raises(CAError, match="incomplete"):
        ClusterCA.load_or_create(state)


def test_sign_node_csr(ca):
    cert = x509.load_pem_x509_certificate(ca.sign_node_csr(make_csr("system:node:n1"), "n1"))
    cert.verify_directly_issued_by(ca.cert)
    assert auth.identity_of_cert(cert) == Identity("node", "n1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku


@pytest.mark.parametrize("cn,node", [
    pytest.param("system:node:n2", "n1", id="other-node"),
    pytest.param("admin", "n1", id="admin-cn"),
    pytest.param("n1", "n1", id="bare-name"),
    pytest.param("system:node:N1", "N1", id="invalid-node-name"),
])
def test_sign_node_csr_rejects_wrong_name(ca, cn, node):
    with pytest.raises(CAError):
        ca.sign_node_csr(make_csr(cn), node)


def test_sign_node_csr_ignores_requested_org(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([
               x509.NameAttribute(NameOID.COMMON_NAME, "system:node:n1"),
               x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moorage:admins")]))
           .sign(key, hashes.SHA256()))
    cert = x509.load_pem_x509_certificate(
        ca.sign_node_csr(csr.public_bytes(serialization.Encoding.PEM), "n1"))
    assert auth.identity_of_cert(cert) == Identity("node", "n1")


def test_sign_node_csr_rejects_tampered_csr(ca):
    der = bytearray(x509.load_pem_x509_csr(make_csr("system:node:n1"))
                    .public_bytes(serialization.Encoding.DER))
    # Flip a byte inside the subject CN ("n1" -> "n0"): structure stays valid, signature breaks.
    at = bytes(der).index(b"system:node:n1") + len("system:node:n1") - 1
    der[at] = ord("0")
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CAError, match="signature"):
        ca.sign_node_csr(tampered, "n0")
    with pytest.raises(CAError, match="not a PEM"):
        ca.sign_node_csr(b"garbage", "n1")


def test_server_cert_sans_and_reuse(ca):
    cert_pem, key_pem = ca.server_cert(["127.0.0.1", "localhost", "cp.example"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["cp.example", "localhost"]
    assert mode(os.path.join(ca.pki_dir, "server.key")) == 0o600
    assert ca.server_cert(["localhost", "cp.example", "127.0.0.1"]) == (cert_pem, key_pem)
    assert ca.server_cert(["127.0.0.1"])[0] != cert_pem


def test_admin_credentials_written_once(ca):
    path = ca.admin_credentials()
    assert path == os.path.join(ca.state_dir, "admin.pem") and mode(path) == 0o600
    with open(path, "rb") as f:
        bundle = f.read()
    cert_pem, _key, ca_pem = split_bundle(bundle)
    assert ca_pem == ca.cert_pem
    assert auth.identity_of_cert(x509.load_pem_x509_certificate(cert_pem)) == Identity(
        "admin", "admin")
    assert ca.admin_credentials() == path
    with open(path, "rb") as f:
        assert f.read() == bundle


# ---- tokens (parsing; the etcd half is in the integration tests) ----

def test_token_format_round_trip(ca):
    secret = "a" * 26
    token = tokens.format_token(ca.ca_digest(), secret)
    assert token.startswith("MOOR1-") and token == token[:5] + token[5:].lower()
    assert "=" not in token
    assert tokens.parse_token(token) == (ca.ca_digest(), secret)
    assert tokens.token_id(token) == tokens.token_id(secret)


@pytest.mark.parametrize("token", [
    pytest.param("", id="empty"),
    pytest.param("MOOR1-abc", id="two-parts"),
    pytest.param("MOOR2-" + "a" * 52 + "-" + "a" * 26, id="version"),
    pytest.param("MOOR1-" + "a" * 50 + "-" + "a" * 26, id="short-digest"),
    pytest.param("MOOR1-" + "1" * 52 + "-" + "a" * 26, id="digest-not-base32"),
    pytest.param("MOOR1-" + "a" * 52 + "-" + "a" * 25, id="short-secret"),
    pytest.param("MOOR1-" + "a" * 52 + "-" + "0" * 26, id="secret-not-base32"),
])
def test_parse_token_malformed(token):
    with pytest.raises(tokens.TokenError, match="^malformed join token: "):
        tokens.parse_token(token)


# ---- agent: pinning and renewal ----

def test_pin_ca(ca, tmpdir_factory_):
    token = tokens.format_token(ca.ca_digest(), "b" * 26)
    assert pin_ca(ca.cert_pem, token) == ca.cert_pem
    other = ClusterCA.load_or_create(tmpdir_factory_())
    with pytest.raises(IdentityError, match="does not match"):
        pin_ca(other.cert_pem, token)
    with pytest.raises(IdentityError, match="not a certificate"):
        pin_ca(b"nope", token)


def test_node_identity_join_and_reload(ca, tmpdir_factory_):
    state = tmpdir_factory_()
    node = NodeIdentity.load_or_create(state, "n1")
    assert mode(os.path.join(state, "pki", "node.key")) == 0o600
    assert not node.joined and node.needs_renewal()
    result = handle_renew(ca, Identity("node", "n1"), node.csr_pem())
    node.save(result.cert_pem, result.ca_pem)
    again = NodeIdentity.load_or_create(state, "n1")
    assert again.joined and again.key_pem == node.key_pem and not again.needs_renewal()
    assert isinstance(again.channel_credentials(), grpc.ChannelCredentials)
    with pytest.raises(IdentityError, match="not 'n2'"):
        NodeIdentity.load_or_create(state, "n2")


def test_node_identity_rejects_foreign_certs(ca, tmpdir_factory_):
    node = NodeIdentity.load_or_create(tmpdir_factory_(), "n1")
    other = ClusterCA.load_or_create(tmpdir_factory_())
    someone_else = ca.sign_node_csr(make_csr("system:node:n1"), "n1")
    with pytest.raises(IdentityError, match="not for this node's key"):
        node.save(someone_else, ca.cert_pem)
    with pytest.raises(IdentityError, match="not issued by the pinned CA"):
        node.save(ca.sign_node_csr(node.csr_pem(), "n1"), other.cert_pem)
    with pytest.raises(JoinError):
        handle_renew(ca, Identity("admin", "admin"), node.csr_pem())


@pytest.mark.parametrize("elapsed_days,renew", [
    pytest.param(0, False, id="fresh"),
    pytest.param(19, False, id="just-over-a-third-left"),
    pytest.param(21, True, id="under-a-third-left"),
    pytest.param(31, True, id="expired"),
])
def test_needs_renewal_threshold(ca, tmpdir_factory_, elapsed_days, renew):
    node = NodeIdentity.load_or_create(tmpdir_factory_(), "n1")
    issued = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert = ca.sign_node_csr(node.csr_pem(), "n1", dt.timedelta(days=30), now=issued)
    node.save(cert, ca.cert_pem)
    # notBefore is backdated 5 minutes, so the lifetime is 30 days + 5 min; 1/3 is ~10 days.
    assert node.needs_renewal(issued + dt.timedelta(days=elapsed_days)) is renew


# ---- authorize ----

ADMIN = Identity("admin", "admin")
N1 = Identity("node", "n1")


def apply(*docs) -> api_pb2.ApplyRequest:
    return api_pb2.ApplyRequest(manifests=[
        api_pb2.Manifest(source="m", index=i, content=json.dumps(d)) for i, d in enumerate(docs)])


NODE_N1 = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
NODE_N2 = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}
POD_ON_N1 = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1"},
             "status": {"phase": "Running"}}
POD_ON_N2 = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n2"}}
DEPLOY = {"kind": "Deployment", "metadata": {"name": "web"}}

OK, DENIED, UNAUTH = (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.UNAUTHENTICATED)

CASES = [
    # identity, method, request, code, filter_owned
    pytest.param(ADMIN, "/moorage.v1.Cluster/Delete", api_pb2.DeleteRequest(kind="pod"),
                 OK, False, id="admin-delete"),
    pytest.param(ADMIN, "Apply", apply(DEPLOY), OK, False, id="admin-apply"),
    pytest.param(ADMIN, "CreateToken", api_pb2.CreateTokenRequest(), OK, False,
                 id="admin-create-token"),
    pytest.param(N1, "Get", api_pb2.GetRequest(kind="node", name="n1"),
                 OK, True, id="node-get-own-node"),
    pytest.param(N1, "Get", api_pb2.GetRequest(kind="no", name="n2"),
                 DENIED, False, id="node-get-other-node"),
    pytest.param(N1, "Get", api_pb2.GetRequest(kind="pod", namespace="a", name="p"),
                 OK, True, id="node-get-pod-filtered"),
    pytest.param(N1, "List", api_pb2.ListRequest(kind="pods", field_selector="spec.nodeName=n1"),
                 OK, True, id="node-list-own-pods"),
    pytest.param(N1, "List", api_pb2.ListRequest(kind="pods", all_namespaces=True),
                 DENIED, False, id="node-list-all-pods"),
    pytest.param(N1, "List", api_pb2.ListRequest(kind="pods", field_selector="spec.nodeName=n2"),
                 DENIED, False, id="node-list-other-nodes-pods"),
    pytest.param(N1, "List", api_pb2.ListRequest(kind="nodes"), OK, True,
                 id="node-list-nodes-filtered"),
    pytest.param(N1, "Watch", api_pb2.WatchRequest(kind="pods"), DENIED, False,
                 id="node-watch"),
    pytest.param(N1, "List", api_pb2.ListRequest(kind="services"),
                 DENIED, False, id="node-list-services"),
    pytest.param(N1, "Get", api_pb2.GetRequest(kind="bogus"),
                 DENIED, False, id="node-get-unknown-kind"),
    pytest.param(N1, "Apply", apply(NODE_N1), DENIED, False, id="node-apply-own-node"),
    pytest.param(N1, "Apply", apply(POD_ON_N1), DENIED, False, id="node-apply-own-pod"),
    pytest.param(N1, "Delete", api_pb2.DeleteRequest(kind="node", name="n1"),
                 DENIED, False, id="node-delete-own-node"),
    pytest.param(N1, "Explain", api_pb2.ExplainRequest(), DENIED, False, id="node-explain"),
    pytest.param(N1, "CreateToken", api_pb2.CreateTokenRequest(), DENIED, False,
                 id="node-create-token"),
    pytest.param(N1, "Logs", api_pb2.LogsRequest(), DENIED, False, id="node-logs"),
    pytest.param(N1, "Renew", None, OK, False, id="node-renew"),
    pytest.param(None, "GetCA", None, OK, False, id="anon-getca"),
    pytest.param(None, "/moorage.v1.Bootstrap/Join", None, OK, False, id="anon-join"),
    pytest.param(None, "Get", api_pb2.GetRequest(kind="node", name="n1"),
                 UNAUTH, False, id="anon-get"),
    pytest.param(None, "Apply", apply(NODE_N1), UNAUTH, False, id="anon-apply"),
    pytest.param(None, "Version", api_pb2.VersionRequest(), UNAUTH, False, id="anon-version"),
    pytest.param(None, "Renew", None, UNAUTH, False, id="anon-renew"),
    pytest.param(Identity("robot", "x"), "Get", api_pb2.GetRequest(kind="pod"),
                 DENIED, False, id="unknown-kind-of-identity"),
]


@pytest.mark.parametrize("identity,method,request_,code,filtered", CASES)
def test_authorize(identity, method, request_, code, filtered):
    d = authorize(identity, method, request_)
    assert (d.code, d.filter_owned) == (code, filtered)
    assert d.allowed is (code == OK)
    if not d.allowed:
        assert d.message and "\n" not in d.message


def test_join_refused_on_plaintext():
    assert not authorize(None, "Join", None, tls=False).allowed
    assert authorize(None, "GetCA", None, tls=False).allowed


def pod(name: str, node: str) -> pb.Pod:
    return pb_pod(name, node=node)


def test_owns():
    node = pb.Node()
    node.metadata.name = "n1"
    assert owns(N1, node) and owns(N1, pod("p", "n1")) and not owns(N1, pod("p", "n2"))
    wrapped = pb.Object()
    wrapped.pod.CopyFrom(pod("p", "n2"))
    assert not owns(N1, wrapped) and owns(ADMIN, wrapped) and not owns(None, node)
