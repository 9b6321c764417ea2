"""Join tokens in a real etcd, the join handshake, and real mTLS gRPC calls with peer identity."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane.identity import tokens
from controlplane.identity.auth import (
    Identity,
    admin_channel_credentials,
    guard,
    is_tls,
    join_server_credentials,
    peer_identity,
    server_credentials,
)
from controlplane.identity.ca import ClusterCA
from controlplane.identity.join import JoinError, handle_join
from controlplane.identity.tokens import TokenError
from moorage.v1 import api_pb2
from nodeagent.session.identity import NodeIdentity, join_channel_credentials, pin_ca
from tests.conftest import run


@pytest.fixture
def dirs():
    made = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="moortest-identity-"))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


# ---- tokens in etcd ----

def test_token_create_verify_list_revoke(store_factory, dirs):
    ca = ClusterCA.load_or_create(dirs())
    other = ClusterCA.load_or_create(dirs())

    async def go():
        s = await store_factory()
        try:
            token = await tokens.create_token(s, 600, ca.ca_digest())
            await tokens.verify_token(s, token, ca.ca_digest())
            tid = tokens.token_id(token)
            stored = await s.client.get(f"{s.prefix}/tokens/{tid}".encode())
            assert stored is not None and tokens.parse_token(token)[1].encode() not in stored.value
            assert [t.id for t in await tokens.list_tokens(s)] == [tid]

            with pytest.raises(TokenError, match=r"^join token expired$"):
                await tokens.verify_token(s, token, ca.ca_digest(), now=time.time() + 601)
            with pytest.raises(TokenError, match=r"another cluster \(CA digest mismatch\)"):
                await tokens.verify_token(s, token, other.ca_digest())
            forged = tokens.format_token(ca.ca_digest(), tokens._b32(secrets.token_bytes(16)))
            with pytest.raises(TokenError, match=r"^unknown join token$"):
                await tokens.verify_token(s, forged, ca.ca_digest())
            with pytest.raises(TokenError, match=r"^malformed join token: "):
                await tokens.verify_token(s, token[:-1], ca.ca_digest())

            assert await tokens.revoke_token(s, tid)
            assert not await tokens.revoke_token(s, token)
            with pytest.raises(TokenError, match="unknown join token"):
                await tokens.verify_token(s, token, ca.ca_digest())
            assert await tokens.list_tokens(s) == []
        finally:
            await s.client.close()

    run(go())


def test_token_disappears_when_its_lease_expires(store_factory, dirs):
    ca = ClusterCA.load_or_create(dirs())

    async def go():
        s = await store_factory()
        try:
            token = await tokens.create_token(s, 2, ca.ca_digest(), kept_after_expiry=0)
            await tokens.verify_token(s, token, ca.ca_digest())
            key = f"{s.prefix}/tokens/{tokens.token_id(token)}".encode()
            deadline = time.monotonic() + 20
            while await s.client.get(key) is not None:
                assert time.monotonic() < deadline, "etcd kept the token past its lease"
                await asyncio.sleep(0.25)
            with pytest.raises(TokenError, match="unknown join token"):
                await tokens.verify_token(s, token, ca.ca_digest())
        finally:
            await s.client.close()

    run(go())


def test_handle_join_issues_a_node_cert(store_factory, dirs):
    ca = ClusterCA.load_or_create(dirs())
    agent = NodeIdentity.load_or_create(dirs(), "n1")

    async def go():
        s = await store_factory()
        try:
            token = await tokens.create_token(s, 600, ca.ca_digest())
            pinned = pin_ca(ca.cert_pem, token)
            result = await handle_join(s, ca, token, agent.csr_pem(), "n1")
            assert result.ca_pem == pinned
            agent.save(result.cert_pem, result.ca_pem)
            with pytest.raises(JoinError) as err:
                await handle_join(s, ca, token, agent.csr_pem(), "n2")
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(JoinError) as err:
                await handle_join(s, ca, token, agent.csr_pem(), "n1", now=time.time() + 601)
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "expired" in str(err.value)
        finally:
            await s.client.close()

    run(go())
    assert agent.joined and not agent.needs_renewal()


# ---- real TLS ----

class Recorder(health.HealthServicer):
    """Health Check that records who called, and answers as `authorize` says."""

    def __init__(self, ca_cert: x509.Certificate):
        super().__init__()
        self.ca_cert = ca_cert
        self.seen: list[tuple[Identity | None, bool]] = []

    async def Check(self, request, context):
        self.seen.append((peer_identity(context, self.ca_cert), is_tls(context)))
        # Check stands in for GetCA (service "ca") or for reading node n1.
        method = "GetCA" if request.service == "ca" else "Get"
        await guard(context, method, api_pb2.GetRequest(kind="node", name="n1"), self.ca_cert)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_mtls_round_trip(dirs):
    ca = ClusterCA.load_or_create(dirs())
    other = ClusterCA.load_or_create(dirs())
    agent = NodeIdentity.load_or_create(dirs(), "n1")
    agent.save(ca.sign_node_csr(agent.csr_pem(), "n1"), ca.cert_pem)
    # A certificate from another CA that claims to be the admin.
    impostor = NodeIdentity.load_or_create(dirs(), "n1")
    impostor.save(other.sign_node_csr(impostor.csr_pem(), "n1"), other.cert_pem)
    admin_pem = ca.admin_credentials()
    cert, key = ca.server_cert(["127.0.0.1", "localhost"])

    async def call(port: int, creds, service: str = ""):
        target = f"127.0.0.1:{port}"
        channel = (grpc.aio.secure_channel(target, creds) if creds
                   else grpc.aio.insecure_channel(target))
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                return e.code()

    async def go():
        recorder = Recorder(ca.cert)
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
        api = server.add_secure_port("127.0.0.1:0", server_credentials(ca, cert, key))
        join = server.add_secure_port("127.0.0.1:0", join_server_credentials(cert, key))
        plain = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            # (a) the node's cert identifies it as that node on the API listener.
            assert await call(api, agent.channel_credentials()) == grpc.StatusCode.OK
            assert recorder.seen[-1] == (Identity("node", "n1"), True)
            assert await call(api, admin_channel_credentials(admin_pem)) == grpc.StatusCode.OK
            assert recorder.seen[-1] == (Identity("admin", "admin"), True)
            # (b) without a cert: anonymous on the join listener, may only GetCA/Join there...
            anon = join_channel_credentials(ca.cert_pem)
            assert await call(join, anon) == grpc.StatusCode.UNAUTHENTICATED
            assert recorder.seen[-1] == (None, True)
            assert await call(join, anon, "ca") == grpc.StatusCode.OK
            assert await call(plain, None, "ca") == grpc.StatusCode.OK
            assert recorder.seen[-1] == (None, False)
            # ...and cannot even finish the handshake on the API listener.
            calls = len(recorder.seen)
            assert await call(api, anon) == grpc.StatusCode.UNAVAILABLE
            # (c) a client pinning a different CA rejects the server's certificate.
            pinned_other = grpc.ssl_channel_credentials(
                root_certificates=other.cert_pem, private_key=agent.key_pem,
                certificate_chain=agent.cert_pem)
            assert await call(api, pinned_other) == grpc.StatusCode.UNAVAILABLE
            assert await call(join, join_channel_credentials(other.cert_pem)) == (
                grpc.StatusCode.UNAVAILABLE)
            # A client cert from another CA is refused by the API listener's handshake.
            forged = grpc.ssl_channel_credentials(
                root_certificates=ca.cert_pem, private_key=impostor.key_pem,
                certificate_chain=impostor.cert_pem)
            assert await call(api, forged) == grpc.StatusCode.UNAVAILABLE
            assert len(recorder.seen) == calls, "a failed handshake must not reach the servicer"
        finally:
            await server.stop(None)

    run(go())
