"""A pod's volumes, and the one code path that mounts them into its containers.

configMap and secret volumes are files on a tmpfs of the pod's own (never on disk), kept up
to date while the pod runs. emptyDir is a directory of the pod's on the node's disk; with a
sizeLimit, a sparse ext4 image of that size, loop-mounted, so a write past the limit fails
with ENOSPC (the writer sees the error; the pod is not evicted, and nothing outside the image
fills). emptyDir `medium: Memory` is a tmpfs of sizeLimit (else of the pod's memory limit
when every container has one, else the kernel's default of half the RAM); its pages are
charged to the memory cgroup of the process that writes them, and only the containers write
there (the agent never does), so they count against the pod's memory. hostPath is opened
with openat2 and bound through its fd (nodeagent/storage/hostpath.py); persistentVolumeClaim
binds the claim's local volume (nodeagent/storage/localvolumes.py). All of them, and every
subPath, are staged under the pod's own directories in the host's mount namespace; a
container binds the staged paths, parents before the mounts nested in them. Everything but a
persistent volume's data is removed with the pod.

Layout of each volume, as the kubelet's: the files live in a hidden version directory,
`..data` is a symlink to it, and each top-level name is a symlink through `..data`. An update
writes a new version directory and swaps `..data` with one rename, so a reader that resolves
`..data` once sees one complete version; the previous version stays until the next update,
so such a reader has a whole update interval to finish.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from moorage.model import configs, quantities
from moorage.model import podvolumes as pv
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.configstore import ConfigStore
from nodeagent.runtime.syscalls import (
    MNT_DETACH,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    Syscalls,
)
from nodeagent.storage import diskimage, hostpath, mounts, subpath
from nodeagent.storage.localvolumes import LocalVolumes

log = logging.getLogger(__name__)

DATA = "..data"
# Marks a directory as the mounted tmpfs (it exists only inside the mount).
MARKER = ".moorage-volumes"
TMPFS_SIZE = "64m"
ENV_DIR = "..env"
# Below the pod's disk dir: emptyDirs, their images, staged hostPaths and subPaths.
EMPTY, IMAGES, HOST, SUBPATHS = "empty", "images", "host", "subpaths"
EMPTY_DIR_MODE = 0o777   # the kubelet's: any user of any container may write

# Reasons a container waits with, as the kubelet reports them.
CONTAINER_CREATING = "ContainerCreating"
CREATE_CONTAINER_ERROR = "CreateContainerError"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"


class VolumeProblem(Exception):
    """Why a volume or mount cannot be set up: the waiting reason and the message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def disk_root_for(volumes_root: str) -> str:
    """Where the pods' on-disk volume dirs live, beside the configs' tmpfs root."""
    return os.path.join(os.path.dirname(os.path.normpath(volumes_root)), "pod-disks")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """What the agent allows of hostPath: --allowed-host-paths, and its state dir (never)."""

    allowed: tuple[str, ...] = ()
    state_dir: str = ""


def memory_default(pod: pb.Pod) -> int | None:
    """A Memory emptyDir's size without a sizeLimit: the pod's memory limit when every
    container has one, else None (the tmpfs default)."""
    limits = [c.resources.limits.get("memory") for c in pod.spec.containers]
    if not limits or not all(limits):
        return None
    return sum(quantities.memory_bytes(x) for x in limits)


def mount_order(items):
    """Mounts sorted so a parent (/data) comes before what nests in it (/data/logs)."""
    return sorted(items, key=lambda m: (os.path.normpath(m[0]).count("/"),
                                        os.path.normpath(m[0])))


def versioned_name(version: str) -> str:
    return f"..{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def write_projection(directory: str, files: dict[str, tuple[bytes, int]], version: str) -> bool:
    """Makes `directory` hold exactly `files` (relative path -> (content, mode)) as version
    `version`, with one atomic swap; False when it already does."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    link = os.path.join(directory, DATA)
    name = versioned_name(version)
    if os.path.islink(link) and os.readlink(link) == name:
        return False
    previous = os.readlink(link) if os.path.islink(link) else None
    staged = os.path.join(directory, name)
    shutil.rmtree(staged, ignore_errors=True)
    os.mkdir(staged, 0o755)
    for rel, (content, mode) in files.items():
        path = os.path.join(staged, rel)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    tmp = os.path.join(directory, DATA + "_tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(name, tmp)
    os.rename(tmp, link)
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        entry = os.path.join(directory, top)
        if not os.path.lexists(entry):
            os.symlink(os.path.join(DATA, top), entry)
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry.startswith(".."):
            if entry not in (DATA, name, previous) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)   # versions before the previous one
        elif entry not in tops and os.path.islink(path):
            os.unlink(path)
    return True


def projected(src, obj, secret: bool) -> tuple[dict[str, tuple[bytes, int]], str]:
    """The files of a configMap or secret volume source over `obj`, or why not."""
    default = src.default_mode if src.HasField("default_mode") else configs.DEFAULT_MODE
    data = configs.data_of(obj) if obj is not None else {}
    if not src.items:
        return {key: (value, default) for key, value in data.items()}, ""
    files = {}
    for item in src.items:
        if item.key not in data:
            if src.optional:
                continue
            kind = "secret" if secret else "configmap"
            name = src.secret_name if secret else src.name
            return {}, f"{kind} {name!r} has no key {item.key!r}"
        files[os.path.normpath(item.path)] = (data[item.key],
                                              item.mode if item.HasField("mode") else default)
    return files, ""


class PodVolumes:
    """The volumes of one pod: configs under `root`/<pod uid> on a tmpfs mounted by `sync`,
    the rest under `disk_root`/<pod uid>."""

    def __init__(self, pod: pb.Pod, root: str, store: ConfigStore, sys: Syscalls, *,
                 disk_root: str = "", host: HostPolicy | None = None,
                 local: LocalVolumes | None = None):
        self.pod, self.store, self.sys = pod, store, sys
        self.dir = os.path.join(root, pod.metadata.uid)
        self.disk = os.path.join(disk_root or disk_root_for(root), pod.metadata.uid)
        self.host = host or HostPolicy()
        self.local = local
        # Volume name -> its root on the host, once set up.
        self.paths: dict[str, str] = {}

    def _mounted(self) -> bool:
        return os.path.exists(os.path.join(self.dir, MARKER))

    def _ensure_mount(self) -> None:
        if self._mounted():
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.sys.mount("tmpfs", self.dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       f"mode=0711,size={TMPFS_SIZE}")
        with open(os.path.join(self.dir, MARKER), "w"):
            pass

    def needed(self) -> bool:
        """Whether the configs' tmpfs is: config volumes, or env from ConfigMaps/Secrets."""
        return any(v.HasField("config_map") or v.HasField("secret")
                   for v in self.pod.spec.volumes) or any(
            c.env_from or any(e.value_from.HasField("config_map_key_ref") or
                              e.value_from.HasField("secret_key_ref") for e in c.env)
            for c in self.pod.spec.containers)

    def _sources(self) -> Iterator[tuple[pb.Volume, object, bool]]:
        ns = self.pod.metadata.namespace
        for v in self.pod.spec.volumes:
            if v.HasField("secret"):
                yield v, self.store.get(configs.SECRET, ns, v.secret.secret_name), True
            elif v.HasField("config_map"):
                yield v, self.store.get(configs.CONFIG_MAP, ns, v.config_map.name), False

    def generation(self) -> int:
        """Changes whenever something a waiting volume needs may have arrived."""
        return self.store.generation + (self.local.generation if self.local else 0)

    def sync(self) -> tuple[str, str]:
        """Sets up every volume (configs written as their objects now stand); the first
        problem as (waiting reason, message), or ("", "")."""
        problem: tuple[str, str] = ("", "")
        if self.needed():
            self._ensure_mount()
            message = self._sync_configs()
            if message:
                problem = (CREATE_CONTAINER_CONFIG_ERROR, message)
        for v in self.pod.spec.volumes:
            source = pv.source_of(v)
            if source in ("config_map", "secret", ""):
                if source:
                    self.paths[v.name] = os.path.join(self.dir, v.name)
                continue
            if v.name in self.paths:
                continue   # set up once per worker: a pass then reads no mount table
            try:
                self.paths[v.name] = self._ensure(v, source)
            except VolumeProblem as err:
                if not problem[0]:
                    problem = (err.reason, f'MountVolume.SetUp failed for volume "{v.name}": '
                                           f"{err.message}")
            except (OSError, diskimage.ImageError) as err:
                if not problem[0]:
                    problem = (CREATE_CONTAINER_ERROR,
                               f'MountVolume.SetUp failed for volume "{v.name}": {err}')
        return problem

    def _sync_configs(self) -> str:
        problem = ""
        for v, obj, secret in self._sources():
            src = v.secret if secret else v.config_map
            if obj is None and not src.optional:
                kind, name = ("secret", src.secret_name) if secret else ("configmap", src.name)
                problem = problem or (f'MountVolume.SetUp failed for volume "{v.name}": '
                                      f'{kind} "{name}" not found')
                continue
            files, why = projected(src, obj, secret)
            if why:
                problem = problem or f'MountVolume.SetUp failed for volume "{v.name}": {why}'
                continue
            version = "|".join((obj.metadata.resource_version if obj is not None else "-",
                                src.SerializeToString(deterministic=True).hex()))
            write_projection(os.path.join(self.dir, v.name), files, version)
        return problem

    def _ensure(self, v: pb.Volume, source: str) -> str:
        """One emptyDir, hostPath or persistentVolumeClaim volume set up; its host path."""
        if source == "empty_dir":
            return self._empty_dir(v)
        if source == "host_path":
            return self._host_path(v)
        if self.local is None:
            raise VolumeProblem(CONTAINER_CREATING, "this node serves no persistent volumes")
        path, why = self.local.for_claim(self.pod.metadata.namespace,
                                         v.persistent_volume_claim.claim_name,
                                         self.pod.metadata.uid)
        if not path:
            raise VolumeProblem(CONTAINER_CREATING, why)
        return path

    def _empty_dir(self, v: pb.Volume) -> str:
        target = os.path.join(self.disk, EMPTY, v.name)
        src = v.empty_dir
        limit = quantities.memory_bytes(src.size_limit) if src.size_limit else None
        if src.medium == pv.MEDIUM_MEMORY:
            os.makedirs(target, mode=0o700, exist_ok=True)
            if not mounts.is_mount_point(target):
                size = limit or memory_default(self.pod)
                options = "mode=0777" + (f",size={size}" if size else "")
                self.sys.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
            return target
        if limit:
            image = os.path.join(self.disk, IMAGES, v.name + ".img")
            fresh = diskimage.create(image, limit)
            diskimage.mount(image, target, fresh=fresh)
            return target
        if not os.path.isdir(target):
            os.makedirs(target, mode=0o700, exist_ok=True)
            os.chmod(target, EMPTY_DIR_MODE)
        return target

    def _host_path(self, v: pb.Volume) -> str:
        target = os.path.join(self.disk, HOST, v.name)
        if mounts.is_mount_point(target):
            return target
        try:
            opened = hostpath.open_checked(self.sys, v.host_path.path, v.host_path.type,
                                           self.host.allowed, self.host.state_dir)
        except hostpath.HostPathError as err:
            raise VolumeProblem(CREATE_CONTAINER_ERROR, str(err)) from None
        try:
            subpath.make_target(target, opened.is_dir)
            mounts.bind_fd(self.sys, opened.fd, target)
        finally:
            os.close(opened.fd)
        return target

    def mounts(self, c: pb.Container, env: dict[str, str] | None = None
               ) -> tuple[tuple[str, str, bool], ...]:
        """(path in the container, host path, read-only) for each volumeMount, parents first.
        A subPath (or subPathExpr, expanded from `env`) is resolved beneath its volume, never
        through a symlink out of it, and bound as it is now (later updates of a config
        volume do not reach it). Raises VolumeProblem."""
        out = []
        by_name = {v.name: v for v in self.pod.spec.volumes}
        for i, m in enumerate(c.volume_mounts):
            v = by_name.get(m.name)
            root = self.paths.get(m.name)
            if v is None or root is None:
                raise VolumeProblem(CONTAINER_CREATING, f'volume "{m.name}" is not set up')
            config = v.HasField("config_map") or v.HasField("secret")
            # configMap and secret volumes are read-only always, as the kubelet makes them.
            read_only = m.read_only or config or (v.HasField("persistent_volume_claim") and
                                                  v.persistent_volume_claim.read_only)
            host = root
            sub = m.sub_path
            if m.sub_path_expr:
                sub, missing = pv.expand(m.sub_path_expr, env or {})
                if missing:
                    raise VolumeProblem(CREATE_CONTAINER_CONFIG_ERROR,
                                        f"failed to prepare subPath for volumeMount "
                                        f'"{m.name}" of container "{c.name}": missing value '
                                        f"for {', '.join(missing)}")
                why = configs.relative_path_problem(sub)
                if why:
                    raise VolumeProblem(CREATE_CONTAINER_CONFIG_ERROR,
                                        f"subPathExpr {m.sub_path_expr!r} of volume "
                                        f"{m.name!r} expands to {sub!r}: {why}")
            if sub:
                try:
                    host = subpath.stage(self.sys, root, sub, os.path.join(
                        self.disk, SUBPATHS, c.name, str(i)), create=not config)
                except subpath.SubPathError as err:
                    raise VolumeProblem(CREATE_CONTAINER_CONFIG_ERROR,
                                        f"subPath {sub!r} of volume {m.name!r} {err}") from None
            out.append((os.path.normpath(m.mount_path), host, read_only))
        return tuple(mount_order(out))

    def env_file(self, container: str, values: dict[str, str]) -> str:
        """Writes `values` (from Secrets) for a container to the tmpfs; the file's path."""
        self._ensure_mount()
        directory = os.path.join(self.dir, ENV_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, container)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(f"{k}={v}".encode() + b"\0" for k, v in values.items()))
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return path

    def remove(self) -> None:
        remove_disk(self.sys, self.disk)
        remove_dir(self.sys, self.dir)
        if self.local is not None:
            self.local.release(self.pod.metadata.uid)


def remove_dir(sys: Syscalls, directory: str) -> None:
    """Unmounts a pod's volume tmpfs (its contents go with it) and removes the directory."""
    if os.path.exists(os.path.join(directory, MARKER)):
        sys.umount2(directory, MNT_DETACH)
    shutil.rmtree(directory, ignore_errors=True)


def remove_disk(sys: Syscalls, directory: str) -> bool:
    """Takes down every mount of a pod's disk dir (its emptyDir images, tmpfs, staged
    hostPaths, subPaths and claims) and removes the dir; when a mount will not go, nothing is
    removed (a hostPath or a claim would be emptied through it) and False is returned."""
    if not os.path.lexists(directory):
        return True
    left = mounts.unmount_under(sys, directory)
    if left:
        log.error("pod volumes %s: still mounted at %s; left in place", directory, left)
        return False
    for dev, _ in diskimage.loops_backed_under(directory):
        try:
            diskimage.detach(dev)
        except diskimage.ImageError as err:
            log.warning("%s", err)
    shutil.rmtree(directory, ignore_errors=True)
    return True


def remove_all(sys: Syscalls, root: str) -> list[str]:
    """Every pod's volumes under `root` and its disk root (an agent reset); the pod uids
    removed."""
    uids: set[str] = set()
    disk = disk_root_for(root)
    for base in (root, disk):
        try:
            uids.update(os.listdir(base))
        except FileNotFoundError:
            pass
    for uid in sorted(uids):
        remove_disk(sys, os.path.join(disk, uid))
        remove_dir(sys, os.path.join(root, uid))
    if os.path.isdir(disk) and not os.listdir(disk):
        os.rmdir(disk)
    return sorted(uids)
