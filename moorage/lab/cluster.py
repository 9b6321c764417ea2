"""Brings a lab up and reports on it: the hosts (see hosts.py), a control plane in host 1, an
agent in every host, all as processes that outlive `moor lab up`, recorded in
`<state-dir>/lab.json` (teardown.py takes it down).

The state file is written before anything is made and updated after each step, so `down` works
from a new shell and after an `up` that failed or was killed half-way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from moorage.fsutil import write_atomic
from moorage.lab import DEFAULT_CIDR, DEFAULT_NAME, DEFAULT_NODES, hosts  # noqa: F401
from moorage.lab.hosts import LabError
from moorage.lab.processes import alive, python_argv, spawn, tail
from moorage.lab.state import POINTER_DIR, Host, Lab, Say
from moorage.lab.teardown import down

API_PORT = 7440
METRICS_PORT = 7441
AGENT_METRICS_PORT = 10255
CONTROLPLANE_READY = "moor-controlplane: serving on"
CONTROLPLANE_SECONDS = 30
NODES_SECONDS = 60
JOIN_TOKEN_TTL = "1h"

def plan(name: str, nodes: int, cidr: str, state_dir: str) -> Lab:
    """The lab to make, with every name and address decided; pure."""
    hosts.check_name(name)
    if not 1 <= nodes <= hosts.max_hosts():
        raise LabError(f"--nodes {nodes}: want 1 to {hosts.max_hosts()}")
    underlay = hosts.Underlay.parse(cidr, nodes)
    cp_dir = os.path.join(state_dir, "controlplane")
    lab = Lab(name=name, state_dir=state_dir, underlay=str(underlay.network),
              gateway=underlay.gateway, bridge=hosts.bridge_name(name),
              address=f"{underlay.host_ip(1)}:{API_PORT}", controlplane_dir=cp_dir,
              controlplane_log=os.path.join(state_dir, "controlplane.log"))
    for i in range(1, nodes + 1):
        host = hosts.host_netns(name, i)
        lab.hosts.append(Host(
            name=host, ip=underlay.host_ip(i), state_dir=os.path.join(state_dir, f"h{i}"),
            cgroup_root=host, netns_prefix=hosts.pod_netns_prefix(name, i),
            log=os.path.join(state_dir, f"h{i}.log")))
    return lab


# ---- up ----

def moor(*args: str, server: str | None = None, credentials: str | None = None,
         check: bool = False) -> subprocess.CompletedProcess:
    """Runs the `moor` CLI; --server given explicitly so the caller's config does not matter."""
    argv = python_argv("moorage.cli.main")
    if server:
        argv += ["--server", server]
    if credentials:
        argv += ["--credentials", credentials]
    env = {k: v for k, v in os.environ.items() if k != "MOOR_SERVER"}
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise LabError(f"moor {' '.join(args)} failed: "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def admin_credentials(lab: Lab) -> str:
    """The admin credential the control plane writes before it says it is serving."""
    return os.path.join(lab.controlplane_dir, "admin.pem")


def join_token(lab: Lab) -> str:
    """One join token for all the agents; it expires, the agents' certificates stay."""
    out = moor("token", "create", "--ttl", JOIN_TOKEN_TTL, server=lab.address,
               credentials=admin_credentials(lab), check=True)
    token = out.stdout.strip()
    if not token or len(token.split()) != 1:
        raise LabError(f"moor token create printed {out.stdout!r}, not one token")
    return token


def ready_nodes(lab: Lab) -> set[str]:
    out = moor("get", "nodes", server=lab.address, credentials=admin_credentials(lab))
    if out.returncode != 0:
        return set()
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    return {r[0] for r in rows if len(r) > 1 and r[1] == "Ready"}


def up(lab: Lab, *, images: tuple[str, ...] = (), agent_flags: tuple[str, ...] = (),
       manifests: str | None = None, say: Say = print) -> Lab:
    """Makes `lab`; on any failure removes what it made and raises LabError."""
    if os.geteuid() != 0:
        raise LabError("moor lab needs root: it makes network namespaces, links and cgroups")
    for tool in ("nsenter",):
        if not shutil.which(tool):
            raise LabError(f"{tool} is not installed (Debian: apt-get install util-linux)")
    for image in images:
        if not os.path.isfile(image):
            raise LabError(f"--import {image}: no such file")
    if manifests and not os.path.exists(manifests):
        raise LabError(f"--manifests {manifests}: no such file or directory")
    existing = _existing(lab)
    if existing:
        raise LabError(f"lab {lab.name} already exists ({existing}); "
                       f"`moor lab down --name {lab.name}` removes it")
    conflicts = hosts.route_conflicts(hosts.Underlay.parse(lab.underlay, len(lab.hosts)))
    if conflicts:
        raise LabError(f"the underlay {lab.underlay} is in use here ({', '.join(conflicts)}); "
                       "pick another with --underlay-cidr")
    os.makedirs(lab.state_dir, mode=0o700, exist_ok=True)
    lab.save()
    os.makedirs(POINTER_DIR, exist_ok=True)
    os.symlink(lab.state_dir, os.path.join(POINTER_DIR, lab.name))
    try:
        _make(lab, images, agent_flags, manifests, say)
    except BaseException as err:
        reason = str(err) if isinstance(err, LabError) else f"{type(err).__name__}: {err}"
        kept = _keep_logs(lab)
        say("up failed: removing what it made")
        down(lab.name, lab.state_dir, say=lambda line: say("  " + line))
        if kept:
            reason += f"\n(the logs are kept in {kept}; the paths above are gone)"
        raise LabError(reason) from (None if isinstance(err, LabError) else err)
    return lab


def _keep_logs(lab: Lab) -> str:
    """Copies the lab's logs out of its state dir, which the teardown removes."""
    logs = [p for p in (lab.controlplane_log, *(h.log for h in lab.hosts)) if os.path.exists(p)]
    if not logs:
        return ""
    keep = tempfile.mkdtemp(prefix=f"moor-lab-{lab.name}-logs-")
    for path in logs:
        shutil.copy(path, keep)
    return keep


def _existing(lab: Lab) -> str:
    if os.path.exists(lab.state_file):
        return f"{lab.state_file} exists"
    if os.path.lexists(os.path.join(POINTER_DIR, lab.name)):
        return f"{os.path.join(POINTER_DIR, lab.name)} exists"
    found = hosts.host_namespaces(lab.name) + hosts.links(lab.name)
    return f"found {', '.join(found)}" if found else ""


def _make(lab: Lab, images, agent_flags, manifests, say: Say) -> None:
    underlay = hosts.Underlay.parse(lab.underlay, len(lab.hosts))
    say(f"underlay {lab.underlay}: bridge {lab.bridge} with {lab.gateway} in this namespace")
    hosts.create_bridge(lab.bridge, underlay)
    lab.links.append(lab.bridge)
    lab.save()
    for i, host in enumerate(lab.hosts, 1):
        hosts.create_netns(host.name)
        veth = hosts.veth_name(lab.name, i)
        lab.links.append(veth)
        lab.save()
        hosts.plug_host(host.name, veth, lab.bridge, host.ip, underlay)
    say(f"hosts: {', '.join(f'{h.name} ({h.ip})' for h in lab.hosts)}")
    for host in lab.hosts:
        for image in images:
            out = subprocess.run(python_argv("nodeagent.agent", *_agent_globals(host), "import",
                                         image), capture_output=True, text=True)
            if out.returncode != 0:
                raise LabError(f"importing {image} into {host.name}: {out.stderr.strip()}")
    if images:
        say(f"imported {', '.join(images)} into every host")
    first = lab.hosts[0]
    lab.controlplane_pid = spawn(hosts.in_netns(first.name, python_argv(
        "controlplane.server", "--listen", lab.address,
        "--metrics-listen", f"{first.ip}:{METRICS_PORT}", "--state-dir", lab.controlplane_dir)),
        lab.controlplane_log)
    lab.save()
    _wait_controlplane(lab)
    say(f"control plane on {lab.address} in {first.name} (pid {lab.controlplane_pid}), "
        f"with its own etcd")
    # The token goes to the agents in a file only root reads, never on a command line.
    token_file = os.path.join(lab.state_dir, "join-token")
    write_atomic(token_file, join_token(lab) + "\n", mode=0o600)
    lab.agent_flags = list(agent_flags)
    for host in lab.hosts:
        host.agent_pid = spawn(hosts.in_netns(host.name, _agent_argv(lab, host, token_file)),
                                host.log)
        lab.save()
    say(f"agents in {', '.join(h.name for h in lab.hosts)}; waiting for their nodes to be Ready")
    _wait_nodes(lab)
    os.remove(token_file)   # joined: the agents keep their certificates
    _write_config(lab, say)
    if manifests:
        out = moor("apply", "-f", manifests, server=lab.address,
                   credentials=admin_credentials(lab), check=True)
        say(out.stdout.rstrip())


def _agent_argv(lab: Lab, host: Host, token_file: str = "") -> list[str]:
    return python_argv("nodeagent.agent", *_agent_globals(host), "run", "--join", lab.address,
                   "--node-name", host.name, "--advertise-address", host.ip,
                   "--metrics-listen", f"{host.ip}:{AGENT_METRICS_PORT}",
                   *(("--token-file", token_file) if token_file else ()), *lab.agent_flags)


def restart_agent(lab: Lab, host_name: str, sig: int = signal.SIGKILL) -> int:
    """Stops a host's agent (kill -9 by default: a crash) and starts it again; its containers
    and pod network stay, and it rejoins with the certificate it already has."""
    host = next((h for h in lab.hosts if h.name == host_name), None)
    if host is None:
        raise LabError(f"lab {lab.name} has no host {host_name!r}")
    if host.agent_pid and alive(host.agent_pid, host.state_dir):
        os.kill(host.agent_pid, sig)
        deadline = time.monotonic() + 10
        while alive(host.agent_pid, host.state_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
    host.agent_pid = spawn(hosts.in_netns(host.name, _agent_argv(lab, host)), host.log)
    lab.save()
    return host.agent_pid


def _agent_globals(host: Host) -> list[str]:
    return ["--state-dir", host.state_dir, "--cgroup-root", host.cgroup_root,
            "--netns-prefix", host.netns_prefix]


def _wait_controlplane(lab: Lab) -> None:
    deadline = time.monotonic() + CONTROLPLANE_SECONDS
    while time.monotonic() < deadline:
        if CONTROLPLANE_READY in tail(lab.controlplane_log, 200):
            return
        if not alive(lab.controlplane_pid, lab.controlplane_dir):
            raise LabError(f"the control plane exited; its log {lab.controlplane_log} ends:\n"
                           + tail(lab.controlplane_log))
        time.sleep(0.2)
    raise LabError(f"the control plane did not start within {CONTROLPLANE_SECONDS}s; "
                   f"see {lab.controlplane_log}")


def _wait_nodes(lab: Lab) -> None:
    deadline = time.monotonic() + NODES_SECONDS
    missing = list(lab.hosts)
    while time.monotonic() < deadline:
        ready = ready_nodes(lab)
        missing = [h for h in lab.hosts if h.name not in ready]
        if not missing:
            return
        dead = [h for h in missing if not alive(h.agent_pid, h.state_dir)]
        if dead:
            break
        time.sleep(0.5)
    lines = [f"  {h.name}: agent {'running' if alive(h.agent_pid, h.state_dir) else 'exited'}"
             f", log {h.log}" for h in missing]
    raise LabError(f"{len(missing)} of {len(lab.hosts)} nodes not Ready within {NODES_SECONDS}s:"
                   "\n" + "\n".join(lines))


def _write_config(lab: Lab, say: Say) -> None:
    from moorage.cli import config

    path = config.default_config_path()
    before = config.read_config_file(path).get("server")
    config.write_config(path, lab.address, credentials=admin_credentials(lab))
    lab.config_path = str(path)
    lab.save()
    note = f" (it pointed at {before})" if before and before != lab.address else ""
    say(f"wrote {path}: moor now talks to this lab{note}")


def usage(lab: Lab) -> str:
    """How to use the lab, for the end of `up`."""
    other = lab.hosts[1 if len(lab.hosts) > 1 else 0].name
    lines = [
        ("moor get nodes -o wide", "its nodes, one per host"),
        ("moor get pods -A -o wide", "every pod and the host it runs on"),
        (f"ip netns exec {other} ip addr", f"run a command on host {other}"),
        (f"moor lab status --name {lab.name}", "hosts, addresses, processes"),
        (f"moor lab down --name {lab.name}", "stop it and remove everything it made"),
    ]
    width = max(len(cmd) for cmd, _ in lines) + 3
    return (f"lab {lab.name} is up: {len(lab.hosts)} hosts, control plane {lab.address}, "
            f"state and logs in {lab.state_dir}\n"
            + "\n".join(f"  {cmd.ljust(width)}{why}" for cmd, why in lines))


# ---- status ----

def status(name: str, state_dir: str) -> tuple[Lab, list[tuple[str, ...]]]:
    lab = Lab.load(state_dir)
    if lab is None:
        raise LabError(f"no lab {name} (no {state_dir}/lab.json); "
                       f"`moor lab up --name {name}` makes one")
    rows = [("HOST", "NETNS", "UNDERLAY", "AGENT PID")]
    for host in lab.hosts:
        ns = host.name if os.path.exists(os.path.join(hosts.NETNS_DIR, host.name)) \
            else f"{host.name} (gone)"
        pid = str(host.agent_pid or "-")
        if host.agent_pid and not alive(host.agent_pid, host.state_dir):
            pid += " dead"
        rows.append((host.name.rsplit("-", 1)[1], ns, host.ip, pid))
    return lab, rows
