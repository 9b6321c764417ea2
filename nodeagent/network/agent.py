"""The agent's side of the overlay: what the session says (this node's subnet, the VXLAN
settings, the peer list) applied to the kernel by the sync thread, pod IPs handed out and
plugged in, and the doctor's check on request.

Netlink work happens under one lock: the sync thread applies changes and plugs pods in; the
session thread only records what it heard (`configure`, `set_peers`) and wakes the sync loop,
so a slow kernel never stalls heartbeats.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

from moorage.fsutil import write_atomic
from moorage.model.network import DEFAULT_CLUSTER_CIDR, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI
from moorage.v1 import agent_pb2, api_pb2
from nodeagent.network.datapath import NetConfig, NetworkError, NodeNetwork
from nodeagent.network.ipam import PodIPAM
from nodeagent.network.overlay import Peer

log = logging.getLogger("moorage.agent.network")

# Besides every change, the kernel is checked against the desired state this often (drift).
RECONCILE_SECONDS = 30.0


class AgentNetwork:
    def __init__(self, state_dir: str, underlay_ip: str, wake: Callable[[], None] = lambda: None,
                 clock=time.monotonic):
        self.state_dir = os.path.join(state_dir, "network")
        self.underlay_ip = underlay_ip
        self.wake = wake
        self.clock = clock
        self.lock = threading.RLock()
        self._settings: agent_pb2.NetworkSettings | None = None
        self._peers: list[Peer] | None = None
        self._applied: tuple | None = None           # (settings bytes, peers) last applied
        self._next_reconcile = 0.0
        self.net: NodeNetwork | None = None
        self.ipam: PodIPAM | None = None
        # The last settings heard, kept so a restarted agent plugs its pods in at once, with
        # the same subnet, before its session is back (pods never flap to Pending).
        self._settings_path = os.path.join(self.state_dir, "settings.pb")
        try:
            with open(self._settings_path, "rb") as f:
                self._settings = agent_pb2.NetworkSettings.FromString(f.read())
        except (OSError, DecodeError):
            pass

    # ---- from the session thread ----

    def configure(self, settings: agent_pb2.NetworkSettings) -> None:
        if not settings.pod_cidr:
            return
        with self.lock:
            if settings != self._settings:
                os.makedirs(self.state_dir, exist_ok=True)
                write_atomic(self._settings_path, settings.SerializeToString())
            self._settings = settings
        self.wake()

    def set_peers(self, peers: agent_pb2.Peers) -> None:
        with self.lock:
            self._peers = [Peer(p.name, p.underlay_ip, p.pod_cidr) for p in peers.peers]
        self.wake()

    # ---- from the sync thread ----

    @property
    def ready(self) -> bool:
        return self.net is not None

    def apply(self, pods: dict[str, str]) -> None:
        """Brings the kernel to what the session last said; `pods` maps uid -> netns name
        (used to drop the veths of pods that are gone, on a full reconcile)."""
        with self.lock:
            settings, peers = self._settings, self._peers
            if settings is None:
                return
            key = (settings.SerializeToString(deterministic=True), tuple(peers or ()))
            due = self.clock() >= self._next_reconcile
            if key == self._applied and not due:
                return
            if self.net is None or self.net.config.pod_cidr != settings.pod_cidr:
                self._start(settings)
            try:
                if due and peers is not None:
                    fixes = self.net.reconcile(peers, pods)
                    self._next_reconcile = self.clock() + RECONCILE_SECONDS
                else:
                    fixes = self.net.setup() + (self.net.set_peers(peers) if peers is not None
                                                else [])
            except (NetworkError, OSError) as err:
                log.error("pod network: %s", err)
                return
            for fix in fixes:
                log.info("pod network: %s", fix)
            self._applied = key

    def _start(self, settings: agent_pb2.NetworkSettings) -> None:
        if self.net is not None:
            self.net.close()
        self.net = NodeNetwork(NetConfig(
            pod_cidr=settings.pod_cidr, underlay_ip=self.underlay_ip,
            cluster_cidr=settings.cluster_cidr or DEFAULT_CLUSTER_CIDR,
            vni=settings.vxlan_vni or DEFAULT_VXLAN_VNI,
            port=settings.vxlan_port or DEFAULT_VXLAN_PORT))
        os.makedirs(self.state_dir, exist_ok=True)
        self.ipam = PodIPAM(self.state_dir, settings.pod_cidr)
        self._next_reconcile = 0.0
        log.info("pod network: subnet %s on %s, VXLAN %d/udp %d", settings.pod_cidr,
                 self.underlay_ip, settings.vxlan_vni, settings.vxlan_port)

    def attach(self, netns_name: str, pod_uid: str) -> str:
        """The pod's IP, plugged into its netns; NetworkError while the overlay is not set up."""
        with self.lock:
            if self.net is None:
                raise NetworkError("the pod network is not set up yet (waiting for the node's "
                                   "subnet from the control plane)")
            ip = self.ipam.allocate(pod_uid)
            self.net.attach_pod(netns_name, pod_uid, ip)
            return ip

    def detach(self, pod_uid: str) -> None:
        with self.lock:
            if self.net is None:
                return
            self.net.detach_pod(pod_uid)
            self.ipam.release(pod_uid)

    # ---- from the session thread, in a worker thread ----

    def check(self) -> agent_pb2.NetCheckReport:
        from nodeagent.network.doctor import diagnose

        with self.lock:
            if self.net is None:
                return agent_pb2.NetCheckReport(findings=[api_pb2.NetFinding(
                    severity="error", kind="not-configured",
                    message="the pod network is not set up yet")])
            findings = diagnose(self.net, self._peers or [])
        return agent_pb2.NetCheckReport(findings=[
            api_pb2.NetFinding(severity=f.severity, kind=f.kind, message=f.message)
            for f in findings])

    def close(self) -> None:
        with self.lock:
            if self.net is not None:
                self.net.close()
