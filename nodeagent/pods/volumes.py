"""A pod's configMap and secret volumes: files on a tmpfs of the pod's own (never on disk),
kept up to date while the pod runs, removed with it.

Layout of each volume, as the kubelet's: the files live in a hidden version directory,
`..data` is a symlink to it, and each top-level name is a symlink through `..data`. An update
writes a new version directory and swaps `..data` with one rename, so a reader that resolves
`..data` once sees one complete version; the previous version stays until the next update,
so such a reader has a whole update interval to finish.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator

from moorage.model import configs
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.configstore import ConfigStore
from nodeagent.runtime.syscalls import MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, Syscalls

DATA = "..data"
# Marks a directory as the mounted tmpfs (it exists only inside the mount).
MARKER = ".moorage-volumes"
TMPFS_SIZE = "64m"
ENV_DIR = "..env"


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
    """The volumes of one pod, under `root`/<pod uid> on a tmpfs mounted by `sync`."""

    def __init__(self, pod: pb.Pod, root: str, store: ConfigStore, sys: Syscalls):
        self.pod, self.store, self.sys = pod, store, sys
        self.dir = os.path.join(root, pod.metadata.uid)

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
        return bool(self.pod.spec.volumes) or any(
            c.env_from or any(e.HasField("value_from") for e in c.env)
            for c in self.pod.spec.containers)

    def _sources(self) -> Iterator[tuple[pb.Volume, object, bool]]:
        ns = self.pod.metadata.namespace
        for v in self.pod.spec.volumes:
            if v.HasField("secret"):
                yield v, self.store.get(configs.SECRET, ns, v.secret.secret_name), True
            elif v.HasField("config_map"):
                yield v, self.store.get(configs.CONFIG_MAP, ns, v.config_map.name), False

    def sync(self) -> str:
        """Writes every volume as its object now stands; why a volume cannot be set up (a
        missing object that is not optional), or ""."""
        if not self.needed():
            return ""
        self._ensure_mount()
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

    def mounts(self, c: pb.Container) -> tuple[tuple[str, str, bool], ...]:
        """(path in the container, host path, read-only) for each volumeMount; a subPath
        binds the file or directory it names now, so it does not follow later updates."""
        out = []
        for m in c.volume_mounts:
            host = os.path.join(self.dir, m.name)
            if m.sub_path:
                host = os.path.realpath(os.path.join(host, m.sub_path))
                if not host.startswith(self.dir + "/") or not os.path.exists(host):
                    raise LookupError(f"subPath {m.sub_path!r} of volume {m.name!r} does not "
                                      "exist")
            out.append((os.path.normpath(m.mount_path), host, True))
        return tuple(out)

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
        remove_dir(self.sys, self.dir)


def remove_dir(sys: Syscalls, directory: str) -> None:
    """Unmounts a pod's volume tmpfs (its contents go with it) and removes the directory."""
    if os.path.exists(os.path.join(directory, MARKER)):
        sys.umount2(directory, MNT_DETACH)
    shutil.rmtree(directory, ignore_errors=True)


def remove_all(sys: Syscalls, root: str) -> list[str]:
    """Every pod's volumes under `root` (an agent reset); the pod uids removed."""
    try:
        uids = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    for uid in uids:
        remove_dir(sys, os.path.join(root, uid))
    return uids
