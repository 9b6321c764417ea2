"""`make demo`: a control plane with its own etcd, the examples applied, and a look at them.

It runs in a temporary state dir on free loopback ports and removes everything on exit. With
--keep it stays up until Ctrl-C, printing how to point `moor` at it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from controlplane.etcd_local import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _moor(env: dict, *args: str) -> int:
    print(f"\n$ moor {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=env).returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="moorage-demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    args = p.parse_args(argv)
    state = tempfile.mkdtemp(prefix="moorage-demo-")
    address = f"127.0.0.1:{free_port()}"
    print(f"starting a control plane on {address} with its own etcd under {state}", flush=True)
    cp = subprocess.Popen(
        [sys.executable, "-m", "controlplane.server", "--listen", address,
         "--metrics-listen", f"127.0.0.1:{free_port()}", "--state-dir", state,
         "--log-level", "warning"], stdout=subprocess.DEVNULL)
    env = dict(os.environ, MOOR_SERVER=address)
    try:
        deadline = time.monotonic() + 30
        while _quiet_version(env) != 0:
            if cp.poll() is not None or time.monotonic() > deadline:
                print("error: the control plane did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        examples = str(ROOT / "examples")
        steps = [
            ("apply", "-f", examples),
            ("apply", "-f", examples),        # again: everything unchanged
            ("get", "namespaces"),
            ("get", "deployments", "-n", "shop", "-o", "wide"),
            ("get", "services", "-n", "shop"),
            ("describe", "deployment", "web", "-n", "shop"),
            ("diff", "-f", examples),
        ]
        for step in steps:
            rc = _moor(env, *step)
            if rc not in (0, 1) or (rc == 1 and step[0] != "diff"):
                return rc
        print("\n$ # a bad manifest is refused with the file, document and field path:")
        bad = pathlib.Path(state) / "bad.yaml"
        bad.write_text((ROOT / "examples" / "web.yaml").read_text()
                       .replace("memory: 64Mi", "memory: 12XB"))
        _moor(env, "apply", "-f", str(bad))
        if args.keep:
            print(f"\nThe control plane stays up. In another shell:\n"
                  f"  export MOOR_SERVER={address}\n  moor get pods -A\n"
                  "Press Ctrl-C to stop and clean up.", flush=True)
            try:
                cp.wait()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        cp.terminate()
        try:
            cp.wait(15)
        except subprocess.TimeoutExpired:
            cp.kill()
        shutil.rmtree(state, ignore_errors=True)


def _quiet_version(env: dict) -> int:
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", "version"], env=env,
                          capture_output=True).returncode


if __name__ == "__main__":
    sys.exit(main())
