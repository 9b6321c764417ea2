"""`moor cordon`, `moor uncordon` and `moor drain`: take a node out of scheduling, and empty it.

Drain deletes the node's pods (there is no eviction API or PodDisruptionBudget yet); the
Deployments that own them make replacements, which the scheduler puts on other nodes.
"""

from __future__ import annotations

from moorage.cli.commands import Context, out
from moorage.cli.errors import CliError
from moorage.cli.rollout import write_object
from moorage.model import kinds
from moorage.model.kinds import BY_NAME
from moorage.model.pods import TERMINAL_PHASES

NODE, POD = BY_NAME["Node"], BY_NAME["Pod"]


def _set_unschedulable(ctx: Context, name: str, value: bool) -> str:
    def edit(node):
        if node.spec.unschedulable == value:
            return None
        node.spec.unschedulable = value
        return "cordoned" if value else "uncordoned"
    result = write_object(ctx, NODE, "", name, edit)
    return result if result != "unchanged" else (
        "already cordoned" if value else "already uncordoned")


def _names(ctx: Context) -> list[str]:
    if not ctx.args.nodes:
        raise CliError(f"error: give a node name, e.g. moor {ctx.args.command} node-1")
    return list(ctx.args.nodes)


def cordon(ctx: Context) -> int:
    for name in _names(ctx):
        out(f"node/{name} {_set_unschedulable(ctx, name, True)}")
    return 0


def uncordon(ctx: Context) -> int:
    for name in _names(ctx):
        out(f"node/{name} {_set_unschedulable(ctx, name, False)}")
    return 0


def drain(ctx: Context) -> int:
    """Cordons each node, deletes its pods (gracefully) and waits until they are gone, as
    `kubectl drain` does."""
    from moorage.cli.deleting import wait_gone

    client = ctx.client()
    grace = ctx.args.grace_period if ctx.args.grace_period >= 0 else None
    for name in _names(ctx):
        out(f"node/{name} {_set_unschedulable(ctx, name, True)}")
        listing = client.list(POD, all_namespaces=True, field_selector=f"spec.nodeName={name}")
        pending = []
        for pod in map(kinds.unwrap, listing.items):
            if pod.status.phase in TERMINAL_PHASES:
                continue
            out(f"evicting pod {pod.metadata.namespace}/{pod.metadata.name}")
            try:
                resp = client.delete(POD, pod.metadata.namespace, pod.metadata.name, grace)
            except CliError as exc:
                if exc.reason != "NotFound":
                    raise
                continue
            marked = kinds.unwrap(resp.object)
            if marked.metadata.deletion_timestamp:
                pending.append((POD, pod.metadata.namespace, pod.metadata.name, marked))
        if pending and not wait_gone(client, pending, ctx.args.timeout):
            return 1
        out(f"node/{name} drained")
    return 0
