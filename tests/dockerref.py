"""The reference Docker engine for tests and benchmarks, and the image trees compared with it.

`DockerEngine` starts Debian's dockerd (docker.io 20.10) with everything under one root dir:
data root, exec root, pidfile, unix socket, client config, TMPDIR (BuildKit mounts its
snapshots under it) and a cgroup parent named after the root, with no iptables, no masquerade
and no bridge. `stop()` takes away what it made: the daemon and the containerd it starts, the
shims, mounts under the root, its cgroups, and the files dockerd writes outside its roots.

The trees: `apply_layers` turns an ordered list of layers (each an iterable of `LayerEntry`,
from a layer tar or from a layer unpacked in the agent's store) into {path: Node}, honouring
whiteouts and opaque directories as the OCI image spec defines them. The Docker side reads a
`docker save` tarball, the Moorage side the build root's image store; both go through the same
function, so a difference is in the images, never in the readers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = "/usr/bin/docker"  # Debian's client, the daemon's own version (not /usr/local/bin's)
DOCKERD = "/usr/sbin/dockerd"
START_TIMEOUT = 40.0
STOP_TIMEOUT = 30.0
# Directories dockerd 20.10, its containerd and BuildKit's runc make outside the roots given
# to them (plugins/, shim sockets in s/, runc state). Only empty ones are removed, and only
# those that were not there before: another engine on this machine may be using them.
OUTSIDE = ("/run/docker", "/run/containerd", "/run/runc")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_CHUNK = 1 << 20


class EngineError(RuntimeError):
    """dockerd would not start, or a docker command failed; the message says which and why."""


class DockerEngine:
    """One dockerd of its own under `root` (created, must not exist)."""

    def __init__(self, root: str, *, env: dict[str, str] | None = None,
                 storage_driver: str = "overlay2", cgroup_parent: str = ""):
        self.root = root
        self.sock = os.path.join(root, "docker.sock")
        self.host = f"unix://{self.sock}"
        self.cgroup_parent = cgroup_parent or os.path.basename(root.rstrip("/"))
        self.storage_driver = storage_driver
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.version = ""
        self._outside = [p for p in OUTSIDE if not os.path.lexists(p)]
        self._had_gwbridge = os.path.exists("/sys/class/net/docker_gwbridge")

    # ---- running docker ----

    def env(self, buildkit: bool | None = None) -> dict[str, str]:
        env = dict(os.environ, DOCKER_HOST=self.host,
                   DOCKER_CONFIG=os.path.join(self.root, "client"))
        if buildkit is not None:
            env["DOCKER_BUILDKIT"] = "1" if buildkit else "0"
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               buildkit: bool | None = None) -> str:
        out = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                             env=self.env(buildkit), stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise EngineError(f"docker {' '.join(args[:3])}: exit {out.returncode}: "
                              f"{(out.stderr or out.stdout).strip()[-2000:]}")
        return out.stdout

    def load(self, tarball: str) -> None:
        self.docker("load", "-i", tarball)

    def build(self, context: str, tag: str, *, dockerfile: str | None = None,
              buildkit: bool = True, build_args: dict[str, str] | None = None,
              target: str | None = None, no_cache: bool = False,
              labels: dict[str, str] | None = None, network: str = "host",
              timeout: float = 300) -> str:
        """`docker build`; returns the image ID. RUN steps get the host's network: the
        daemon has no bridge."""
        fd, iid = tempfile.mkstemp(prefix="iid-", dir=self.root)
        os.close(fd)
        args = ["build", "-t", tag, "--iidfile", iid, "--network", network]
        if dockerfile:
            args += ["-f", dockerfile]
        for k, v in (build_args or {}).items():
            args += ["--build-arg", f"{k}={v}" if v is not None else k]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        if target:
            args += ["--target", target]
        if no_cache:
            args.append("--no-cache")
        if buildkit:
            args += ["--progress", "plain"]
        try:
            self.docker(*args, context, buildkit=buildkit, timeout=timeout)
            with open(iid) as f:
                return f.read().strip()
        finally:
            os.unlink(iid)

    def save(self, image: str, path: str) -> None:
        self.docker("save", "-o", path, image)

    def prune(self) -> None:
        """Every image and the build cache of both builders gone: the next build is cold."""
        images = self.docker("images", "-aq").split()
        if images:
            self.docker("rmi", "-f", *sorted(set(images)), check=False)
        self.docker("builder", "prune", "-af", check=False)

    # ---- lifecycle ----

    def start(self) -> DockerEngine:
        """Starts dockerd; overlay2 first, vfs if this kernel refuses overlay2 there."""
        if not os.path.exists(DOCKERD) or not os.path.exists(DOCKER):
            raise EngineError(f"{DOCKERD} or {DOCKER} is missing (apt-get install docker.io)")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        for d in ("client", "tmp"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        try:
            self._start(self.storage_driver)
        except EngineError:
            if self.storage_driver != "overlay2":
                raise
            self._kill()
            self._start("vfs")
        self.version = self.docker("version", "--format", "{{.Server.Version}}").strip()
        return self

    def _start(self, driver: str) -> None:
        self.storage_driver = driver
        env = dict(os.environ, TMPDIR=os.path.join(self.root, "tmp"), **self.extra_env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [DOCKERD, "--data-root", os.path.join(self.root, "data"),
                 "--exec-root", os.path.join(self.root, "exec"),
                 "--pidfile", os.path.join(self.root, "docker.pid"),
                 "--config-file", self._daemon_json(),
                 "-H", self.host, "--iptables=false", "--ip6tables=false",
                 "--ip-masq=false", "--bridge=none", "--storage-driver", driver,
                 "--cgroup-parent", self.cgroup_parent],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd ({driver}) exited at start: {self.log_tail()}")
            if os.path.exists(self.sock) and subprocess.run(
                    [DOCKER, "version"], env=self.env(), capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise EngineError(f"dockerd ({driver}) did not answer in {START_TIMEOUT:.0f} s: "
                          f"{self.log_tail()}")

    def _daemon_json(self) -> str:
        # The trust key has no flag in 20.10, only this (deprecated) config key.
        path = os.path.join(self.root, "daemon.json")
        with open(path, "w") as f:
            json.dump({"deprecated-key-path": os.path.join(self.root, "key.json")}, f)
        return path

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "dockerd.log")

    def log_tail(self) -> str:
        try:
            with open(self.log_path) as f:
                lines = [line.strip() for line in f if "level=error" in line or
                         "level=fatal" in line or "failed to start" in line]
                f.seek(0)
                last = f.read().strip().splitlines()[-2:]
            return " | ".join(lines[-3:] or last) or "(nothing logged)"
        except OSError:
            return "(no log)"

    def before_stop(self) -> None:
        """Hook for subclasses (Swarm leaves here, while the daemon still answers)."""

    def stop(self) -> None:
        """Stops dockerd and removes everything it made; the root dir goes too."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.before_stop()
            # Containers first, so that dockerd's shutdown has nothing to wait for.
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq", check=False, timeout=30).split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
        self._kill()
        self._unmount()
        self._remove_cgroups()
        if not self._had_gwbridge and os.path.exists("/sys/class/net/docker_gwbridge"):
            subprocess.run(["ip", "link", "del", "docker_gwbridge"], capture_output=True)
        for top in self._outside:
            for dirpath, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # dockerd's own containerd (and anything else left in its session) goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()
        self._reap_strays()

    def _reap_strays(self) -> None:
        """containerd shims run in sessions of their own; their args name our exec root."""
        me = os.getpid()
        for _ in range(50):
            found = False
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == me:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if self.root in cmd:
                    found = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            if not found:
                return
            time.sleep(0.1)

    def _unmount(self) -> None:
        for _ in range(3):
            with open("/proc/mounts") as f:
                mounts = [line.split()[1] for line in f]
            mine = [m for m in mounts if m == self.root or m.startswith(self.root + "/")]
            if not mine:
                return
            for m in reversed(mine):
                subprocess.run(["umount", "-l", m], capture_output=True)

    def _remove_cgroups(self) -> None:
        for top in os.listdir("/sys/fs/cgroup"):
            base = os.path.join("/sys/fs/cgroup", top)
            if not os.path.isdir(base) or os.path.islink(base):
                continue
            for dirpath, _, _ in os.walk(base, topdown=False):
                if self.cgroup_parent in dirpath:
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)


@pytest.fixture(scope="session")
def docker_engine():
    """A dockerd of Debian's docker.io for the whole session, under /tmp/moortest-dockerd-*;
    skips where it is not installed or this is not root."""
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    if not os.path.exists(DOCKERD) or not os.path.exists(DOCKER):
        pytest.skip("needs Debian's docker.io (/usr/sbin/dockerd, /usr/bin/docker)")
    engine = DockerEngine(tempfile.mkdtemp(prefix="moortest-dockerd-"))
    try:
        engine.start()
    except EngineError:
        engine.stop()
        raise
    yield engine
    engine.stop()


# ---- image trees ----

@dataclass(frozen=True, slots=True)
class Node:
    """One path of an image's filesystem. `data` is the sha256 of a file's content, the path
    a hard link shares its inode with, or "major,minor" of a device; `link` a symlink's
    target."""

    type: str  # file, dir, symlink, hardlink, fifo, char, block
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    link: str = ""
    data: str = ""


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One member of a layer: a node, a whiteout of `path`, or an opaque marker on `path`."""

    path: str  # "/etc/passwd"
    node: Node | None = None
    whiteout: bool = False
    opaque: bool = False


def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _sha(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def tar_entries(fileobj) -> Iterator[LayerEntry]:
    """The entries of an uncompressed or gzip'd layer tar, in the tar's order."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
        for m in tf:
            path = _norm(m.name)
            if path == "/":
                continue
            base = path.rsplit("/", 1)[1]
            if base == OPAQUE:
                yield LayerEntry(_parent(path), opaque=True)
                continue
            if base.startswith(WHITEOUT):
                yield LayerEntry(_parent(path).rstrip("/") + "/" + base[len(WHITEOUT):],
                                 whiteout=True)
                continue
            mode = stat.S_IMODE(m.mode)
            if m.isreg():
                node = Node("file", mode, m.uid, m.gid, data=_sha(tf.extractfile(m)))
            elif m.isdir():
                node = Node("dir", mode, m.uid, m.gid)
            elif m.issym():
                # A symlink's own mode means nothing on Linux; tars write 0644 or 0777.
                node = Node("symlink", 0o777, m.uid, m.gid, link=m.linkname)
            elif m.islnk():
                node = Node("hardlink", mode, m.uid, m.gid, data=_norm(m.linkname))
            elif m.isfifo():
                node = Node("fifo", mode, m.uid, m.gid)
            elif m.ischr() and m.devmajor == 0 and m.devminor == 0:
                yield LayerEntry(path, whiteout=True)  # overlay's own whiteout form
                continue
            elif m.ischr() or m.isblk():
                node = Node("char" if m.ischr() else "block", mode, m.uid, m.gid,
                            data=f"{m.devmajor},{m.devminor}")
            else:
                raise ValueError(f"layer member {m.name!r} has unsupported type {m.type!r}")
            yield LayerEntry(path, node)


def dir_entries(rootfs: str) -> Iterator[LayerEntry]:
    """The entries of a layer unpacked for overlayfs (char 0/0 whiteouts, opaque xattrs), in
    sorted path order; a second name of an inode becomes a hard link to the first."""
    seen: dict[tuple[int, int], str] = {}

    def walk(rel: str) -> Iterator[LayerEntry]:
        full = os.path.join(rootfs, rel.lstrip("/"))
        for name in sorted(os.listdir(full)):
            path = rel.rstrip("/") + "/" + name
            p = os.path.join(full, name)
            st = os.lstat(p)
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield LayerEntry(path, whiteout=True)
            elif stat.S_ISDIR(st.st_mode):
                yield LayerEntry(path, Node("dir", mode, uid, gid))
                try:
                    if os.getxattr(p, OPAQUE_XATTR, follow_symlinks=False) == b"y":
                        yield LayerEntry(path, opaque=True)
                except OSError:
                    pass
                yield from walk(path)
            elif stat.S_ISLNK(st.st_mode):
                yield LayerEntry(path, Node("symlink", 0o777, uid, gid, link=os.readlink(p)))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    yield LayerEntry(path, Node("hardlink", mode, uid, gid, data=seen[key]))
                    continue
                seen[key] = path
                with open(p, "rb") as f:
                    yield LayerEntry(path, Node("file", mode, uid, gid, data=_sha(f)))
            elif stat.S_ISFIFO(st.st_mode):
                yield LayerEntry(path, Node("fifo", mode, uid, gid))
            else:
                kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
                yield LayerEntry(path, Node(kind, mode, uid, gid, data=f"{os.major(st.st_rdev)},"
                                                                       f"{os.minor(st.st_rdev)}"))

    return walk("/")


def _drop_under(tree: dict[str, Node], path: str, keep_self: bool) -> None:
    prefix = path.rstrip("/") + "/"
    for p in [p for p in tree if p.startswith(prefix) or (p == path and not keep_self)]:
        del tree[p]


def apply_layers(layers: Iterable[Iterable[LayerEntry]]) -> dict[str, Node]:
    """The filesystem after the layers, bottom first. In each layer the whiteouts and opaque
    markers hide what the layers below have (never what the same layer adds, whatever the
    order of its members); then its nodes are laid on top, replacing what sits at their path
    (a non-directory also replaces whatever was below that path)."""
    tree: dict[str, Node] = {}
    for layer in layers:
        adds: list[LayerEntry] = []
        for e in layer:
            if e.opaque:
                _drop_under(tree, e.path, keep_self=True)
            elif e.whiteout:
                _drop_under(tree, e.path, keep_self=False)
            else:
                adds.append(e)
        for e in adds:
            below = tree.get(e.path)
            if e.node.type != "dir" or (below is not None and below.type != "dir"):
                _drop_under(tree, e.path, keep_self=True)
            parent = _parent(e.path)
            while parent != "/" and parent not in tree:  # implied parents, as tar extracts them
                tree[parent] = Node("dir", 0o755, 0, 0)
                parent = _parent(parent)
            tree[e.path] = e.node
    return dict(sorted(tree.items()))


# ---- the two sides ----

def saved_image(tarball: str) -> tuple[dict[str, Node], dict]:
    """(tree, config document) of the one image in a `docker save` tarball."""
    with tarfile.open(tarball) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        if len(manifest) != 1:
            raise ValueError(f"{tarball}: holds {len(manifest)} images, want one")
        config = json.load(outer.extractfile(manifest[0]["Config"]))

        def layer(name: str) -> Iterator[LayerEntry]:
            with outer.extractfile(name) as f:
                yield from tar_entries(f)

        tree = apply_layers(layer(n) for n in manifest[0]["Layers"])
    return tree, config


def docker_image(engine: DockerEngine, image: str) -> tuple[dict[str, Node], dict]:
    """(tree, config document) of an image in the engine, through `docker save`."""
    fd, path = tempfile.mkstemp(prefix="save-", suffix=".tar", dir=engine.root)
    os.close(fd)
    try:
        engine.save(image, path)
        return saved_image(path)
    finally:
        os.unlink(path)


def docker_tree(engine: DockerEngine, image: str) -> dict[str, Node]:
    return docker_image(engine, image)[0]


def _moor_store(root: str):
    from builder.paths import BuildRoot
    from nodeagent.runtime.images.store import Store

    return Store(BuildRoot.from_args(root).images)


def _moor_resolve(store, image: str):
    try:
        from builder import images as builder_images
        found = builder_images.resolve(store, image)
    except (ImportError, AttributeError):
        found = None
    found = found or store.get(image)
    if found is None:
        raise KeyError(f"{image}: not in the image store {store.root}")
    return found


def moor_image(root: str, image: str) -> tuple[dict[str, Node], dict]:
    """(tree, config document) of an image in a build root's store: each layer read from its
    blob, or from its unpacked directory where the store kept no blob."""
    from nodeagent.runtime.images.layers import open_decompressed

    store = _moor_store(root)
    img = _moor_resolve(store, image)
    with open(store.blob_path(img.config_digest), "rb") as f:
        config = json.load(f)

    def layer(blob: str, diff_id: str) -> Iterator[LayerEntry]:
        if store.has_blob(blob):
            with open(store.blob_path(blob), "rb") as f:
                yield from tar_entries(open_decompressed(f, blob))
        else:
            yield from dir_entries(os.path.join(store.layer_path(diff_id), "rootfs"))

    return apply_layers(layer(b, d) for b, d in zip(img.layer_digests, img.diff_ids)), config


def moor_tree(root: str, image: str) -> dict[str, Node]:
    return moor_image(root, image)[0]


def moor_build(root: str, context: str, tag: str, *, dockerfile: str | None = None,
               build_args: dict[str, str] | None = None, target: str | None = None,
               no_cache: bool = False, labels: dict[str, str] | None = None,
               media: str = "docker", timeout: float = 600) -> subprocess.CompletedProcess:
    """`moor build` (python -m builder) into the build root `root`; check the returncode."""
    args = [sys.executable, "-m", "builder", "build", "--root", root, "-t", tag,
            "--format", media]
    if dockerfile:
        args += ["-f", dockerfile]
    for k, v in (build_args or {}).items():
        args += ["--build-arg", f"{k}={v}" if v is not None else k]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    if target:
        args += ["--target", target]
    if no_cache:
        args.append("--no-cache")
    return subprocess.run([*args, context], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, stdin=subprocess.DEVNULL)


def import_into_root(root: str, tarball: str) -> None:
    """A `docker save` tarball (the test busybox, say) into a build root's image store."""
    from nodeagent.runtime.images.archive import import_archive

    import_archive(_moor_store(root), tarball)


# The config fields compared between builders; the rest (Hostname, Image, ArgsEscaped, ...)
# are bookkeeping that Docker's two builders already fill differently.
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels",
                 "Volumes", "StopSignal", "Healthcheck", "Shell", "OnBuild")


def config_of(doc: dict, fields: Sequence[str] = CONFIG_FIELDS) -> dict:
    """The compared fields of an image config document's "config"; an empty value (null,
    "", [], {}) counts as absent, as it does when a container starts."""
    cfg = doc.get("config") or doc.get("Config") or {}
    return {k: cfg[k] for k in fields if cfg.get(k) not in (None, "", [], {})}


def tree_diff(want: dict[str, Node], got: dict[str, Node], *, names=("docker", "moor"),
              limit: int = 40) -> list[str]:
    """Readable differences, one a line: what only one side has, and what differs."""
    out = []
    for path in sorted(set(want) | set(got)):
        a, b = want.get(path), got.get(path)
        if a == b:
            continue
        if b is None:
            out.append(f"{path}: only in {names[0]} ({a})")
        elif a is None:
            out.append(f"{path}: only in {names[1]} ({b})")
        else:
            out.append(f"{path}: {names[0]} {a} != {names[1]} {b}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out
