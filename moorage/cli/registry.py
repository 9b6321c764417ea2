"""`moor registry deploy|status`: the cluster's own registry, so that images named
`registry.cluster.local:5000/...` push to it from the build machine and pull from it on every
node with no flags.

deploy: builds the registry's image with the builder (`python -m builder build`, from Debian's
docker-registry binary; or takes `--image-archive`), picks its node, loads the image into that
node's store through the control plane (nodes cannot pull the registry's image from the
registry before it runs), applies a StatefulSet of one with a claim on the node's local disk
and a NodePort Service annotated as the registry alias, waits until the registry answers, and
writes the build machine's registries.json. Run again, it changes only what differs.

The objects are made by moorage/cli/registryobjects.py (pure); agents learn the alias from
the control plane (moorage/model/registries.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from moorage.cli import imageload
from moorage.cli import registryobjects as ro
from moorage.cli.commands import Context, out
from moorage.cli.errors import CliError
from moorage.model.registries import CLUSTER_REGISTRY

# The build machine's root (builder/paths.py BuildRoot; moorage/ does not import builder/).
BUILD_ROOT_ENV = "MOOR_BUILD_ROOT"
DEFAULT_BUILD_ROOT = "/var/lib/moorage/build"
REGISTRIES_FILE = "registries.json"
DEFAULT_TIMEOUT = 300.0
POLL_SECONDS = 0.5
HTTP_TIMEOUT = 10.0

EXAMPLES = """\
  moor registry deploy                          10Gi on the roomiest node, NodePort 30500
  moor registry deploy --storage 50Gi --node node-2
  moor registry status                          address, node, size, used, images
  moor push registry.cluster.local:5000/web:1   then, with no flags: pods can run it"""


def add_commands(sub, add_globals) -> None:
    cmd = sub.add_parser(
        "registry", help="run the cluster's private registry (registry.cluster.local:5000)",
        description="A registry on the cluster: images named registry.cluster.local:5000/... "
        "push to it from this machine and pull from it on every node.",
        epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(cmd, suppress=True)
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    act = actions.add_parser(
        "deploy", help="deploy or update the registry",
        description="Build the registry's image (Debian's docker-registry), load it into its "
        "node, apply a StatefulSet of one with a persistent claim and a NodePort Service, "
        "wait until it answers, and point this machine's registries.json at it.")
    add_globals(act, suppress=True)
    act.add_argument("--storage", default=ro.DEFAULT_STORAGE, metavar="SIZE",
                     help=f"the claim's size (default {ro.DEFAULT_STORAGE})")
    act.add_argument("--node-port", type=int, default=ro.DEFAULT_NODE_PORT, metavar="PORT",
                     help=f"the NodePort on every node (default {ro.DEFAULT_NODE_PORT})")
    act.add_argument("-n", "--namespace", default=ro.NAMESPACE, metavar="NS",
                     help=f"(default {ro.NAMESPACE})")
    act.add_argument("--node", default="", metavar="NODE",
                     help="the node to run on (default: where its data is, else the Ready "
                     "node with the most room for local volumes)")
    act.add_argument("--image-archive", metavar="FILE",
                     help="a `docker save` archive of the registry image to use instead of "
                     "building it")
    act.add_argument("--root", metavar="DIR", help="the build machine's root (default: "
                     f"${BUILD_ROOT_ENV} or {DEFAULT_BUILD_ROOT})")
    act.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help=f"how long to wait for the registry to answer (default "
                     f"{DEFAULT_TIMEOUT:g})")
    act = actions.add_parser("status", help="show the registry's address, node, size and "
                             "images", description="Where the registry runs, its claim's size "
                             "and use, and the repositories and tags it holds.")
    add_globals(act, suppress=True)
    act.add_argument("-n", "--namespace", default=ro.NAMESPACE, metavar="NS",
                     help=f"(default {ro.NAMESPACE})")


# ---- reading the cluster ----

def _kind(name: str):
    from moorage.model import kinds

    return kinds.BY_NAME[name]


def _get(client, kind: str, namespace: str, name: str):
    """The object, or None when it does not exist."""
    try:
        return client.get(_kind(kind), namespace, name)
    except CliError as err:
        if err.reason == "NotFound":
            return None
        raise


def _nodes(client) -> list:
    from moorage.model import kinds

    return [kinds.unwrap(o) for o in client.list(_kind("Node")).items]


def current_node(client, namespace: str) -> str:
    """Where the registry's data is: its claim's volume's node, else the node the deployed
    StatefulSet names; "" when it has neither."""
    from moorage.model import storage

    claim = _get(client, "PersistentVolumeClaim", namespace, ro.claim_name())
    if claim is not None and claim.spec.volume_name:
        pv = _get(client, "PersistentVolume", "", claim.spec.volume_name)
        if pv is not None and storage.pv_node(pv):
            return storage.pv_node(pv)
    sts = _get(client, "StatefulSet", namespace, ro.NAME)
    if sts is not None:
        return sts.spec.template.spec.node_selector.get(ro.HOSTNAME_LABEL, "")
    return ""


def node_ip(nodes, name: str) -> str:
    node = next((n for n in nodes if n.metadata.name == name), None)
    ip = next((a.address for a in node.status.addresses if a.type == "InternalIP"), "") \
        if node is not None else ""
    if not ip:
        raise CliError(f"error: node {name} reports no InternalIP address")
    return ip


# ---- the image ----

def registry_version(binary: str = ro.BINARY) -> str:
    """`docker-registry --version` -> "2.8.2+ds1" (its last word)."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=30)
    except OSError as err:
        raise CliError(f"error: {binary}: {err.strerror or err}: install Debian's "
                       "docker-registry package (apt-get install docker-registry), or pass "
                       "--image-archive") from None
    words = done.stdout.split()
    if done.returncode != 0 or not words:
        raise CliError(f"error: {binary} --version failed: {done.stderr.strip()}")
    return words[-1]


def make_context(directory: str) -> None:
    """The registry image's build context (registryobjects.context_files) in `directory`."""
    texts = ro.context_texts()
    for rel, source in ro.context_files().items():
        dest = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not source:
            with open(dest, "w") as f:
                f.write(texts[rel])
            continue
        try:
            shutil.copy2(os.path.realpath(source), dest)
        except OSError as err:
            raise CliError(f"error: {source}: {err.strerror or err} (the registry image is "
                           "built from it)") from None


def _builder(argv: list[str], root: str | None) -> None:
    cmd = [sys.executable, "-m", "builder", *argv] + (["--root", root] if root else [])
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise CliError(done.stderr.strip() or f"error: {' '.join(argv[:1])} failed")


def build_image(ref: str, tmp: str, root: str | None) -> str:
    """Builds `ref` with the builder and saves it; the archive's path."""
    context = os.path.join(tmp, "context")
    os.mkdir(context)
    make_context(context)
    _builder(["build", "-q", "-t", ref, context], root)
    archive = os.path.join(tmp, "registry.tar")
    _builder(["save", "-o", archive, ref], root)
    return archive


def _loaded_ref(loaded: list[str], wanted: str) -> str:
    repo = ro.IMAGE_REPOSITORY
    if wanted in loaded:
        return wanted
    return next((r for r in loaded if r.startswith(repo + ":")), loaded[0] if loaded else "")


# ---- deploy ----

def _wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        found, last = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise CliError(f"error: timed out after {timeout:g}s waiting for {what}"
                           + (f" ({last})" if last else ""))
        time.sleep(POLL_SECONDS)


def _pod_ready(client, namespace: str, image: str):
    pod = _get(client, "Pod", namespace, ro.pod_name())
    if pod is None:
        return False, "no pod yet"
    if pod.metadata.deletion_timestamp or not pod.spec.containers or \
            pod.spec.containers[0].image != image:
        return False, "the previous pod is still there"
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    unscheduled = [c.message for c in pod.status.conditions
                   if c.type == "PodScheduled" and c.status == "False" and c.message]
    if unscheduled:
        return False, unscheduled[0]
    waiting = [f"{c.reason}: {c.message}".strip(": ") for c in pod.status.container_statuses
               if c.reason and c.state != "running"]
    return ready, "; ".join(waiting) or pod.status.phase or "Pending"


def http_json(url: str) -> tuple[object, dict]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        return json.loads(resp.read(16 << 20) or b"null"), dict(resp.headers)


def _answers(url: str):
    try:
        http_json(url + "/v2/")
        return True, ""
    except (urllib.error.URLError, OSError, ValueError) as err:
        return False, str(getattr(err, "reason", err))


def build_root(root: str | None) -> str:
    return os.path.abspath(root or os.environ.get(BUILD_ROOT_ENV) or DEFAULT_BUILD_ROOT)


def write_registries(root: str, node_address: str, node_port: int) -> str:
    from moorage.fsutil import write_atomic

    path = os.path.join(root, REGISTRIES_FILE)
    try:
        with open(path) as f:
            current = json.load(f)
    except FileNotFoundError:
        current = {}
    except (OSError, ValueError) as err:
        raise CliError(f"error: {path}: cannot read it: {err}") from None
    if not isinstance(current, dict):
        raise CliError(f"error: {path}: not a JSON object")
    os.makedirs(root, exist_ok=True)
    doc = ro.registries_json(current, node_address, node_port)
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def deploy(ctx: Context) -> int:
    from moorage.model import quantities
    from moorage.v1 import api_pb2

    args, client = ctx.args, ctx.client()
    try:
        quantities.memory_bytes(args.storage)
    except quantities.QuantityError as err:
        raise CliError(f"error: --storage {args.storage!r}: {err}") from None
    nodes = _nodes(client)
    try:
        node = ro.pick_node(nodes, args.node, current_node(client, args.namespace))
    except ValueError as err:
        raise CliError(f"error: {err}") from None
    with tempfile.TemporaryDirectory(prefix="moor-registry-") as tmp:
        if args.image_archive:
            archive, wanted = args.image_archive, ""
        else:
            wanted = ro.image_ref(ro.image_tag(registry_version()))
            out(f"building {wanted}")
            archive = build_image(wanted, tmp, args.root)
        [result] = imageload.load(client, archive, [node])
    if result.error:
        raise CliError(f"error: loading the registry image into node {node}: {result.error}")
    image = _loaded_ref(result.images, wanted)
    if not image:
        raise CliError(f"error: the archive loaded into node {node} held no image")
    out(f"{node}: {imageload.LOADED}{image}")
    settings = ro.Settings(node=node, storage=args.storage, node_port=args.node_port,
                           namespace=args.namespace, image=image)
    manifests = [api_pb2.Manifest(source="moor registry deploy", index=i,
                                  content=json.dumps(obj))
                 for i, obj in enumerate(ro.objects(settings))]
    for r in client.apply(manifests).results:
        out(f"{r.kind.lower()}/{r.name} {r.action}")
    _wait(f"pod {args.namespace}/{ro.pod_name()} to be Ready",
          lambda: _pod_ready(client, args.namespace, image), args.timeout)
    address = node_ip(nodes, node)
    url = f"http://{address}:{args.node_port}"
    _wait(f"the registry to answer at {url}", lambda: _answers(url), args.timeout)
    svc = _get(client, "Service", args.namespace, ro.NAME)
    cluster_ip = svc.spec.cluster_ip if svc is not None else ""
    path = write_registries(build_root(args.root), address, args.node_port)
    out(f"{CLUSTER_REGISTRY} runs as {args.namespace}/{ro.pod_name()} on node {node}")
    out(f"  nodes pull through its Service: http://{cluster_ip}:{ro.PORT} (plain HTTP, "
        "inside the cluster)")
    out(f"  this machine pushes to {url} (in {path})")
    return 0


# ---- status ----

def catalog(url: str) -> list[tuple[str, list[str]]]:
    """Every repository of the registry at `url` with its tags (following `Link: next`)."""
    repos: list[str] = []
    next_url = f"{url}/v2/_catalog?n=1000"
    while next_url:
        doc, headers = http_json(next_url)
        repos += list((doc or {}).get("repositories") or [])
        link = headers.get("Link", "")
        next_url = ""
        if 'rel="next"' in link and "<" in link:
            next_url = urllib.parse.urljoin(url, link[link.index("<") + 1:link.index(">")])
    out_ = []
    for repo in repos:
        try:
            doc, _ = http_json(f"{url}/v2/{repo}/tags/list")
            tags = sorted((doc or {}).get("tags") or [])
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
            tags = []
        out_.append((repo, tags))
    return out_


def status(ctx: Context) -> int:
    from moorage.cli.volumes import human_bytes
    from moorage.model import storage

    args, client = ctx.args, ctx.client()
    ns = args.namespace
    svc = _get(client, "Service", ns, ro.NAME)
    sts = _get(client, "StatefulSet", ns, ro.NAME)
    if svc is None and sts is None:
        raise CliError(f"error: no registry in namespace {ns} (deploy one with `moor registry "
                       "deploy`)")
    node = current_node(client, ns)
    pod = _get(client, "Pod", ns, ro.pod_name())
    claim = _get(client, "PersistentVolumeClaim", ns, ro.claim_name())
    ready = pod is not None and any(c.type == "Ready" and c.status == "True"
                                    for c in pod.status.conditions)
    node_port = next((p.node_port for p in svc.spec.ports), 0) if svc is not None else 0
    address = ""
    if node:
        try:
            address = node_ip(_nodes(client), node)
        except CliError:
            address = ""
    url = f"http://{address}:{node_port}" if address and node_port else ""
    rows = [("Registry:", CLUSTER_REGISTRY),
            ("Nodes pull:", f"http://{svc.spec.cluster_ip}:{ro.PORT} (Service {ns}/{ro.NAME}, "
             "plain HTTP)" if svc is not None else "-"),
            ("This machine:", f"{url} (NodePort {node_port} on node {node})" if url else "-"),
            ("Node:", node or "-"),
            ("Pod:", f"{ro.pod_name()} {'Ready' if ready else 'not Ready'}"
             if pod is not None else "-")]
    if claim is not None:
        size = claim.status.capacity.get("storage") or \
            claim.spec.resources.requests.get("storage", "")
        used = human_bytes(claim.status.used_bytes) if claim.status.phase == "Bound" else "-"
        rows.append(("Claim:", f"{ro.claim_name()} {claim.status.phase or 'Pending'}, size "
                     f"{size} ({storage.requested_bytes_of({'storage': size})} bytes), used "
                     f"{used} ({claim.status.used_bytes} bytes)"))
    else:
        rows.append(("Claim:", "-"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out(f"{k.ljust(width)}  {v}")
    if not url:
        return 0 if ready else 1
    try:
        repos = catalog(url)
    except (urllib.error.URLError, OSError, ValueError) as err:
        out(f"Images:    cannot list them at {url}: {getattr(err, 'reason', err)}")
        return 1
    out("")
    table = [("REPOSITORY", "TAGS")] + [(r, ",".join(t) or "<none>") for r, t in repos]
    col = max(len(r) for r, _ in table)
    for r, t in table:
        out(f"{r.ljust(col)}   {t}")
    return 0 if ready else 1


def registry(ctx: Context) -> int:
    return {"deploy": deploy, "status": status}[ctx.args.action](ctx)


HANDLERS = {"registry": registry}
