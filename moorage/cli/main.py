"""The `moor` entry point: builds the argument parser, dispatches subcommands, reports errors."""

from __future__ import annotations

import argparse
import os
import sys

from moorage.cli.errors import CliError

# kubectl's `diff` exits 1 when objects differ, so its errors need a distinct code.
DIFF_ERROR_CODE = 2

DESCRIPTION = """\
moor controls a Moorage cluster: apply manifests, inspect objects, follow changes.
Objects have Kubernetes' shapes, and the commands read like kubectl's."""

EPILOG = """\
examples:
  moor apply -f web.yaml                 create or update the objects in web.yaml
  moor diff -f manifests/                show what an apply of a directory would change
  moor explain -f web.yaml               where the pods would land, and why not elsewhere
  moor get pods -o wide                  list pods in "default" with their IPs and nodes
  moor get deploy web -o yaml            print one deployment as YAML
  moor get pods -A -w                    follow pods in every namespace
  moor describe node node-1              conditions, capacity and events of a node
  moor create cm web --from-file conf/   a ConfigMap of a directory's files
  moor create secret generic db --from-literal password=s3cret
  moor rollout restart deploy/web        replace a deployment's pods, rolling
  moor build -t reg:5000/web:1 --push .  build ./Dockerfile on this machine (as root), push it
  moor images / moor pull / moor tag     the build machine's images
  moor image load -i app.tar             an image archive into every node's store
  moor registry deploy                   the cluster's registry: registry.cluster.local:5000
  moor delete deployment web             delete one object
  moor --server 10.0.0.5:7440 version    talk to another control plane

The control plane is found from --server, else $MOOR_SERVER, else the config file
($MOOR_CONFIG or ~/.config/moorage/config.yaml, keys `server:` and `credentials:`),
else 127.0.0.1:7440. Every call is mutual TLS: the credential (an admin.pem bundle the
control plane writes into its state dir) comes from --credentials, $MOOR_CREDENTIALS, the
config file, or /var/lib/moorage/controlplane/admin.pem. Set MOOR_DEBUG=1 to see tracebacks
of unexpected errors."""

KIND_HELP = ("pods (po), deployments (deploy), statefulsets (sts), services (svc), nodes (no), "
             "namespaces (ns), events (ev), configmaps (cm) or secrets; KIND/NAME also works")


class Parser(argparse.ArgumentParser):
    """Reports usage mistakes in one line, as every other `moor` error."""

    error_code = 1

    def error(self, message: str):
        sys.stderr.write(f'error: {message} (see "{self.prog} --help")\n')
        raise SystemExit(self.error_code)


def _seconds(text: str) -> float:
    """`30`, `30s`, `2m` or `1h`; 0 means no deadline."""
    units = {"s": 1, "m": 60, "h": 3600}
    scale = units.get(text[-1:].lower()) if text else None
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a duration like 30, 30s or 2m') \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError("the request timeout cannot be negative")
    return value


def _boolean(text: str) -> bool:
    """`--wait=false` as kubectl takes it."""
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f'"{text}" is not true or false')


def _add_globals(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Subcommands repeat the options with SUPPRESS so a value given before the subcommand
    # is not overwritten by the subcommand's default.
    group = parser.add_argument_group("global options")
    group.add_argument("--server", metavar="HOST:PORT",
                       default=argparse.SUPPRESS if suppress else None,
                       help="control plane address (default: $MOOR_SERVER, the config file, "
                            "or 127.0.0.1:7440)")
    group.add_argument("--credentials", metavar="FILE",
                       default=argparse.SUPPRESS if suppress else None,
                       help="admin credential bundle (default: $MOOR_CREDENTIALS, the config "
                            "file, or /var/lib/moorage/controlplane/admin.pem)")
    group.add_argument("--request-timeout", metavar="SECONDS", type=_seconds,
                       default=argparse.SUPPRESS if suppress else 30.0,
                       help="give up on a request after this long; 0 waits forever "
                            "(default: 30)")


def _add_files(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("-f", "--filename", metavar="PATH", action="append",
                        required=required, default=[] if not required else None,
                        help="a manifest file, a directory of *.yaml/*.yml/*.json files, "
                             "or - for stdin; repeatable")
    parser.add_argument("-R", "--recursive", action="store_true",
                        help="also read the subdirectories of directories given with -f")


def _add_namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", metavar="NS",
                        help='the namespace of namespaced kinds (default: "default")')


def build_parser() -> Parser:
    parser = Parser(prog="moor", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_globals(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help_text: str, examples: str, description: str = ""):
        cmd = sub.add_parser(name, help=help_text, description=description or help_text,
                             epilog="examples:\n" + examples,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_globals(cmd, suppress=True)
        return cmd

    _add_manifest_commands(command)
    _add_delete_command(command)
    _add_rollout_commands(sub, command)
    _add_node_commands(sub, command)
    _add_token_commands(command)
    from moorage.cli import configs, imageload, lab, prometheus, registry, stack, streams, volumes

    streams.add_commands(command)
    imageload.add_commands(sub, _add_globals)
    registry.add_commands(sub, _add_globals)
    configs.add_commands(command, _add_globals)
    prometheus.add_commands(sub, _add_globals)
    stack.add_commands(sub, _add_globals)
    volumes.add_commands(sub, _add_globals)
    cmd = command("net", "check the pod network", """\
  moor net doctor                        every node checks its routes, neighbour and FDB
                                         entries and MTUs, and pings its peers""")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                 required=True)
    act = actions.add_parser("doctor", help="report overlay drift, MTU mismatches and "
                             "unreachable peers (exit 1 when any)",
                             description="Each node compares the kernel's routes, neighbour "
                             "and FDB entries with the node list, checks MTUs and probes every "
                             "peer over the overlay. Exit status 1 when there is an error or a "
                             "node could not be checked.")
    _add_globals(act, suppress=True)
    lab.add_parser(sub)

    command("version", "print the client and server versions", """\
  moor version
  moor --server 10.0.0.5:7440 version""")
    return parser


def _add_manifest_commands(command) -> None:
    cmd = command("apply", "create or update objects from manifests", """\
  moor apply -f web.yaml
  moor apply -f manifests/ -R
  cat web.yaml | moor apply -f -
  moor apply -f web.yaml --dry-run       validate and show what would change""",
                  "Create or update the objects in manifest files, all in one transaction: "
                  "either every object is written or none is.\n"
                  'To see first where their pods would land, use "moor explain -f".')
    _add_files(cmd, required=True)
    cmd.add_argument("--dry-run", action="store_true",
                     help="validate and report the outcome without storing anything")
    cmd.add_argument("-o", "--output", choices=("name", "yaml", "json"),
                     help="print names or the resulting objects instead of the outcome")

    cmd = command("diff", "show what an apply would change", """\
  moor diff -f web.yaml
  moor diff -f manifests/ -R | less""",
                  "Show a unified diff between the stored objects and what applying the "
                  "manifests would make of them. Exits 0 with no differences, 1 with some, "
                  "2 on errors.")
    _add_files(cmd, required=True)
    cmd.error_code = DIFF_ERROR_CODE

    cmd = command("explain", "show where the manifests' pods would land, and why", """\
  moor explain -f web.yaml
  moor explain -f manifests/ -R
  cat web.yaml | moor explain -f -""",
                  "Show where the pods of the manifests (each Pod, and each Deployment's\n"
                  "replicas) would land given the cluster's nodes and pods now: the node the\n"
                  "scheduler would pick and its score, the runners-up, and why every other\n"
                  "node was ruled out. Nothing is written.\n\n"
                  "exit status: 0 when every pod would be placed, 1 when some would not\n"
                  "(or on errors).")
    _add_files(cmd, required=True)

    cmd = command("get", "list objects or show some of them", """\
  moor get pods
  moor get deploy web -o yaml
  moor get svc -A -o wide
  moor get pods -l app=web --field-selector spec.nodeName=node-1
  moor get pods -w                        list, then print a row for every change
  moor get nodes -o name""")
    cmd.add_argument("kind", metavar="KIND", help=KIND_HELP)
    cmd.add_argument("names", metavar="NAME", nargs="*", help="objects to show (default: all)")
    _add_namespace(cmd)
    cmd.add_argument("-A", "--all-namespaces", action="store_true",
                     help="list across every namespace")
    cmd.add_argument("-l", "--selector", metavar="SELECTOR", default="",
                     help="label selector, e.g. app=web,tier in (a,b),!canary")
    cmd.add_argument("--field-selector", metavar="SELECTOR", default="",
                     help="field selector, e.g. spec.nodeName=node-1, status.phase!=Running")
    cmd.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"),
                     help="output format (default: a table)")
    cmd.add_argument("-w", "--watch", action="store_true",
                     help="after listing, print changes as they happen (Ctrl-C to stop)")

    cmd = command("describe", "show an object in detail, with its events", """\
  moor describe pod web-7c9f8d-x2k4q
  moor describe deploy/web -n shop
  moor describe node node-1""")
    cmd.add_argument("kind", metavar="KIND", help=KIND_HELP)
    cmd.add_argument("names", metavar="NAME", nargs="*", help="the object(s) to describe")
    _add_namespace(cmd)



def _add_delete_command(command) -> None:
    cmd = command("delete", "delete objects by name or by manifest", """\
  moor delete deployment web
  moor delete pods web-1 web-2 -n shop
  moor delete -f web.yaml
  moor delete svc/web --ignore-not-found
  moor delete pod web-1 --grace-period 5        # SIGTERM, then SIGKILL after 5 s
  moor delete pod web-1 --force --grace-period 0  # gone from the API at once
  moor delete pod web-1 --wait=false            # do not wait until it is gone""")
    cmd.add_argument("kind", metavar="KIND", nargs="?", help=KIND_HELP)
    cmd.add_argument("names", metavar="NAME", nargs="*", help="the objects to delete")
    _add_namespace(cmd)
    _add_files(cmd, required=False)
    cmd.add_argument("--ignore-not-found", action="store_true",
                     help="treat an object that does not exist as deleted")
    cmd.add_argument("--grace-period", type=int, default=-1, metavar="SECONDS",
                     help="seconds a pod's containers get between SIGTERM and SIGKILL "
                     "(default -1: the pod's terminationGracePeriodSeconds); 0 needs --force")
    cmd.add_argument("--force", action="store_true",
                     help="remove pods from the API at once, without waiting for their node to "
                     "confirm that the containers stopped (grace period 0)")
    cmd.add_argument("--now", action="store_true",
                     help="the same as --grace-period 1: stop the containers almost at once")
    cmd.add_argument("--wait", type=_boolean, default=True, nargs="?", const=True,
                     metavar="BOOL", help="wait until the objects are gone, as kubectl does "
                     "(default true; --wait=false returns once deletion has begun)")
    cmd.add_argument("--timeout", type=_seconds, default=0.0, metavar="DURATION",
                     help="how long --wait waits (e.g. 90s, 2m; default 0: the grace "
                     "period plus a minute)")


def _add_node_commands(sub, command) -> None:
    for name, summary, example in (
            ("cordon", "mark nodes unschedulable: new pods go elsewhere",
             "  moor cordon node-2"),
            ("uncordon", "make nodes schedulable again", "  moor uncordon node-2"),
            ("drain", "cordon nodes, then delete their pods so they are replaced elsewhere",
             "  moor drain node-2")):
        cmd = command(name, summary, example)
        cmd.add_argument("nodes", metavar="NODE", nargs="+", help="node names")
        if name == "drain":
            cmd.add_argument("--grace-period", type=int, default=-1, metavar="SECONDS",
                             help="seconds each pod gets to stop (default -1: its own "
                             "terminationGracePeriodSeconds)")
            cmd.add_argument("--timeout", type=_seconds, default=0.0, metavar="DURATION",
                             help="how long to wait for the pods to be gone (default 0: the "
                             "longest grace period plus a minute)")


def _add_token_commands(command) -> None:
    cmd = command("token", "create, list or revoke join tokens for agents", """\
  moor token create                       a token valid for 24 hours
  moor token create --ttl 1h
  moor token list
  moor token revoke 3f2a9c1b              by id (or pass the whole token)""",
                  "Join tokens let agents join: `moor-agent run --join HOST:PORT --token T`.\n"
                  "A token carries the digest of the cluster CA, which the agent pins, and a\n"
                  "secret; the control plane keeps only a hash of the secret. The token is\n"
                  "printed once, when it is created.")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                 required=True)
    act = actions.add_parser("create", help="make a token and print it",
                             description="make a join token and print it (only now)")
    _add_globals(act, suppress=True)
    act.add_argument("--ttl", type=_seconds, default=24 * 3600.0, metavar="DURATION",
                     help="how long it works, e.g. 30m, 24h (default 24h)")
    for name, help_text in (("list", "list the tokens that have not expired"),
                            ("revoke", "stop a token from working")):
        act = actions.add_parser(name, help=help_text, description=help_text)
        _add_globals(act, suppress=True)
        if name == "revoke":
            act.add_argument("tokens", metavar="ID|TOKEN", nargs="+")


def _add_rollout_commands(sub, command) -> None:
    cmd = command("scale", "set the number of replicas of a deployment or statefulset", """\
  moor scale deployment/web --replicas 5
  moor scale statefulset/db --replicas 3
  moor scale deploy web --replicas=0 -n shop""")
    cmd.add_argument("kind", metavar="KIND", help="deployment (deploy) or statefulset (sts); "
                     "KIND/NAME also works")
    cmd.add_argument("names", metavar="NAME", nargs="*", help="the deployment or statefulset")
    _add_namespace(cmd)
    cmd.add_argument("--replicas", type=int, required=True, help="the new number of replicas")

    cmd = command("rollout", "follow, list, restart or undo a deployment's or statefulset's "
                  "rollouts", """\
  moor rollout status deploy/web --timeout 5m
  moor rollout status statefulset/db
  moor rollout history deploy/web
  moor rollout restart deploy/web -n shop
  moor rollout undo deploy/web --to-revision 2""")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser,
                                 required=True)
    for name, help_text in (("status", "wait for a rollout to finish, showing progress"),
                            ("history", "list the revisions"),
                            ("restart", "replace the pods with a rolling update"),
                            ("undo", "roll back to the previous (or a given) revision")):
        act = actions.add_parser(name, help=help_text, description=help_text)
        _add_globals(act, suppress=True)
        act.add_argument("kind", metavar="KIND", help="deployment (deploy) or statefulset "
                         "(sts); KIND/NAME also works")
        act.add_argument("names", metavar="NAME", nargs="*",
                         help="the deployment or statefulset")
        _add_namespace(act)
        if name == "status":
            act.add_argument("--timeout", type=_seconds, default=0.0,
                             help="give up (exit 1) after this long, e.g. 5m; 0 waits forever")
            act.add_argument("-w", "--watch", action=argparse.BooleanOptionalAction,
                             default=True, help="wait until the rollout finishes (default)")
        if name == "undo":
            act.add_argument("--to-revision", type=int, default=0, metavar="N",
                             help="the revision to go back to (default: the previous one)")


def _parse(parser: Parser, argv: list[str] | None):
    args, extras = parser.parse_known_args(argv)
    # argparse fills a `NAME...` positional before options, so in `get pods -A web` the name
    # arrives as an extra; names may come anywhere, as with kubectl.
    stray = [e for e in extras if e.startswith("-") and e != "-"]
    if extras and (stray or not hasattr(args, "names")):
        prog = f"moor {args.command}" if args.command else "moor"
        sys.stderr.write(f'error: unrecognized arguments: {" ".join(stray or extras)} '
                         f'(see "{prog} --help")\n')
        raise SystemExit(DIFF_ERROR_CODE if args.command == "diff" else 1)
    if extras:
        args.names.extend(extras)
    return args


def _dispatch(args) -> int:
    if args.command == "lab":   # local: no control plane to talk to (it may not exist yet)
        from moorage.cli import lab

        return lab.run(args)
    from moorage.cli import (
        commands,
        configs,
        deleting,
        imageload,
        netdoctor,
        nodes,
        prometheus,
        registry,
        rollout,
        stack,
        streams,
        tokens,
        volumes,
    )

    handler = {"apply": commands.apply, "diff": commands.diff, "get": commands.get,
               "describe": commands.describe, "delete": deleting.delete,
               "explain": commands.explain, "scale": rollout.scale, "rollout": rollout.rollout,
               "cordon": nodes.cordon, "uncordon": nodes.uncordon, "drain": nodes.drain,
               "token": tokens.token, "net": netdoctor.doctor, "version": commands.version,
               **streams.HANDLERS, **stack.HANDLERS, **prometheus.HANDLERS,
               **configs.HANDLERS, **volumes.HANDLERS, **imageload.HANDLERS,
               **registry.HANDLERS}[args.command]
    ctx = commands.Context(args)
    try:
        return handler(ctx)
    finally:
        ctx.close()


def _report(message: str) -> None:
    for line in message.splitlines() or [message]:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


# Image commands run containers on this machine, so they are a program of their own: the
# builder (builder/), started in place of this process rather than imported.
BUILDER_COMMANDS = ("build", "push", "pull", "login", "tag", "images", "rmi", "save")


def _hand_to_builder(argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "builder", *argv])
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in BUILDER_COMMANDS:
        return _hand_to_builder(argv)
    parser = build_parser()
    command = None
    try:
        args = _parse(parser, argv)
        command = args.command
        if command is None:
            parser.print_help()
            return 0
        return _dispatch(args)
    except SystemExit as exc:  # from argparse: --help (0) or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 1
    except CliError as exc:
        _report(exc.message)
        return DIFF_ERROR_CODE if command == "diff" and exc.code == 1 else exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away; silence the flush at exit that would complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the last resort still prints one line
        if os.environ.get("MOOR_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _report(f"error: {type(exc).__name__}: {first}" if first
                else f"error: {type(exc).__name__}")
        return DIFF_ERROR_CODE if command == "diff" else 1


if __name__ == "__main__":
    sys.exit(main())
