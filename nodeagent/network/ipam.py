"""Pod IPs from the node's subnet, persisted in one JSON file written atomically.

Invariants: two live pods never share an IP; a pod asking again gets its IP back; a freed IP
is not handed out again until the rest of the range has been tried (round-robin from the last
one given, like CNI's host-local), so a late packet for a dead pod does not reach a new one.
.0 is the node's VTEP and .1 the bridge gateway, so pods get .2 up to the last before broadcast.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading

from moorage.fsutil import write_atomic

STATE_FILE = "pod-ips.json"
# .0 is the VTEP, .1 the gateway.
FIRST_POD_OFFSET = 2


class PodIPAMError(Exception):
    """No free pod IP left, or the state file is unusable."""


def pod_range(net: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    return [net.network_address + i for i in range(FIRST_POD_OFFSET, net.num_addresses - 1)]


def next_free(candidates: list[ipaddress.IPv4Address], used: set[ipaddress.IPv4Address],
              last: ipaddress.IPv4Address | None) -> ipaddress.IPv4Address | None:
    """The first unused candidate after `last`, wrapping around; None when all are used."""
    start = candidates.index(last) + 1 if last in candidates else 0
    for i in range(len(candidates)):
        ip = candidates[(start + i) % len(candidates)]
        if ip not in used:
            return ip
    return None


class PodIPAM:
    def __init__(self, state_dir: str, pod_cidr: str, filename: str = STATE_FILE):
        self.path = os.path.join(state_dir, filename)
        self.net = ipaddress.IPv4Network(pod_cidr, strict=False)
        self._lock = threading.Lock()
        self._by_uid: dict[str, ipaddress.IPv4Address] = {}
        self._last: ipaddress.IPv4Address | None = None
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            raise PodIPAMError(f"pod IP state {self.path} is unreadable ({err}); move it aside "
                               f"only if no pods are running, or they may get duplicate IPs"
                               ) from err
        # A changed node subnet keeps what still fits and drops the rest.
        valid = set(pod_range(self.net))
        for uid, ip in state.get("allocations", {}).items():
            addr = ipaddress.IPv4Address(ip)
            if addr in valid and addr not in self._by_uid.values():
                self._by_uid[uid] = addr
        last = state.get("last")
        if last and ipaddress.IPv4Address(last) in valid:
            self._last = ipaddress.IPv4Address(last)
        if state.get("subnet") != str(self.net):
            self._save()

    def _save(self) -> None:
        state = {"subnet": str(self.net), "last": str(self._last) if self._last else None,
                 "allocations": {uid: str(ip) for uid, ip in sorted(self._by_uid.items())}}
        write_atomic(self.path, json.dumps(state, indent=1).encode())

    def allocate(self, pod_uid: str) -> str:
        with self._lock:
            if pod_uid in self._by_uid:
                return str(self._by_uid[pod_uid])
            ip = next_free(pod_range(self.net), set(self._by_uid.values()), self._last)
            if ip is None:
                raise PodIPAMError(f"no free pod IP left in {self.net} for pod {pod_uid}: "
                                   f"{len(self._by_uid)} pods hold them all")
            self._by_uid[pod_uid] = ip
            self._last = ip
            self._save()
            return str(ip)

    def release(self, pod_uid: str) -> str | None:
        with self._lock:
            ip = self._by_uid.pop(pod_uid, None)
            if ip is None:
                return None
            self._save()
            return str(ip)

    def get(self, pod_uid: str) -> str | None:
        ip = self._by_uid.get(pod_uid)
        return None if ip is None else str(ip)

    def allocations(self) -> dict[str, str]:
        with self._lock:
            return {uid: str(ip) for uid, ip in self._by_uid.items()}
