"""The Bootstrap service: how an agent becomes a node (GetCA, Join) and stays one (Renew)."""

from __future__ import annotations

import datetime as dt

from controlplane.identity import ClusterCA, JoinError, guard, handle_join, handle_renew
from controlplane.identity.ca import DEFAULT_NODE_VALIDITY
from moorage.v1 import agent_pb2, agent_pb2_grpc


class BootstrapServicer(agent_pb2_grpc.BootstrapServicer):
    def __init__(self, store, ca: ClusterCA, join_port: int,
                 node_validity: dt.timedelta = DEFAULT_NODE_VALIDITY):
        self.store = store
        self.ca = ca
        self.join_port = join_port
        self.node_validity = node_validity

    async def GetCA(self, request, context):
        return agent_pb2.GetCAResponse(ca_pem=self.ca.cert_pem, join_port=self.join_port)

    async def Join(self, request, context):
        await guard(context, "Join", request, self.ca.cert)
        try:
            result = await handle_join(self.store, self.ca, request.token, request.csr_pem,
                                       request.node_name, validity=self.node_validity)
        except JoinError as err:
            await context.abort(err.code, str(err))
        return agent_pb2.JoinResponse(cert_pem=result.cert_pem, ca_pem=result.ca_pem)

    async def Renew(self, request, context):
        identity, _ = await guard(context, "Renew", request, self.ca.cert)
        try:
            result = handle_renew(self.ca, identity, request.csr_pem, self.node_validity)
        except JoinError as err:
            await context.abort(err.code, str(err))
        return agent_pb2.JoinResponse(cert_pem=result.cert_pem, ca_pem=result.ca_pem)
