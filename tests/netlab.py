"""Simulated hosts for overlay tests and benchmarks, as root: one network namespace per host,
joined by veths to a bridge in an "underlay" namespace, all named with the test mark ("moortest").

`Lab.call(host, fn, ...)` runs `fn` in a forked child that has entered the host's namespace,
the way the agent runs in its host's, and returns its (pickled) result.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import traceback
import uuid

from pyroute2 import IPRoute, netns
from pyroute2.netns import setns

from nodeagent.network.datapath import NetConfig, NodeNetwork, Peer

TEST_MARK = "moortest"
UNDERLAY_NET = "10.213.0"
UNDERLAY_GATEWAY = f"{UNDERLAY_NET}.1"
UNDERLAY_IFNAME = "ul0"


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
        self.tag = f"{TEST_MARK}net{tag}{uuid.uuid4().hex[:6]}-"
        self.underlay = self.tag + "ul"
        self.hosts = [f"{self.tag}h{i}" for i in range(1, hosts + 1)]
        self.configs = [NetConfig(pod_cidr=f"10.244.{i}.0/24",
                                  underlay_ip=f"{UNDERLAY_NET}.{10 + i}")
                        for i in range(1, hosts + 1)]
        self.procs: list[subprocess.Popen] = []
        self.mtu = mtu   # of the underlay: bridge and veths

    @property
    def peers(self) -> list[Peer]:
        return [Peer(h, c.underlay_ip, c.pod_cidr) for h, c in zip(self.hosts, self.configs)]

    def build(self) -> Lab:
        netns.create(self.underlay)
        with IPRoute(netns=self.underlay, flags=0) as ul:
            ul.link("set", index=ul.link_lookup(ifname="lo")[0], state="up")
            ul.link("add", ifname="br0", kind="bridge", mtu=self.mtu)
            br = ul.link_lookup(ifname="br0")[0]
            ul.addr("add", index=br, address=UNDERLAY_GATEWAY, prefixlen=24)
            ul.link("set", index=br, state="up")
            for i, (host, cfg) in enumerate(zip(self.hosts, self.configs), 1):
                netns.create(host)
                ul.link("add", ifname=f"h{i}", kind="veth", mtu=self.mtu,
                        peer={"ifname": UNDERLAY_IFNAME, "net_ns_fd": host, "mtu": self.mtu})
                port = ul.link_lookup(ifname=f"h{i}")[0]
                ul.link("set", index=port, master=br, state="up")
                with IPRoute(netns=host, flags=0) as h:
                    h.link("set", index=h.link_lookup(ifname="lo")[0], state="up")
                    idx = h.link_lookup(ifname=UNDERLAY_IFNAME)[0]
                    h.addr("add", index=idx, address=cfg.underlay_ip, prefixlen=24)
                    h.link("set", index=idx, state="up")
        return self

    def call(self, host: int, fn, *args, **kwargs):
        return call_in_netns(self.hosts[host], fn, *args, **kwargs)

    def node(self, host: int, method: str, *args):
        return self.call(host, node_call, self.configs[host], method, *args)

    def pod_netns(self, name: str) -> str:
        pod = f"{self.tag}{name}"
        netns.create(pod)
        return pod

    def exec(self, ns: str, *cmd: str, timeout: float = 20, check: bool = True):
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def spawn(self, ns: str, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in netns.listnetns():
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
