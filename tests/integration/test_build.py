"""`moor build` (python -m builder build) as root with real containers: a multi-step build
FROM a busybox image made by tests/imagebuild.py (RUN, COPY with .dockerignore, WORKDIR, USER
and --chown, a deletion), multi-stage COPY --from and --target, a failing RUN that leaves
nothing behind, the cache (all CACHED on an unchanged rebuild, a miss from the changed step
on), and the built image running in a pod of an agent (static pod, image imported)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile

import pytest

from builder import rootview
from nodeagent.runtime.cgroups import remove_parent
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.conftest import TEST_PREFIX, unique
from tests.wait import wait_until

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")]

DOCKERFILE = """\
FROM busybox:test
ENV GREETING=hello APP=/srv/app
RUN echo "$GREETING from RUN" && mkdir -p /data && echo one > /data/one \\
    && rm /etc/motd
WORKDIR $APP
COPY . ./
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\
    && echo 'app:x:1000:' >> /etc/group
COPY --chown=app:app --chmod=0640 conf/app.conf /etc/app/
USER app
RUN id -u > /tmp/whoami && pwd > /tmp/pwd
CMD ["cat", "/data/one"]
"""


class Built:
    """A build root (/tmp/moortest-build-*) with busybox:test in its store, and the CLI."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix=TEST_PREFIX + "build-")
        self.cgroup_root = unique("build-")
        self.context = os.path.join(self.root, "ctx")
        os.makedirs(self.context)
        import_archive(Store(os.path.join(self.root, "images")),
                       imagebuild.busybox_tar(self.root, ("busybox:test",)))

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        path = os.path.join(self.context, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def build(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "MOOR_BUILD_CGROUP_ROOT": self.cgroup_root}
        proc = subprocess.run([sys.executable, "-m", "builder", "build", "--root", self.root,
                               *args, self.context], capture_output=True, text=True,
                              timeout=120, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"build failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    @property
    def store(self) -> Store:
        return Store(os.path.join(self.root, "images"))

    def lowers(self, ref: str) -> list[str]:
        image = self.store.get(ref)
        assert image is not None, f"{ref} is not in the store"
        return image.layer_dirs()

    def config(self, ref: str) -> dict:
        image = self.store.get(ref)
        with open(self.store.blob_path(image.config_digest)) as f:
            return json.load(f)

    def read(self, ref: str, path: str) -> str:
        return rootview.read_file(self.lowers(ref), path)

    def leftovers(self) -> list[str]:
        """Containers, mounts and work dirs a build may have left (there must be none)."""
        found = [f"container {c}" for c in os.listdir(os.path.join(self.root, "containers"))
                 if not c.startswith(".")]
        found += [f"work {w}" for w in os.listdir(os.path.join(self.root, "work"))]
        with open("/proc/mounts") as f:
            found += [f"mount {ln.split()[1]}" for ln in f if self.root in ln]
        for ctl in os.listdir("/sys/fs/cgroup"):
            if os.path.isdir(os.path.join("/sys/fs/cgroup", ctl, self.cgroup_root)):
                found.append(f"cgroup {ctl}/{self.cgroup_root}")
        return found

    def close(self) -> None:
        runtime = Runtime(os.path.join(self.root, "containers"), cgroup_root=self.cgroup_root)
        runtime.remove_all()
        remove_parent(self.cgroup_root)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def built():
    b = Built()
    yield b
    b.close()


def steps(output: str) -> list[tuple[str, str]]:
    """(step header, CACHED or DONE) pairs from the progress output, in header order; lines
    carry their step's number (`#3 [2/6] RUN ...`, `#3 DONE 0.1s`)."""
    headers: dict[str, str] = {}
    ends: dict[str, str] = {}
    for line in output.splitlines():
        number, _, rest = line.partition(" ")
        if not number.startswith("#"):
            continue
        if rest.startswith("[") and number not in headers:
            headers[number] = rest
        elif rest == "CACHED" or rest.startswith("DONE "):
            ends[number] = "CACHED" if rest == "CACHED" else "DONE"
    return [(h, ends.get(n, "")) for n, h in headers.items()]


def write_app_context(b: Built) -> None:
    b.write("Dockerfile", DOCKERFILE)
    b.write(".dockerignore", "*.log\nsecret/\n")
    b.write("main.sh", "echo main\n", 0o755)
    b.write("lib/util.sh", "echo util\n")
    b.write("debug.log", "noise\n")
    b.write("secret/key", "hunter2\n")
    b.write("conf/app.conf", "port=80\n")
    os.symlink("/etc/shadow", os.path.join(b.context, "escape"))


def test_multi_step_build(built):
    write_app_context(built)
    proc = built.build("-t", "app:1", "--label", "team=build")
    assert "hello from RUN" in proc.stdout
    assert [h.split("]")[0] + "]" for h, _ in steps(proc.stdout)] == [
        f"[{i}/7]" for i in range(1, 8)]
    assert "Successfully tagged app:1" in proc.stdout

    cfg = built.config("app:1")["config"]
    assert cfg["WorkingDir"] == "/srv/app" and cfg["User"] == "app"
    assert cfg["Cmd"] == ["cat", "/data/one"]
    assert "GREETING=hello" in cfg["Env"] and cfg["Labels"] == {"team": "build"}

    lowers = built.lowers("app:1")
    assert built.read("app:1", "/data/one") == "one\n"
    assert not rootview.exists(lowers, "/etc/motd")              # a whiteout
    assert built.read("app:1", "/srv/app/main.sh") == "echo main\n"
    assert built.read("app:1", "/srv/app/lib/util.sh") == "echo util\n"
    assert not rootview.exists(lowers, "/srv/app/debug.log")     # .dockerignore
    assert not rootview.exists(lowers, "/srv/app/secret")
    link = rootview.lookup(lowers, "/srv/app/escape", follow_last=False)
    assert stat.S_ISLNK(link[1].st_mode) and os.readlink(link[0]) == "/etc/shadow"
    main = rootview.lookup(lowers, "/srv/app/main.sh")[1]
    assert (main.st_uid, main.st_gid, stat.S_IMODE(main.st_mode)) == (0, 0, 0o755)
    conf = rootview.lookup(lowers, "/etc/app/app.conf")[1]
    assert (conf.st_uid, conf.st_gid, stat.S_IMODE(conf.st_mode)) == (1000, 1000, 0o640)
    assert built.read("app:1", "/tmp/whoami") == "1000\n"          # USER for RUN
    assert built.read("app:1", "/tmp/pwd") == "/srv/app\n"         # WORKDIR for RUN
    # The runtime's mount points are not the step's: no stubs in any layer.
    for layer in lowers[:-1]:
        for stub in ("etc/resolv.conf", "etc/hosts", "proc", "sys", "dev"):
            assert not os.path.lexists(os.path.join(layer, stub)), (layer, stub)
    assert built.leftovers() == []


MULTI = """\
FROM busybox:test AS build
RUN mkdir /out && echo compiled > /out/bin && ln -s bin /out/link
FROM busybox:test AS unused
RUN echo never > /never
FROM busybox:test AS test
RUN echo tested > /tested
FROM scratch
COPY --from=build /out /app/
COPY --from=0 /bin/busybox /bin/busybox
CMD ["/bin/busybox", "cat", "/app/bin"]
"""


def test_multi_stage_copy_from_and_target(built):
    built.write("Dockerfile", MULTI)
    proc = built.build("-t", "multi:1")
    headers = [h for h, _ in steps(proc.stdout)]
    assert not any("never" in h or "tested" in h for h in headers)  # unneeded stages
    lowers = built.lowers("multi:1")
    assert built.read("multi:1", "/app/bin") == "compiled\n"
    assert os.readlink(rootview.lookup(lowers, "/app/link", follow_last=False)[0]) == "bin"
    assert rootview.exists(lowers, "/bin/busybox")
    assert not rootview.exists(lowers, "/bin/sh")                    # scratch: only the copy
    assert len(built.store.get("multi:1").diff_ids) == 2

    proc = built.build("--target", "test", "-t", "multi:test")
    headers = [h for h, _ in steps(proc.stdout)]
    assert any("tested" in h for h in headers) and not any("compiled" in h for h in headers)
    assert built.read("multi:test", "/tested") == "tested\n"
    assert built.leftovers() == []


def test_failing_run_leaves_nothing_but_the_cache_before_it(built):
    built.write("Dockerfile", "FROM busybox:test\nRUN echo first > /first\n"
                "RUN echo partial > /partial; echo to-stderr >&2; exit 3\n")
    proc = built.build("-t", "broken:1", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        'error: Dockerfile:3: process "/bin/sh -c echo partial > /partial; echo to-stderr >&2;'
        ' exit 3" did not complete successfully: exit code: 3')
    assert "to-stderr" in proc.stdout
    assert built.store.get("broken:1") is None
    assert built.leftovers() == []

    built.write("Dockerfile", "FROM busybox:test\nRUN echo first > /first\nRUN true\n")
    assert steps(built.build("-t", "fixed:1").stdout)[1][1] == "CACHED"


def test_cache_hit_then_miss_from_the_changed_step(built):
    built.write("Dockerfile", "FROM busybox:test\nRUN echo a > /a\nCOPY one.txt /one\n"
                "RUN cat /one > /copy\nCOPY two.txt /two\n")
    built.write("one.txt", "1\n")
    built.write("two.txt", "2\n")
    first = built.build("-q", "-t", "cache:1")
    image_id = first.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    again = built.build("-t", "cache:1")
    assert [s for _, s in steps(again.stdout)] == ["DONE", "CACHED", "CACHED", "CACHED",
                                                   "CACHED"]
    assert built.build("-q", "-t", "cache:1").stdout.strip() == image_id  # same image

    os.utime(os.path.join(built.context, "two.txt"), (1, 1))   # mtimes do not count
    assert built.build("-q", "-t", "cache:1").stdout.strip() == image_id
    built.write("one.txt", "changed\n")
    changed = built.build("-t", "cache:2")
    assert [s for _, s in steps(changed.stdout)] == ["DONE", "CACHED", "DONE", "DONE", "DONE"]
    assert built.read("cache:2", "/copy") == "changed\n"
    nocache = built.build("--no-cache", "-t", "cache:3")
    assert "CACHED" not in nocache.stdout
    assert built.leftovers() == []


def save(store: Store, ref: str, tag: str, path: str) -> str:
    """A `docker save` tarball of a stored image (its blobs as they are), for an agent."""
    image = store.get(ref)
    names = {"config.json": store.blob_path(image.config_digest)}
    layers = []
    for digest in image.layer_digests:
        name = digest.split(":", 1)[1] + ".tar.gz"
        names[name] = store.blob_path(digest)
        layers.append(name)
    manifest = os.path.join(os.path.dirname(path), "save-manifest.json")
    with open(manifest, "w") as f:
        json.dump([{"Config": "config.json", "RepoTags": [tag], "Layers": layers}], f)
    with tarfile.open(path, "w") as tf:
        tf.add(manifest, "manifest.json")
        for name, src in names.items():
            tf.add(src, name)
    return path


POD = """\
apiVersion: v1
kind: Pod
metadata: {name: built, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: built:1
    imagePullPolicy: Never
"""


def test_built_image_runs_in_a_pod(built):
    built.write("Dockerfile", "FROM busybox:test\nRUN echo served-by-build > /msg\n"
                'CMD ["sh", "-c", "cat /msg; while true; do sleep 1; done"]\n')
    built.build("-t", "built:1")
    tar = save(built.store, "built:1", "built:1", os.path.join(built.root, "built.tar"))
    state, manifests = os.path.join(built.root, "agent"), os.path.join(built.root, "manifests")
    os.makedirs(manifests)
    cgroup_root = unique("buildpod-")
    base = [sys.executable, "-m", "nodeagent.agent", "--state-dir", state, "--cgroup-root",
            cgroup_root, "--netns-prefix", unique("ns") + "-"]
    subprocess.run([*base, "import", tar], check=True, capture_output=True, timeout=60)
    with open(os.path.join(manifests, "built.yaml"), "w") as f:
        f.write(POD)
    agent = subprocess.Popen([*base, "run", "--pod-manifests", manifests],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runtime = Runtime(os.path.join(state, "containers"), cgroup_root=cgroup_root)
    try:
        def logs() -> str:
            for info in runtime.list():
                path = os.path.join(state, "containers", info.id, "container.log")
                if os.path.exists(path):
                    with open(path) as f:
                        return f.read()
            return ""
        assert "served-by-build" in wait_until(logs, timeout=30, what="the pod's output")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        runtime.remove_all()
        remove_parent(cgroup_root)
        from nodeagent.pods import sandbox
        from nodeagent.runtime.syscalls import LibcSyscalls
        sandboxes = sandbox.Sandboxes(LibcSyscalls())
        for name in sandbox.existing(base[-1]):
            sandboxes.remove(name)


@pytest.fixture
def registry():
    from tests.conftest import stop_process
    from tests.integration.test_images import REGISTRY_BIN, Registry

    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("needs docker-registry")
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "buildreg-")
    reg = Registry(tmp)
    yield reg
    stop_process(reg.proc)
    shutil.rmtree(tmp, ignore_errors=True)


def test_build_push_and_pull_back(built, registry):
    from nodeagent.runtime.images.registry import RegistryConfig

    built.write("Dockerfile", "FROM busybox:test AS src\nRUN echo linked > /file\n"
                "FROM busybox:test\nRUN echo pushed > /msg\nCOPY --from=src /file /copied\n")
    name = f"{registry.host}/built/app:1"
    proc = built.build("-t", name, "--push", "--insecure-registry", registry.host)
    assert "Successfully tagged" in proc.stdout
    fresh = Store(os.path.join(built.root, "fresh"))
    image = fresh.pull(name, RegistryConfig(insecure=frozenset({registry.host})))
    assert image.config_digest == built.store.get(name).config_digest
    assert rootview.read_file(image.layer_dirs(), "/msg") == "pushed\n"
    # Copied from the other stage's layer as a hard link: the pushed layer has the file.
    assert rootview.lookup(built.lowers(name), "/copied")[1].st_nlink >= 2
    assert rootview.read_file(image.layer_dirs(), "/copied") == "linked\n"


PARALLEL_FAIL = """\
FROM busybox:test AS slow
RUN sleep 1000
FROM busybox:test AS bad
RUN exit 7
FROM busybox:test
COPY --from=slow /etc/passwd /a
COPY --from=bad /etc/passwd /b
"""


def test_a_failing_stage_stops_the_others(built):
    # The stages build side by side; the failure ends the slow RUN (else the build would
    # hang until the subprocess timeout) and is what the build reports.
    built.write("Dockerfile", PARALLEL_FAIL)
    proc = built.build("-t", "parallel:1", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        'error: Dockerfile:4: process "/bin/sh -c exit 7" did not complete successfully: '
        "exit code: 7")
    assert built.store.get("parallel:1") is None
    assert built.leftovers() == []


def test_add_unpacks_local_archives_and_bad_input_is_one_line(built):
    import gzip
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("pkg/data.txt")
        payload = b"from the archive\n"
        info.size, info.uid, info.gid = len(payload), 123, 456
        tf.addfile(info, io.BytesIO(payload))
    with open(os.path.join(built.context, "pkg.tgz"), "wb") as f:
        f.write(gzip.compress(buf.getvalue()))
    built.write("notes.tar", "not an archive\n")
    built.write("Dockerfile", "FROM busybox:test\nADD pkg.tgz /opt/\nADD notes.tar /opt/\n")
    built.build("-t", "add:1")
    lowers = built.lowers("add:1")
    assert built.read("add:1", "/opt/pkg/data.txt") == "from the archive\n"
    st = rootview.lookup(lowers, "/opt/pkg/data.txt")[1]
    assert (st.st_uid, st.st_gid) == (123, 456)                    # the archive's owners
    assert built.read("add:1", "/opt/notes.tar") == "not an archive\n"   # copied as it is

    cases = {
        "FROM busybox:test\nADD https://example.com/x.tgz /\n":
            "Dockerfile:2: ADD from a URL is not supported: no network may be reachable from "
            "builds; download it into the context and COPY it",
        "FROM busybox:test\nRUN true\nCOPY ../x /\n":
            "Dockerfile:3: COPY failed: forbidden path outside the build context: ../x",
        "FROM busybox:test\nCOPY missing.txt /\n":
            "Dockerfile:2: COPY failed: file not found in build context or excluded by "
            ".dockerignore: stat missing.txt: file does not exist",
    }
    for text, want in cases.items():
        built.write("Dockerfile", text)
        proc = built.build("-t", "bad:1", check=False)
        assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [f"error: {want}"]
    os.remove(os.path.join(built.context, "Dockerfile"))
    proc = built.build(check=False)
    assert proc.returncode != 0 and "Dockerfile" in proc.stderr and \
        len(proc.stderr.strip().splitlines()) == 1
    assert built.store.get("bad:1") is None
    assert built.leftovers() == []


def test_context_must_be_a_directory(built):
    env = {**os.environ, "MOOR_BUILD_CGROUP_ROOT": built.cgroup_root}
    for path, what in ((os.path.join(built.root, "nope"), "not found"),
                       (os.path.join(built.root, "busybox.tar"), "is not a directory")):
        proc = subprocess.run([sys.executable, "-m", "builder", "build", "--root", built.root,
                               path], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode != 0
        assert proc.stderr == f'error: unable to prepare context: path "{path}" {what}\n'


def test_a_stopped_build_leaves_nothing_behind(built):
    built.write("Dockerfile", "FROM busybox:test\nRUN echo started; sleep 1000\n")
    env = {**os.environ, "MOOR_BUILD_CGROUP_ROOT": built.cgroup_root}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build", "--root", built.root,
                             "-t", "stopped:1", built.context], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # the barrier: the RUN is running
            if line.rstrip().endswith(" started"):
                break
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # a second one must not cut the clean-up short
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert built.store.get("stopped:1") is None
    assert built.leftovers() == []


def test_the_next_build_reaps_what_a_killed_builder_left(built):
    built.write("Dockerfile", "FROM busybox:test\nRUN echo started; sleep 1000\n")
    env = {**os.environ, "MOOR_BUILD_CGROUP_ROOT": built.cgroup_root}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build", "--root", built.root,
                             "-t", "killed:1", built.context], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if line.rstrip().endswith(" started"):
            break
    proc.kill()  # no clean-up at all: its RUN's container lives on
    proc.wait()
    proc.stdout.close()
    assert [x for x in built.leftovers() if x.startswith("container")]
    built.write("Dockerfile", "FROM busybox:test\nRUN true\n")
    built.build("-t", "next:1")
    assert built.leftovers() == []
