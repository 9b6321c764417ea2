"""Churn, Moorage against Docker Swarm, on this machine, in one run.

Both run the same busybox rootfs with `sleep 3600` as PID 1, which has no SIGTERM handler and
so ignores SIGTERM (in Docker as here): every stop waits out the whole grace period, 2 s on
both (terminationGracePeriodSeconds / --stop-grace-period), then SIGKILLs.

- scale 100 -> 0: from the scaling command's start (`moor scale`, `docker service scale
  --detach`) until no container of the workload runs (counted from the agents' runtimes, and
  from `docker ps`).
- rolling update of 30 replicas to a new image: from the command's start (`moor apply`,
  `docker service update --detach`) until 30 containers of the new image run and none of the
  old. Moorage uses Kubernetes' default strategy (maxSurge 25%, maxUnavailable 25%). Swarm is
  measured with its defaults (parallelism 1, stop-first) and with settings matched to
  Moorage's (--update-parallelism 8 --update-order start-first, 8 being 25% of 30 rounded up);
  the ratio is taken against the faster of the two.
- delete -> gone for one pod with grace 0 (`moor delete --force --grace-period 0`): from the
  command's start until the API has no pod and the node runs no container.

The Moorage cluster (local etcd, control plane, three agents) and dockerd are set up and torn
down as in bench/cluster_vs_swarm.py. Run as root: python bench/churn_vs_swarm.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import cluster_vs_swarm as base  # noqa: E402
from cluster_vs_swarm import ROOT, Dockerd, moorage_cluster, note  # noqa: E402

from moorage.v1 import api_pb2  # noqa: E402
from tests import imagebuild  # noqa: E402
from tests.builders import deployment_yaml  # noqa: E402

SCALE_REPLICAS = 100
ROLL_REPLICAS = 30
GRACE = 2
TARGET_RATIO = 0.5
TIMEOUT = 300.0
COMMAND = "sleep 3600"   # exec'd: sleep is PID 1 and ignores SIGTERM
POLL = 0.1



def wait(pred, what: str, timeout: float = TIMEOUT) -> float:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)
    return time.monotonic()


def moor(address: str, *args: str, stdin: str | None = None) -> None:
    out = subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, MOOR_SERVER=address,
                                  MOOR_CREDENTIALS=base.admin_credentials(address)))
    if out.returncode != 0:
        raise RuntimeError(f"moor {' '.join(args[:2])}: {out.stderr.strip()}")


def containers(agents) -> int:
    return sum(a.running_containers() for a in agents)


def pods(stub, app: str) -> list:
    return [o.pod for o in stub.List(api_pb2.ListRequest(
        kind="pods", namespace="default", label_selector=f"app={app}")).items]


def bench_moorage(root: str, image_tar: str, results: dict) -> None:
    with moorage_cluster(root, image_tar) as (stub, address, agents):
        # scale 100 -> 0
        moor(address, "apply", "-f", "-", stdin=deployment_yaml(
            "churn", SCALE_REPLICAS, grace=GRACE, command=COMMAND))
        wait(lambda: containers(agents) == SCALE_REPLICAS, "100 containers")
        start = time.monotonic()
        moor(address, "scale", "deployment/churn", "--replicas", "0")
        done = wait(lambda: containers(agents) == 0, "every container to stop")
        results["moorage", "scale"] = done - start
        gone = wait(lambda: not pods(stub, "churn"), "the pods to be removed")
        note(f"moorage scale {SCALE_REPLICAS} -> 0: containers gone {done - start:.2f} s, "
             f"pods gone {gone - start:.2f} s")
        moor(address, "delete", "deployment", "churn")

        # rolling update of 30
        roll = deployment_yaml("roll", ROLL_REPLICAS, grace=GRACE, command=COMMAND)
        moor(address, "apply", "-f", "-", stdin=roll)
        wait(lambda: containers(agents) == ROLL_REPLICAS, "30 containers")
        start = time.monotonic()
        moor(address, "apply", "-f", "-", stdin=roll.replace("busybox:test", "busybox:v2"))

        def rolled() -> bool:
            items = pods(stub, "roll")
            return (len(items) == ROLL_REPLICAS and all(
                p.spec.containers[0].image == "busybox:v2" and p.status.phase == "Running"
                and not p.metadata.deletion_timestamp for p in items)
                and containers(agents) == ROLL_REPLICAS)
        done = wait(rolled, "the rollout")
        results["moorage", "roll"] = done - start
        note(f"moorage rolling update of {ROLL_REPLICAS}: {done - start:.2f} s")
        moor(address, "delete", "deployment", "roll", "--grace-period", "1")
        wait(lambda: containers(agents) == 0, "the roll containers to stop")

        # one pod, grace 0
        pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: default}\n"
               "spec:\n  terminationGracePeriodSeconds: 30\n  containers:\n  - name: app\n"
               "    image: busybox:test\n    imagePullPolicy: Never\n"
               f'    command: ["sh", "-c", "exec {COMMAND}"]\n')
        moor(address, "apply", "-f", "-", stdin=pod)
        wait(lambda: containers(agents) == 1, "the pod's container")
        start = time.monotonic()
        moor(address, "delete", "pod", "one", "--force", "--grace-period", "0")
        api = time.monotonic()

        def absent() -> bool:
            try:
                stub.Get(api_pb2.GetRequest(kind="pod", namespace="default", name="one"))
                return False
            except grpc.RpcError as err:
                return err.code() == grpc.StatusCode.NOT_FOUND
        wait(absent, "the pod to leave the API")
        done = wait(lambda: containers(agents) == 0, "the container to be killed")
        results["moorage", "grace0"] = done - start
        results["moorage", "grace0-cli"] = api - start
        note(f"moorage delete --force --grace-period 0: gone {done - start:.2f} s (CLI "
             f"{api - start:.2f} s)")


def swarm_containers(d: Dockerd, service: str) -> int:
    return len(d.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                        check=False).split())


def swarm_images(d: Dockerd, service: str) -> list[str]:
    out = d.docker("ps", "--filter", f"label=com.docker.swarm.service.name={service}",
                   "--format", "{{.Image}}", check=False)
    return out.split()


def bench_swarm(root: str, image_tar: str, results: dict) -> str:
    if not os.path.exists(base.DOCKERD) or not os.path.exists(base.DOCKER):
        return "dockerd is not installed (apt-get install docker.io)"
    d = Dockerd(root)
    try:
        try:
            d.start()
        except RuntimeError as err:
            return f"dockerd cannot run here: {err}"
        d.docker("load", "-i", image_tar, timeout=120)
        d.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        d.swarm = True
        note("swarm initialized (one node), busybox:test and busybox:v2 loaded")
        grace = f"{GRACE}s"

        d.docker("service", "create", "--replicas", str(SCALE_REPLICAS), "--name", "churn",
                 "--detach", "--stop-grace-period", grace, "busybox:test", "sh", "-c",
                 f"exec {COMMAND}")
        wait(lambda: swarm_containers(d, "churn") == SCALE_REPLICAS, "100 swarm containers")
        start = time.monotonic()
        d.docker("service", "scale", "--detach", "churn=0")
        done = wait(lambda: swarm_containers(d, "churn") == 0, "swarm's containers to stop")
        results["swarm", "scale"] = done - start
        note(f"swarm scale {SCALE_REPLICAS} -> 0: {done - start:.2f} s")
        d.docker("service", "rm", "churn")
        d._wait_no_containers(TIMEOUT, "churn")

        for label, flags in (("default", ()), ("matched", (
                "--update-parallelism", "8", "--update-order", "start-first"))):
            name = f"roll-{label}"
            d.docker("service", "create", "--replicas", str(ROLL_REPLICAS), "--name", name,
                     "--detach", "--stop-grace-period", grace, "busybox:test", "sh", "-c",
                     f"exec {COMMAND}")
            wait(lambda n=name: swarm_containers(d, n) == ROLL_REPLICAS, "30 swarm containers")
            start = time.monotonic()
            d.docker("service", "update", "--detach", "--image", "busybox:v2", *flags, name)

            def rolled(n=name) -> bool:
                images = swarm_images(d, n)
                return len(images) == ROLL_REPLICAS and all(i == "busybox:v2" for i in images)
            done = wait(rolled, f"swarm's rollout ({label})")
            results["swarm", "roll", label] = done - start
            note(f"swarm rolling update of {ROLL_REPLICAS} ({label}): {done - start:.2f} s")
            d.docker("service", "rm", name)
            d._wait_no_containers(TIMEOUT, name)
        return ""
    finally:
        d.stop()


def _ratio(m, s) -> str:
    return f"{m / s:.2f}x" if m is not None and s else "n/a"


def _sec(v) -> str:
    return f"{v:.1f} s" if v is not None else "n/a"


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the agents run real containers", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, base._sigterm)
    root = tempfile.mkdtemp(prefix=base.PREFIX)
    results: dict = {}
    load = os.getloadavg()[0]
    notes = []
    failed = False
    try:
        image_tar = os.path.join(root, "busybox.tar")
        imagebuild.write_docker_save(image_tar, imagebuild.make_image(),
                                     ["busybox:test", "busybox:v2"])
        try:
            bench_moorage(root, image_tar, results)
        except Exception as err:
            failed = True
            notes.append(f"moorage run failed: {str(err).splitlines()[0]}")
        try:
            why = bench_swarm(root, image_tar, results)
            if why:
                notes.append(f"swarm: {why}")
        except Exception as err:
            failed = True
            notes.append(f"swarm run failed: {str(err).splitlines()[0]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"# {base.AGENTS} Moorage agents vs a one-node Docker Swarm, same machine "
          f"({os.cpu_count()} CPUs, load {load:.1f} at start), same busybox rootfs, PID 1 "
          f"ignoring SIGTERM, grace {GRACE} s on both")
    for line in notes:
        print(f"# {line}")
    m, s = results.get(("moorage", "scale")), results.get(("swarm", "scale"))
    print(f"scale {SCALE_REPLICAS} -> 0 until every container is gone: moorage {_sec(m)}, "
          f"swarm {_sec(s)}, ratio {_ratio(m, s)} (target <= {TARGET_RATIO}x)")
    m = results.get(("moorage", "roll"))
    sd, sm = results.get(("swarm", "roll", "default")), results.get(("swarm", "roll", "matched"))
    best = min((v for v in (sd, sm) if v is not None), default=None)
    print(f"rolling update of {ROLL_REPLICAS} to a new image, all new Running and all old gone: "
          f"moorage {_sec(m)} (maxSurge 25%, maxUnavailable 25%), swarm {_sec(sd)} (defaults: "
          f"parallelism 1, stop-first) / {_sec(sm)} (parallelism 8, start-first), ratio "
          f"{_ratio(m, best)} against the faster (target <= {TARGET_RATIO}x)")
    g, cli = results.get(("moorage", "grace0")), results.get(("moorage", "grace0-cli"))
    print(f"delete -> gone, one pod, --force --grace-period 0: moorage "
          f"{g if g is None else round(g, 2)} s from the CLI's start (the CLI itself "
          f"{cli if cli is None else round(cli, 2)} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
