"""Cheap, cached reads of what the runtime knows, for scrapes that look at every container
often: each container's status (status.json, parsed again only when the shim replaced it,
corrected when the shim died) and its cgroup's CPU and memory counters (file paths resolved
once per container). Reads go through os.open/os.read: a scrape reads ~500 small files, and
io.open costs several times more."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace

from nodeagent.runtime.cgroups import Cgroup
from nodeagent.runtime.spec import EXITED, RUNNING, Status


@dataclass(frozen=True, slots=True)
class CgroupFiles:
    """The files one scrape reads for a container, resolved once per container id."""

    cpu: str            # v2: cpu.stat (usage_usec); v1: cpuacct.usage (ns)
    usage: str          # memory.current / memory.usage_in_bytes
    stat: str           # memory.stat
    limit: str          # memory.max / memory.limit_in_bytes
    events: str         # memory.events (oom_kill) / memory.oom_control (oom_kill)
    v2: bool

    @classmethod
    def of(cls, cg: Cgroup) -> CgroupFiles:
        if cg.version == 2:
            d = cg.path("") or "/nonexistent"
            return cls(*(os.path.join(d, f) for f in (
                "cpu.stat", "memory.current", "memory.stat", "memory.max", "memory.events")),
                v2=True)
        acct, mem = cg.path("cpuacct") or "/nonexistent", cg.path("memory") or "/nonexistent"
        return cls(os.path.join(acct, "cpuacct.usage"), *(os.path.join(mem, f) for f in (
            "memory.usage_in_bytes", "memory.stat", "memory.limit_in_bytes",
            "memory.oom_control")), v2=False)

    def read(self) -> Sample | None:
        """None when the cgroup is gone (the container just exited)."""
        cpu_raw = read_bytes(self.cpu)
        if cpu_raw is None:
            return None
        if self.v2:
            cpu = _field(cpu_raw, b"usage_usec") / 1e6
            inactive_key = b"inactive_file"
        else:
            cpu = int(cpu_raw.strip() or 0) / 1e9
            inactive_key = b"total_inactive_file"
        usage = _int(read_bytes(self.usage))
        inactive = _field(read_bytes(self.stat) or b"", inactive_key)
        limit = _int(read_bytes(self.limit))
        if limit >= 1 << 62:
            limit = 0   # v1 writes "unlimited" as a page-rounded 2^63
        ooms = _field(read_bytes(self.events) or b"", b"oom_kill")
        # Working set as cAdvisor reports it: usage minus what the kernel can drop for free.
        return Sample(cpu, max(0, usage - inactive), usage, limit, ooms)


@dataclass(frozen=True, slots=True)
class Sample:
    cpu_seconds: float
    working_set: int
    usage: int
    limit: int
    oom_kills: int


def read_bytes(path: str) -> bytes | None:
    # os.open/os.read: a scrape reads ~500 small files, and io.open costs several times more.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(raw: bytes | None) -> int:
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0   # "max": no limit


def _field(text: bytes, key: bytes) -> int:
    """The value of `key value` lines (memory.stat, cpu.stat, memory.events), 0 if absent."""
    at = text.find(key + b" ")
    while at > 0 and text[at - 1:at] != b"\n":
        at = text.find(key + b" ", at + 1)
    if at < 0:
        return 0
    end = text.find(b"\n", at)
    return _int(text[at + len(key) + 1:end if end >= 0 else None])


def _status(path: str, cache: dict) -> Status | None:
    """status.json, parsed again only when the shim has replaced it (written by rename)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_ino, st.st_mtime_ns)
    hit = cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    raw = read_bytes(path)
    try:
        status = Status.from_json(json.loads(raw)) if raw else None
    except ValueError:
        return None
    cache[path] = (key, status)
    return status


def _shim_alive(status: Status) -> bool:
    """As runtime.spec.alive: the shim's pid still runs and started when it did."""
    raw = read_bytes(f"/proc/{status.shim_pid}/stat") if status.shim_pid > 0 else None
    if not raw:
        return False
    fields = raw[raw.rindex(b")") + 2:].split()
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == status.shim_start


class StatsReader:
    """`runtime.stats_reader`: container statuses and cgroup samples for frequent readers."""

    def __init__(self, runtime):
        self.runtime = runtime
        self._files: dict[str, CgroupFiles] = {}
        self._statuses: dict[str, tuple] = {}
        self._lock = threading.Lock()   # readers may overlap; the caches are shared

    def statuses(self, wanted) -> list[tuple[str, Status]]:
        """(container id, status) of every container whose id `wanted(cid)` accepts."""
        out, seen = [], set()
        base = self.runtime.state_dir
        try:
            names = os.listdir(base)
        except OSError:
            names = []
        with self._lock:
            for cid in names:
                if not wanted(cid):
                    continue
                path = os.path.join(base, cid, "status.json")
                seen.add(path)
                status = _status(path, self._statuses)
                if status is None:
                    continue
                if status.state == RUNNING and not _shim_alive(status):
                    status = replace(status, state=EXITED)
                out.append((cid, status))
            for gone in set(self._statuses) - seen:
                del self._statuses[gone]
        return out

    def keep(self, cids: set[str]) -> None:
        """Forgets the cgroup paths of every container but these (the running ones)."""
        with self._lock:
            for gone in set(self._files) - cids:
                del self._files[gone]

    def sample(self, cid: str) -> Sample | None:
        """The container's counters now; None when its cgroup is gone."""
        with self._lock:
            files = self._files.get(cid)
            if files is None:
                files = self._files[cid] = CgroupFiles.of(self.runtime.cgroup(cid))
        return files.read()
