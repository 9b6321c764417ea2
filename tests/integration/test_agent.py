"""`moor-agent` as a process: static pods start, survive `kill -9` of the agent, are adopted by
the next agent, and go when their manifest goes; plus the crictl-like commands."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from nodeagent.pods import sandbox
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.syscalls import LibcSyscalls
from tests import imagebuild
from tests.conftest import TEST_PREFIX, unique
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")
# Its own pod-namespace prefix: other tests' clean-ups never touch it, nor it theirs.
SANDBOXES = sandbox.Sandboxes(LibcSyscalls())


NETNS_PREFIX = unique("ns") + "-"

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  terminationGracePeriodSeconds: 1   # sh as PID 1 ignores SIGTERM: SIGKILL after 1s
  containers:
  - name: app
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started; while true; do sleep 1; done"]
"""


@pytest.fixture
def agent_env():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "agentd-")
    state, manifests = os.path.join(root, "state"), os.path.join(root, "manifests")
    os.makedirs(manifests)
    cgroup_root = TEST_PREFIX + "agentd"
    base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", state,
            "--cgroup-root", cgroup_root, "--netns-prefix", NETNS_PREFIX]

    def cli(*args, check=True):
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                              check=check)

    def start():
        return subprocess.Popen([*base, "run", "--pod-manifests", manifests],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = []
    yield cli, lambda: procs.append(start()) or procs[-1], manifests, root
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    Runtime(os.path.join(state, "containers"), cgroup_root=cgroup_root).remove_all()
    for name in sandbox.existing(NETNS_PREFIX):
        SANDBOXES.remove(name)
    shutil.rmtree(root, ignore_errors=True)


def running_containers(cli):
    rows = cli("ps").stdout.splitlines()[1:]
    return [r.split() for r in rows if r.split()[3] == "running"]




def test_static_pod_lifecycle_and_agent_crash(agent_env):
    cli, start, manifests, root = agent_env
    tar = imagebuild.busybox_tar(root)
    assert "busybox:test" in cli("import", tar).stdout
    assert "busybox:test" in cli("images").stdout
    with open(os.path.join(manifests, "web.yaml"), "w") as f:
        f.write(POD)
    agent = start()
    (first,) = wait_until(lambda: running_containers(cli))
    cid = first[0]
    assert "started" in wait_until(lambda: cli("logs", cid).stdout)
    assert cli("exec", cid, "hostname").stdout.strip() == "web"

    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert [r[0] for r in running_containers(cli)] == [cid]   # outlived its agent

    start()                                                   # adopts, does not duplicate
    # A barrier: a second pod, which the new agent starts in a pass that also looked at the
    # first one; by the time it runs, a duplicate of the first would run too.
    with open(os.path.join(manifests, "other.yaml"), "w") as f:
        f.write(POD.replace("name: web", "name: other"))
    both = wait_until(lambda: len(running_containers(cli)) >= 2 and running_containers(cli))
    assert len(both) == 2 and cid in [r[0] for r in both]

    os.remove(os.path.join(manifests, "web.yaml"))
    os.remove(os.path.join(manifests, "other.yaml"))
    wait_until(lambda: cli("ps").stdout.count("\n") == 1)     # header only: all gone
    assert not sandbox.existing(NETNS_PREFIX)


def test_bad_manifest_is_skipped_and_errors_are_one_line(agent_env):
    cli, start, manifests, root = agent_env
    bad = cli("logs", "nope", check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("moor-agent: container 'nope' has no logs here")
    mirror = cli("pull", "busybox", "--registry-mirror", "nonsense", check=False)
    assert mirror.returncode == 1
    assert "--registry-mirror 'nonsense': want REGISTRY=URL" in mirror.stderr
