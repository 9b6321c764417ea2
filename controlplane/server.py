"""`moor-controlplane`: serves the Cluster API over grpc.aio, backed by etcd.

Without --etcd-endpoints it starts and owns a local etcd under its state dir. It serves the gRPC
health service and Prometheus metrics, and shuts down gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import sys
import uuid

# The local etcd is started (forked) again while gRPC's threads run; gRPC's fork handlers are
# of no use to a child that execs etcd at once, and only log a complaint. Off before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from controlplane import inventory
from controlplane.allocators.serviceips import ServiceCIDRError, parse_service_cidr
from controlplane.allocators.subnets import IPAMError, parse_cluster
from controlplane.api.bootstrap import BootstrapServicer
from controlplane.api.cluster import ClusterServicer
from controlplane.api.errors import EtcdErrors
from controlplane.api.images import ImagesServicer
from controlplane.api.network import NetworkServicer
from controlplane.api.pods import PodsServicer
from controlplane.controllers.deployments import DeploymentController
from controlplane.controllers.namespace import NamespaceController
from controlplane.controllers.nodes import EVICTION_SECONDS, STARTUP_GRACE_SECONDS, NodeLifecycle
from controlplane.controllers.statefulsets import StatefulSetController
from controlplane.controllers.volumes import VolumeController
from controlplane.dispatcher.assignments import AssignmentIndex
from controlplane.dispatcher.sessions import (
    HEARTBEAT_SECONDS,
    NOT_READY_SECONDS,
    DispatcherServicer,
    NetworkDefaults,
)
from controlplane.dispatcher.streams import PodStreams
from controlplane.ha import replicas
from controlplane.ha.leader import DEFAULT_TTL, MIN_TTL, Election, run_while_leader
from controlplane.identity import CAError, join_server_credentials, server_credentials
from controlplane.identity.shared import load_cluster_ca
from controlplane.metrics import LOCAL_ETCD_RESTARTS
from controlplane.scheduler import BINPACK, SPREAD, SchedulerConfig
from controlplane.scheduler.binder import Scheduler
from controlplane.store import AlreadyExists, Store, StoreError
from controlplane.store.local import EtcdLost, LocalEtcd, supervise
from controlplane.store.sealing import KEY_FILE, Sealer, SealError
from moorage import metricsserver
from moorage.model import hostport, kinds
from moorage.model.network import (
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_SERVICE_CIDR,
    DEFAULT_VXLAN_PORT,
    DEFAULT_VXLAN_VNI,
)
from moorage.v1 import agent_pb2_grpc, api_pb2_grpc
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger("moorage.controlplane")

DEFAULT_LISTEN = "127.0.0.1:7440"
DEFAULT_METRICS = "127.0.0.1:7441"
# Above the API's own apply cap, so an oversized apply gets our clear error, not gRPC's.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="moor-controlplane",
        description="Run a Moorage control plane: the Cluster API over gRPC, state in etcd.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"gRPC address to serve (default {DEFAULT_LISTEN})")
    p.add_argument("--state-dir", default="/var/lib/moorage/controlplane", metavar="DIR",
                   help="where the local etcd, the cluster CA (pki/) and the admin credential "
                        "(admin.pem) are kept")
    p.add_argument("--secrets-key-file", default="", metavar="FILE",
                   help="the keys that seal Secrets in etcd (default: secrets.key in the state "
                   "dir, made on first start); every replica needs the same file")
    p.add_argument("--etcd-endpoints", default="", metavar="URL,...",
                   help="external etcd, e.g. http://10.0.0.5:2379; default: a local etcd")
    p.add_argument("--advertise-address", default="", metavar="HOST:PORT",
                   help="the API address agents reach this replica at, told to every agent "
                        "so it can move to another replica when its own goes (default: "
                        "--listen, unless that is a wildcard address)")
    p.add_argument("--join-listen", default="", metavar="HOST:PORT",
                   help="TLS address where agents without a certificate join with a token "
                        "(default: the --listen host, port + 2)")
    p.add_argument("--ca-listen", default="", metavar="HOST:PORT",
                   help="plaintext address that serves only the CA certificate, which joining "
                        "agents pin against their token (default: the --listen host, port + 3; "
                        "agents look for it there)")
    p.add_argument("--tls-san", action="append", default=[], metavar="NAME|IP",
                   help="another name or address clients use for this control plane, added to "
                        "its serving certificate (repeatable)")
    p.add_argument("--node-cert-validity", type=float, default=30 * 86400,
                   help=argparse.SUPPRESS)
    p.add_argument("--metrics-listen", default=DEFAULT_METRICS, metavar="HOST:PORT",
                   help=f"Prometheus /metrics address (default {DEFAULT_METRICS}; '' disables)")
    p.add_argument("--scheduler", action=argparse.BooleanOptionalAction, default=True,
                   help="run the scheduler in this process (default: yes)")
    p.add_argument("--controllers", action=argparse.BooleanOptionalAction, default=None,
                   help="run the Deployment controller in this process (default: as --scheduler)")
    p.add_argument("--scheduler-strategy", choices=[SPREAD, BINPACK], default=SPREAD,
                   help="spread pods over nodes (default) or bin-pack them onto few nodes")
    p.add_argument("--node-lifecycle", action=argparse.BooleanOptionalAction, default=True,
                   help="mark nodes that stop heartbeating NotReady and replace their pods "
                        "(default: yes)")
    p.add_argument("--heartbeat-period", type=float, default=HEARTBEAT_SECONDS, metavar="S",
                   help=f"how often agents heartbeat (default {HEARTBEAT_SECONDS:g}s)")
    p.add_argument("--node-not-ready-after", type=int, default=NOT_READY_SECONDS, metavar="S",
                   help="a node without a heartbeat for this long goes NotReady "
                        f"(default {NOT_READY_SECONDS}s)")
    p.add_argument("--pod-eviction-after", type=float, default=EVICTION_SECONDS, metavar="S",
                   help="a NotReady node's pods are deleted, to be replaced elsewhere, after "
                        f"this long (default {EVICTION_SECONDS:g}s)")
    p.add_argument("--cluster-cidr", default=DEFAULT_CLUSTER_CIDR, metavar="CIDR",
                   help="pod addresses; each node leases a /24 of it "
                        f"(default {DEFAULT_CLUSTER_CIDR})")
    p.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR, metavar="CIDR",
                   help="Services' virtual IPs are leased from it "
                        f"(default {DEFAULT_SERVICE_CIDR})")
    p.add_argument("--vxlan-vni", type=int, default=DEFAULT_VXLAN_VNI, metavar="N",
                   help=f"VXLAN network identifier of the overlay (default {DEFAULT_VXLAN_VNI})")
    p.add_argument("--vxlan-port", type=int, default=DEFAULT_VXLAN_PORT, metavar="PORT",
                   help="UDP port of the overlay's VXLAN traffic "
                        f"(default {DEFAULT_VXLAN_PORT})")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="run the scheduler, controllers and node lifecycle only while this "
                        "replica holds the etcd leader lease, so several replicas can share "
                        "one etcd (default: yes)")
    p.add_argument("--leader-lease-ttl", type=int, default=DEFAULT_TTL, metavar="S",
                   help="a dead leader is replaced after this long (default "
                        f"{DEFAULT_TTL}s; at least {MIN_TTL}s)")
    p.add_argument("--replica-name", default="", metavar="NAME",
                   help="this replica's name in the leader key and the moorage_leader metric "
                        "(default: HOSTNAME-PID)")
    p.add_argument("--eviction-startup-grace", type=float, default=STARTUP_GRACE_SECONDS,
                   help=argparse.SUPPRESS)
    p.add_argument("--etcd-prefix", default="/moorage", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def split_hostport(address: str) -> tuple[str, int]:
    try:
        return hostport.split(address)
    except hostport.HostPortError as err:
        raise SystemExit(f"moor-controlplane: {err}") from None


def derived_address(listen: str, offset: int) -> str:
    """The join and CA listeners' default: same host as --listen, port + offset."""
    host, port = split_hostport(listen)
    return hostport.join(host, port + offset)


def certificate_hosts(listen: str, extra: list[str]) -> list[str]:
    """Names and addresses for the serving certificate: what clients may dial."""
    host = split_hostport(listen)[0]
    hosts = {"127.0.0.1", "::1", "localhost", socket.gethostname(), *extra}
    if host in ("", "0.0.0.0", "::"):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            hosts.update(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr())
    else:
        hosts.add(host)
    return sorted(h for h in hosts if h)


def _endpoint(url: str) -> tuple[str, int]:
    try:
        host, port = hostport.split(url.split("://", 1)[-1].rstrip("/"))
    except hostport.HostPortError:
        host = ""
    if not host:
        raise SystemExit(f"moor-controlplane: --etcd-endpoints: {url!r} is not HOST:PORT or a URL")
    return host, port


ETCD_PROBE_SECONDS = 1.0


async def probe_etcd(store: Store) -> None:
    """Asks etcd for its revision every second, so its health (the gRPC health service, the
    `moorage_etcd_up` gauge, the log) follows an outage and the recovery even while idle."""
    while True:
        try:
            await store.revision()
        except StoreError:
            pass   # recorded by the store's health
        await asyncio.sleep(ETCD_PROBE_SECONDS)


async def ensure_namespaces(store: Store) -> None:
    from moorage.model.timestamps import now_rfc3339

    for name in kinds.SYSTEM_NAMESPACES:
        ns = pb.Namespace(api_version="v1", kind="Namespace")
        ns.metadata.name = name
        ns.metadata.creation_timestamp = now_rfc3339()
        ns.metadata.uid = str(uuid.uuid4())
        ns.metadata.generation = 1
        ns.status.phase = "Active"
        try:
            await store.create(ns)
        except AlreadyExists:
            pass


async def ensure_storage_class(store: Store) -> None:
    """The built-in default class (`local`), made when absent (like the system namespaces);
    an operator's changes to it are kept."""
    from moorage.model import storage
    from moorage.model.timestamps import now_rfc3339

    sc = storage.default_class()
    sc.metadata.creation_timestamp = now_rfc3339()
    sc.metadata.uid = str(uuid.uuid4())
    sc.metadata.generation = 1
    try:
        await store.create(sc)
    except AlreadyExists:
        pass


async def _open_store(args: argparse.Namespace) -> tuple[Store, LocalEtcd | None]:
    """The store, on --etcd-endpoints or on a local etcd this process starts and owns."""
    sealer = _sealer(args)
    etcd = None
    if args.etcd_endpoints:
        host, port = _endpoint(args.etcd_endpoints.split(",")[0])
    else:
        os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
        etcd = LocalEtcd(os.path.join(args.state_dir, "etcd"))
        await asyncio.to_thread(etcd.start)
        host, port = etcd.host, etcd.client_port
        log.info("local etcd serving on %s", etcd.endpoint)
    return Store.connect(host, port, prefix=args.etcd_prefix, sealer=sealer), etcd


def _sealer(args: argparse.Namespace) -> Sealer:
    """The secrets key file: --secrets-key-file must exist; the default one is made."""
    if args.secrets_key_file:
        return Sealer.load(args.secrets_key_file)
    os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
    return Sealer.load(os.path.join(args.state_dir, KEY_FILE), create=True)


def _servicers(args, store: Store, ca, server, join_listen: str, scheduler_config):
    """Every service on the one gRPC server; (dispatcher, assignments, health)."""
    api_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(
        store, scheduler_config, ca, service_cidr=args.service_cidr), server)
    agent_pb2_grpc.add_BootstrapServicer_to_server(BootstrapServicer(
        store, ca, split_hostport(join_listen)[1],
        dt.timedelta(seconds=args.node_cert_validity)), server)
    assignments = AssignmentIndex(store)
    dispatcher = DispatcherServicer(
        store, assignments, args.heartbeat_period, args.node_not_ready_after,
        ca_cert=ca.cert, network=NetworkDefaults(args.cluster_cidr, args.vxlan_vni,
                                                  args.vxlan_port))
    dispatcher.replica_address = replicas.advertised(args.listen, args.advertise_address)
    agent_pb2_grpc.add_DispatcherServicer_to_server(dispatcher, server)
    dispatcher.streams = PodStreams(store, dispatcher)
    api_pb2_grpc.add_PodsServicer_to_server(
        PodsServicer(store, dispatcher.streams, ca_cert=ca.cert), server)
    api_pb2_grpc.add_ImagesServicer_to_server(
        ImagesServicer(store, dispatcher.streams, ca_cert=ca.cert), server)
    api_pb2_grpc.add_NetworkServicer_to_server(
        NetworkServicer(store, dispatcher.streams, ca_cert=ca.cert), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return dispatcher, assignments, health


def _listen(server, listeners) -> bool:
    for address, creds in listeners:
        try:
            if creds is None:
                server.add_insecure_port(address)
            else:
                server.add_secure_port(address, creds)
        except RuntimeError as err:
            log.error("cannot listen on %s: %s", address, err)
            return False
    return True


def _leader_tasks(args, scheduler_config):
    def tasks(store: Store) -> list:
        # Built afresh on every election, so a new term starts from etcd, not old caches.
        out = []
        if args.node_lifecycle:
            out.append(NodeLifecycle(
                store, eviction_seconds=args.pod_eviction_after,
                startup_grace_seconds=args.eviction_startup_grace).run())
        if args.scheduler:
            out.append(Scheduler(store, scheduler_config).run())
        if args.scheduler if args.controllers is None else args.controllers:
            out.append(DeploymentController(store).run())
            out.append(StatefulSetController(store).run())
            out.append(NamespaceController(store).run())
            out.append(VolumeController(store).run())
        return out
    return tasks


def _etcd_health(health):
    def state(up: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if up
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", "moorage.v1.Cluster"):
            asyncio.get_running_loop().create_task(health.set(service, status))
    return state


def _background(args, store: Store, etcd, dispatcher, assignments,
                scheduler_config) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(assignments.run()),
             asyncio.create_task(dispatcher.peers.run()),
             asyncio.create_task(dispatcher.services.run()),
             asyncio.create_task(dispatcher.configs.run()),
             asyncio.create_task(dispatcher.volumes.run()),
             asyncio.create_task(inventory.count_forever(store)),
             asyncio.create_task(probe_etcd(store))]
    if etcd is not None:
        tasks.append(asyncio.create_task(supervise(etcd, log,
                                                   on_restart=LOCAL_ETCD_RESTARTS.inc)))
    if dispatcher.replica_address:
        tasks.append(asyncio.create_task(
            replicas.advertise_forever(store, dispatcher.replica_address)))
    leader_tasks = _leader_tasks(args, scheduler_config)
    if args.leader_elect and (args.node_lifecycle or args.scheduler or args.controllers):
        election = Election(store, name=args.replica_name or None, ttl=args.leader_lease_ttl)
        tasks.append(asyncio.create_task(run_while_leader(election, leader_tasks)))
    else:
        tasks += [asyncio.create_task(t) for t in leader_tasks(store)]
    return tasks


async def _run_until_stopped(background: list[asyncio.Task]) -> int:
    """Waits for SIGTERM/SIGINT or a failed background task; the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0

    def failed(task: asyncio.Task) -> None:
        # A dead scheduler must not leave a control plane that looks healthy: exit non-zero,
        # so that systemd restarts it.
        nonlocal exit_code
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            if isinstance(err, EtcdLost):
                log.error("%s", err)
                print(f"moor-controlplane: {err}", file=sys.stderr, flush=True)
            else:
                log.error("background task failed: %r", err, exc_info=err)
            exit_code = 1
            stop.set()

    for task in background:
        task.add_done_callback(failed)
    await stop.wait()
    log.info("shutting down")
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    return exit_code


async def serve(args: argparse.Namespace) -> int:
    store, etcd = await _open_store(args)
    try:
        await ensure_namespaces(store)
        await ensure_storage_class(store)
        os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
        try:
            ca = await load_cluster_ca(store, args.state_dir)
            cert, key = ca.server_cert(certificate_hosts(args.listen, args.tls_san))
        except CAError as err:
            log.error("%s", err)
            return 1
        admin_path = ca.admin_credentials()
        join_listen = args.join_listen or derived_address(args.listen, 2)
        ca_listen = args.ca_listen or derived_address(args.listen, 3)
        server = grpc.aio.server(interceptors=[EtcdErrors()], options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        scheduler_config = SchedulerConfig(strategy=args.scheduler_strategy)
        dispatcher, assignments, health = _servicers(args, store, ca, server, join_listen,
                                                     scheduler_config)
        if not _listen(server, [(args.listen, server_credentials(ca, cert, key)),
                                (join_listen, join_server_credentials(cert, key)),
                                (ca_listen, None)]):
            return 1
        if args.metrics_listen:
            mhost, mport = split_hostport(args.metrics_listen)
            metricsserver.start(mport, addr=mhost or "0.0.0.0")
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        await health.set("moorage.v1.Cluster", health_pb2.HealthCheckResponse.SERVING)
        log.info("serving the Cluster API on %s (mTLS), joins on %s, the CA on %s",
                 args.listen, join_listen, ca_listen)
        print(f"moor-controlplane: serving on {args.listen}; admin credentials in {admin_path}",
              flush=True)
        store.health.listeners.append(_etcd_health(health))
        exit_code = await _run_until_stopped(_background(
            args, store, etcd, dispatcher, assignments, scheduler_config))
        await health.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        return exit_code
    finally:
        await store.close()
        if etcd is not None:
            await asyncio.to_thread(etcd.stop)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        parse_cluster(args.cluster_cidr, 24)
    except IPAMError as err:
        sys.exit(f"moor-controlplane: --cluster-cidr: {err}")
    try:
        parse_service_cidr(args.service_cidr)
    except ServiceCIDRError as err:
        sys.exit(f"moor-controlplane: --service-cidr: {err}")
    if not 0 < args.vxlan_vni < 2**24:
        sys.exit("moor-controlplane: --vxlan-vni must be between 1 and 16777215")
    if not 0 < args.vxlan_port < 65536:
        sys.exit("moor-controlplane: --vxlan-port must be a UDP port (1-65535)")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(asyncio.run(serve(args)))
    except (RuntimeError, SealError) as err:  # etcd failed to start, no secrets key, ...
        print(f"moor-controlplane: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
