"""Per-container cgroups on v1 (one dir per controller hierarchy) or v2 (one unified dir)."""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

CGROUP_MOUNT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("cpu", "memory", "pids")
CFS_PERIOD_US = 100_000  # the kubelet's default period


def detect_version(mount: str = CGROUP_MOUNT) -> int:
    """2 when the unified hierarchy is mounted at the top (it has cgroup.controllers), else 1."""
    return 2 if os.path.exists(os.path.join(mount, "cgroup.controllers")) else 1


def cpu_shares(request_millicores: int | None) -> int:
    """cpu.shares from a CPU request as the kubelet computes it: millicores*1024/1000, min 2."""
    if not request_millicores:
        return 2
    return max(2, request_millicores * 1024 // 1000)


def cpu_weight(shares: int) -> int:
    """cpu.weight from shares with the runc/systemd formula, mapping [2, 262144] onto [1, 10000]."""
    return 1 + ((shares - 2) * 9999) // 262142


def cpu_quota(limit_millicores: int | None, period: int = CFS_PERIOD_US) -> int | None:
    """CFS quota in µs per period; the kernel refuses under 1000µs, as does the kubelet."""
    if not limit_millicores:
        return None
    return max(1000, limit_millicores * period // 1000)


@dataclass(frozen=True, slots=True)
class Limits:
    memory: int | None = None
    cpu_quota_millicores: int | None = None
    cpu_request_millicores: int | None = None
    pids: int | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    cpu_seconds: float
    memory_working_set: int
    memory_usage: int
    pids: int


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_or(path: str, default: str = "") -> str:
    try:
        return _read(path)
    except OSError:
        return default


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One container's cgroup: `paths` maps controller name (or "" on v2) to its directory."""

    version: int
    paths: tuple[tuple[str, str], ...]

    @classmethod
    def for_container(cls, root: str, cid: str, mount: str = CGROUP_MOUNT,
                      version: int | None = None) -> Cgroup:
        version = version or detect_version(mount)
        if version == 2:
            return cls(2, (("", os.path.join(mount, root, cid)),))
        paths = tuple((c, os.path.join(mount, c, root, cid)) for c in V1_CONTROLLERS
                      if os.path.isdir(os.path.join(mount, c)))
        return cls(1, paths)

    def path(self, controller: str) -> str | None:
        for c, p in self.paths:
            if c == controller or (self.version == 2 and c == ""):
                return p
        return None

    def dirs(self) -> list[str]:
        return [p for _, p in self.paths]

    def create(self, limits: Limits) -> None:
        if self.version == 2:
            self._enable_v2_controllers()
        for d in self.dirs():
            os.makedirs(d, exist_ok=True)
        self.set_limits(limits)

    def _enable_v2_controllers(self) -> None:
        # Controllers must be enabled in every ancestor's subtree_control, top down; one
        # the parent cannot give (e.g. cpu under a threaded or rt-busy parent) is skipped.
        leaf = self.path("")
        mount = os.path.dirname(os.path.dirname(leaf))
        parent = os.path.dirname(leaf)
        os.makedirs(parent, exist_ok=True)
        for d in (os.path.dirname(parent), parent):
            if not d.startswith(mount) or len(d) < len(mount):
                continue
            control = os.path.join(d, "cgroup.subtree_control")
            try:
                _write(control, " ".join(f"+{c}" for c in V2_CONTROLLERS))
                continue
            except OSError:
                pass  # one is unavailable: the kernel takes all or none, so go one by one
            for c in V2_CONTROLLERS:
                try:
                    _write(control, f"+{c}")
                except OSError:
                    pass

    def set_limits(self, limits: Limits) -> None:
        mem, cpu, pids = self.path("memory"), self.path("cpu"), self.path("pids")
        if self.version == 1:
            if mem and limits.memory:
                _write(os.path.join(mem, "memory.limit_in_bytes"), str(limits.memory))
                # With swap accounting on, cap memory+swap too so the limit cannot leak to swap.
                memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(limits.memory))
            if cpu:
                _write(os.path.join(cpu, "cpu.shares"),
                       str(cpu_shares(limits.cpu_request_millicores)))
                quota = cpu_quota(limits.cpu_quota_millicores)
                if quota:
                    _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
                    _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
            if pids and limits.pids:
                _write(os.path.join(pids, "pids.max"), str(limits.pids))
            return
        d = self.path("")
        if limits.memory and os.path.exists(os.path.join(d, "memory.max")):
            _write(os.path.join(d, "memory.max"), str(limits.memory))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
        if os.path.exists(os.path.join(d, "cpu.weight")):
            _write(os.path.join(d, "cpu.weight"),
                   str(cpu_weight(cpu_shares(limits.cpu_request_millicores))))
            quota = cpu_quota(limits.cpu_quota_millicores)
            if quota:
                _write(os.path.join(d, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
        if limits.pids and os.path.exists(os.path.join(d, "pids.max")):
            _write(os.path.join(d, "pids.max"), str(limits.pids))

    def add(self, pid: int) -> None:
        """Move pid in; 0 means the calling process (both versions accept it)."""
        for d in self.dirs():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for d in self.dirs():
            try:
                seen.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except FileNotFoundError:
                pass
        return sorted(seen)

    def oom_kills(self) -> int:
        """How many times the kernel OOM-killed a process here (0 when it cannot tell)."""
        if self.version == 2:
            try:
                return _kv(_read(os.path.join(self.path(""), "memory.events"))).get("oom_kill", 0)
            except OSError:
                return 0
        mem = self.path("memory")
        if not mem:
            return 0
        try:
            ctl = _kv(_read(os.path.join(mem, "memory.oom_control")))
        except OSError:
            return 0
        if "oom_kill" in ctl:
            return ctl["oom_kill"]
        # Kernels before 4.13 have no counter; a limit hit while under_oom is the best sign.
        failcnt = int(_read(os.path.join(mem, "memory.failcnt")).strip() or 0)
        return 1 if ctl.get("under_oom") and failcnt else 0

    def stats(self) -> Stats:
        """Missing files (a controller not enabled here) read as zero rather than failing."""
        if self.version == 2:
            d = self.path("")
            cpu = _kv(_read_or(os.path.join(d, "cpu.stat"))).get("usage_usec", 0) / 1e6
            usage = int(_read_or(os.path.join(d, "memory.current"), "0").strip())
            inactive = _kv(_read_or(os.path.join(d, "memory.stat"))).get("inactive_file", 0)
            pids_file = os.path.join(d, "pids.current")
        else:
            acct = self.path("cpuacct") or "/nonexistent"
            mem = self.path("memory") or "/nonexistent"
            cpu = int(_read_or(os.path.join(acct, "cpuacct.usage"), "0").strip()) / 1e9
            usage = int(_read_or(os.path.join(mem, "memory.usage_in_bytes"), "0").strip())
            stat = _kv(_read_or(os.path.join(mem, "memory.stat")))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            pids_file = os.path.join(self.path("pids") or "/nonexistent", "pids.current")
        try:
            npids = int(_read(pids_file).strip())
        except OSError:
            npids = len(self.pids())
        # Working set as cAdvisor reports it: usage minus what the kernel can drop for free.
        return Stats(cpu, max(0, usage - inactive), usage, npids)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill whatever is left inside, then delete the dirs (rmdir, never rm -r)."""
        deadline = time.monotonic() + timeout
        kill_file = os.path.join(self.path("") or "", "cgroup.kill")
        if self.version == 2 and os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for d in self.dirs():
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    # EBUSY lingers a moment after the last task exits; retry until the deadline.
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def remove_parent(root: str, mount: str = CGROUP_MOUNT) -> None:
    """Remove the (empty) parent `root` in every hierarchy; tests use it to leave nothing."""
    candidates = [os.path.join(mount, root)] + [
        os.path.join(mount, c, root) for c in V1_CONTROLLERS]
    for d in candidates:
        try:
            os.rmdir(d)
        except OSError:
            pass
