"""`moor volume ls|inspect|rm`: PersistentVolumeClaims of a namespace, read as `docker volume`
reads volumes. A volume is a claim; its driver is `local` (a directory on one node's disk), its
node and mount point those of the PersistentVolume it is bound to.

The printers (`ls_rows`, `inspect_dict`, `users`) are pure: objects in, rows or dicts out.
"""

from __future__ import annotations

import argparse
import json

from moorage.cli.commands import Context, out
from moorage.cli.errors import CliError

DRIVER = "local"
SCOPE = "local"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Where Kubernetes' binder records the node a WaitForFirstConsumer claim is for.
SELECTED_NODE = "volume.kubernetes.io/selected-node"
# Pods in these phases hold no volume.
FINISHED = ("Succeeded", "Failed")

EXAMPLES = """\
  moor volume ls                     the claims of namespace "default"
  moor volume ls -n shop             a stack's volumes
  moor volume inspect -n shop data   driver, mount point, node, capacity and use as JSON
  moor volume rm -n shop data        refused while a pod uses it
  moor volume rm -f -n shop data     removed as soon as its pods are gone"""


def add_commands(sub, add_globals) -> None:
    cmd = sub.add_parser(
        "volume", help="list, inspect and remove volumes (PersistentVolumeClaims)",
        description="Volumes are the PersistentVolumeClaims of a namespace, on the local disk "
        "of the node where each was first used, as `docker volume` shows them.",
        epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(cmd, suppress=True)
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, text: str, aliases=()):
        act = actions.add_parser(name, help=text, description=text, aliases=list(aliases))
        act.add_argument("-n", "--namespace", metavar="NS",
                         help='the namespace (default: "default")')
        add_globals(act, suppress=True)
        return act

    act = action("ls", "list volumes", ("list",))
    act.add_argument("-A", "--all-namespaces", action="store_true",
                     help="every namespace's volumes, with a NAMESPACE column")
    act.add_argument("-q", "--quiet", action="store_true", help="only the volumes' names")
    act = action("inspect", "show volumes in detail, as JSON")
    act.add_argument("volumes", nargs="+", metavar="VOLUME")
    act = action("rm", "remove volumes (their claims; the data goes as the reclaim policy "
                 "says)", ("remove",))
    act.add_argument("-f", "--force", action="store_true",
                     help="remove even while pods use it (it goes once they are gone), and "
                     "say nothing about volumes that do not exist")
    act.add_argument("volumes", nargs="+", metavar="VOLUME")


# ---- pure printers -------------------------------------------------------------------------

def node_of(claim, pv) -> str:
    """The node a claim's data is on: its PV's node affinity, else the node its binding was
    chosen for; "" while it is nowhere yet."""
    if pv is not None:
        for term in pv.spec.node_affinity.required.node_selector_terms:
            for expr in term.match_expressions:
                if expr.key == HOSTNAME_LABEL and expr.operator == "In" and expr.values:
                    return expr.values[0]
    return claim.metadata.annotations.get(SELECTED_NODE, "")


def size_of(claim) -> str:
    """The capacity it was given, else the size it asks for."""
    return (claim.status.capacity.get("storage")
            or claim.spec.resources.requests.get("storage", ""))


def human_bytes(n: int) -> str:
    """Bytes in binary units with up to one decimal, as `du -h` prints them (0B, 12K, 1.5G)."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            text = f"{value:.1f}".removesuffix(".0") if unit != "B" else str(int(value))
            return text + unit
        value /= 1024
    return str(n)


def ls_rows(claims, pvs: dict, all_namespaces: bool = False) -> list[tuple[str, ...]]:
    """`docker volume ls`'s DRIVER and VOLUME NAME, then SIZE, USED and NODE."""
    head = ("DRIVER", "VOLUME NAME", "SIZE", "USED", "NODE")
    rows = [("NAMESPACE", *head) if all_namespaces else head]
    for c in sorted(claims, key=lambda c: (c.metadata.namespace, c.metadata.name)):
        pv = pvs.get(c.spec.volume_name)
        used = human_bytes(c.status.used_bytes) if c.status.phase == "Bound" else "-"
        row = (DRIVER, c.metadata.name, size_of(c) or "-", used, node_of(c, pv) or "-")
        rows.append((c.metadata.namespace, *row) if all_namespaces else row)
    return rows


def inspect_dict(claim, pv) -> dict:
    """`docker volume inspect`'s fields, with the claim's state under Status."""
    status: dict = {"Namespace": claim.metadata.namespace,
                    "Phase": claim.status.phase or "Pending",
                    "Node": node_of(claim, pv),
                    "Capacity": claim.status.capacity.get("storage", ""),
                    "UsedBytes": claim.status.used_bytes,
                    "AccessModes": list(claim.spec.access_modes),
                    "StorageClass": (claim.spec.storage_class_name
                                     if claim.spec.HasField("storage_class_name") else ""),
                    "PersistentVolume": claim.spec.volume_name}
    if pv is not None:
        status["ReclaimPolicy"] = pv.spec.persistent_volume_reclaim_policy
        status["StorageClass"] = status["StorageClass"] or pv.spec.storage_class_name
    if claim.metadata.deletion_timestamp:
        status["DeletionTimestamp"] = claim.metadata.deletion_timestamp
    size = claim.spec.resources.requests.get("storage")
    return {"CreatedAt": claim.metadata.creation_timestamp,
            "Driver": DRIVER,
            "Labels": dict(sorted(claim.metadata.labels.items())) or None,
            "Mountpoint": pv.spec.local.path if pv is not None else "",
            "Name": claim.metadata.name,
            "Options": {"size": size} if size else None,
            "Scope": SCOPE,
            "Status": status}


def users(claim_name: str, pods) -> list[str]:
    """The pods that hold the claim: every one not finished whose volumes name it."""
    return sorted(p.metadata.name for p in pods
                  if p.status.phase not in FINISHED
                  and any(v.HasField("persistent_volume_claim")
                          and v.persistent_volume_claim.claim_name == claim_name
                          for v in p.spec.volumes))


def in_use_message(name: str, pods: list[str]) -> str:
    return f"Error response from daemon: remove {name}: volume is in use - " \
           f"[{', '.join('pod ' + p for p in pods)}]"


def no_such_volume(name: str) -> str:
    return f"Error: No such volume: {name}"


# ---- commands ------------------------------------------------------------------------------

def _kinds():
    from moorage.model import kinds

    return (kinds.BY_NAME["PersistentVolumeClaim"], kinds.BY_NAME["PersistentVolume"],
            kinds.BY_NAME["Pod"])


def _namespace(args) -> str:
    from moorage.model.kinds import DEFAULT_NAMESPACE

    return args.namespace or DEFAULT_NAMESPACE


def _pvs(client) -> dict:
    from moorage.model import kinds

    return {pv.metadata.name: pv for pv in
            (kinds.unwrap(i) for i in client.list(_kinds()[1]).items)}


def _pv(client, claim):
    if not claim.spec.volume_name:
        return None
    try:
        return client.get(_kinds()[1], "", claim.spec.volume_name)
    except CliError as err:
        if err.reason != "NotFound":
            raise
        return None


def _claim(client, namespace: str, name: str):
    try:
        return client.get(_kinds()[0], namespace, name)
    except CliError as err:
        if err.reason != "NotFound":
            raise
        return None


def ls(ctx: Context) -> int:
    from moorage.cli import printers
    from moorage.model import kinds

    args = ctx.args
    client = ctx.client()
    response = client.list(_kinds()[0], "" if args.all_namespaces else _namespace(args),
                           all_namespaces=args.all_namespaces)
    claims = [kinds.unwrap(i) for i in response.items]
    if args.quiet:
        for c in sorted(claims, key=lambda c: (c.metadata.namespace, c.metadata.name)):
            out(c.metadata.name)
        return 0
    for line in printers.render_table(ls_rows(claims, _pvs(client) if claims else {},
                                              args.all_namespaces)):
        out(line)
    return 0


def inspect(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client()
    namespace = _namespace(args)
    found, missing = [], []
    for name in args.volumes:
        claim = _claim(client, namespace, name)
        if claim is None:
            missing.append(name)
            continue
        found.append(inspect_dict(claim, _pv(client, claim)))
    out(json.dumps(found, indent=4))
    if missing:
        raise CliError("\n".join(no_such_volume(n) for n in missing))
    return 0


def rm(ctx: Context) -> int:
    from moorage.model import kinds

    args = ctx.args
    client = ctx.client()
    namespace = _namespace(args)
    claim_kind, _, pod_kind = _kinds()
    failed = []
    pods = None
    for name in args.volumes:
        claim = _claim(client, namespace, name)
        if claim is None:
            if not args.force:
                failed.append(no_such_volume(name))
            continue
        if pods is None:
            pods = [kinds.unwrap(i) for i in client.list(pod_kind, namespace).items]
        holders = users(name, pods)
        if holders and not args.force:
            failed.append(in_use_message(name, holders))
            continue
        client.delete(claim_kind, namespace, name)
        out(name if not holders else
            f"{name} (in use by {', '.join('pod ' + p for p in holders)}: it goes once "
            f"{'they are' if len(holders) > 1 else 'it is'} gone)")
    if failed:
        raise CliError("\n".join(failed))
    return 0


def volume(ctx: Context) -> int:
    action = {"list": "ls", "remove": "rm"}.get(ctx.args.action, ctx.args.action)
    return {"ls": ls, "inspect": inspect, "rm": rm}[action](ctx)


HANDLERS = {"volume": volume}
