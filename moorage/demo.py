"""`make demo`: a three-host lab on this machine (`moor lab up --name moordemo`), each host a
network namespace with its own agent, running the example web app in real containers, with the
commands to look at it.

The lab stays up afterwards, like any lab: `moor lab down --name moordemo` removes it, or pass
--down to remove it at the end. Needs root (namespaces, links and cgroups).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from moorage.lab import cluster
from moorage.lab.hosts import LabError
from moorage.lab.state import state_dir_for
from moorage.lab.teardown import down
from moorage.localimage import write_docker_save

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = "moordemo"
NODES = 3
IMAGE = "busybox:1.36"      # what examples/web.yaml runs
WAIT_SECONDS = 90


def _moor(*args: str, quiet: bool = False) -> subprocess.CompletedProcess:
    """`moor ARGS` as the user would type it: the lab wrote the config file it reads."""
    if not quiet:
        print(f"\n$ moor {' '.join(args)}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MOOR_SERVER", "MOOR_CREDENTIALS")}
    proc = subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=env,
                          capture_output=True, text=True)
    if not quiet:
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        sys.stdout.flush()
    return proc


def _wait(what: str, check, timeout: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    print(f"error: timed out after {timeout:.0f}s waiting for {what}", file=sys.stderr)
    return False


def _running() -> int:
    out = _moor("get", "pods", "-n", "shop", "-o", "json", quiet=True)
    if out.returncode != 0:
        return 0
    return sum(1 for p in json.loads(out.stdout)["items"]
               if p.get("status", {}).get("phase") == "Running")


def _up(work: str) -> cluster.Lab:
    image = os.path.join(work, "busybox.tar")
    write_docker_save(image, [IMAGE])
    print(f"$ moor lab up --name {NAME} --nodes {NODES} --import busybox.tar   "
          f"# {IMAGE}, built from this machine's busybox-static\n", flush=True)
    lab = cluster.plan(NAME, NODES, cluster.DEFAULT_CIDR, state_dir_for(NAME))
    return cluster.up(lab, images=(image,), say=lambda line: print(line, flush=True))


def _show(work: str) -> bool:
    examples = str(ROOT / "examples")
    _moor("apply", "-f", examples)
    _moor("apply", "-f", examples)          # again: everything unchanged
    _moor("get", "nodes", "-o", "wide")
    print("\nwaiting for the 3 web pods to run...", flush=True)
    if not _wait("the web pods", lambda: _running() == 3):
        return False
    _moor("get", "pods", "-n", "shop", "-o", "wide")
    _moor("scale", "deployment/web", "--replicas", "4", "-n", "shop")
    if not _wait("the 4th pod", lambda: _running() == 4):
        return False
    _moor("get", "pods", "-n", "shop", "-o", "wide")
    _moor("get", "deployments", "-n", "shop")
    _moor("get", "events", "-n", "shop")
    _moor("describe", "deployment", "web", "-n", "shop")
    print("\n$ # a bad manifest is refused with the file, document and field path:")
    bad = pathlib.Path(work) / "bad.yaml"
    bad.write_text((ROOT / "examples" / "web.yaml").read_text()
                   .replace("memory: 64Mi", "memory: 12XB"))
    _moor("apply", "-f", str(bad))
    return True


def _down() -> int:
    print(f"\n$ moor lab down --name {NAME}", flush=True)
    left = down(NAME, state_dir_for(NAME))
    if left:
        print("error: these are left:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    print(f"lab {NAME} is gone")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="moorage-demo", description=__doc__.splitlines()[0])
    p.add_argument("--down", action="store_true", help="remove the lab at the end")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the demo makes network namespaces, links and cgroups, so it needs root "
              "(sudo make demo)", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix=f"{NAME}-")
    try:
        try:
            lab = _up(work)
        except LabError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        ok = _show(work)
        if args.down:
            return _down() or (0 if ok else 1)
        print("\n" + cluster.usage(lab))
        print(f"\nThe lab stays up; `moor lab down --name {NAME}` removes it.")
        return 0 if ok else 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; the lab may still be up: `moor lab down --name {NAME}` "
              "removes it", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
