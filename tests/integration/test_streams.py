"""`moor logs`, `moor exec` and `moor top` against a real cluster: a control plane and three
agents running real containers, reached through the control plane whichever node a pod is on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODES = ["node-1", "node-2", "node-3"]


def pod(name: str, node: str, containers: dict[str, str], restart: str = "Always") -> str:
    """A Pod pinned to `node` (nodeName set, so no scheduler luck is involved)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "restartPolicy": restart,
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": c, "image": "busybox:test", "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", script]}
                                for c, script in containers.items()]}})


@pytest.fixture(scope="module")
def cluster(etcd_endpoint):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "podio-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    tar = imagebuild.busybox_tar(root)
    agents = start_agents(cp, root, NODES, tar)
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)

    def popen(*args, **kw):
        return subprocess.Popen([sys.executable, "-m", "moorage.cli.main", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    moor.popen, moor.env = popen, env
    try:
        wait_for(lambda: set(ready_nodes(moor)) == set(NODES), what="3 Ready nodes",
                 agents=agents)
        manifests = [
            # node-1 runs a pod that counts; node-3 runs the 2-container pod and the others.
            pod("counter", "node-1", {"app": "i=0; while true; do echo line $i; i=$((i+1)); "
                                             "sleep 0.2; done"}),
            pod("pair", "node-3", {"a": "echo from-a; sleep 3600", "b": "echo from-b >&2; "
                                                                     "sleep 3600"}),
            pod("brief", "node-2", {"app": "echo one; echo two; sleep 4; echo three"},
                restart="Never"),
            pod("restarts", "node-3", {"app": "echo run-$(date +%s%N); sleep 2; exit 1"}),
        ]
        out = moor("apply", "-f", "-", stdin="\n---\n".join(manifests))
        assert out.returncode == 0, out.stderr
        wait_for(lambda: phases(moor).get("counter") == "Running"
                 and phases(moor).get("pair") == "Running", what="pods running", agents=agents)
        yield moor, agents
    finally:
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


def wait_for(fn, timeout=90, what="condition", agents=()):
    """The shared wait, with the agents' logs added to a timeout."""
    try:
        return wait_until(fn, timeout, what, interval=0.3)
    except AssertionError as err:
        logs = "\n".join(f"--- {a.name}\n{a.log()}" for a in agents)
        raise AssertionError(f"{err}\n{logs}") from None


def ready_nodes(moor) -> list[str]:
    out = moor("get", "nodes")
    return [ln.split()[0] for ln in out.stdout.splitlines()[1:] if ln.split()[1] == "Ready"]


def phases(moor) -> dict[str, str]:
    out = moor("get", "pods", "-o", "json")
    if out.returncode != 0:
        return {}
    return {p["metadata"]["name"]: p.get("status", {}).get("phase", "")
            for p in json.loads(out.stdout)["items"]}


def restart_count(moor, name: str) -> int:
    out = moor("get", "pod", name, "-o", "json")
    if out.returncode != 0:
        return 0
    statuses = json.loads(out.stdout).get("status", {}).get("containerStatuses", [])
    return sum(s.get("restartCount", 0) for s in statuses)


def test_logs_of_pods_on_different_nodes(cluster):
    moor, _ = cluster
    out = wait_for(lambda: (r := moor("logs", "counter")).returncode == 0
                   and "line 2" in r.stdout and r)
    assert out.stdout.startswith("line 0\nline 1\n")
    out = moor("logs", "pair", "-c", "b")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from-b\n"          # stderr lines are log lines too, on stdout
    tail = moor("logs", "counter", "--tail", "2", "--timestamps")
    lines = tail.stdout.splitlines()
    assert len(lines) == 2
    assert all(ln.split(" ", 1)[0].endswith("Z") and ln.split(" ", 1)[1].startswith("line ")
               for ln in lines)


def test_logs_follow_ends_when_the_container_exits(cluster):
    moor, _ = cluster
    wait_for(lambda: "one" in moor("logs", "brief").stdout)
    proc = moor.popen("logs", "-f", "brief")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "one\ntwo\nthree\n"


def test_logs_follow_is_interrupted_quietly(cluster):
    moor, _ = cluster
    proc = moor.popen("logs", "-f", "counter", "--tail", "1")
    first = proc.stdout.readline()
    second = proc.stdout.readline()
    assert first.startswith("line ") and second.startswith("line ")
    assert int(second.split()[1]) == int(first.split()[1]) + 1   # new lines as they come
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == ""


def test_logs_previous_after_a_restart(cluster):
    moor, _ = cluster
    wait_for(lambda: restart_count(moor, "restarts") >= 1, what="a restart")
    previous = moor("logs", "restarts", "--previous")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout.startswith("run-")
    current = wait_for(lambda: (r := moor("logs", "restarts")).stdout and r)
    assert current.stdout.startswith("run-")
    assert current.stdout != previous.stdout
    none = moor("logs", "counter", "--previous")
    assert none.returncode == 1
    assert 'previous terminated container "app" in pod "counter" not found' in none.stderr


def test_exec_exit_codes_output_and_stdin(cluster):
    moor, _ = cluster
    out = moor("exec", "counter", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert out.returncode == 3
    assert out.stdout == "out\n" and out.stderr == "err\n"
    out = moor("exec", "pair", "-c", "a", "--", "hostname")
    assert out.returncode == 0 and out.stdout.strip() == "pair"
    data = "".join(f"stdin line {i}\n" for i in range(2000))
    out = moor("exec", "-i", "counter", "--", "cat", stdin=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    out = moor("exec", "-i", "counter", "--", "wc", "-l", stdin="a\nb\n")
    assert out.stdout.strip() == "2"


def test_exec_with_a_tty(cluster):
    moor, _ = cluster
    out = moor("exec", "-t", "counter", "--", "sh", "-c", "test -t 0 && test -t 1 && echo tty")
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace("\r", "") == "tty\n"


def test_exec_command_not_found(cluster):
    moor, _ = cluster
    out = moor("exec", "counter", "--", "no-such-command")
    assert out.returncode == 127


def test_errors(cluster):
    moor, _ = cluster
    out = moor("logs", "ghost")
    assert out.returncode == 1
    assert out.stderr.strip() == 'Error from server (NotFound): pods "ghost" not found'
    out = moor("exec", "ghost", "--", "true")
    assert out.stderr.strip() == 'Error from server (NotFound): pods "ghost" not found'
    out = moor("logs", "pair")
    assert out.returncode == 1
    assert out.stderr.strip() == ("Error from server (BadRequest): a container name must be "
                                  "specified for pod pair, choose one of: [a b]")
    out = moor("exec", "pair", "--", "true")
    assert "a container name must be specified for pod pair" in out.stderr
    out = moor("exec", "counter")
    assert out.returncode == 1 and "at least one command" in out.stderr


def test_top_nodes_and_pods(cluster):
    moor, _ = cluster
    out = moor("top", "nodes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == set(NODES)
    for row in rows.values():
        assert row[1].endswith("m") and row[2].endswith("%")
        assert row[3].endswith("Mi") and int(row[3][:-2]) > 0

    out = moor("top", "pods")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    names = {ln.split()[0] for ln in lines[1:]}
    assert {"counter", "pair"} <= names
    out = moor("top", "pods", "-A", "--containers")
    rows = [ln.split() for ln in out.stdout.splitlines()]
    assert rows[0] == ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert ["default", "pair", "a"] in [r[:3] for r in rows]
    assert ["default", "pair", "b"] in [r[:3] for r in rows]


def test_exec_interactive_terminal(cluster):
    """`moor exec -it` from a terminal: raw mode locally, a remote shell, its exit code."""
    import pty
    import select

    moor, _ = cluster
    pid, fd = pty.fork()
    if pid == 0:   # the child: `moor` with the pty as its terminal
        os.execve(sys.executable, [sys.executable, "-m", "moorage.cli.main", "exec", "-it",
                                   "counter", "--", "sh"], moor.env)
    out = b""
    sent = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not sent and b"# " in out:
            # Typed at the prompt: busybox's shell reads the terminal's answer to its cursor
            # query first, and would take earlier input for that answer.
            os.write(fd, b"echo $((6 * 7)); exit 5\n")
            sent = True
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:   # EIO: the child is gone
            break
        if not chunk:
            break
        out += chunk
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, out
    assert b"42" in out


def nsexec_running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"nodeagent.runtime.nsexec" in cmd and marker.encode() in cmd:
            return True
    return False


def test_caller_hanging_up_stops_the_exec(cluster):
    moor, _ = cluster
    marker = "moortest-hangup-marker"
    proc = moor.popen("exec", "-i", "counter", "--", "sh", "-c", f"cat; : {marker}",
                      stdin=subprocess.PIPE)
    wait_for(lambda: nsexec_running(marker), timeout=30, what="the exec to start")
    proc.kill()   # no goodbye: the control plane sees the call cancelled
    proc.communicate()
    wait_for(lambda: not nsexec_running(marker), timeout=30, what="the exec to be stopped")
