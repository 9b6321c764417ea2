"""`moor net doctor` on the control plane: asks every connected node's agent to check its
overlay against the node list, and gathers the findings."""

from __future__ import annotations

import asyncio

from controlplane.dispatcher.streams import StreamError
from controlplane.identity import guard
from moorage.model import kinds
from moorage.v1 import agent_pb2, api_pb2, api_pb2_grpc

NODE = kinds.BY_NAME["Node"]
# A check probes every peer with a 1 s ICMP timeout, all at once; leave room for netlink dumps.
CHECK_SECONDS = 10.0


class NetworkServicer(api_pb2_grpc.NetworkServicer):
    def __init__(self, store, streams, ca_cert=None):
        self.store = store
        self.streams = streams
        self.ca_cert = ca_cert

    async def Doctor(self, request, context):
        await guard(context, "Doctor", request, self.ca_cert)
        nodes, _ = await self.store.list(NODE, None)
        names = sorted(n.metadata.name for n in nodes)

        async def check(name: str):
            try:
                return name, await self.streams.ask(name, "net_check",
                                                    agent_pb2.NetCheckRequest(), CHECK_SECONDS)
            except StreamError as err:
                return name, err

        resp = api_pb2.NetDoctorResponse()
        for name, got in await asyncio.gather(*(check(n) for n in names)):
            if isinstance(got, StreamError):
                detail = "not connected to this control plane replica" \
                    if "not connected" in str(got) else str(got)
                resp.unavailable.append(f"{name}: {detail}")
                continue
            resp.checked.append(name)
            for f in got.findings:
                resp.findings.add(node=name, severity=f.severity, kind=f.kind, message=f.message)
        return resp
