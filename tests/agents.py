"""Real agents as processes for integration tests: each with its own state dir, cgroup parent
and netns prefix under the test prefix, joined to a control plane with a real join token.
They share this machine's network namespace, so pods get no overlay (`--pod-network none`);
the overlay is tested with one network namespace per host (test_datapath, test_lab)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import stop_process


class Agent:
    def __init__(self, root: str, name: str, cp, image_tar: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        from tests.conftest import unique

        self.name = name
        self.cp = cp
        self.state = os.path.join(root, name)
        # Unique per test, so a leftover is traceable and two tests never share a cgroup.
        self.cgroup_root = unique(f"{name}-")
        # Its own prefix: clean-ups of one test never reach another's pod namespaces.
        self.netns_prefix = unique("ns") + "-"
        self.base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", self.state,
                     "--cgroup-root", self.cgroup_root, "--netns-prefix", self.netns_prefix]
        self.extra_args = extra_args
        if image_tar:
            subprocess.run([*self.base, "import", image_tar], check=True, capture_output=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(root, f"{name}.log")

    def start(self, token: str | None = None) -> None:
        """Starts the agent; it joins with a fresh token unless it already has a certificate."""
        if token is None and not os.path.exists(os.path.join(self.state, "pki", "node.crt")):
            token = self.cp.token()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        env = dict(os.environ)
        env.pop("MOOR_JOIN_TOKEN", None)
        if token:
            env["MOOR_JOIN_TOKEN"] = token   # as an operator would: never on the command line
        self.proc = subprocess.Popen(
            [*self.base, "run", "--join", self.cp.address, "--node-name", self.name,
             "--advertise-address", "127.0.0.1", "--pod-network", "none",
             "--metrics-listen", "",   # several agents share this namespace: no fixed port
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        from nodeagent.runtime.runtime import Runtime

        if self.proc and self.proc.poll() is None:
            stop_process(self.proc)
        Runtime(os.path.join(self.state, "containers"), cgroup_root=self.cgroup_root).remove_all()
        remove_sandboxes(self.netns_prefix)
        remove_volumes(os.path.join(self.state, "volumes"))
        remove_local_volumes(os.path.join(self.state, "local-volumes"))


def start_agents(cp, root: str, names, image_tar: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> list[Agent]:
    agents = [Agent(root, name, cp, image_tar, extra_args) for name in names]
    for agent in agents:
        agent.start()
    return agents


def remove_sandboxes(prefix: str) -> None:
    from nodeagent.pods import sandbox
    from nodeagent.runtime.syscalls import LibcSyscalls

    sandboxes = sandbox.Sandboxes(LibcSyscalls())
    for ns in sandbox.existing(prefix):
        sandboxes.remove(ns)


def remove_local_volumes(root: str) -> None:
    """The mounts and loop devices of an agent's local persistent volumes (their images go
    with the test's temp dir)."""
    from nodeagent.runtime.syscalls import LibcSyscalls
    from nodeagent.storage.localvolumes import unmount_all

    unmount_all(LibcSyscalls(), root)


def remove_volumes(root: str) -> None:
    """Every pod volume tmpfs an agent left under its state dir (it was killed, say)."""
    from nodeagent.pods import volumes
    from nodeagent.runtime.syscalls import LibcSyscalls

    volumes.remove_all(LibcSyscalls(), root)
