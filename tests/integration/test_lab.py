"""`moor lab`: three hosts, each a network namespace on a bridge, with a control plane in the
first and an agent in each, made by `moor lab up` and gone without a trace after `moor lab down`.

The tests share one lab (it takes a while to start) and run in order; the last takes it down.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from moorage.lab import hosts
from tests import imagebuild
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root")

NODES = 3
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        imagePullPolicy: Never
        command: ["sh", "-c", "while true; do sleep 1; done"]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
"""


class LabUnderTest:
    def __init__(self, root: str):
        # "moortest" and no "-": other tests' clean-ups remove every netns named "moortest-*".
        # Short, as it is in link names.
        self.name = f"{TEST_PREFIX.rstrip('-')}{uuid.uuid4().hex[:4]}"
        self.root = root
        self.state_dir = os.path.join(root, "lab")
        self.config = os.path.join(root, "config.yaml")
        self.cidr = f"10.199.{random.randint(100, 249)}.0/24"
        # No MOOR_SERVER or MOOR_CREDENTIALS: `moor` must find the lab from the config file.
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("MOOR_SERVER", "MOOR_CREDENTIALS")}
        self.env["MOOR_CONFIG"] = self.config

    def lab(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moorage.cli.lab", *args, "--name",
                               self.name, "--state-dir", self.state_dir], env=self.env,
                              capture_output=True, text=True, timeout=180)

    def moor(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def traces(self) -> list[str]:
        """Anything of the lab on this machine, found without the lab's own code."""
        base = hosts.link_base(self.name)
        found = [f"netns {n}" for n in _listdir("/run/netns") if self.name in n]
        found += [f"link {n}" for n in _listdir("/sys/class/net")
                  if n.startswith(base + "-") or self.name in n]
        with open("/proc/mounts") as f:
            found += [f"mount {line.split()[1]}" for line in f
                      if self.name in line or self.state_dir in line]
        for hierarchy in _listdir("/sys/fs/cgroup"):
            found += [f"cgroup {hierarchy}/{d}"
                      for d in _listdir(os.path.join("/sys/fs/cgroup", hierarchy))
                      if self.name in d]
        found += [f"cgroup {d}" for d in _listdir("/sys/fs/cgroup") if self.name in d]
        me = os.getpid()
        for pid in _listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{self.name}-h" in cmd or self.state_dir in cmd:
                found.append(f"process {pid}: {cmd[:100]}")
        found += [f"file {p}" for p in (self.state_dir, self.config,
                                        f"/run/moorage/lab/{self.name}") if os.path.lexists(p)]
        return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "lab-")
    t = LabUnderTest(root)
    tar = os.path.join(root, "busybox.tar")
    imagebuild.write_docker_save(tar, imagebuild.make_image(), ["busybox:test"])
    manifests = os.path.join(root, "manifests")
    os.mkdir(manifests)
    with open(os.path.join(manifests, "web.yaml"), "w") as f:
        f.write(DEPLOYMENT)
    try:
        out = t.lab("up", "--nodes", str(NODES), "--import", tar, "--manifests", manifests,
                    "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        t.up_output = out.stdout
        yield t
    finally:
        t.lab("down")            # a no-op when the last test already took it down
        shutil.rmtree(root, ignore_errors=True)


def wait_for(fn, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_moor_finds_the_lab_from_its_config_file(lab):
    out = lab.moor("get", "nodes")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert {r[0]: r[1] for r in rows} == {f"{lab.name}-h{i}": "Ready" for i in (1, 2, 3)}
    assert f"moor lab down --name {lab.name}" in lab.up_output


def test_status_lists_hosts_with_live_agents(lab):
    out = lab.lab("status")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:NODES + 1]]
    net = lab.cidr.rsplit(".", 1)[0]
    assert [(r[1], r[2]) for r in rows] == [(f"{lab.name}-h{i}", f"{net}.{10 + i}")
                                            for i in (1, 2, 3)]
    for r in rows:
        assert len(r) == 4 and r[3].isdigit(), r          # a pid, not "dead"
        assert os.path.exists(f"/proc/{r[3]}")
    assert f"control plane {net}.11:7440" in out.stdout


def test_manifests_run_spread_over_the_hosts(lab):
    def spread():
        out = lab.moor("get", "pods", "-o", "json")
        if out.returncode != 0:
            return None
        running = [p for p in json.loads(out.stdout)["items"]
                   if p.get("status", {}).get("phase") == "Running"]
        nodes = {p["spec"].get("nodeName") for p in running}
        return nodes if len(running) == 3 else None
    assert wait_for(spread) == {f"{lab.name}-h{i}" for i in (1, 2, 3)}


def test_down_leaves_nothing(lab):
    assert lab.traces() != []                          # the scan does see a live lab
    out = lab.lab("down")
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert f"lab {lab.name} is gone" in out.stdout
    assert lab.traces() == []
    again = lab.lab("down")
    assert again.returncode == 0 and "nothing of lab" in again.stdout
