"""Values the runtime passes around: what to run (ContainerSpec) and what happened (Status)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from moorage.fsutil import write_atomic

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_MAX_FILES = 5

# Container states as written to status.json.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"

# Reasons, as the kubelet reports them.
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_OOM = "OOMKilled"
REASON_START_ERROR = "StartError"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What to run. lower_dirs are the image layers, top layer first; netns_path is optional.
    files: (path in the container, host file) pairs bound read-only over the image's (the pod's
    /etc/resolv.conf and /etc/hosts, as the kubelet does). mounts: (path in the container, host
    file or directory, read-only) binds (the pod's volumes). env_file: a host file of
    NUL-separated KEY=VALUE entries added to env (values from Secrets, kept on a tmpfs rather
    than in this spec, which is written to disk)."""

    id: str
    args: tuple[str, ...]
    lower_dirs: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "/"
    user: str = "0:0"
    hostname: str = ""
    netns_path: str | None = None
    memory_limit: int | None = None
    cpu_quota_millicores: int | None = None
    cpu_request_millicores: int | None = None
    pids_limit: int | None = None
    tty: bool = False
    stdin: bool = False
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_max_files: int = DEFAULT_LOG_MAX_FILES
    files: tuple[tuple[str, str], ...] = ()
    mounts: tuple[tuple[str, str, bool], ...] = ()
    env_file: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ContainerSpec:
        d = dict(d)
        d["args"] = tuple(d["args"])
        d["lower_dirs"] = tuple(d["lower_dirs"])
        d["env"] = tuple(tuple(kv) for kv in d.get("env", ()))
        d["files"] = tuple(tuple(kv) for kv in d.get("files", ()))
        d["mounts"] = tuple(tuple(m) for m in d.get("mounts", ()))
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Status:
    """status.json: written by the shim, atomically, at start and at exit."""

    state: str
    pid: int = 0
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    shim_pid: int = 0
    # /proc/<pid>/stat start times, so a recycled pid is never mistaken for ours.
    pid_start: int = 0
    shim_start: int = 0

    @classmethod
    def from_json(cls, d: dict) -> Status:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def write_json_atomic(path: str, value: dict) -> None:
    """Write-then-rename so a reader never sees half a file, even if we die mid-write."""
    write_atomic(path, json.dumps(value))


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def exit_code_of(wait_status: int) -> int:
    """Exit code as shells and the kubelet report it: the code, or 128 + the killing signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parens; fields resume after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # a zombie has already exited; only its parent's wait is due
        return None
    return int(fields[19])


def alive(pid: int, start: int) -> bool:
    """True if pid is running and is the same process that had start time `start`."""
    return pid > 0 and proc_start_time(pid) == start
