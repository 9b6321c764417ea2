"""Takes a lab down: its processes, containers, namespaces, links, mounts (volumes' too), loop
devices, cgroups and files (volume images with them), then looks for anything of it still
there.

It trusts lab.json where there is one and the lab's name where there is not, so it finishes an
`up` that failed half-way, a `down` that was interrupted, or a lab whose state dir is gone.
Running it twice is harmless: the second run finds nothing and says so.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import signal
import subprocess
import time

from moorage.lab import hosts
from moorage.lab.processes import alive, cmdline, is_zombie, python_argv
from moorage.lab.state import POINTER_DIR, Host, Lab, Say

STOP_GRACE_SECONDS = 10
RESET_TIMEOUT_SECONDS = 120
KILL_WAIT_SECONDS = 5
MNT_DETACH = 2
CGROUP_MOUNT = "/sys/fs/cgroup"
DAEMONS = ("nodeagent.agent", "controlplane.server")


def down(name: str, state_dir: str, say: Say = print) -> list[str]:
    """Removes everything of lab `name`; returns what is left (empty when all went)."""
    hosts.check_name(name)
    lab = Lab.load(state_dir)
    markers = _markers(name, state_dir)
    inodes = _netns_inodes(hosts.host_namespaces(name))

    # The daemons first, so no agent restarts a container while they are removed.
    daemons = {pid: m for pid, m in processes_naming(markers).items()
               if any(d in cmdline(pid) for d in DAEMONS)}
    if lab:
        daemons.update({h.agent_pid: h.state_dir for h in lab.hosts if h.agent_pid})
        if lab.controlplane_pid:
            daemons[lab.controlplane_pid] = lab.controlplane_dir
    _stop_and_say(daemons, say)
    _remove_containers(_hosts_of(name, state_dir, lab), say)
    # What is left: the control plane's etcd, a fork server, a shell in a host's netns.
    _stop_and_say({**processes_naming(markers), **processes_in(inodes)}, say)

    for link in sorted(set(hosts.links(name)) - {hosts.bridge_name(name)}):
        if hosts.remove_link(link):
            say(f"removed link {link}")
    # Pods' namespaces (NAME-h1-...) before their hosts'.
    for ns in sorted(hosts.host_namespaces(name), key=lambda n: (-n.count("-"), n)):
        if hosts.remove_netns(ns):
            say(f"removed netns {ns}")
    for link in hosts.links(name):
        if hosts.remove_link(link):
            say(f"removed link {link}")
    for mount in mounts(name, state_dir):
        if _umount(mount):
            say(f"unmounted {mount}")
    for device, image in loop_devices(state_dir):
        if _detach_loop(device):
            say(f"detached {device} ({image})")
    for cgroup in cgroups(name):
        try:
            os.rmdir(cgroup)
            say(f"removed cgroup {cgroup}")
        except OSError:
            pass
    _remove_config(lab, say)
    if os.path.isdir(state_dir) and not mounts(name, state_dir):
        shutil.rmtree(state_dir, ignore_errors=True)
        say(f"removed {state_dir}")
    pointer = os.path.join(POINTER_DIR, name)
    if os.path.lexists(pointer):
        os.unlink(pointer)
    return leftovers(name, state_dir, inodes)


def _hosts_of(name: str, state_dir: str, lab: Lab | None) -> list[Host]:
    """The lab's hosts from lab.json, else from what carries their names."""
    if lab:
        return lab.hosts
    indices: set[int] = set()
    pattern = re.compile(rf"^{re.escape(name)}-h(\d+)")
    for ns in hosts.host_namespaces(name):
        indices.add(int(pattern.match(ns).group(1)))
    for cgroup in cgroups(name):
        m = pattern.match(os.path.basename(cgroup))
        if m:
            indices.add(int(m.group(1)))
    if os.path.isdir(state_dir):
        indices.update(int(d[1:]) for d in os.listdir(state_dir) if re.fullmatch(r"h\d+", d))
    return [Host(name=hosts.host_netns(name, i), ip="",
                 state_dir=os.path.join(state_dir, f"h{i}"), cgroup_root=hosts.host_netns(name, i),
                 netns_prefix=hosts.pod_netns_prefix(name, i), log="") for i in sorted(indices)]


def _remove_containers(host_list: list[Host], say: Say) -> None:
    """Each host's agent state goes through the agent's own `reset` (shared code imports no
    daemon): containers, the cgroup parent, pod namespaces."""
    for host in host_list:
        if not os.path.isdir(host.state_dir):
            continue
        out = subprocess.run(python_argv(
            "nodeagent.agent", "--state-dir", host.state_dir, "--cgroup-root", host.cgroup_root,
            "--netns-prefix", host.netns_prefix, "reset"),
            capture_output=True, text=True, timeout=RESET_TIMEOUT_SECONDS)
        for line in out.stdout.splitlines():
            say(f"{line} of {host.name}" if "container" in line else line)
        if out.returncode != 0:
            why = (out.stderr.strip().splitlines() or ["no message"])[-1]
            say(f"resetting {host.name} failed: {why}")


# ---- processes ----

def _stop_and_say(pids: dict[int, str], say: Say) -> None:
    names = {pid: cmdline(pid) for pid in pids}
    for pid in stop(pids):
        say(f"stopped pid {pid}: {_short(names[pid])}")


def _short(cmd: str, width: int = 90) -> str:
    cmd = cmd.strip()
    return cmd if len(cmd) <= width else cmd[:width - 3] + "..."


def stop(pids: dict[int, str], grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """SIGTERM, then SIGKILL after `grace`, the pids still alive and ours; `pids` maps each to
    a marker its command line must hold (a pid reused by another program is left alone).
    Returns the pids it signalled."""
    live = [p for p, marker in pids.items() if alive(p, marker)]
    for pid in live:
        _signal(pid, signal.SIGTERM)
    if not _wait_gone(live, pids, grace):
        for pid in live:
            if alive(pid, pids[pid]):
                _signal(pid, signal.SIGKILL)
        _wait_gone(live, pids, KILL_WAIT_SECONDS)
    return live


def _wait_gone(live: list[int], pids: dict[int, str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for pid in live:
            _reap(pid)
        if not any(alive(p, pids[p]) for p in live):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)   # only our child after a failed `up` in this process
    except ChildProcessError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _markers(name: str, state_dir: str) -> list[str | re.Pattern]:
    return [state_dir.rstrip("/") + "/", hosts.host_pattern(name)]


def processes_naming(markers: list[str | re.Pattern]) -> dict[int, str]:
    """Every live process (but this one and its ancestors) whose command line holds a marker
    (a string, or a pattern that searches it), mapped to what it matched."""
    skip = _ancestors()
    found = {}
    for pid in _pids():
        if pid in skip:
            continue
        cmd = cmdline(pid)
        for marker in markers:
            hit = marker if isinstance(marker, str) and marker in cmd else None
            if isinstance(marker, re.Pattern) and (m := marker.search(cmd)):
                hit = m.group(0)
            if hit and not is_zombie(pid):
                found[pid] = hit
                break
    return found


def processes_in(inodes: set[int]) -> dict[int, str]:
    """Every live process in one of these network namespaces, mapped to its command line."""
    if not inodes:
        return {}
    skip = _ancestors()
    found = {}
    for pid in _pids():
        try:
            link = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if pid not in skip and int(link.split("[")[1].rstrip("]")) in inodes:
            cmd = cmdline(pid)
            if cmd and not is_zombie(pid):
                found[pid] = cmd
    return found


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _netns_inodes(names: list[str]) -> set[int]:
    found = set()
    for ns in names:
        try:
            found.add(os.stat(os.path.join(hosts.NETNS_DIR, ns)).st_ino)
        except OSError:
            pass
    return found


# ---- mounts, cgroups, files ----

def mounts(name: str, state_dir: str) -> list[str]:
    """Mount points under the state dir or of the lab's netns, deepest first."""
    under = state_dir.rstrip("/") + "/"
    found = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            ns_dir, ns = os.path.split(point)
            if point.startswith(under) or point == under.rstrip("/") or (
                    ns_dir in (hosts.NETNS_DIR, "/run/netns") and hosts.is_lab_netns(name, ns)):
                found.add(point)
    return sorted(found, key=lambda p: (-p.count("/"), p))


def _umount(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.umount2(path.encode(), MNT_DETACH) == 0


def loop_devices(state_dir: str) -> list[tuple[str, str]]:
    """(device, image) of every loop device whose image file is under the state dir (a
    volume's or an emptyDir's: their mounts went above, and with them autoclear devices)."""
    under = state_dir.rstrip("/") + "/"
    found = []
    for backing in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            with open(backing) as f:
                image = f.read().strip()
        except OSError:
            continue
        if image.startswith(under):
            found.append((f"/dev/{backing.split('/')[3]}", image))
    return found


def _detach_loop(device: str) -> bool:
    return subprocess.run(["losetup", "-d", device], capture_output=True).returncode == 0


def cgroups(name: str) -> list[str]:
    """The lab's cgroups (its agents' roots and all below) in every hierarchy, deepest first."""
    own = re.compile(rf"{re.escape(name)}-h\d+")
    found = []
    for root, dirs, _ in os.walk(CGROUP_MOUNT):
        inside = any(own.fullmatch(part) for part in root.split("/"))
        found += [os.path.join(root, d) for d in dirs if inside or own.fullmatch(d)]
        if not inside and root.count("/") > 4:
            dirs[:] = []   # the agents' roots sit at the top of each hierarchy
    return sorted(found, key=lambda p: (-p.count("/"), p))


def _remove_config(lab: Lab | None, say: Say) -> None:
    import pathlib

    from moorage.cli import config
    from moorage.cli.errors import CliError

    if not lab or not lab.config_path:
        return
    path = pathlib.Path(lab.config_path)
    try:
        settings = config.read_config_file(path)
    except CliError:
        return   # not readable as ours: leave it to its owner
    if settings.get("server") == lab.address:
        path.unlink()
        say(f"removed {path} (it pointed at this lab)")


def leftovers(name: str, state_dir: str, inodes: set[int] = frozenset()) -> list[str]:
    """Anything of the lab still there: processes, netns, links, mounts, cgroups, files."""
    procs = {**processes_naming(_markers(name, state_dir)),
             **processes_in(set(inodes))}
    left = [f"process {pid}: {_short(cmdline(pid))}" for pid in sorted(procs)]
    left += [f"netns {ns}" for ns in hosts.host_namespaces(name)]
    left += [f"link {link}" for link in hosts.links(name)]
    left += [f"mount {m}" for m in mounts(name, state_dir)]
    left += [f"loop {d}: {image}" for d, image in loop_devices(state_dir)]
    left += [f"cgroup {c}" for c in cgroups(name)]
    if os.path.lexists(state_dir):
        left.append(f"dir {state_dir}")
    if os.path.lexists(os.path.join(POINTER_DIR, name)):
        left.append(f"file {os.path.join(POINTER_DIR, name)}")
    return left
