"""`make demo`: a control plane with its own etcd and two agents on this machine, running the
example web app in real containers, with the commands to look at it.

Everything lives in a temporary state dir and is removed on exit. With --keep it stays up until
Ctrl-C. Without root (agents need namespaces and cgroups) it runs the control plane alone.
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

from controlplane.etcd_local import free_port
from moorage.localimage import write_docker_save

ROOT = pathlib.Path(__file__).resolve().parents[1]
AGENTS = ("node-1", "node-2")
NETNS_PREFIX = "moordemo-"
WAIT_SECONDS = 90


def _moor(env: dict, *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        print(f"\n$ moor {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=env,
                          capture_output=True, text=True)
    if not quiet:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
    return proc


def _agent_cmd(state: str, name: str) -> list[str]:
    return [sys.executable, "-m", "nodeagent.agent", "--state-dir", os.path.join(state, name),
            "--cgroup-root", f"moorage-demo-{name}", "--netns-prefix", NETNS_PREFIX]


def _wait(what: str, check, timeout: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    print(f"error: timed out waiting for {what}", file=sys.stderr)
    return False


def _running(env: dict) -> int:
    out = _moor(env, "get", "pods", "-n", "shop", "-o", "json", quiet=True)
    if out.returncode != 0:
        return 0
    return sum(1 for p in json.loads(out.stdout)["items"]
               if p.get("status", {}).get("phase") == "Running")


def _cleanup_agents(state: str) -> None:
    from nodeagent import sandbox
    from nodeagent.runtime.runtime import Runtime

    for name in AGENTS:
        Runtime(os.path.join(state, name, "containers"),
                cgroup_root=f"moorage-demo-{name}").remove_all()
    for ns in sandbox.existing(NETNS_PREFIX):
        sandbox.remove(ns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="moorage-demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    args = p.parse_args(argv)
    with_agents = os.geteuid() == 0
    state = tempfile.mkdtemp(prefix="moorage-demo-")
    address = f"127.0.0.1:{free_port()}"
    print(f"starting a control plane on {address} with its own etcd under {state}", flush=True)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "controlplane.server", "--listen", address,
         "--metrics-listen", f"127.0.0.1:{free_port()}", "--state-dir",
         os.path.join(state, "controlplane"), "--log-level", "warning"],
        stdout=subprocess.DEVNULL)]
    env = dict(os.environ, MOOR_SERVER=address)
    try:
        if not _wait("the control plane", lambda: _moor(env, "version", quiet=True)
                     .returncode == 0, 30):
            return 1
        if with_agents:
            image = os.path.join(state, "busybox.tar")
            write_docker_save(image, ["busybox:1.36"])
            for name in AGENTS:
                cmd = _agent_cmd(state, name)
                subprocess.run([*cmd, "import", image], check=True, capture_output=True)
                procs.append(subprocess.Popen(
                    [*cmd, "run", "--join", address, "--node-name", name,
                     "--advertise-address", "127.0.0.1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            print(f"started agents {', '.join(AGENTS)}, each with a busybox image built from "
                  "this machine's busybox-static", flush=True)
            _wait("the agents", lambda: _moor(env, "get", "nodes", quiet=True)
                  .stdout.count(" Ready ") == len(AGENTS), 30)
        else:
            print("not root: running the control plane alone (agents need namespaces)")
        examples = str(ROOT / "examples")
        _moor(env, "apply", "-f", examples)
        _moor(env, "apply", "-f", examples)          # again: everything unchanged
        if with_agents:
            _moor(env, "get", "nodes", "-o", "wide")
            print("\nwaiting for the 3 web pods to run...", flush=True)
            _wait("the web pods", lambda: _running(env) == 3)
            _moor(env, "get", "pods", "-n", "shop", "-o", "wide")
            _moor(env, "scale", "deployment/web", "--replicas", "4", "-n", "shop")
            _wait("the 4th pod", lambda: _running(env) == 4)
            _moor(env, "get", "deployments", "-n", "shop")
            _moor(env, "get", "events", "-n", "shop")
        _moor(env, "describe", "deployment", "web", "-n", "shop")
        print("\n$ # a bad manifest is refused with the file, document and field path:")
        bad = pathlib.Path(state) / "bad.yaml"
        bad.write_text((ROOT / "examples" / "web.yaml").read_text()
                       .replace("memory: 64Mi", "memory: 12XB"))
        _moor(env, "apply", "-f", str(bad))
        if args.keep:
            print(f"\nThe cluster stays up. In another shell:\n  export MOOR_SERVER={address}\n"
                  "  moor get pods -A -o wide\nPress Ctrl-C to stop and clean up.", flush=True)
            try:
                procs[0].wait()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if with_agents:
            _cleanup_agents(state)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
