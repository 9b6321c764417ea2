"""`moor image load`: an image archive (a `docker save` tarball or an OCI layout tar, from a
file or saved from the build machine's store by `python -m builder save`) streamed through the
control plane (Images.Load) into the image store of nodes, as `kind load` and k3s' airgap
images deliver images no registry the nodes can reach has. Admins only.

Each node gets its own stream, side by side; the file is read once per node, 1 MiB a frame,
as fast as that node takes it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

from moorage.cli.errors import CliError

CHUNK_BYTES = 1 << 20
LOADED = "Loaded image: "

EXAMPLES = """\
  moor image load -i busybox.tar                 into every node's store
  moor image load -i app.tar --node node-2       into one node's
  moor image load web:1 --node node-1            an image of the build machine (moor images)"""


def add_commands(sub, add_globals) -> None:
    cmd = sub.add_parser(
        "image", help="deliver images to nodes' stores", epilog="examples:\n" + EXAMPLES,
        description="Images in the nodes' own stores, delivered through the control plane.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(cmd, suppress=True)
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    act = actions.add_parser(
        "load", help="load an image archive into nodes' image stores",
        description="Stream a `docker save` tarball or an OCI layout tar (or images of the "
        "build machine's store, saved by the builder) through the control plane into the "
        "image store of each node (default: every node). Cluster admins only.",
        epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(act, suppress=True)
    act.add_argument("names", nargs="*", metavar="IMAGE",
                     help="images of the build machine's store to save and load")
    act.add_argument("-i", "--input", "-f", dest="input", metavar="FILE",
                     help="the archive to load (instead of IMAGEs)")
    act.add_argument("--node", action="append", default=[], metavar="NODE",
                     help="a node to load into (repeatable; default: every node)")
    act.add_argument("--root", metavar="DIR",
                     help="the build machine's store, for IMAGEs (default: $MOOR_BUILD_ROOT "
                     "or /var/lib/moorage/build)")


@dataclass
class Loaded:
    node: str
    images: list[str] = field(default_factory=list)
    error: str = ""


def _frames(path: str, node: str):
    from moorage.v1 import api_pb2

    size = os.path.getsize(path)
    yield api_pb2.StreamFrame(image_load=api_pb2.ImageLoadStart(node=node, size=size))
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield api_pb2.StreamFrame(data=chunk)
    yield api_pb2.StreamFrame(eof=True)


def load_one(client, path: str, node: str) -> Loaded:
    """Streams the archive at `path` to `node`; what it loaded, or the one-line error."""
    import grpc

    from moorage.cli.client import rpc_error
    from moorage.v1 import api_pb2_grpc

    result = Loaded(node)
    stub = api_pb2_grpc.ImagesStub(client.channel)
    stream = stub.Load(_frames(path, node), metadata=getattr(client, "_metadata", None))
    text = b""
    try:
        for frame in stream:
            text += frame.data
            if frame.exited:
                break
        else:
            result.error = f"node {node}: the stream ended before the load finished"
    except grpc.RpcError as exc:
        result.error = rpc_error(exc, client.server).message
    finally:
        stream.cancel()
    for line in text.decode(errors="replace").splitlines():
        if line.startswith(LOADED):
            result.images.append(line[len(LOADED):].strip())
    return result


def load(client, path: str, nodes: list[str]) -> list[Loaded]:
    """The archive into every node of `nodes` side by side; one result per node, in order."""
    results: list[Loaded | None] = [None] * len(nodes)

    def one(i: int, node: str) -> None:
        try:
            results[i] = load_one(client, path, node)
        except OSError as err:
            results[i] = Loaded(node, error=f"{path}: {err.strerror or err}")

    threads = [threading.Thread(target=one, args=(i, n), daemon=True)
               for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def all_nodes(client) -> list[str]:
    from moorage.model import kinds

    return sorted(kinds.unwrap(o).metadata.name for o in client.list(kinds.BY_NAME["Node"]).items)


def builder_save(names: list[str], out: str, root: str | None) -> None:
    """`python -m builder save -o out NAME...` (moorage/ never imports the builder)."""
    argv = [sys.executable, "-m", "builder", "save", "-o", out, *names]
    if root:
        argv += ["--root", root]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise CliError(done.stderr.strip() or f"error: saving {' '.join(names)} failed")


def image_load(ctx) -> int:
    args = ctx.args
    if bool(args.input) == bool(args.names):
        raise CliError("error: give either -i FILE or IMAGE names of the build machine, "
                       "not both or neither")
    if args.input and not os.path.isfile(args.input):
        raise CliError(f"error: {args.input}: no such file")
    client = ctx.client()
    nodes = list(dict.fromkeys(args.node)) or all_nodes(client)
    if not nodes:
        raise CliError("error: the cluster has no nodes to load into")
    with tempfile.TemporaryDirectory(prefix="moor-load-") as tmp:
        path = args.input
        if not path:
            path = os.path.join(tmp, "images.tar")
            builder_save(args.names, path, args.root)
        results = load(client, path, nodes)
    failed = 0
    for r in results:
        for image in r.images:
            print(f"{r.node}: {LOADED}{image}", flush=True)
        if r.error:
            failed += 1
            print(f"{r.node}: {r.error}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def run(ctx) -> int:
    return image_load(ctx)


HANDLERS = {"image": run}
