"""`moor-agent`: the node agent. `run` keeps this node's pods running; the other commands look
at and manage the node's images and containers directly, as `crictl` does for a kubelet.

`run --join HOST:PORT` runs the pods a control plane assigns to this node (see session.py);
`run --pod-manifests DIR` runs the pods described in DIR (as the kubelet's static pods): add a
file and its pod starts, change it and its containers restart, remove it and the pod goes.
Containers outlive the agent: stopping or killing `moor-agent run` leaves them running, and the
next `run` adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable

from moorage import manifest
from moorage.model.jointoken import TokenError
from moorage.v1 import objects_pb2 as pb
from nodeagent import metrics, sandbox
from nodeagent.dns import ClusterDNS
from nodeagent.identity import (
    IdentityError,
    NodeIdentity,
    join,
    keep_renewed,
    secure_channel_factory,
)
from nodeagent.netagent import AgentNetwork
from nodeagent.podio import PodIO
from nodeagent.podmanager import STATIC_SOURCE_ANNOTATION, PodManager, Wakeup
from nodeagent.podworker import UID_CHARS, PodWorker, parse_container_id
from nodeagent.prober import EventFn, Prober
from nodeagent.runtime.images.registry import Progress, RegistryConfig, RegistryError
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.logs import follow
from nodeagent.runtime.runtime import Runtime
from nodeagent.session import (
    Checkpoints,
    Session,
    StatusReporter,
    parse_labels,
    read_host_facts,
)

log = logging.getLogger("moorage.agent")

DEFAULT_STATE_DIR = "/var/lib/moorage/agent"


class AgentError(Exception):
    """A one-line error for the operator."""


def registry_config(mirrors: list[str], insecure: list[str]) -> RegistryConfig:
    table: dict[str, list[str]] = {}
    for item in mirrors:
        registry, sep, url = item.partition("=")
        if not sep or not registry or not url:
            raise AgentError(f"--registry-mirror {item!r}: want REGISTRY=URL, e.g. "
                             "docker.io=http://10.0.0.5:5000")
        table.setdefault(registry, []).append(url)
    try:
        return RegistryConfig(mirrors=table, insecure=frozenset(insecure))
    except RegistryError as err:
        raise AgentError(str(err)) from None


class Node:
    """The agent's stores, all under one state dir."""

    def __init__(self, state_dir: str, cgroup_root: str = "moorage"):
        self.state_dir = state_dir
        self.images = Store(os.path.join(state_dir, "images"))
        self.runtime = Runtime(os.path.join(state_dir, "containers"), cgroup_root=cgroup_root)


def static_pods(directory: str) -> dict[str, pb.Pod]:
    """The Pods in a manifest dir, keyed by namespace/name, with stable uids from their names.

    A file that does not validate is logged and skipped, so one bad file never stops the others.
    """
    pods: dict[str, pb.Pod] = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml", ".json")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                docs = manifest.parse([(path, f.read())])
        except (OSError, manifest.ManifestError) as err:
            log.error("skipping %s: %s", path, err)
            continue
        for doc in docs:
            if not isinstance(doc.obj, pb.Pod):
                log.error("skipping %s: only Pods run from a manifest dir", doc.where)
                continue
            pod = doc.obj
            pod.metadata.annotations[STATIC_SOURCE_ANNOTATION] = "file"
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            pod.metadata.uid = str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))
            pods[key] = pod
    return pods


def run(node: Node, desired: Callable[[], dict[str, pb.Pod]], registry: RegistryConfig,
        stop: threading.Event, netns_prefix: str = "moorage-",
        report: Callable[[pb.Pod, pb.PodStatus], None] | None = None,
        removed: Callable[[pb.Pod], None] | None = None,
        wake: Wakeup | None = None, network=None,
        event: EventFn | None = None,
        confirm: Callable[[pb.Pod], None] | None = None,
        removal_grace: Callable[[pb.Pod], int | None] = lambda pod: None) -> None:
    """Keeps the pods `desired()` returns (keyed by uid) running until `stop` is set.

    `report` gets each pod's status after every sync, `removed` each pod once torn down,
    `confirm` each pod being deleted once its containers have all stopped (the control plane
    then removes it); `removal_grace` says how long a pod that vanished from `desired()`
    without a graceful deletion gets (None: its own grace). `wake` (set along with `stop`)
    ends the wait between passes early, e.g. when assignments arrive or a probe's verdict
    changes; `event` records pod Events (Session.event). Pods run side by side
    (nodeagent/podmanager.py).
    """
    wake = wake or Wakeup()
    prober = Prober(node.runtime, wake=wake.poke, event=event)

    def make_worker(pod: pb.Pod) -> PodWorker:
        return PodWorker(pod, node.runtime, node.images, registry, netns_prefix=netns_prefix,
                         network=network, prober=prober, event=event)

    manager = PodManager(make_worker, wake, report=report, removed=removed, confirm=confirm,
                         removal_grace=removal_grace)
    try:
        while not stop.is_set():
            poked = wake.take()
            want = desired()
            if network is not None:
                network.apply({uid: sandbox.sandbox_name(uid, netns_prefix)
                               for uid in set(want) | manager.uids()})
            delay = manager.step(want, poked)
            wake.wait(delay)
    finally:
        manager.close()
        prober.close()


def is_static(pod: pb.Pod) -> bool:
    return pod.metadata.annotations.get(STATIC_SOURCE_ANNOTATION) == "file"


def _name(pod: pb.Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def static_source(directory: str) -> Callable[[], dict[str, pb.Pod]]:
    return lambda: {p.metadata.uid: p for p in static_pods(directory).values()}


# ---- joined to a control plane ----

TOKEN_ENV = "MOOR_JOIN_TOKEN"


def join_token(args) -> str:
    """The join token from --token, --token-file or $MOOR_JOIN_TOKEN, in that order; "" for
    none. A token on the command line works but is visible to every user in `ps`."""
    if args.token:
        log.warning("--token is visible to every user of this host (ps, /proc/*/cmdline); use "
                    "--token-file FILE or the %s environment variable instead", TOKEN_ENV)
        return args.token.strip()
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as err:
            raise AgentError(f"--token-file {args.token_file}: cannot read it: "
                             f"{err.strerror or err}") from None
        if not token:
            raise AgentError(f"--token-file {args.token_file}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip()


def running_uids(node: Node, known: Callable[[], list[str]]) -> list[str]:
    """Of the pod uids we know, those with a running container in the runtime."""
    prefixes = set()
    for info in node.runtime.list():
        parsed = parse_container_id(info.id)
        if parsed and info.status.state == "running":
            prefixes.add(parsed[0])
    return [uid for uid in known() if uid.replace("-", "")[:UID_CHARS] in prefixes]


def run_joined(node: Node, args, registry: RegistryConfig, stop: threading.Event,
               wake: threading.Event) -> None:
    """Runs a Session in a thread of its own (asyncio) while this thread syncs pods."""
    try:
        labels = parse_labels(args.labels or "")
    except ValueError as err:
        raise AgentError(str(err)) from None
    node_name = args.node_name or socket.gethostname().lower()
    try:
        ident = NodeIdentity.load_or_create(node.state_dir, node_name)
        if not ident.joined:
            token = join_token(args)
            if not token:
                raise AgentError(f"node {node_name!r} has not joined a cluster yet: pass "
                                 "--token-file FILE or set MOOR_JOIN_TOKEN (make a token with "
                                 "`moor token create`)")
            log.info("joining %s as node %s", args.join, node_name)
            join(ident, args.join, token)
            log.info("joined: certificate for node %s saved under %s", node_name, ident.pki_dir)
    except (IdentityError, TokenError) as err:
        raise AgentError(str(err)) from None
    facts = read_host_facts(args.advertise_address)
    checkpoints = Checkpoints(node.state_dir)
    session = Session(args.join, node_name, facts,
                      labels=labels, desired=checkpoints.load(),
                      on_assignments=lambda pods: (checkpoints.save(pods), wake.set()),
                      channel_factory=secure_channel_factory(ident),
                      replicas_file=os.path.join(node.state_dir, "control-planes"))
    session.running_pod_uids = lambda: running_uids(node, lambda: list(session.desired))
    podio = PodIO(node.runtime, session)
    session.on_open_stream, session.on_stats = podio.open_stream, podio.stats
    # Consumers of the service table (service rules, DNS): each gets every table as it comes.
    service_consumers: list[Callable] = []
    session.on_services = lambda table: [consume(table) for consume in service_consumers]
    network = None
    if args.pod_network == "overlay":
        network = AgentNetwork(node.state_dir, facts.internal_ip, wake=wake.set)
        session.on_network, session.on_peers = network.configure, network.set_peers
        session.on_net_check = lambda req: asyncio.to_thread(network.check)
        # Cluster DNS on the bridge gateway, the nameserver in every overlay pod's resolv.conf.
        dns = ClusterDNS()
        service_consumers.append(dns.update)
        dns.serve_when(lambda: network.net.gateway if network.ready else None, stop)
        # Service VIPs and NodePorts as one nftables table (nodeagent/services.py).
        from nodeagent.services import ServiceProxy, node_context

        proxy = ServiceProxy(lambda: node_context(network, facts.internal_ip))
        service_consumers.append(proxy.update)
        proxy.start(stop)
    reporter = StatusReporter(session, facts.internal_ip)
    static = static_source(args.pod_manifests) if args.pod_manifests else dict
    if args.metrics_listen:
        metrics.serve(args.metrics_listen, metrics.AgentCollector(
            node.runtime, lambda: {**static(), **session.desired}, node_name, node.state_dir))

    def removed(pod: pb.Pod) -> None:
        reporter.forget(pod.metadata.uid)
        if pod.metadata.uid not in session.desired:
            checkpoints.drop(pod.metadata.uid)

    loop = asyncio.new_event_loop()
    astop = asyncio.Event()

    async def session_main() -> None:
        await asyncio.gather(session.run(astop),
                             keep_renewed(ident, lambda: session.channel, astop, log))

    thread = threading.Thread(target=loop.run_until_complete, args=(session_main(),),
                              name="session", daemon=True)
    thread.start()
    log.info("connecting to %s as node %s", args.join, session.node_name)
    try:
        # A session pod that left the assignments without a graceful deletion was removed
        # from the API (a force delete, or evicted from this node while it was away): its
        # replacement may run already, so it is killed at once.
        run(node, lambda: {**static(), **session.desired}, registry, stop,
            netns_prefix=args.netns_prefix, report=reporter, removed=removed, wake=wake,
            event=session.event, network=network, confirm=session.pod_terminated,
            removal_grace=lambda pod: None if is_static(pod) else 0)
    finally:
        loop.call_soon_threadsafe(astop.set)
        thread.join(5)


# ---- crictl-like commands ----

def _progress_printer(out=sys.stderr):
    seen: dict[str, tuple[int, int]] = {}

    def show(p: Progress) -> None:
        seen[p.digest] = (p.done, p.total)
        done = sum(d for d, _ in seen.values())
        total = sum(t for _, t in seen.values())
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        out.write(f"\r{pct}  {done / 2**20:7.1f} / {total / 2**20:.1f} MiB  "
                  f"({len(seen)} layers)")
        out.flush()
    return show


def cmd_pull(node: Node, args) -> int:
    show = _progress_printer() if sys.stderr.isatty() or args.progress else None
    image = node.images.pull(args.image, registry_config(args.registry_mirror,
                                                         args.insecure_registry), show)
    if show:
        sys.stderr.write("\n")
    print(f"{image.reference} {image.manifest_digest}")
    return 0


def cmd_images(node: Node, args) -> int:
    rows = [("IMAGE", "DIGEST", "LAYERS")]
    rows += [(i.reference, i.manifest_digest[:19], str(len(i.layer_digests)))
             for i in node.images.list()]
    _table(rows)
    return 0


def cmd_ps(node: Node, args) -> int:
    rows = [("CONTAINER", "NAME", "ATTEMPT", "STATE", "EXIT", "REASON")]
    for info in node.runtime.list():
        parsed = parse_container_id(info.id)
        st = info.status
        rows.append((info.id, parsed[1] if parsed else "-", str(parsed[2]) if parsed else "-",
                     st.state, "" if st.exit_code is None else str(st.exit_code), st.reason))
    _table(rows)
    return 0


def cmd_logs(node: Node, args) -> int:
    path = os.path.join(node.runtime.state_dir, args.container, "container.log")
    if not os.path.exists(path):
        raise AgentError(f"container {args.container!r} has no logs here "
                         f"(see `moor-agent ps --state-dir {node.state_dir}`)")
    done = (lambda: node.runtime.status(args.container).state != "running") \
        if args.follow else (lambda: True)
    for line in follow(path, done=done):
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        sys.stdout.flush()
    return 0


def cmd_exec(node: Node, args) -> int:
    proc = node.runtime.exec(args.container, args.argv, stdout=None, stderr=None,
                             stdin=sys.stdin if args.stdin else None)
    return proc.wait()


def cmd_gc(node: Node, args) -> int:
    in_use = [d for info in node.runtime.list()
              for d in node.runtime.spec(info.id).lower_dirs]
    freed = node.images.gc(args.keep, in_use_layer_dirs=in_use)
    print(f"freed {freed / 2**20:.1f} MiB")
    return 0


def _table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="moor-agent", description="The Moorage node agent: runs this node's pods, and "
        "shows and manages its images and containers.")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR")
    p.add_argument("--cgroup-root", default="moorage", metavar="NAME",
                   help="parent cgroup of this agent's containers (default moorage)")
    p.add_argument("--netns-prefix", default="moorage-", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def registry_flags(sp):
        sp.add_argument("--registry-mirror", action="append", default=[],
                        metavar="REGISTRY=URL",
                        help="try URL before REGISTRY, e.g. docker.io=http://10.0.0.5:5000")
        sp.add_argument("--insecure-registry", action="append", default=[],
                        metavar="HOST:PORT", help="allow plain HTTP to this registry only")

    sp = sub.add_parser("run", help="keep this node's pods running",
                        description="Runs static pods (--pod-manifests), the pods a control "
                        "plane assigns (--join), or both.")
    sp.add_argument("--pod-manifests", metavar="DIR",
                    help="run the Pods described in DIR (static pods)")
    sp.add_argument("--join", metavar="HOST:PORT",
                    help="join the control plane at HOST:PORT and run the pods it assigns")
    sp.add_argument("--node-name", metavar="NAME",
                    help="this node's name (default: the hostname, lowercased)")
    sp.add_argument("--advertise-address", metavar="IP",
                    help="this node's InternalIP (default: the address of the default route)")
    sp.add_argument("--labels", metavar="K=V,...", help="labels for this node")
    sp.add_argument("--pod-network", choices=["overlay", "none"], default="overlay",
                    help="overlay (default): pods get an address from this node's subnet on the "
                    "cluster's VXLAN overlay; none: pods have only loopback (several agents "
                    "sharing one network namespace, as in tests)")
    sp.add_argument("--token-file", metavar="FILE",
                    help="a file holding the join token from `moor token create` (or set "
                    f"{TOKEN_ENV}); needed only the first time (the node's certificate is "
                    "kept under STATE_DIR/pki)")
    sp.add_argument("--token", metavar="TOKEN",
                    help="the join token itself (works, but every user of the host sees it "
                    "in `ps`: prefer --token-file)")
    sp.add_argument("--metrics-listen", default=metrics.DEFAULT_METRICS_LISTEN,
                    metavar="HOST:PORT", help="serve Prometheus /metrics here (default "
                    f"{metrics.DEFAULT_METRICS_LISTEN}, the kubelet's read-only port; '' "
                    "disables)")
    registry_flags(sp)
    sp = sub.add_parser("pull", help="pull an image, showing progress")
    sp.add_argument("image")
    sp.add_argument("--progress", action="store_true", help="show progress even without a TTY")
    registry_flags(sp)
    sp = sub.add_parser("import", help="import a `docker save` tarball or an OCI layout")
    sp.add_argument("path")
    sub.add_parser("images", help="list images")
    sub.add_parser("ps", help="list containers")
    sp = sub.add_parser("logs", help="print a container's log")
    sp.add_argument("container")
    sp.add_argument("-f", "--follow", action="store_true")
    sp = sub.add_parser("exec", help="run a command in a running container")
    sp.add_argument("-i", "--stdin", action="store_true")
    sp.add_argument("container")
    sp.add_argument("argv", nargs="+", metavar="COMMAND")
    sp = sub.add_parser("gc", help="remove images not kept and layers no container uses")
    sp.add_argument("--keep", action="append", default=[], metavar="IMAGE")
    return p.parse_args(_implicit_run(sys.argv[1:] if argv is None else list(argv)))


_RUN_OPTIONS = ("--join", "--pod-manifests")
_GLOBAL_OPTIONS = ("--state-dir", "--cgroup-root", "--netns-prefix", "--log-level")
_COMMANDS = ("run", "pull", "import", "images", "ps", "logs", "exec", "gc")


def _implicit_run(argv: list[str]) -> list[str]:
    """`moor-agent --join H:P --token T ...` means `moor-agent run --join ...`: the daemon
    form operators know from other agents. `run` goes before the first of its own options."""
    if any(a in _COMMANDS for a in argv) or not any(
            a.split("=", 1)[0] in _RUN_OPTIONS for a in argv):
        return argv
    front, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.split("=", 1)[0] in _GLOBAL_OPTIONS:
            take = 1 if "=" in a else 2
            front += argv[i:i + take]
            i += take
        else:
            rest.append(a)
            i += 1
    return [*front, "run", *rest]


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = Node(args.state_dir, cgroup_root=args.cgroup_root)
    try:
        if args.command == "run":
            if not args.pod_manifests and not args.join:
                raise AgentError("run: give --pod-manifests DIR, --join HOST:PORT, or both")
            stop, wake = threading.Event(), Wakeup()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: (stop.set(), wake.set()))
            registry = registry_config(args.registry_mirror, args.insecure_registry)
            if args.join:
                run_joined(node, args, registry, stop, wake)
            else:
                source = static_source(args.pod_manifests)
                if args.metrics_listen:
                    metrics.serve(args.metrics_listen, metrics.AgentCollector(
                        node.runtime, source, args.node_name or socket.gethostname().lower(),
                        node.state_dir))
                run(node, source, registry, stop, netns_prefix=args.netns_prefix, wake=wake)
            sys.exit(0)
        if args.command == "import":
            for image in node.images.import_archive(args.path):
                print(f"{image.reference} {image.manifest_digest}")
            sys.exit(0)
        handlers = {"pull": cmd_pull, "images": cmd_images, "ps": cmd_ps, "logs": cmd_logs,
                    "exec": cmd_exec, "gc": cmd_gc}
        sys.exit(handlers[args.command](node, args))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - one line for the operator, never a traceback
        if os.environ.get("MOOR_DEBUG"):
            raise
        print(f"moor-agent: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
