"""`moor delete`: by name or by manifest, graceful for pods (kubectl's --grace-period, --force,
--now), waiting until the objects are gone unless --wait=false."""

from __future__ import annotations

from moorage.cli import printers
from moorage.cli.commands import (
    Context,
    err,
    kind_by_name,
    namespace_for,
    out,
    resolve_target,
)
from moorage.cli.errors import CliError

# kubectl's flags: --grace-period 0 only with --force (else it becomes 1), --now is 1.
# kubectl's wording. A StatefulSet makes the pod's ordinal again at once, so this is also the
# operator's override of "at most one pod per ordinal" for a node that cannot confirm.
IMMEDIATE_WARNING = ("Warning: Immediate deletion does not wait for confirmation that the "
                     "running resource has been terminated. The resource may continue to run "
                     "on the cluster indefinitely.")
WAIT_POLL_SECONDS = 0.25
WAIT_MARGIN_SECONDS = 60.0


def delete_grace(args) -> int | None:
    """The grace period to ask for, from --grace-period, --force and --now (None: the pod's)."""
    grace = args.grace_period if args.grace_period >= 0 else None
    if args.now:
        if grace is not None:
            raise CliError("error: --now and --grace-period cannot be specified together")
        grace = 1
    if args.force:
        if grace is not None and grace > 0:
            raise CliError("error: --force and --grace-period greater than 0 cannot be "
                           "specified together")
        err(IMMEDIATE_WARNING)
        return 0
    if grace == 0:
        return 1   # as kubectl: a plain --grace-period 0 means "as fast as gracefully possible"
    return grace


def delete(ctx: Context) -> int:
    """Deletes each object in turn; a failure is reported and the rest still attempted. With
    --wait (the default, as in kubectl) it then waits until every deleted object is gone."""
    from moorage.model import kinds

    args = ctx.args
    targets = _delete_targets(args)
    grace = delete_grace(args)
    client = ctx.client()
    failed = False
    pending = []
    for kind, namespace, name in targets:
        try:
            resp = client.delete(kind, namespace, name, grace)
        except CliError as exc:
            if exc.reason == "NotFound" and args.ignore_not_found:
                continue
            err(exc.message)
            failed = True
            continue
        out(f'{printers.qualified_kind(kind)} "{name}" deleted')
        obj = kinds.unwrap(resp.object)
        if obj.metadata.deletion_timestamp:
            pending.append((kind, namespace, name, obj))
    if args.wait and pending and not wait_gone(client, pending, args.timeout):
        failed = True
    return 1 if failed else 0


def wait_gone(client, pending, timeout: float) -> bool:
    """Waits until each object is gone (or replaced by one of another uid); False on timeout."""
    import time

    if not timeout:
        longest = max((o.metadata.deletion_grace_period_seconds for *_, o in pending),
                      default=0)
        timeout = longest + WAIT_MARGIN_SECONDS
    deadline = time.monotonic() + timeout
    for kind, namespace, name, obj in pending:
        while True:
            try:
                now = client.get(kind, namespace, name)
            except CliError as exc:
                if exc.reason == "NotFound":
                    break
                raise
            if now.metadata.uid != obj.metadata.uid:
                break
            if time.monotonic() >= deadline:
                err(f"error: timed out waiting for {printers.qualified_kind(kind)} "
                    f'"{name}" to be deleted (it is still Terminating; see `moor describe '
                    f"{kind.name.lower()} {name}`)")
                return False
            time.sleep(WAIT_POLL_SECONDS)
    return True


def _delete_targets(args) -> list[tuple]:
    if args.filename:
        if args.kind:
            raise CliError("error: give either -f FILE or KIND NAME..., not both")
        if args.namespace:
            raise CliError("error: -n cannot be used with -f: as with apply, each object is "
                           'deleted from the namespace its manifest names, or "default"')
        from moorage.cli import sources

        refs = sources.object_references(
            sources.read_sources(args.filename, recursive=args.recursive))
        if not refs:
            raise CliError("error: no objects found in the given manifests")
        targets = []
        for ref in refs:
            kind = kind_by_name(ref.kind)
            if kind is None:
                raise CliError(f'error: {ref.where}: unknown kind "{ref.kind}"')
            targets.append((kind, namespace_for(kind, ref.namespace), ref.name))
        return targets
    if not args.kind:
        raise CliError('error: name what to delete: "moor delete KIND NAME..." or '
                       '"moor delete -f FILE"')
    kind, names = resolve_target(args.kind, args.names)
    if not names:
        raise CliError(f'error: name which {kind.plural} to delete '
                       f'("moor delete {kind.plural} NAME...")')
    namespace = namespace_for(kind, args.namespace)
    return [(kind, namespace, name) for name in names]
