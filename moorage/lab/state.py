"""A lab as recorded in `<state-dir>/lab.json`: what `up` made, for `status`, `down` and
restarts to find from any shell."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from moorage.fsutil import write_atomic
from moorage.lab import STATE_ROOT
from moorage.lab.hosts import LabError

# Where `status` and `down --name` find a lab made with --state-dir; on tmpfs, like /run/netns,
# so it goes at reboot together with the namespaces it describes.
POINTER_DIR = "/run/moorage/lab"

Say = Callable[[str], None]


@dataclass(slots=True)
class Host:
    name: str             # the host's netns and its node's name: NAME-h<i>
    ip: str
    state_dir: str
    cgroup_root: str
    netns_prefix: str
    log: str
    agent_pid: int = 0


@dataclass(slots=True)
class Lab:
    name: str
    state_dir: str
    underlay: str
    gateway: str
    bridge: str
    address: str          # the control plane's API address
    controlplane_dir: str
    controlplane_log: str
    controlplane_pid: int = 0
    hosts: list[Host] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    config_path: str = ""
    # Extra `moor-agent run` flags (registry mirrors, ...), for restarts.
    agent_flags: list[str] = field(default_factory=list)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "lab.json")

    def save(self) -> None:
        write_atomic(self.state_file, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: str) -> Lab | None:
        try:
            with open(os.path.join(state_dir, "lab.json")) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise LabError(f"cannot read {state_dir}/lab.json: {err}") from None
        data["hosts"] = [Host(**h) for h in data.get("hosts", [])]
        return cls(**data)


def state_dir_for(name: str, flag: str | None = None) -> str:
    """--state-dir, else where `up` recorded it, else the default."""
    if flag:
        return os.path.abspath(flag)
    pointer = os.path.join(POINTER_DIR, name)
    if os.path.islink(pointer):
        return os.readlink(pointer)
    return os.path.join(STATE_ROOT, name)
