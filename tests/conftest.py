"""Shared fixtures: a real etcd per session, a store per test under its own key prefix, and a
session-end check that fails the run if anything named with the test prefix is left behind."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import uuid

import aetcd
import pytest

from controlplane.store import Store
from controlplane.store.local import LocalEtcd, stop_process
from tests.dockerref import docker_engine  # noqa: F401 - the session's reference dockerd

# Everything a test creates (temp dirs, netns, links, cgroups) carries this in its name, so the
# session-end check can find leftovers.
TEST_PREFIX = "moortest-"


def unique(name: str = "") -> str:
    return f"{TEST_PREFIX}{name}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def etcd_endpoint():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-")
    etcd = LocalEtcd(tmp).start()
    yield etcd.endpoint
    etcd.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tmp_state():
    path = tempfile.mkdtemp(prefix=TEST_PREFIX)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def etcd_client(endpoint: str) -> aetcd.Client:
    host, port = endpoint.rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=10)


@pytest.fixture
def store_factory(etcd_endpoint):
    """Makes Stores under a fresh key prefix, closed at the end (use inside asyncio.run)."""
    prefix = "/" + unique()

    async def make() -> Store:
        client = etcd_client(etcd_endpoint)
        await client.connect()
        return Store(client, prefix=prefix)

    yield make


def run(coro):
    return asyncio.run(coro)


# ---- leftovers ----

def _leftovers() -> list[str]:
    # Without the dash: lab names (moortestab12-h1) and kernel link names are too short for it.
    mark = TEST_PREFIX.rstrip("-")
    found = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in cmd:
            found.append(f"process {pid}: {cmd[:120]}")
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found += [f"netns {line.split()[0]}" for line in out.splitlines() if mark in line]
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += [f"link {line.split(':')[1].strip()}" for line in out.splitlines()
                  if mark in line]
    except FileNotFoundError:
        pass
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if mark in line]
    # Loop devices (emptyDir sizeLimit and local volume images) whose image is a test's.
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(backing) as f:
                file = f.read().strip()
        except OSError:
            continue
        if mark in file:
            found.append(f"loop /dev/{backing.split('/')[3]}: {file}")
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if mark in d:
                found.append(f"cgroup {os.path.join(root, d)}")
        if root.count("/") > 6:
            dirs[:] = []
    return found


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        # Skips guard runs without root or packages; CI has both, so a skip there hides a test.
        if reporter:
            reporter.write_line(f"{skipped} tests were skipped under CI; CI must run them all",
                                red=True)
        session.exitstatus = 1
    left = _leftovers()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "tests left these behind:\n  " + "\n  ".join(left)
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = 1


# ---- a real control plane process ----

class ControlPlane:
    def __init__(self, address: str, metrics: str, prefix: str, etcd: str, proc,
                 state_dir: str = "", ca_address: str = ""):
        self.address, self.metrics, self.prefix, self.etcd, self.proc = (
            address, metrics, prefix, etcd, proc)
        self.state_dir = state_dir
        self.ca_address = ca_address
        # The admin credential the control plane wrote: what `moor` and the tests present.
        self.credentials = os.path.join(state_dir, "admin.pem")

    def channel(self):
        import grpc

        from moorage.credentials import channel_credentials

        return grpc.secure_channel(self.address, channel_credentials(self.credentials))

    def aio_channel(self):
        import grpc

        from moorage.credentials import channel_credentials

        return grpc.aio.secure_channel(self.address, channel_credentials(self.credentials))

    def stub(self):
        from moorage.v1 import api_pb2_grpc

        return api_pb2_grpc.ClusterStub(self.channel())

    def env(self, **extra) -> dict[str, str]:
        """The environment for running `moor` against this control plane as admin."""
        env = dict(os.environ, MOOR_SERVER=self.address, MOOR_CREDENTIALS=self.credentials,
                   MOOR_CONFIG=os.path.join(self.state_dir, "no-config.yaml"))
        env.update(extra)
        return env

    def token(self, ttl: float = 3600) -> str:
        from moorage.v1 import api_pb2

        return self.stub().CreateToken(api_pb2.CreateTokenRequest(ttl_seconds=int(ttl))).token

    def node_credentials(self, node_name: str, state_dir: str):
        """mTLS channel credentials of a node, signed directly by this cluster's CA (what a
        join would give it)."""
        from controlplane.identity import ClusterCA
        from nodeagent.session.identity import NodeIdentity

        ca = ClusterCA.load_or_create(self.state_dir)
        ident = NodeIdentity.load_or_create(state_dir, node_name)
        ident.save(ca.sign_node_csr(ident.csr_pem(), node_name), ca.cert_pem)
        return ident.channel_credentials()

    def snapshot(self) -> list[tuple[bytes, bytes, int]]:
        """Every key under this control plane's prefix with its value and mod_revision, but
        the replicas' own address records (kept alive on a lease in the background, and
        written again whenever a refresh is missed: not cluster state)."""
        live = (self.prefix + "/control-planes/").encode()

        async def read():
            client = etcd_client(self.etcd)
            try:
                resp = await client.get_prefix(self.prefix.encode() + b"/")
                return [(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs
                        if not kv.key.startswith(live)]
            finally:
                await client.close()
        return asyncio.run(read())


def start_controlplane(etcd: str, state_dir: str, prefix: str | None = None,
                       extra_args: tuple[str, ...] = ()) -> ControlPlane:
    import sys
    import time

    import grpc

    from controlplane.store.local import free_port_block
    from moorage.v1 import agent_pb2, agent_pb2_grpc

    prefix = prefix or "/" + unique("cp-")
    # The defaults' layout: API, metrics, join, CA on consecutive ports (agents find the CA
    # listener at the API port + 3).
    port = free_port_block(4)
    mport, jport, cport = port + 1, port + 2, port + 3
    # Its log goes to a file: a pipe nobody reads fills up and freezes a chatty server.
    os.makedirs(state_dir, exist_ok=True)
    log_path = os.path.join(state_dir, "controlplane.log")
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; closed when this returns
    # etcd "" means the control plane's own local etcd, under its state dir.
    store_args = ("--etcd-endpoints", f"http://{etcd}", "--etcd-prefix", prefix) if etcd \
        else ()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.server", "--listen", f"127.0.0.1:{port}",
         "--join-listen", f"127.0.0.1:{jport}", "--ca-listen", f"127.0.0.1:{cport}",
         "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", state_dir,
         *store_args, "--log-level", "warning", *extra_args],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    address = f"127.0.0.1:{port}"
    ca_address = f"127.0.0.1:{cport}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"control plane exited: {f.read()[-2000:]}")
        try:
            # The plaintext CA listener answers once everything is being served.
            with grpc.insecure_channel(ca_address) as ch:
                agent_pb2_grpc.BootstrapStub(ch).GetCA(agent_pb2.GetCARequest(), timeout=0.5)
            break
        except grpc.RpcError:
            time.sleep(0.1)
            continue
    else:
        proc.kill()
        raise RuntimeError("control plane did not start")
    return ControlPlane(address, f"127.0.0.1:{mport}", prefix, etcd, proc, state_dir, ca_address)


@pytest.fixture(scope="session")
def controlplane(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "cp-")
    # The API tests watch exact event sequences; a scheduler's status writes would add to them.
    cp = start_controlplane(etcd_endpoint, state,
                            extra_args=("--no-scheduler", "--no-node-lifecycle"))
    yield cp
    stop_process(cp.proc)
    shutil.rmtree(state, ignore_errors=True)
