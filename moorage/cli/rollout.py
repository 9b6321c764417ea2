"""`moor scale` and `moor rollout status|history|restart|undo`: Deployment and StatefulSet
changes made by Get + Apply.

Writes go through Apply with the object's resourceVersion, so a change made meanwhile is a
Conflict that is retried from a fresh read, never a lost update. The revision history's
format is moorage/model/deployments.py's (a StatefulSet numbers it in its own annotation).
"""

from __future__ import annotations

import json
import queue
import threading
import time

from moorage.cli.commands import Context, namespace_for, out, resolve_target
from moorage.cli.errors import CliError
from moorage.model import statefulsets
from moorage.model.deployments import REVISION_ANNOTATION, read_history

MAX_ATTEMPTS = 10
# What `kubectl rollout restart` stamps on the pod template: a new template, so new pods.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


ROLLABLE = ("Deployment", "StatefulSet")


def _target(args):
    """`deploy/web`, `sts web` or `deployment web` -> (Kind, namespace, name)."""
    kind, names = resolve_target(args.kind, list(args.names))
    if kind.name not in ROLLABLE:
        raise CliError(f"error: {args.command} works on deployments and statefulsets, not "
                       f"{kind.plural}")
    if len(names) != 1:
        raise CliError(f"error: give exactly one {kind.name.lower()}, e.g. "
                       f"{kind.name.lower()}/web")
    return kind, namespace_for(kind, args.namespace), names[0]


def _revision_key(kind) -> str:
    return (statefulsets.REVISION_ANNOTATION if kind.name == "StatefulSet"
            else REVISION_ANNOTATION)


def _ref(kind, name: str) -> str:
    return f"{kind.name.lower()}.apps/{name}"


def write_object(ctx: Context, kind, namespace: str, name: str, edit) -> str:
    """Applies `edit(obj)` -> message (or None: nothing to do) with the object's
    resourceVersion, retrying from a fresh read on a conflict."""
    import time

    from moorage.cli import printers
    from moorage.v1 import api_pb2

    client = ctx.client()
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(0.05 * attempt)   # a controller writing status: let it finish
        d = client.get(kind, namespace, name)
        message = edit(d)
        if message is None or message.startswith("skipped"):
            return message or "unchanged"
        content = json.dumps(printers.object_dict(d), separators=(",", ":"))
        manifest = api_pb2.Manifest(source=f"{kind.name.lower()}/{name}", index=0,
                                    content=content)
        try:
            client.apply([manifest])
            return message
        except CliError as exc:
            if exc.reason != "Conflict":
                raise
    raise CliError(f'error: {kind.name.lower()} "{name}" kept changing; try again')


def scale(ctx: Context) -> int:
    args = ctx.args
    if args.replicas < 0:
        raise CliError("error: --replicas must be 0 or more")
    kind, namespace, name = _target(args)
    ctx.client().scale(kind, namespace, name, args.replicas)
    out(f"{_ref(kind, name)} scaled")
    return 0


def history(ctx: Context) -> int:
    kind, namespace, name = _target(ctx.args)
    d = ctx.client().get(kind, namespace, name)
    entries = read_history(d)
    out(_ref(kind, name))
    if not entries:
        out("No rollout history found.")
        return 0
    rows = [["REVISION", "IMAGES"]]
    for rev in sorted(entries):
        spec = entries[rev].get("template", {}).get("spec", {})
        images = ",".join(c.get("image", "") for c in spec.get("containers", []))
        rows.append([str(rev), images or "<none>"])
    from moorage.cli import printers

    for line in printers.render_table(rows):
        out(line)
    return 0


def undo(ctx: Context) -> int:
    from google.protobuf import json_format

    from moorage.v1 import objects_pb2 as pb

    args = ctx.args
    kind, namespace, name = _target(args)

    def edit(d):
        entries = read_history(d)
        current = int(d.metadata.annotations.get(_revision_key(kind), "0") or 0)
        target = args.to_revision or max((r for r in entries if r < current), default=0)
        what = kind.name.lower()
        if target not in entries:
            if args.to_revision:
                raise CliError(f"error: unable to find the specified revision {target} "
                               f'in the history of {what} "{name}" '
                               f'(see "moor rollout history {what}/{name}")')
            raise CliError(f'error: no rollout history found for {what} "{name}"')
        template = json_format.ParseDict(entries[target]["template"], pb.PodTemplateSpec())
        if template == d.spec.template:
            return f"skipped rollback (current template already matches revision {target})"
        d.spec.template.CopyFrom(template)
        return "rolled back"
    out(f"{_ref(kind, name)} {write_object(ctx, kind, namespace, name, edit)}")
    return 0


def restart_edit(name: str, now: str):
    """The edit of `moor rollout restart`: the template's restartedAt annotation set to
    `now` (RFC 3339), which the Deployment controller rolls out like any template change."""
    def edit(d):
        if getattr(d.spec, "paused", False):
            raise CliError(f'error: deployments.apps "{name}" can\'t restart paused deployment '
                           "(set spec.paused to false first)")
        d.spec.template.metadata.annotations[RESTARTED_AT] = now
        return "restarted"
    return edit


def restart(ctx: Context) -> int:
    from moorage.model.timestamps import now_rfc3339

    kind, namespace, name = _target(ctx.args)
    write_object(ctx, kind, namespace, name, restart_edit(name, now_rfc3339()))
    out(f"{_ref(kind, name)} restarted")
    return 0


def stateful_set_message(sts) -> tuple[str, bool]:
    """kubectl's rollout status wording for one StatefulSet, and whether it is done."""
    s = sts.status
    if statefulsets.update_strategy(sts) != statefulsets.ROLLING_UPDATE:
        raise CliError("error: rollout status is only available for RollingUpdate strategy "
                       "type")
    if s.observed_generation == 0 or sts.metadata.generation > s.observed_generation:
        return "Waiting for statefulset spec update to be observed...", False
    replicas = statefulsets.desired_replicas(sts)
    if s.ready_replicas < replicas:
        return f"Waiting for {replicas - s.ready_replicas} pods to be ready...", False
    partition = statefulsets.partition(sts)
    if partition > 0:
        if s.updated_replicas < replicas - partition:
            return (f"Waiting for partitioned roll out to finish: {s.updated_replicas} out of "
                    f"{replicas - partition} new pods have been updated..."), False
        return (f"partitioned roll out complete: {s.updated_replicas} new pods have been "
                "updated..."), True
    if s.update_revision != s.current_revision:
        return (f"waiting for statefulset rolling update to complete {s.updated_replicas} "
                f"pods at revision {s.update_revision}..."), False
    return (f"statefulset rolling update complete {s.current_replicas} pods at revision "
            f"{s.current_revision}..."), True


def rollout_message(d) -> tuple[str, bool]:
    """kubectl's rollout status wording for one Deployment (or StatefulSet), and whether it
    is done."""
    if d.DESCRIPTOR.name == "StatefulSet":
        return stateful_set_message(d)
    name, s = d.metadata.name, d.status
    replicas = d.spec.replicas if d.spec.HasField("replicas") else 1
    if d.metadata.generation > s.observed_generation:
        return "Waiting for deployment spec update to be observed...", False
    for cond in s.conditions:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            raise CliError(f'error: deployment "{name}" exceeded its progress deadline')
    if s.updated_replicas < replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: {s.updated_replicas} out '
                f"of {replicas} new replicas have been updated..."), False
    if s.replicas > s.updated_replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: '
                f"{s.replicas - s.updated_replicas} old replicas are pending termination..."), False
    if s.available_replicas < s.updated_replicas:
        return (f'Waiting for deployment "{name}" rollout to finish: {s.available_replicas} of '
                f"{s.updated_replicas} updated replicas are available..."), False
    return f'deployment "{name}" successfully rolled out', True


def status(ctx: Context) -> int:
    from moorage.model import kinds

    args = ctx.args
    kind, namespace, name = _target(args)
    client = ctx.client()
    message, done = rollout_message(client.get(kind, namespace, name))
    out(message)
    if done or not args.watch:
        return 0
    # The watch runs in a thread so the main one can give up at --timeout; the stream is
    # cancelled when the command closes its channel.
    events: queue.Queue = queue.Queue()

    def follow():
        try:
            for ev in client.watch(kind, namespace):
                events.put(ev)
        except CliError as exc:
            events.put(exc)
        events.put(None)

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    last = message
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise queue.Empty
            ev = events.get(timeout=left)
        except queue.Empty:
            raise CliError(f'error: timed out waiting for {kind.name.lower()} "{name}" to roll '
                           "out") from None
        if isinstance(ev, CliError):
            raise ev
        if ev is None:
            raise CliError("error: the watch ended before the rollout finished")
        if ev.type not in ("ADDED", "MODIFIED", "DELETED") or not ev.HasField("object"):
            continue
        d = kinds.unwrap(ev.object)
        if d.metadata.name != name:
            continue
        if ev.type == "DELETED":
            raise CliError(f'error: {kind.name.lower()} "{name}" was deleted')
        message, done = rollout_message(d)
        if message != last:
            out(message)
            last = message
        if done:
            return 0


def rollout(ctx: Context) -> int:
    return {"status": status, "history": history, "restart": restart,
            "undo": undo}[ctx.args.action](ctx)
