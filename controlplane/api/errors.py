"""How every RPC fails when etcd does: UNAVAILABLE with `etcd is unavailable: ...`, never a
traceback, and a mark in the trailing metadata so that clients can tell a control plane that
answered from one they could not reach.

The interceptor wraps every handler of the server (the Cluster API, the dispatcher, pods,
network, joins and health), so a store call deep in any of them that finds etcd down ends the
call cleanly; the store's health (controlplane/store/health.py) logs the outage once.
"""

from __future__ import annotations

import grpc

from controlplane.store import StoreUnavailable

# On every answer from this server: the client reached a control plane.
SERVER_MARK = ("moorage-server", "1")
# On an answer that failed because etcd did not answer.
ERROR_KEY, ETCD_UNAVAILABLE = "moorage-error", "etcd-unavailable"

_DOWN = StoreUnavailable


def _why(err: Exception) -> str:
    text = str(err)
    return text if text.startswith("etcd is unavailable") else f"etcd is unavailable: {text}"


async def _abort(context, err: Exception) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, _why(err),
                        trailing_metadata=(SERVER_MARK, (ERROR_KEY, ETCD_UNAVAILABLE)))


def _unary(behavior):
    async def call(request_or_iterator, context):
        context.set_trailing_metadata((SERVER_MARK,))
        try:
            return await behavior(request_or_iterator, context)
        except _DOWN as err:
            await _abort(context, err)
    return call


def _streaming(behavior):
    async def call(request_or_iterator, context):
        context.set_trailing_metadata((SERVER_MARK,))
        try:
            async for item in behavior(request_or_iterator, context):
                yield item
        except _DOWN as err:
            await _abort(context, err)
    return call


class EtcdErrors(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary), **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream), **kw)
        return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream), **kw)
