"""Simulated hosts for overlay tests and benchmarks, as root, built with `moor lab`'s host
plumbing (moorage/lab/hosts.py): one network namespace per host, each on a veth to a bridge.
Unlike `moor lab`, the bridge sits in an "underlay" namespace of its own, so no firewall of
this machine sees the hosts' traffic and a test can listen "outside the cluster" there. Every
name carries the test mark ("moortest").

`Lab.call(host, fn, ...)` runs `fn` in a forked child that has entered the host's namespace,
the way the agent runs in its host's, and returns its (pickled) result.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import traceback
import uuid

from pyroute2 import netns
from pyroute2.netns import setns

from moorage.lab import hosts as lab_hosts
from nodeagent.network.datapath import NetConfig, NodeNetwork, Peer

TEST_MARK = "moortest"
UNDERLAY = lab_hosts.Underlay.parse("10.213.0.0/24", 9)
UNDERLAY_GATEWAY = UNDERLAY.gateway


def call_in_netns(name: str, fn, *args, **kwargs):
    """Runs fn(*args, **kwargs) in a child inside netns `name`; re-raises its error here."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            setns(name, flags=0)
            try:
                payload = ("ok", fn(*args, **kwargs))
            except BaseException as err:
                payload = ("err", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            with os.fdopen(wfd, "wb") as w:
                pickle.dump(payload, w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child in netns {name} died without an answer")
    status, value = pickle.loads(data)
    if status == "err":
        raise RuntimeError(f"in netns {name}: {value}")
    return value


def node_call(cfg: NetConfig, method: str, *args):
    """In the current netns: NodeNetwork(cfg).<method>(*args)."""
    with NodeNetwork(cfg) as net:
        return getattr(net, method)(*args)


def in_node(fn, cfg: NetConfig, *args):
    with NodeNetwork(cfg) as net:
        return fn(net, *args)


class Lab:
    def __init__(self, hosts: int, tag: str = "", mtu: int = 1500):
        # "moortest" with no dash after it: agent tests clean up every "moortest-*" netns,
        # and would pull these from under a running test; the leftover check still sees them.
        self.name = f"{TEST_MARK}net{tag}{uuid.uuid4().hex[:6]}"
        self.tag = self.name + "-"
        self.underlay = self.tag + "ul"
        self.hosts = [lab_hosts.host_netns(self.name, i) for i in range(1, hosts + 1)]
        self.configs = [NetConfig(pod_cidr=f"10.244.{i}.0/24", underlay_ip=UNDERLAY.host_ip(i))
                        for i in range(1, hosts + 1)]
        self.procs: list[subprocess.Popen] = []
        self.mtu = mtu   # of the underlay: bridge and veths

    @property
    def peers(self) -> list[Peer]:
        return [Peer(h, c.underlay_ip, c.pod_cidr) for h, c in zip(self.hosts, self.configs)]

    def build(self) -> Lab:
        bridge = lab_hosts.bridge_name(self.name)
        lab_hosts.create_netns(self.underlay)
        lab_hosts.create_bridge(bridge, UNDERLAY, netns=self.underlay, mtu=self.mtu)
        for i, (host, cfg) in enumerate(zip(self.hosts, self.configs), 1):
            lab_hosts.create_netns(host)
            lab_hosts.plug_host(host, lab_hosts.veth_name(self.name, i), bridge, cfg.underlay_ip,
                            UNDERLAY, bridge_netns=self.underlay, mtu=self.mtu)
        return self

    def call(self, host: int, fn, *args, **kwargs):
        return call_in_netns(self.hosts[host], fn, *args, **kwargs)

    def node(self, host: int, method: str, *args):
        return self.call(host, node_call, self.configs[host], method, *args)

    def pod_netns(self, name: str) -> str:
        pod = f"{self.tag}{name}"
        lab_hosts.create_netns(pod)
        return pod

    def exec(self, ns: str, *cmd: str, timeout: float = 20, check: bool = True,
             input: str | None = None):
        return subprocess.run(lab_hosts.in_netns(ns, list(cmd)), capture_output=True, text=True,
                              timeout=timeout, check=check, input=input)

    def spawn(self, ns: str, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(lab_hosts.in_netns(ns, list(cmd)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        # The hosts' and pods' namespaces, then the underlay's, which takes the bridge and the
        # veths with it.
        for name in sorted(netns.listnetns(), key=lambda n: n == self.underlay):
            if name.startswith(self.tag):
                netns.remove(name)

    def __enter__(self) -> Lab:
        try:
            return self.build()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
