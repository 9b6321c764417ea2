"""`moor net doctor`: every node checks its overlay against the node list (routes, neighbour
and FDB entries, MTUs) and probes its peers; the findings, one per line."""

from __future__ import annotations

from moorage.cli.commands import Context, err, out
from moorage.v1 import api_pb2, api_pb2_grpc


def doctor(ctx: Context) -> int:
    client = ctx.client()
    stub = api_pb2_grpc.NetworkStub(client.channel)
    try:
        resp = stub.Doctor(api_pb2.NetDoctorRequest(), timeout=client.timeout)
    except client._grpc.RpcError as exc:
        raise client._error(exc) from None
    rows = [("NODE", "SEVERITY", "PROBLEM", "DETAIL")]
    rows += [(f.node, f.severity, f.kind, f.message) for f in resp.findings]
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            out("   ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "   " + r[3])
    for line in resp.unavailable:
        err(f"warning: not checked: {line}")
    errors = sum(1 for f in resp.findings if f.severity == "error")
    checked = len(resp.checked)
    if not resp.findings:
        out(f"overlay healthy: {checked} node{'s' * (checked != 1)} checked (routes, neighbour "
            "and FDB entries, MTUs, every peer reachable)")
    else:
        out(f"{checked} node{'s' * (checked != 1)} checked: {errors} error(s), "
            f"{len(resp.findings) - errors} warning(s)")
    return 1 if errors or resp.unavailable else 0
