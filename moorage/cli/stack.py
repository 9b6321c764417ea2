"""`moor stack deploy|ls|ps|rm`: Compose files run as Deployments, StatefulSets and Services
(moorage/manifest/compose.py), as `docker stack` runs them on Swarm. A stack NAME lives in the
namespace NAME and every object of it carries the label moorage.io/stack=NAME. As
`docker stack rm`, `rm` keeps the stack's volumes (its PersistentVolumeClaims).

moorage.compose is imported where it is used: every `moor` command builds this module's parser,
and only stack commands should pay for the Compose translator."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter

from moorage.cli.commands import Context, out
from moorage.cli.errors import CliError

EXAMPLES = """\
  moor stack deploy -c compose.yaml shop      its services run in namespace "shop"
  moor stack deploy -c app/compose.yaml       stack name: the file's directory ("app")
  moor stack deploy --build -c compose.yaml shop
                                              build and push services with build: first
  moor stack ls
  moor stack ps shop
  moor stack rm shop                          its volumes stay (moor volume ls -n shop)"""


def add_commands(sub, add_globals) -> None:
    cmd = sub.add_parser(
        "stack", help="deploy, list and remove Compose stacks",
        description="Run a Compose file's services as Deployments and Services in a namespace "
        "named after the stack. Each service is reachable by its name from the others; a "
        "published port (30000-32767) is a NodePort on every node.",
        epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(cmd, suppress=True)
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    act = actions.add_parser("deploy", help="create or update a stack from a Compose file",
                             description="Translate the Compose file and apply every object "
                             "in one transaction; nothing is applied if any key is unsupported.")
    act.add_argument("-c", "--compose-file", required=True, metavar="FILE")
    act.add_argument("--build", action="store_true",
                     help="first build each service that has build: (on this machine, as "
                     "root) and push it to its image: name; nothing is deployed if a build "
                     "fails")
    act.add_argument("name", nargs="?", metavar="NAME",
                     help="the stack (and its namespace); default: the file's directory name")
    add_globals(act, suppress=True)
    act = actions.add_parser("ls", help="list stacks")
    add_globals(act, suppress=True)
    for name, text in (("ps", "list a stack's pods"), ("rm", "remove a stack")):
        act = actions.add_parser(name, help=text, description=text)
        act.add_argument("name", metavar="NAME")
        add_globals(act, suppress=True)


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _selector(name: str) -> str:
    from moorage.manifest import compose

    return f"{compose.STACK_LABEL}={name}"


def deploy(ctx: Context) -> int:
    from moorage.manifest import compose
    from moorage.v1 import api_pb2

    args = ctx.args
    path = args.compose_file
    name = args.name or compose.default_stack_name(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise CliError(f"error: {path}: {err.strerror}") from None
    try:
        result = compose.translate(text, name, source=path, env=os.environ, read=_read,
                                   directory=os.path.dirname(os.path.abspath(path)))
    except compose.ComposeError as err:
        raise CliError("\n".join(f"error: {p}" for p in err.problems)) from None
    for note in result.notes:
        out(f"note: {path}: {note}")
    manifests = [api_pb2.Manifest(source=path, index=i, content=json.dumps(obj))
                 for i, obj in enumerate(result.objects)]
    client = ctx.client()
    _check_external(client, name, result.external, path)
    _check_external_volumes(client, name, result.external_volumes, path)
    if args.build:
        build_all(result.builds, path)
    else:
        for b in result.builds:
            out(f"note: {path}: services.{b.service}.build: not built (no --build); deploying "
                f"{b.image} as it is in its registry")
    response = client.apply(manifests)
    for r in response.results:
        ref = f"{r.kind.lower()}/{r.name}"
        out(f"{ref} {r.action}" + (f" (namespace {r.namespace})" if r.namespace else ""))
    out(f'stack "{name}" deployed')
    return 0


def build_all(builds, source: str, run=subprocess.run) -> None:
    """Builds and pushes each build with the builder (a program of its own, run as a child:
    the CLI imports no builder code), its output streamed; the first failure stops
    everything. Services sharing one build and image are built once."""
    from moorage.manifest import composebuild

    if not builds:
        out(f"note: {source}: --build: no service has build:")
        return
    done: set = set()
    for b in builds:
        key = (b.image, b.context, b.dockerfile, b.args, b.target, b.labels)
        if key in done:
            continue
        done.add(key)
        out(f"building services.{b.service}: {b.image} from {b.context}")
        sys.stdout.flush()
        try:
            code = run(composebuild.command(b, sys.executable)).returncode
        except OSError as err:
            raise CliError(f"error: {source}: services.{b.service}.build: cannot start the "
                           f"builder: {err.strerror}") from None
        if code != 0:
            raise CliError(f"error: {source}: services.{b.service}.build: the build of "
                           f"{b.image} failed (exit {code}); nothing was deployed")


def _read(path: str) -> bytes:
    """A config's or secret's file, read no further than one byte past what an object holds
    (so that naming a huge file by mistake costs nothing)."""
    from moorage.model import configs

    with open(path, "rb") as f:
        return f.read(configs.MAX_DATA_BYTES + 1)


def _check_external(client, stack: str, external, source: str) -> None:
    """`external: true` configs and secrets must exist in the stack's namespace with the key
    the stack mounts, as Swarm refuses a stack whose external secret is missing. Checked just
    before the apply, so one deleted in between leaves its pods waiting for it."""
    from moorage.model import configs, kinds

    problems = []
    for d in external:
        try:
            obj = client.get(kinds.BY_NAME[d.kind], stack, d.name)
        except CliError as err:
            if err.reason != "NotFound":
                raise
            create = "secret generic" if d.kind == "Secret" else "configmap"
            problems.append(f"error: {source}: {d.path}: external: no {d.kind} {d.name!r} in "
                            f"namespace {stack!r}; create it (moor create {create} {d.name} -n "
                            f"{stack} --from-file {d.key}=FILE) or drop `external` and give a "
                            "file")
            continue
        keys = sorted(configs.data_of(obj))
        if d.key not in keys:
            problems.append(f"error: {source}: {d.path}: external: the {d.kind} {d.name!r} has "
                            f"no key {d.key!r}, the one the stack mounts (it has: "
                            f"{', '.join(repr(k) for k in keys) or 'none'})")
    if problems:
        raise CliError("\n".join(problems))


def _check_external_volumes(client, stack: str, external, source: str) -> None:
    """`external: true` volumes must be claims of the stack's namespace already, as Swarm
    refuses a stack whose external volume is missing."""
    from moorage.model import kinds

    problems = []
    for v in external:
        try:
            client.get(kinds.BY_NAME["PersistentVolumeClaim"], stack, v.claim)
        except CliError as err:
            if err.reason != "NotFound":
                raise
            problems.append(f"error: {source}: {v.path}: external: no PersistentVolumeClaim "
                            f"{v.claim!r} in namespace {stack!r}; create it (moor apply -f "
                            "claim.yaml) or drop `external` to have the stack create it")
    if problems:
        raise CliError("\n".join(problems))


def ls(ctx: Context) -> int:
    from moorage.manifest import compose
    from moorage.model import kinds

    client = ctx.client()
    found: Counter = Counter()
    for kind, count in (("Namespace", False), ("Deployment", True), ("StatefulSet", True)):
        items = client.list(kinds.BY_NAME[kind], all_namespaces=True,
                            label_selector=compose.STACK_LABEL).items
        for item in items:
            stack = kinds.unwrap(item).metadata.labels[compose.STACK_LABEL]
            found[stack] += 1 if count else 0
    rows = [("NAME", "SERVICES", "NAMESPACE")]
    rows += [(stack, str(found[stack]), stack) for stack in sorted(found)]
    _table(rows)
    return 0


def ps(ctx: Context) -> int:
    from moorage.manifest import compose
    from moorage.model import kinds

    name = ctx.args.name
    items = ctx.client().list(kinds.BY_NAME["Pod"], namespace=name,
                              label_selector=_selector(name)).items
    pods = sorted((kinds.unwrap(i) for i in items), key=lambda p: p.metadata.name)
    if not pods:
        raise CliError(f'error: stack "{name}" has no pods (see `moor stack ls`)')
    rows = [("NAME", "SERVICE", "NODE", "STATUS", "IP")]
    for p in pods:
        rows.append((p.metadata.name, p.metadata.labels.get(compose.SERVICE_LABEL, ""),
                     p.spec.node_name or "-", p.status.phase or "Pending", p.status.pod_ip or "-"))
    _table(rows)
    return 0


# What `rm` deletes when it keeps the namespace, in this order (workloads first, so that no
# pod is restarted for a Service or a config that went first).
STACK_KINDS = ("Deployment", "StatefulSet", "Service", "ConfigMap", "Secret")


def rm(ctx: Context) -> int:
    """Deletes the stack's namespace (and so everything in it) when the stack made it and it
    holds no volume; otherwise only the stack's own objects, keeping its claims."""
    from moorage.model import kinds

    name = ctx.args.name
    client = ctx.client()
    ns = [kinds.unwrap(i) for i in client.list(
        kinds.BY_NAME["Namespace"], label_selector=_selector(name)).items]
    removed = 0
    made = any(n.metadata.name == name for n in ns)
    claims = sorted(kinds.unwrap(i).metadata.name for i in client.list(
        kinds.BY_NAME["PersistentVolumeClaim"], namespace=name).items) if made else []
    if made and not claims:
        client.delete(kinds.BY_NAME["Namespace"], "", name)
        out(f"namespace/{name} deleted")
        removed += 1
    else:
        for kind in STACK_KINDS if made else ("Service", "Deployment", "StatefulSet"):
            for item in client.list(kinds.BY_NAME[kind], namespace=name,
                                    label_selector=_selector(name)).items:
                obj = kinds.unwrap(item)
                client.delete(kinds.BY_NAME[kind], name, obj.metadata.name)
                out(f"{kind.lower()}/{obj.metadata.name} deleted")
                removed += 1
    if not removed and not claims:
        raise CliError(f'error: no stack named "{name}" (see `moor stack ls`)')
    out(f'stack "{name}" removed')
    if claims:
        out(f"volumes kept: {', '.join(claims)} (remove them with `moor volume rm -n {name} "
            f"{' '.join(claims)}`, or the namespace and all in it with `moor delete namespace "
            f"{name}`)")
    return 0


def stack(ctx: Context) -> int:
    return {"deploy": deploy, "ls": ls, "ps": ps, "rm": rm}[ctx.args.action](ctx)


HANDLERS = {"stack": stack}
