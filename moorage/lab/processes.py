"""The lab's processes: started in a session of their own so that they outlive `moor lab up`,
and recognised later by their command lines (a pid alone may have been reused)."""

from __future__ import annotations

import subprocess
import sys


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# Kept so that Popen.__del__ neither warns about nor reaps the lab's processes: they are meant
# to outlive this one (its exit hands them to init).
_SPAWNED: dict[int, subprocess.Popen] = {}


def spawn(argv: list[str], log_path: str) -> int:
    # A session of its own: the lab outlives this process and the terminal that started it.
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _SPAWNED[proc.pid] = proc
    return proc.pid


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def alive(pid: int, marker: str) -> bool:
    """Whether `pid` runs and is ours (its command line names `marker`), not a reused pid."""
    proc = _SPAWNED.get(pid)
    if proc is not None:
        # Started by this process: ask it. Its command line is still ours until it has
        # exec'd, so the marker test would call a starting child dead.
        return proc.poll() is None
    return bool(pid) and marker in cmdline(pid) and not is_zombie(pid)


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
