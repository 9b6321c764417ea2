"""`moor create configmap|secret` and `moor secrets rotate-key`: the parsers, reading the
files, and creating (never overwriting) or printing what moorage/cli/configbuild.py built.

A Secret's values reach stdout only in `-o yaml|json` (as base64, as kubectl prints them) and
are never part of a message.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys

from moorage.cli import configbuild as cb
from moorage.cli import printers
from moorage.cli.commands import Context, namespace_for, out
from moorage.cli.configbuild import BuildError, EnvFile, FileSource, Sources
from moorage.cli.errors import CliError
from moorage.model import configs

DRY_RUN_MODES = ("none", "client", "server")

CONFIGMAP_EXAMPLES = """\
  moor create configmap web-config --from-literal mode=fast --from-literal level=2
  moor create cm nginx --from-file nginx.conf --from-file site=conf/site.conf
  moor create cm conf --from-file conf/          every regular file in conf/, keyed by its name
  moor create cm env --from-env-file app.env -n shop
  moor create cm web-config --from-literal a=b --dry-run=client -o yaml"""

SECRET_EXAMPLES = """\
  moor create secret generic db --from-literal password=s3cret
  moor create secret generic ssh --from-file ssh-privatekey=id_ed25519 \\
      --type kubernetes.io/ssh-auth
  moor create secret tls web-tls --cert tls.crt --key tls.key
  moor create secret docker-registry regcred --docker-server registry.example:5000 \\
      --docker-username ci --docker-password "$TOKEN\""""


def _dry_run(text: str) -> str:
    if text not in DRY_RUN_MODES:
        raise argparse.ArgumentTypeError(
            f'Invalid dry-run value ({text}). Must be "none", "server", or "client".')
    return text


def _add_common(cmd, add_globals) -> None:
    add_globals(cmd, suppress=True)
    # `names`: moorage/cli/main.py adds names found after options there, so that one given
    # twice is counted, as kubectl counts it.
    cmd.add_argument("names", metavar="NAME", nargs="*", help="the object's name")
    cmd.add_argument("-n", "--namespace", metavar="NS",
                     help='the namespace to create it in (default: "default")')
    cmd.add_argument("--dry-run", type=_dry_run, nargs="?", const="client", default="none",
                     metavar="MODE", help="client: only print the object; server: have the "
                     "server check it too, without storing it; none (default): create it")
    cmd.add_argument("-o", "--output", choices=("yaml", "json", "name"),
                     help="print the object (or its name) instead of a message")


def _add_sources(cmd, env: bool = True) -> None:
    cmd.add_argument("--from-literal", action="append", default=[], metavar="KEY=VALUE",
                     help="a key and its value; repeatable")
    cmd.add_argument("--from-file", action="append", default=[], metavar="[KEY=]PATH",
                     help="a file's content under KEY (default: the file's name), or every "
                     "regular file of a directory under its name; repeatable")
    if env:
        cmd.add_argument("--from-env-file", action="append", default=[], metavar="PATH",
                         help="KEY=VALUE lines (# comments and blank lines skipped); "
                         "repeatable, not with --from-file or --from-literal")


def add_commands(command, add_globals) -> None:
    """`moor create ...` and `moor secrets ...`; `command` makes a subcommand's parser with
    the global options, `add_globals` adds them to a nested one (moorage/cli/main.py)."""
    cmd = command("create", "create a ConfigMap or a Secret from literals and files",
                  CONFIGMAP_EXAMPLES + "\n" + SECRET_EXAMPLES,
                  "Create a ConfigMap or a Secret, as kubectl create does: an object of that\n"
                  "name must not exist yet (use apply to change one).")
    what = cmd.add_subparsers(dest="what", metavar="KIND", parser_class=type(cmd),
                              required=True)
    cm = what.add_parser("configmap", aliases=["cm"], help="create a ConfigMap",
                         description="Create a ConfigMap. A file that is not UTF-8 goes to "
                         "binaryData.", epilog="examples:\n" + CONFIGMAP_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(cm, add_globals)
    _add_sources(cm)
    cm.set_defaults(build=_config_map)

    secret = what.add_parser("secret", help="create a Secret (generic, tls or docker-registry)",
                             epilog="examples:\n" + SECRET_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(secret, suppress=True)
    types = secret.add_subparsers(dest="secret_type", metavar="TYPE",
                                  parser_class=type(cmd), required=True)
    act = types.add_parser("generic", help="a Secret from literals, files or env files")
    _add_common(act, add_globals)
    _add_sources(act)
    act.add_argument("--type", default="", help="the Secret's type (default: Opaque)")
    act.set_defaults(build=_generic_secret)
    act = types.add_parser("tls", help="a kubernetes.io/tls Secret from a certificate and key")
    _add_common(act, add_globals)
    act.add_argument("--cert", required=True, metavar="PATH", help="PEM certificate (chain)")
    act.add_argument("--key", required=True, metavar="PATH", help="its PEM private key")
    act.set_defaults(build=_tls_secret)
    act = types.add_parser("docker-registry",
                           help="a kubernetes.io/dockerconfigjson Secret for pulling images")
    _add_common(act, add_globals)
    act.add_argument("--docker-server", default=cb.DEFAULT_DOCKER_SERVER, metavar="SERVER",
                     help=f"the registry (default: {cb.DEFAULT_DOCKER_SERVER})")
    act.add_argument("--docker-username", default="", metavar="USER")
    act.add_argument("--docker-password", default="", metavar="PASSWORD")
    act.add_argument("--docker-email", default="", metavar="EMAIL")
    act.add_argument("--from-file", action="append", default=[], metavar="[KEY=]PATH",
                     help="use these files (e.g. .dockerconfigjson=config.json) instead")
    act.set_defaults(build=_docker_registry_secret)

    cmd = command("secrets", "manage how Secrets are sealed at rest", """\
  moor secrets rotate-key                a new key; every Secret sealed again under it""")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", parser_class=type(cmd),
                                 required=True)
    act = actions.add_parser("rotate-key", help="seal every Secret again under a new key",
                             description="Make a new secrets key in the answering control "
                             "plane's key file and seal every Secret again under it. The old "
                             "keys stay in the file for reading; copy the file to every other "
                             "control-plane replica.")
    add_globals(act, suppress=True)


# ---- reading files -------------------------------------------------------------------------

def _os_error(path: str, exc: OSError) -> CliError:
    reason = exc.strerror or str(exc)
    return CliError(f"error: error reading {path}: {reason[:1].lower()}{reason[1:]}")


def read_limited(path: str) -> bytes:
    """A file's bytes, refusing one larger than a ConfigMap or Secret may hold (so a wrong
    path to a huge file fails at once, not after reading it all)."""
    try:
        with open(path, "rb") as f:
            data = f.read(configs.MAX_DATA_BYTES + 1)
    except OSError as exc:
        raise _os_error(path, exc) from None
    if len(data) > configs.MAX_DATA_BYTES:
        raise CliError(f"error: {path} is larger than {configs.MAX_DATA_BYTES} bytes, all "
                       "the data a ConfigMap or a Secret may hold")
    return data


def read_file_sources(specs: list[str]) -> list[FileSource]:
    """--from-file values, read: a file under its key; a directory's regular files (not
    symlinks, not subdirectories, as kubectl) in name order, each under its own name."""
    found = []
    for spec in specs:
        key, path = _checked(cb.parse_file_source, spec)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as exc:
            raise _os_error(path, exc) from None
        if not is_dir:
            found.append(FileSource(key or os.path.basename(path.rstrip("/")), path,
                                    read_limited(path)))
            continue
        if key:
            raise CliError(f"error: cannot give a key name for a directory path ({path})")
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise _os_error(path, exc) from None
        found += [FileSource(e.name, e.path, read_limited(e.path)) for e in entries
                  if e.is_file(follow_symlinks=False)]
    return found


def _checked(fn, *args):
    try:
        return fn(*args)
    except BuildError as exc:
        raise CliError(f"error: {exc}") from None


def _sources(args) -> Sources:
    return Sources(literals=list(args.from_literal), files=read_file_sources(args.from_file),
                   env_files=[EnvFile(p, read_limited(p)) for p in args.from_env_file])


# ---- building ------------------------------------------------------------------------------

def _config_map(args):
    return _checked(cb.config_map, args.name, args.namespace or "", _sources(args),
                    dict(os.environ))


def _generic_secret(args):
    return _checked(cb.generic_secret, args.name, args.namespace or "",
                    _sources(args), args.type, dict(os.environ))


def _tls_secret(args):
    cert, key = read_limited(args.cert), read_limited(args.key)
    problem = cb.key_pair_problem(cert, key)
    if problem:
        raise CliError(f"error: failed to load key pair {problem} (--cert {args.cert}, "
                       f"--key {args.key})")
    return cb.tls_secret(args.name, args.namespace or "", cert, key)


def _docker_registry_secret(args):
    if args.from_file:
        sources = Sources(files=read_file_sources(args.from_file))
        return _checked(cb.docker_registry_secret, args.name, args.namespace or "",
                        None, sources)
    if not (args.docker_username and args.docker_password and args.docker_server):
        raise CliError("error: either --from-file or the combination of --docker-username, "
                       "--docker-password and --docker-server is required")
    config = cb.docker_config_json(args.docker_server, args.docker_username,
                                            args.docker_password, args.docker_email)
    return cb.docker_registry_secret(args.name, args.namespace or "", config)


# ---- creating ------------------------------------------------------------------------------

def _show(obj, ref: str, output: str | None, suffix: str) -> None:
    if output in ("yaml", "json"):
        sys.stdout.write(printers.dump(printers.object_dict(obj), output))
        sys.stdout.flush()
    elif output == "name":
        out(ref)
    else:
        out(f"{ref} created{suffix}")


def submit(ctx: Context, obj, output: str | None, dry_run: str) -> int:
    """Prints `obj` (client dry run) or creates it, refused when it exists; a server dry run
    has the server check it all without storing it."""
    from moorage.model import kinds
    from moorage.v1 import api_pb2

    kind = kinds.kind_of(obj)
    ref = printers.resource_ref(kind, obj.metadata.name)
    if dry_run == "client":
        _show(obj, ref, output, " (dry run)")
        return 0
    sent = type(obj)()
    sent.CopyFrom(obj)
    sent.metadata.namespace = namespace_for(kind, obj.metadata.namespace)
    content = json.dumps(printers.object_dict(sent), separators=(",", ":"))
    response = ctx.client().apply([api_pb2.Manifest(source=ref, index=0, content=content)],
                                  dry_run=dry_run == "server", create_only=True)
    result = response.results[0]
    created = kinds.unwrap(result.object) if result.HasField("object") else sent
    _show(created, ref, output, " (server dry run)" if dry_run == "server" else "")
    return 0


def create(ctx: Context) -> int:
    args = ctx.args
    if len(args.names) != 1:
        raise CliError(f"error: exactly one NAME is required, got {len(args.names)}")
    args.name = args.names[0]
    return submit(ctx, args.build(args), args.output, args.dry_run)


def rotation_message(response) -> str:
    """The one line `moor secrets rotate-key` prints."""
    count = response.resealed
    noun = "Secret" if count == 1 else "Secrets"
    where = f" (on {response.replica})" if response.replica else ""
    old = ", ".join(response.previous_key_ids) or "none"
    return (f"secrets key rotated to {response.key_id}: {count} {noun} sealed again; copy "
            f"{response.key_file}{where} to every other control-plane replica (it still holds "
            f"the old keys {old} for reading)")


def secrets(ctx: Context) -> int:
    out(rotation_message(ctx.client().rotate_secrets_key()))
    return 0


HANDLERS = {"create": create, "secrets": secrets}
