"""The agent as a daemon: the node's stores, the pods it runs (from a manifest dir, as static
pods, or as a control plane assigns them), and the wiring of session, pods, network, streams
and metrics for `moor-agent run`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from moorage import manifest
from moorage.model.configs import references
from moorage.model.jointoken import TokenError
from moorage.v1 import objects_pb2 as pb
from nodeagent.metrics import collector as metrics
from nodeagent.network.agent import AgentNetwork
from nodeagent.network.dns import ClusterDNS
from nodeagent.network.services import ServiceProxy, node_context
from nodeagent.pods import sandbox
from nodeagent.pods.configstore import ConfigStore
from nodeagent.pods.manager import STATIC_SOURCE_ANNOTATION, PodManager, Wakeup
from nodeagent.pods.prober import EventFn, Prober
from nodeagent.pods.volumes import HostPolicy
from nodeagent.pods.worker import UID_CHARS, PodWorker, parse_container_id
from nodeagent.runtime.images.registry import RegistryConfig, RegistryError
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.syscalls import LibcSyscalls
from nodeagent.session.checkpoints import Checkpoints
from nodeagent.session.hostfacts import parse_labels, read_host_facts
from nodeagent.session.identity import (
    IdentityError,
    NodeIdentity,
    join,
    keep_renewed,
    secure_channel_factory,
)
from nodeagent.session.registries import NodeRegistries
from nodeagent.session.reporting import StatusReporter
from nodeagent.session.stream import Session
from nodeagent.storage import hostpath
from nodeagent.storage.localvolumes import LocalVolumes
from nodeagent.storage.reporting import StorageLoop, fill_hello
from nodeagent.streams.server import StreamServer

log = logging.getLogger("moorage.agent")


# A session message may carry many pods, or ConfigMaps and Secrets of up to 1 MiB each (the
# control plane splits those into messages of at most CONFIG_MESSAGE_BYTES).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


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
        # Each pod's configMap and secret volumes, on a tmpfs of the pod's own (its other
        # volumes beside it, see pods/volumes.py disk_root_for).
        self.volumes_root = os.path.join(state_dir, "volumes")
        # The local persistent volumes bound to this node (storage/localvolumes.py).
        self.local_volumes_root = os.path.join(state_dir, "local-volumes")


def host_policy(node: Node, args) -> HostPolicy:
    """--allowed-host-paths, checked."""
    try:
        allowed = hostpath.parse_allowed(getattr(args, "allowed_host_paths", "") or "")
    except ValueError as err:
        raise AgentError(str(err)) from None
    return HostPolicy(allowed, os.path.abspath(node.state_dir))


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


def run(node: Node, desired: Callable[[], dict[str, pb.Pod]],
        registry: RegistryConfig | Callable[[], RegistryConfig],
        stop: threading.Event, netns_prefix: str = "moorage-",
        report: Callable[[pb.Pod, pb.PodStatus], None] | None = None,
        removed: Callable[[pb.Pod], None] | None = None,
        wake: Wakeup | None = None, network=None,
        event: EventFn | None = None,
        confirm: Callable[[pb.Pod], None] | None = None,
        removal_grace: Callable[[pb.Pod], int | None] = lambda pod: None,
        configs: ConfigStore | None = None, host_paths: HostPolicy | None = None,
        local_volumes: LocalVolumes | None = None) -> None:
    """Keeps the pods `desired()` returns (keyed by uid) running until `stop` is set.

    `report` gets each pod's status after every sync, `removed` each pod once torn down,
    `confirm` each pod being deleted once its containers have all stopped (the control plane
    then removes it); `removal_grace` says how long a pod that vanished from `desired()`
    without a graceful deletion gets (None: its own grace). `wake` (set along with `stop`)
    ends the wait between passes early, e.g. when assignments arrive or a probe's verdict
    changes; `event` records pod Events (Session.event); `configs` holds the ConfigMaps and
    Secrets the pods use; `host_paths` what hostPath volumes may mount; `local_volumes` the
    node's persistent volumes. Pods run side by side (nodeagent/pods/manager.py).
    """
    wake = wake or Wakeup()
    prober = Prober(node.runtime, wake=wake.poke, event=event)

    sandboxes = sandbox.Sandboxes(LibcSyscalls())
    configs = configs or ConfigStore()

    def make_worker(pod: pb.Pod) -> PodWorker:
        return PodWorker(pod, node.runtime, node.images, registry, netns_prefix=netns_prefix,
                         network=network, prober=prober, event=event, sandboxes=sandboxes,
                         configs=configs, volumes_root=node.volumes_root,
                         host_paths=host_paths or HostPolicy(state_dir=node.state_dir),
                         local_volumes=local_volumes)

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


def _identity(node: Node, args, node_name: str) -> NodeIdentity:
    """The node's certificate, joining the cluster with the token the first time."""
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
    return ident


def _network(node: Node, args, session: Session, facts, wake, stop: threading.Event):
    """The pod network, cluster DNS and service rules, fed by the session; None for
    --pod-network none."""
    # Consumers of the service table (service rules, DNS): each gets every table as it comes.
    consumers: list[Callable] = []
    session.on_services = lambda table: [consume(table) for consume in consumers]
    if args.pod_network != "overlay":
        return None
    network = AgentNetwork(node.state_dir, facts.internal_ip, wake=wake.set)
    session.on_network, session.on_peers = network.configure, network.set_peers
    session.on_net_check = lambda req: asyncio.to_thread(network.check)
    # Cluster DNS on the bridge gateway, the nameserver in every overlay pod's resolv.conf.
    dns = ClusterDNS()
    consumers.append(dns.update)
    dns.serve_when(lambda: network.net.gateway if network.ready else None, stop)
    # Service VIPs and NodePorts as one nftables table (nodeagent/network/services.py).
    proxy = ServiceProxy(lambda: node_context(network, facts.internal_ip))
    consumers.append(proxy.update)
    proxy.start(stop)
    return network


def _take_config(configs: ConfigStore, msg, session: Session, wake: Wakeup) -> None:
    """Keeps the ConfigMaps and Secrets the session sent; the pods using a changed one get a
    pass now (their volumes are rewritten, held containers retried)."""
    changed = configs.apply(msg)
    for uid, pod in list(session.desired.items()):
        ns = pod.metadata.namespace
        if any((r.kind, ns, r.name) in changed for r in references(pod.spec)):
            wake.poke(uid)


def _take_volumes(volumes: LocalVolumes, msg, session: Session, wake: Wakeup,
                  loop: StorageLoop) -> None:
    """Keeps the local volumes the session sent; the pods using a changed claim get a pass
    now (a container waiting for its claim starts), and the storage loop acts on it."""
    changed = volumes.apply(msg)
    loop.kick()
    for uid, pod in list(session.desired.items()):
        ns = pod.metadata.namespace
        if any(v.HasField("persistent_volume_claim") and
               (ns, v.persistent_volume_claim.claim_name) in changed for v in pod.spec.volumes):
            wake.poke(uid)


def run_joined(node: Node, args, registry: RegistryConfig, stop: threading.Event,
               wake: Wakeup) -> None:
    """Runs a Session in a thread of its own (asyncio) while this thread syncs pods."""
    try:
        labels = parse_labels(args.labels or "")
    except ValueError as err:
        raise AgentError(str(err)) from None
    node_name = args.node_name or socket.gethostname().lower()
    ident = _identity(node, args, node_name)
    facts = read_host_facts(args.advertise_address)
    checkpoints = Checkpoints(node.state_dir)
    session = Session(args.join, node_name, facts,
                      labels=labels, desired=checkpoints.load(),
                      on_assignments=lambda pods: (checkpoints.save(pods), wake.set()),
                      channel_factory=secure_channel_factory(ident, options=[
                          ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]),
                      replicas_file=os.path.join(node.state_dir, "control-planes"))
    session.running_pod_uids = lambda: running_uids(node, lambda: list(session.desired))
    streams = StreamServer(node.runtime, session, images=node.images)
    session.on_open_stream, session.on_stats = streams.open_stream, streams.stats
    network = _network(node, args, session, facts, wake, stop)
    configs = ConfigStore()
    session.on_config = lambda msg: _take_config(configs, msg, session, wake)
    # The cluster's registry aliases (registry.cluster.local:5000 -> its Service) over the
    # node's own settings; pod workers read the current merge at each pull.
    registries = NodeRegistries(registry)
    session.on_registries = registries.apply
    host_paths = host_policy(node, args)
    local_volumes = LocalVolumes(node.local_volumes_root, LibcSyscalls())
    storage = StorageLoop(local_volumes, session.volume_report, lambda: session.generation)
    session.on_volumes = lambda msg: _take_volumes(local_volumes, msg, session, wake, storage)
    session.on_hello = lambda hello: fill_hello(hello, node.state_dir, host_paths.allowed)
    storage.start(stop)
    reporter = StatusReporter(session, facts.internal_ip)
    static = static_source(args.pod_manifests) if args.pod_manifests else dict
    if args.metrics_listen:
        metrics.serve(args.metrics_listen, metrics.AgentCollector(
            node.runtime, lambda: {**static(), **session.desired}, node_name, node.state_dir,
            volumes=local_volumes))

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
        run(node, lambda: {**static(), **session.desired}, registries, stop,
            netns_prefix=args.netns_prefix, report=reporter, removed=removed, wake=wake,
            event=session.event, network=network, confirm=session.pod_terminated,
            removal_grace=lambda pod: None if is_static(pod) else 0, configs=configs,
            host_paths=host_paths, local_volumes=local_volumes)
    finally:
        loop.call_soon_threadsafe(astop.set)
        thread.join(5)
