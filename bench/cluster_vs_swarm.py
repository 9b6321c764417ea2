"""Apply -> all replicas Running, Moorage against Docker Swarm, on this machine, in one run.

Moorage: a local etcd, one control plane (scheduler, controllers, node lifecycle, all with
their default timings) and three `moor-agent run --join` processes, each with its own state
dir, cgroup root and netns prefix, and the busybox test image imported. For N in 1, 10, 100 a
Deployment `bench-N` is applied with `moor apply` (the CLI, as a user would) and timed from
the CLI's start to all N pods Running, seen through a gRPC Watch on the pods; then it is
deleted and the bench waits until its pods and containers are gone. Last, with a Deployment of
6 replicas Running over the three agents, one agent is SIGKILLed and timed until 6 pods are
Running again with none on the dead node (defaults: NotReady after 6 s without a heartbeat,
eviction 4 s later). The control plane's 20 s eviction startup grace is left at its default:
the failure test starts well over 20 s after the control plane did.

Docker Swarm: Debian's docker.io. The bench starts dockerd itself under a temp dir, through the
tests' reference engine (tests/dockerref.py: its own data root, exec root, socket and cgroup
parent; no iptables, no docker0 bridge), runs
`docker swarm init`, `docker load`s the same busybox rootfs (a `docker save` tarball written by
tests/imagebuild.py) and, for N in 1, 10, 100, times `docker service create --replicas N
--detach` from the CLI's start until `docker service ps` shows every task Running, then
`docker service rm`s it and waits for its containers to go. dockerd runs with
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 so that Swarm's tasks do not try to pull from a registry
this machine cannot reach: the counterpart of Moorage's imagePullPolicy Never. Swarm has one
node here, so its failure test is not run; the issue's figures are printed for context.

Everything started is torn down in `finally` blocks: agents, their containers, cgroups and
netns, the control plane, etcd, swarm state, dockerd (and its containerd), mounts under its data
root, docker_gwbridge, the dockerd cgroup parent, the directories dockerd creates outside its
roots (/run/docker, /run/containerd, /run/runc) when they were not there before and are empty,
and the temp dir.

Run as root: python bench/cluster_vs_swarm.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from controlplane.store.local import LocalEtcd, free_port_block, stop_process
from moorage.v1 import api_pb2, api_pb2_grpc  # noqa: E402
from nodeagent.pods import sandbox, volumes
from nodeagent.runtime import cgroups  # noqa: E402
from nodeagent.runtime.runtime import Runtime  # noqa: E402
from nodeagent.runtime.syscalls import LibcSyscalls  # noqa: E402
from tests import imagebuild  # noqa: E402
from tests.dockerref import DOCKER, DOCKERD, DockerEngine  # noqa: E402

PREFIX = "moorbench-"
COUNTS = (1, 10, 100)
AGENTS = 3
FAILOVER_REPLICAS = 6
TARGET_RATIO = 0.5
TARGET_FAILOVER = 15.0
RUN_TIMEOUT = 300.0
DOCKER_CGROUP_PARENT = PREFIX + "docker"
COMMAND = "while true; do sleep 1; done"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "{command}"]
        resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
"""


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def terminate(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is not None:
        stop_process(proc, timeout)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- Moorage


class PodWatch:
    """A pods Watch with a label selector; keeps name -> (phase, node) current in a thread."""

    def __init__(self, stub, selector: str):
        self.pods: dict[str, tuple[str, str]] = {}
        self.cond = threading.Condition()
        self.error: Exception | None = None
        self.call = stub.Watch(api_pb2.WatchRequest(kind="pods", namespace="default",
                                                    label_selector=selector))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.call:
                with self.cond:
                    if ev.type == "RESYNC":
                        self.pods.clear()
                    elif ev.type == "DELETED":
                        self.pods.pop(ev.object.pod.metadata.name, None)
                    elif ev.type in ("ADDED", "MODIFIED"):
                        pod = ev.object.pod
                        self.pods[pod.metadata.name] = (pod.status.phase, pod.spec.node_name)
                    self.cond.notify_all()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        with self.cond:
            self.cond.notify_all()

    def wait(self, pred, timeout: float) -> float | None:
        """Monotonic time at which pred(pods) first held, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if pred(self.pods):
                    return time.monotonic()
                if self.error is not None:
                    raise RuntimeError(f"watch failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def summary(self) -> str:
        with self.cond:
            phases: dict[str, int] = {}
            for phase, _ in self.pods.values():
                phases[phase or "<none>"] = phases.get(phase or "<none>", 0) + 1
            return ", ".join(f"{k} {v}" for k, v in sorted(phases.items())) or "no pods"

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def running(pods: dict[str, tuple[str, str]], exclude_node: str = "") -> int:
    return sum(1 for phase, node in pods.values() if phase == "Running" and node != exclude_node)


class Agent:
    def __init__(self, root: str, n: int, address: str, image_tar: str):
        self.name = f"node-{n}"
        self.state = os.path.join(root, self.name)
        self.cgroup_root = f"{PREFIX}{n}"
        self.log_path = os.path.join(root, f"{self.name}.log")
        self.base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", self.state,
                     "--cgroup-root", self.cgroup_root, "--netns-prefix", PREFIX]
        self.address = address
        self.image_tar = image_tar
        self.proc: subprocess.Popen | None = None

    def import_image(self) -> None:
        subprocess.run([*self.base, "import", self.image_tar], check=True, capture_output=True,
                       cwd=ROOT, timeout=120)

    def start(self, token: str = "") -> None:
        env = dict(os.environ, MOOR_JOIN_TOKEN=token) if token else None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.base, "run", "--join", self.address, "--node-name", self.name,
                 "--advertise-address", "127.0.0.1", "--pod-network", "none"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=env)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def running_containers(self) -> int:
        if not os.path.isdir(os.path.join(self.state, "containers")):
            return 0
        runtime = Runtime(os.path.join(self.state, "containers"), cgroup_root=self.cgroup_root)
        try:
            return sum(1 for i in runtime.list() if i.status.state == "running")
        finally:
            runtime.close()

    def cleanup(self) -> None:
        terminate(self.proc)
        if os.path.isdir(os.path.join(self.state, "containers")):
            runtime = Runtime(os.path.join(self.state, "containers"),
                              cgroup_root=self.cgroup_root)
            try:
                for info in runtime.list():
                    try:
                        runtime.remove(info.id)
                    except Exception as err:  # keep cleaning the rest
                        note(f"removing container {info.id} of {self.name}: {err}")
            finally:
                runtime.close()
        cgroups.remove_parent(self.cgroup_root)
        volumes.remove_all(LibcSyscalls(), os.path.join(self.state, "volumes"))


def start_controlplane(root: str, etcd: str) -> tuple[subprocess.Popen, str]:
    # API, metrics, join and CA listeners on consecutive ports, as with the defaults.
    port = free_port_block(4)
    address, mport = f"127.0.0.1:{port}", port + 1
    with open(os.path.join(root, "controlplane.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.server", "--listen", address,
             "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", os.path.join(root, "cp"),
             "--etcd-endpoints", f"http://{etcd}", "--controllers", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("control plane exited; see controlplane.log")
        try:
            # The plaintext CA listener answers once everything is served.
            ca = grpc.insecure_channel(f"127.0.0.1:{port + 3}")
            grpc.channel_ready_future(ca).result(timeout=0.3)
            ca.close()
            return proc, address
        except grpc.FutureTimeoutError:
            continue
    terminate(proc)
    raise RuntimeError("control plane did not start")


_CREDENTIALS: dict[str, str] = {}


def admin_credentials(address: str) -> str:
    return _CREDENTIALS[address]


def ready_nodes(stub) -> set[str]:
    items = stub.List(api_pb2.ListRequest(kind="nodes")).items
    return {o.node.metadata.name for o in items
            if any(c.type == "Ready" and c.status == "True" for c in o.node.status.conditions)}


def moor_apply(address: str, text: str) -> float:
    """Runs `moor apply -f -`; returns when it exited."""
    out = subprocess.run([sys.executable, "-m", "moorage.cli.main", "apply", "-f", "-"],
                         input=text, capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, MOOR_SERVER=address,
                                  MOOR_CREDENTIALS=admin_credentials(address)))
    if out.returncode != 0:
        raise RuntimeError(f"moor apply failed: {out.stderr.strip()}")
    return time.monotonic()


def delete_and_drain(stub, agents: list[Agent], name: str) -> None:
    watch = PodWatch(stub, f"app={name}")
    try:
        stub.Delete(api_pb2.DeleteRequest(kind="deployments", namespace="default", name=name))
        if watch.wait(lambda pods: not pods, RUN_TIMEOUT) is None:
            raise RuntimeError(f"pods of {name} still there: {watch.summary()}")
    finally:
        watch.close()
    # The agents stop the containers after the pods go; let them finish before the next run.
    deadline = time.monotonic() + RUN_TIMEOUT
    live = [a for a in agents if a.proc and a.proc.poll() is None]
    while sum(a.running_containers() for a in live) and time.monotonic() < deadline:
        time.sleep(0.5)


@contextlib.contextmanager
def moorage_cluster(root: str, image_tar: str):
    """A local etcd, a control plane and AGENTS joined agents with the image imported, all
    Ready; yields (stub, address, agents) and tears everything down after."""
    etcd = LocalEtcd(os.path.join(root, "etcd"))
    cp = None
    agents: list[Agent] = []
    channel = None
    try:
        etcd.start()
        cp, address = start_controlplane(root, etcd.endpoint)
        _CREDENTIALS[address] = os.path.join(root, "cp", "admin.pem")
        note(f"control plane at {address}, etcd at {etcd.endpoint}")
        from moorage.credentials import channel_credentials

        channel = grpc.secure_channel(address, channel_credentials(_CREDENTIALS[address]))
        stub = api_pb2_grpc.ClusterStub(channel)
        token = stub.CreateToken(api_pb2.CreateTokenRequest(ttl_seconds=3600)).token
        agents = [Agent(root, n, address, image_tar) for n in range(1, AGENTS + 1)]
        for a in agents:
            a.import_image()
        for a in agents:
            a.start(token)
        names = {a.name for a in agents}
        deadline = time.monotonic() + 60
        while ready_nodes(stub) != names:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents not Ready: {sorted(ready_nodes(stub))}")
            time.sleep(0.3)
        note(f"{AGENTS} agents Ready")
        yield stub, address, agents
    finally:
        if channel is not None:
            channel.close()
        for a in agents:
            a.cleanup()
        sandboxes = sandbox.Sandboxes(LibcSyscalls())
        for ns in sandbox.existing(PREFIX):
            sandboxes.remove(ns)
        terminate(cp)
        etcd.stop()


def bench_moorage(root: str, image_tar: str, results: dict) -> None:
    with moorage_cluster(root, image_tar) as (stub, address, agents):
        for n in COUNTS:
            name = f"bench-{n}"
            watch = PodWatch(stub, f"app={name}")
            try:
                start = time.monotonic()
                applied = moor_apply(address, DEPLOYMENT.format(name=name, replicas=n,
                                                                command=COMMAND))
                done = watch.wait(lambda pods, n=n: running(pods) >= n, RUN_TIMEOUT)
                if done is None:
                    raise RuntimeError(f"{name}: not all Running after {RUN_TIMEOUT:.0f} s: "
                                       f"{watch.summary()}")
                results["moorage", n] = done - start
                results["moorage-after-cli", n] = done - applied
                results["moorage-cli", n] = applied - start
                spread = {}
                for _, node in watch.pods.values():
                    spread[node] = spread.get(node, 0) + 1
                note(f"moorage {name}: {done - start:.2f} s (moor apply CLI "
                     f"{applied - start:.2f} s); per node {dict(sorted(spread.items()))}")
            finally:
                watch.close()
            delete_and_drain(stub, agents, name)

        # Agent failure: 6 replicas over the 3 agents, SIGKILL the one running the most.
        name = "failover"
        watch = PodWatch(stub, f"app={name}")
        try:
            moor_apply(address, DEPLOYMENT.format(name=name, replicas=FAILOVER_REPLICAS,
                                                  command=COMMAND))
            if watch.wait(lambda pods: running(pods) >= FAILOVER_REPLICAS, RUN_TIMEOUT) is None:
                raise RuntimeError(f"{name}: not all Running: {watch.summary()}")
            per_node: dict[str, int] = {}
            for _, node in watch.pods.values():
                per_node[node] = per_node.get(node, 0) + 1
            victim_name = max(sorted(per_node), key=per_node.get)
            victim = next(a for a in agents if a.name == victim_name)
            note(f"failover pods per node {dict(sorted(per_node.items()))}; killing {victim_name}")
            node_watch = NodeWatch(stub, victim_name)
            try:
                start = time.monotonic()
                victim.kill()
                done = watch.wait(
                    lambda pods: running(pods, exclude_node=victim_name) >= FAILOVER_REPLICAS
                    and not any(node == victim_name for _, node in pods.values()),
                    RUN_TIMEOUT)
                if done is None:
                    raise RuntimeError(f"replacements not Running: {watch.summary()}")
                results["failover"] = done - start
                not_ready = (f"{node_watch.not_ready_at - start:.1f} s"
                             if node_watch.not_ready_at else "not seen")
                note(f"moorage failover: {done - start:.2f} s; {victim_name} NotReady after "
                     f"{not_ready}")
            finally:
                node_watch.close()
        finally:
            watch.close()


class NodeWatch:
    """Notes when one node's Ready condition stops being True."""

    def __init__(self, stub, node: str):
        self.node = node
        self.not_ready_at: float | None = None
        self.call = stub.Watch(api_pb2.WatchRequest(kind="nodes"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.call:
                node = ev.object.node
                if ev.type == "MODIFIED" and node.metadata.name == self.node and \
                        self.not_ready_at is None and not any(
                            c.type == "Ready" and c.status == "True"
                            for c in node.status.conditions):
                    self.not_ready_at = time.monotonic()
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


# ---------------------------------------------------------------- Docker Swarm


class Dockerd(DockerEngine):
    """The shared reference engine (tests/dockerref.py) under root/dockerd, as a Swarm of one:
    services are removed and the swarm left before the daemon stops."""

    def __init__(self, root: str):
        super().__init__(os.path.join(root, "dockerd"), cgroup_parent=DOCKER_CGROUP_PARENT,
                         env={"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"})
        self.swarm = False

    def before_stop(self) -> None:
        if self.swarm:
            for svc in self.docker("service", "ls", "-q", check=False).split():
                self.docker("service", "rm", svc, check=False)
            self._wait_no_containers(30)
            self.docker("swarm", "leave", "--force", check=False)

    def _wait_no_containers(self, timeout: float, service: str = "") -> None:
        args = ["ps", "-aq"] + (["--filter", f"label=com.docker.swarm.service.name={service}"]
                                if service else [])
        deadline = time.monotonic() + timeout
        while self.docker(*args, check=False).strip() and time.monotonic() < deadline:
            time.sleep(0.3)


def swarm_running(d: Dockerd, name: str) -> int:
    out = d.docker("service", "ps", name, "--filter", "desired-state=running",
                   "--format", "{{.CurrentState}}", check=False)
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


def bench_swarm(root: str, image_tar: str, results: dict) -> str:
    """Returns "" when it ran, else why not."""
    if not os.path.exists(DOCKERD) or not os.path.exists(DOCKER):
        return "dockerd is not installed (apt-get install docker.io)"
    d = Dockerd(root)
    try:
        try:
            d.start()
        except RuntimeError as err:
            return f"dockerd cannot run here: {err}"
        version = d.docker("version", "--format", "{{.Server.Version}}").strip()
        d.docker("load", "-i", image_tar, timeout=120)
        d.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        d.swarm = True
        note(f"dockerd {version} up, swarm initialized (one node), busybox:test loaded")
        for n in COUNTS:
            name = f"bench-{n}"
            start = time.monotonic()
            d.docker("service", "create", "--replicas", str(n), "--name", name, "--detach",
                     "--stop-grace-period", "1s", "busybox:test", "sh", "-c", COMMAND)
            created = time.monotonic()
            deadline = start + RUN_TIMEOUT
            while swarm_running(d, name) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"swarm {name}: not all tasks Running")
                time.sleep(0.2)
            results["swarm", n] = time.monotonic() - start
            results["swarm-after-cli", n] = time.monotonic() - created
            note(f"swarm {name}: {results['swarm', n]:.2f} s (docker service create CLI "
                 f"{created - start:.2f} s)")
            d.docker("service", "rm", name)
            d._wait_no_containers(RUN_TIMEOUT, name)
        return ""
    finally:
        d.stop()


# ---------------------------------------------------------------- main


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the agents run real containers", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    root = tempfile.mkdtemp(prefix=PREFIX)
    results: dict = {}
    load = os.getloadavg()[0]
    swarm_note = ""
    moorage_note = ""
    failed = False
    try:
        image_tar = os.path.join(root, "busybox.tar")
        imagebuild.write_docker_save(image_tar, imagebuild.make_image(), ["busybox:test"])
        try:
            bench_moorage(root, image_tar, results)
        except Exception as err:
            failed = True
            moorage_note = f"run failed: {str(err).splitlines()[0]}"
            note(f"moorage run failed: {err}")
        try:
            swarm_note = bench_swarm(root, image_tar, results)
        except Exception as err:
            failed = True
            swarm_note = f"swarm run failed: {err}"
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"# {AGENTS} Moorage agents vs a one-node Docker Swarm, same machine "
          f"({os.cpu_count()} CPUs, load {load:.1f} at start), same busybox rootfs; times from the "
          "CLI's start")
    if moorage_note:
        print(f"# moorage: {moorage_note}")
    if swarm_note:
        print(f"# swarm: {swarm_note}")
    for n in COUNTS:
        m, s = results.get(("moorage", n)), results.get(("swarm", n))
        ms = f"{m:.1f} s" if m is not None else "n/a"
        ss = f"{s:.1f} s" if s is not None else "n/a"
        ratio = f"{m / s:.2f}x" if m is not None and s else "n/a"
        print(f"apply -> {n} replicas Running: moorage {ms}, swarm {ss}, ratio {ratio} "
              f"(target <= {TARGET_RATIO}x)")
    after = [f"N={n}: moorage {results[k]:.1f} s" + (
        f", swarm {results['swarm-after-cli', n]:.1f} s" if ("swarm-after-cli", n) in results
        else "") for n in COUNTS if (k := ("moorage-after-cli", n)) in results]
    if after:
        cli = [results[k] for n in COUNTS if (k := ("moorage-cli", n)) in results]
        print(f"# from the CLI's exit instead (without `moor apply`'s "
              f"{min(cli):.2f}-{max(cli):.2f} s, mostly Python start-up): " + "; ".join(after))
    f = results.get("failover")
    fs = f"{f:.1f} s" if f is not None else "n/a"
    print(f"agent killed -> {FAILOVER_REPLICAS} replacements Running: moorage {fs} "
          f"(target <= {TARGET_FAILOVER:.0f} s; Swarm ~20 s, Nomad 20-30 s, Kubernetes ~5 min "
          f"with defaults; swarm not measured here: one node)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
