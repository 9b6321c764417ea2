"""`moor token create|list|revoke`: join tokens for agents."""

from __future__ import annotations

import time

from moorage.cli.commands import Context, out
from moorage.v1 import api_pb2


def _when(ts: float) -> str:
    from moorage.model.timestamps import rfc3339

    return rfc3339(ts)


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"


def token(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client()
    if args.action == "create":
        ttl = int(round(args.ttl))
        if ttl < 1:
            from moorage.cli.errors import CliError

            raise CliError("error: --ttl must be at least 1s")
        resp = client._call("CreateToken", api_pb2.CreateTokenRequest(ttl_seconds=ttl))
        out(resp.token)
        return 0
    if args.action == "list":
        resp = client._call("ListTokens", api_pb2.ListTokensRequest())
        now = time.time()
        rows = [("ID", "CREATED", "EXPIRES", "LEFT")]
        rows += [(t.id, _when(t.created), _when(t.expires), _left(t.expires - now))
                 for t in resp.tokens]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            out("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return 0
    for text in args.tokens:
        resp = client._call("RevokeToken", api_pb2.RevokeTokenRequest(token=text))
        out(f"token {resp.id} revoked")
    return 0
