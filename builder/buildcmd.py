"""`moor build [-t NAME]... [-f Dockerfile] [--build-arg K=V] [--target S] [--no-cache]
[--label K=V] [--push] [-q] CONTEXT`: checks the context and the Dockerfile, runs the build
(executor.Build) on the build machine's root, then pushes each tag when asked.

The build runs in a mount namespace of its own, so the overlays it mounts for COPY are never
seen by (nor left to) the host, whatever happens to this process.
"""

from __future__ import annotations

import os
import signal
import sys

from builder.errors import BuildError
from builder.paths import BuildRoot

# Every build imports the builder and the runtime afresh; compiling them is most of a warm
# build's time (~150ms here), so cached bytecode is used and written even where the
# environment says not to (as the runtime's helpers do, nodeagent/runtime/runtime.py).
sys.dont_write_bytecode = False


def run(args) -> int:
    if os.geteuid() != 0:
        raise BuildError("moor build runs containers and mounts overlays: run it as root")
    if args.push and not args.tag:  # before building, not after
        raise BuildError("--push needs a name to push to: add -t NAME[:TAG]")
    if args.push:
        from builder.distcmd import require_registry

        for tag in args.tag:
            require_registry(tag, "--push")
    context_dir = _context(args.context)
    if args.file == "-":  # `-f -`: the Dockerfile on stdin, named Dockerfile as Docker does
        path, text = os.path.join(context_dir, "Dockerfile"), sys.stdin.read()
    else:
        path = os.path.abspath(args.file) if args.file else _default_dockerfile(context_dir)
        text = _read_dockerfile(path)
    from builder import dockerfile as df

    try:
        parsed = df.parse(text, os.path.basename(path))
    except df.DockerfileError as e:
        raise BuildError(str(e)) from None
    tags = [_checked_tag(t) for t in args.tag]
    # `--build-arg K` takes K's value from the environment, as Docker's does (unset if absent).
    build_args = {k: (os.environ.get(k) if v is None else v) for k, v in args.build_arg}
    labels = {k: v or "" for k, v in args.label}
    root = BuildRoot.from_args(args.root)
    private_mounts()
    # A stopped build cleans up as an interrupted one does (containers, work dirs).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    from builder.context import Context, SumCache
    from builder.executor import Build

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    build = Build(root, registry_config=lambda: registry_config(root, args.insecure_registry),
                  media=args.format, quiet=args.quiet,
                  source_date_epoch=int(epoch) if epoch and epoch.isdigit() else None)
    sums = SumCache(os.path.join(root.cache, "context-sums.json"))
    try:
        image = build.run(parsed, Context.open(context_dir, path, sums), args.target,
                          build_args, labels, tags, args.no_cache, out=sys.stdout)
    finally:
        sums.save()
    if args.push:
        push_tags(build.store, image, tags, build.registry_config(), args.quiet)
    return 0


def _default_dockerfile(context_dir: str) -> str:
    """CONTEXT/Dockerfile, else CONTEXT/dockerfile when only that is there (as docker)."""
    path = os.path.join(context_dir, "Dockerfile")
    lower = os.path.join(context_dir, "dockerfile")
    return lower if not os.path.lexists(path) and os.path.lexists(lower) else path


def _read_dockerfile(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(f"unable to prepare context: the Dockerfile {path!r} cannot be read: "
                         f"{getattr(e, 'strerror', None) or e}") from None


def _interrupt(signum, frame):
    # Once: a second signal (`timeout` forwards its own, Ctrl-C twice) must not cut the
    # clean-up short and leave a RUN's container behind.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _context(path: str) -> str:
    if not os.path.exists(path):
        raise BuildError(f'unable to prepare context: path "{path}" not found')
    if not os.path.isdir(path):
        raise BuildError(f'unable to prepare context: path "{path}" is not a directory')
    return os.path.abspath(path)


def _checked_tag(tag: str) -> str:
    from nodeagent.runtime.images.reference import ReferenceError, parse_reference

    try:
        ref = parse_reference(tag)
    except ReferenceError as e:
        raise BuildError(f'invalid tag "{tag}": {e}') from None
    if ref.digest:
        raise BuildError(f'invalid tag "{tag}": a tag cannot name a digest')
    return tag


def registry_config(root: BuildRoot, insecure: list[str]):
    """The build machine's registry settings (builder/registries.py when present, else just
    the --insecure-registry flags)."""
    try:
        from builder import registries
    except ImportError:
        from nodeagent.runtime.images.registry import RegistryConfig
        return RegistryConfig(insecure=frozenset(insecure))
    return registries.load(root, insecure)


def push_tags(store, image, tags: list[str], config, quiet: bool) -> None:
    """`--push`: each tag in turn, with distribution.push's progress lines."""
    if not tags:
        raise BuildError("--push needs a name to push to: add -t NAME[:TAG]")
    from builder import distribution

    for tag in tags:
        distribution.push(store, image, tag, config, None if quiet else _say)


def _say(line: str) -> None:
    print(line, flush=True)


def private_mounts() -> None:
    """Enter a mount namespace of our own (mounts made here die with the process); only
    possible while single-threaded, which a fresh `python -m builder` is."""
    from nodeagent.runtime.syscalls import CLONE_NEWNS, MS_PRIVATE, MS_REC, LibcSyscalls

    sysc = LibcSyscalls()
    try:
        sysc.unshare(CLONE_NEWNS)
        sysc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        raise BuildError(f"cannot make a private mount namespace for the build: {e}") from None
