"""The local persistent volumes the control plane binds to this node: one sparse ext4 image
per volume (its capacity is the image's size, so a write past it fails with ENOSPC and the
node's disk never fills through it), loop-mounted under the agent's state dir.

Data is removed only when VolumeData.deleted names the volume (its reclaim policy): never on
pod deletion, pod or agent restart, or agent reset. Each volume's record (claim, capacity)
is kept next to its image, so a restarted agent serves its volumes before any session.

Layout: <root>/<pv name>/{volume.json, disk.img, mount/}.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass

from moorage.fsutil import write_atomic
from moorage.v1 import agent_pb2
from nodeagent.runtime.syscalls import Syscalls
from nodeagent.storage import diskimage, mounts

log = logging.getLogger(__name__)

RECORD, IMAGE, MOUNT = "volume.json", "disk.img", "mount"
NOT_BOUND = 'persistentvolumeclaim "{claim}" is not bound to this node yet'
GROW_PENDING = ("grows when no container has it mounted (growing a mounted filesystem "
                "needs CAP_SYS_RESOURCE)")


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    claim_namespace: str
    claim_name: str
    capacity_bytes: int

    @classmethod
    def of(cls, lv: agent_pb2.LocalVolume) -> Volume:
        return cls(lv.name, lv.claim_namespace, lv.claim_name, lv.capacity_bytes)


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


class LocalVolumes:
    """Thread-safe: the session's thread applies VolumeData, pod workers ask for mounts, the
    storage loop makes, grows, deletes and measures. Disk work happens under one lock."""

    def __init__(self, root: str, sys: Syscalls):
        self.root, self.sys = root, sys
        self._lock = threading.Lock()
        self._volumes: dict[str, Volume] = {}
        # Set for each volume once its image is made and mounted at its capacity.
        self._ready: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        # Volumes whose data was removed, reported until VolumeData stops naming them.
        self.removed: set[str] = set()
        self._pending_delete: set[str] = set()
        # Pods (uids) this agent has given each volume to, until they are removed: a volume
        # with any is never unmounted to grow (one about to start would bind the bare dir).
        self._holders: dict[str, set[str]] = {}
        # Bumped whenever the set of volumes changes, so a pod waiting on a claim retries.
        self.generation = 0
        self._load()

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _load(self) -> None:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return
        for name in names:
            try:
                with open(os.path.join(self._dir(name), RECORD)) as f:
                    raw = json.load(f)
                self._volumes[name] = Volume(name, raw["claim_namespace"], raw["claim_name"],
                                             int(raw["capacity_bytes"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue

    # ---- from the control plane ----

    def apply(self, msg: agent_pb2.VolumeData) -> set[tuple[str, str]]:
        """Takes a VolumeData; the claims (namespace, name) whose volume appeared or changed.
        Does no disk work (the caller must not block): `sync` does it."""
        with self._lock:
            before = dict(self._volumes)
            if msg.full:
                # Not listed: no longer served to pods, but the data stays until deleted.
                self._volumes = {}
            for lv in msg.volumes:
                if not _safe_name(lv.name):
                    log.error("ignoring local volume with bad name %r", lv.name)
                    continue
                self._volumes[lv.name] = Volume.of(lv)
            deleted = {n for n in msg.deleted if _safe_name(n)}
            for name in deleted:
                self._volumes.pop(name, None)
            self._pending_delete |= deleted - self.removed
            self.removed &= deleted
            changed = {(v.claim_namespace, v.claim_name)
                       for k in before.keys() | self._volumes.keys()
                       for v in (before.get(k), self._volumes.get(k))
                       if v is not None and before.get(k) != self._volumes.get(k)}
            if changed or deleted:
                self.generation += 1
            return changed

    # ---- disk work ----

    def _ensure(self, vol: Volume) -> str:
        """Makes, mounts and grows one volume (lock held); its mount path. Growth that cannot
        happen online waits until no container has the volume, then happens unmounted."""
        d = self._dir(vol.name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        image, target = os.path.join(d, IMAGE), os.path.join(d, MOUNT)
        fs = self._record(vol.name).get("fs_bytes", 0)
        if diskimage.create(image, vol.capacity_bytes):
            fs = vol.capacity_bytes
        fs = fs or os.path.getsize(image)   # a record from before fs_bytes was kept
        if not mounts.is_mount_point(target) and fs < vol.capacity_bytes:
            diskimage.resize_offline(image, vol.capacity_bytes)
            fs = vol.capacity_bytes
        diskimage.mount(image, target, fresh=fs == vol.capacity_bytes and
                        not self._record(vol.name))
        if fs < vol.capacity_bytes:
            if diskimage.grow(image, target, vol.capacity_bytes):
                fs = vol.capacity_bytes
            elif not self._holders.get(vol.name) and \
                    not mounts.held_elsewhere(mounts.device_of(target)):
                mounts.unmount_under(self.sys, target)
                diskimage.resize_offline(image, vol.capacity_bytes)
                diskimage.mount(image, target)
                fs = vol.capacity_bytes
            elif self._errors.get(vol.name) != GROW_PENDING:
                log.info("local volume %s: %s", vol.name, GROW_PENDING)
                self._errors[vol.name] = GROW_PENDING
        if fs == vol.capacity_bytes:
            self._errors.pop(vol.name, None)
        record = {"claim_namespace": vol.claim_namespace, "claim_name": vol.claim_name,
                  "capacity_bytes": vol.capacity_bytes, "fs_bytes": fs}
        write_atomic(os.path.join(d, RECORD), json.dumps(record, sort_keys=True))
        self._ready[vol.name] = fs
        return target

    def _record(self, name: str) -> dict:
        try:
            with open(os.path.join(self._dir(name), RECORD)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _delete(self, name: str) -> bool:
        d = self._dir(name)
        left = mounts.unmount_under(self.sys, d)
        if left:
            log.error("local volume %s: still mounted at %s; its data is kept", name, left)
            return False
        for dev, _ in diskimage.loops_backed_under(d):
            try:
                diskimage.detach(dev)
            except diskimage.ImageError as err:
                log.warning("local volume %s: %s", name, err)
        shutil.rmtree(d, ignore_errors=True)
        self._ready.pop(name, None)
        log.info("local volume %s: data removed (reclaim policy)", name)
        return True

    def sync(self) -> bool:
        """Makes every known volume and removes every deleted one; True when the deleted set
        changed (a report is due)."""
        with self._lock:
            gone = False
            for name in sorted(self._pending_delete):
                if self._delete(name):
                    self._pending_delete.discard(name)
                    self.removed.add(name)
                    gone = True
            for vol in list(self._volumes.values()):
                if self._ready.get(vol.name) == vol.capacity_bytes:
                    continue
                try:
                    self._ensure(vol)
                except (OSError, diskimage.ImageError) as err:
                    if self._errors.get(vol.name) != str(err):
                        log.error("local volume %s: %s", vol.name, err)
                    self._errors[vol.name] = str(err)
            return gone

    def for_claim(self, namespace: str, claim: str, holder: str = "") -> tuple[str, str]:
        """(mount path, "") of the claim's volume, made and mounted now if need be, noting
        `holder` (a pod uid) as its user until `release`; or ("", why not)."""
        with self._lock:
            vol = next((v for v in self._volumes.values()
                        if (v.claim_namespace, v.claim_name) == (namespace, claim)), None)
            if vol is None or vol.name in self._pending_delete:
                return "", NOT_BOUND.format(claim=claim)
            try:
                target = os.path.join(self._dir(vol.name), MOUNT)
                if not (vol.name in self._ready and mounts.is_mount_point(target)):
                    target = self._ensure(vol)
                if holder:
                    self._holders.setdefault(vol.name, set()).add(holder)
                return target, ""
            except (OSError, diskimage.ImageError) as err:
                self._errors[vol.name] = str(err)
                return "", f"local volume {vol.name}: {err}"

    def release(self, holder: str) -> None:
        """`holder` (a pod uid) no longer uses any volume."""
        with self._lock:
            for users in self._holders.values():
                users.discard(holder)

    # ---- reporting ----

    def usage(self) -> list[tuple[Volume, int, int]]:
        """(volume, used, capacity) of each mounted volume, by statvfs."""
        with self._lock:
            vols = [v for v in self._volumes.values() if v.name in self._ready]
        out = []
        for v in sorted(vols, key=lambda v: v.name):
            try:
                used, cap = diskimage.usage(os.path.join(self._dir(v.name), MOUNT))
            except OSError:
                continue
            out.append((v, used, cap))
        return out

    def report(self) -> agent_pb2.VolumeReport:
        usage = [agent_pb2.VolumeUsage(name=v.name, used_bytes=used, capacity_bytes=cap)
                 for v, used, cap in self.usage()]
        with self._lock:
            return agent_pb2.VolumeReport(usage=usage, deleted=sorted(self.removed))


def unmount_all(sys: Syscalls, root: str) -> list[str]:
    """Every volume's mount and loop device under `root` (an agent reset), keeping the data;
    the mount points taken down."""
    points = mounts.under(root)
    mounts.unmount_under(sys, root)
    for dev, _ in diskimage.loops_backed_under(root):
        try:
            diskimage.detach(dev)
        except diskimage.ImageError:
            pass
    return points
