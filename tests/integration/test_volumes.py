"""Pod volumes run for real by the agent's pod worker: emptyDir (on disk, size-limited, in
memory), hostPath, subPath and subPathExpr, read-only mounts, and local persistent volumes
that outlive their pods and the agent. Real containers, real mounts, real loop devices."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

import pytest

from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import volumes
from nodeagent.pods.configstore import ConfigStore
from nodeagent.pods.volumes import HostPolicy
from nodeagent.pods.worker import PodWorker, parse_container_id
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.syscalls import LibcSyscalls, RecordingSyscalls
from nodeagent.storage import diskimage, hostpath, mounts
from nodeagent.storage.localvolumes import LocalVolumes, unmount_all
from nodeagent.storage.reporting import StorageLoop
from tests import imagebuild
from tests.conftest import TEST_PREFIX, unique
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real mounts and containers: root")

MI = 2**20


class Node:
    """One agent's stores in a temp state dir, and the workers made on it."""

    def __init__(self, root: str, images: Store, runtime: Runtime):
        self.root, self.images, self.runtime = root, images, runtime
        # The agent's state dir; beside it, what stands for the host's own directories.
        self.state = os.path.join(root, "state")
        self.volumes_root = os.path.join(self.state, "volumes")
        self.local_root = os.path.join(self.state, "local-volumes")
        self.host_dir = os.path.join(root, "host")   # an allowed host prefix
        os.makedirs(self.host_dir)
        self.local = LocalVolumes(self.local_root, LibcSyscalls())
        self.workers: list[PodWorker] = []

    def worker(self, pod: pb.Pod, allowed: tuple[str, ...] | None = None) -> PodWorker:
        w = PodWorker(pod, self.runtime, self.images, netns_prefix=TEST_PREFIX,
                      configs=ConfigStore(), volumes_root=self.volumes_root,
                      host_paths=HostPolicy(allowed if allowed is not None
                                            else (self.host_dir,), self.state),
                      local_volumes=self.local)
        self.workers.append(w)
        return w

    def restart_agent(self) -> None:
        """What a restarted agent has: its state dir, no memory (the containers run on)."""
        self.local = LocalVolumes(self.local_root, LibcSyscalls())


@pytest.fixture
def node():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "vol-")
    images = Store(os.path.join(root, "state", "images"))
    import_archive(images, imagebuild.busybox_tar(root))
    runtime = Runtime(os.path.join(root, "state", "containers"), cgroup_root=unique("vol-"))
    n = Node(root, images, runtime)
    yield n
    for w in n.workers:
        w.teardown(0)
    runtime.remove_all()
    volumes.remove_all(LibcSyscalls(), n.volumes_root)
    unmount_all(LibcSyscalls(), n.local_root)
    shutil.rmtree(root, ignore_errors=True)


def make_pod(*containers, vols=(), policy="Never") -> pb.Pod:
    """containers: (name, script, [VolumeMount...]) each."""
    pod = pb.Pod(api_version="v1", kind="Pod")
    pod.metadata.name, pod.metadata.namespace = "p", "default"
    pod.metadata.uid = str(uuid.uuid4())
    pod.spec.restart_policy = policy
    pod.spec.termination_grace_period_seconds = 1
    for name, script, mts in containers:
        c = pod.spec.containers.add(name=name, image="busybox:test", image_pull_policy="Never")
        c.command.extend(["sh", "-c", script])
        c.volume_mounts.extend(mts)
    pod.spec.volumes.extend(vols)
    return pod


def mount(name: str, path: str, **kw) -> pb.VolumeMount:
    return pb.VolumeMount(name=name, mount_path=path, **kw)


def logs(node: Node, w: PodWorker) -> dict[str, str]:
    out = {}
    for info in node.runtime.list(prefix=w.uid_prefix + "-"):
        with open(os.path.join(node.runtime.state_dir, info.id, "container.log")) as f:
            # CRI log lines: time, stream, tag, text.
            out[parse_container_id(info.id)[1]] = "".join(
                line.split(" ", 3)[3] if line.count(" ") >= 3 else "\n" for line in f)
    return out


def run_to_end(node: Node, w: PodWorker, timeout: float = 30) -> dict[str, str]:
    """Syncs until every container has exited; their logs."""
    def done():
        plan = w.sync()
        return plan.phase in ("Succeeded", "Failed") and plan
    wait_until(done, timeout, "the pod's containers to exit", interval=0.1)
    return logs(node, w)


def running(w: PodWorker, timeout: float = 30):
    return wait_until(lambda: (p := w.sync()).phase == "Running" and
                      all(c.state == "running" for c in p.containers) and p,
                      timeout, "the pod to run")


def waiting(w: PodWorker, name: str):
    status = w.status(w.sync())
    return next(c for c in status.container_statuses if c.name == name)


def exec_out(node: Node, w: PodWorker, container: str, script: str) -> tuple[int, str]:
    cid = next(i.id for i in node.runtime.list(prefix=w.uid_prefix + "-")
               if parse_container_id(i.id)[1] == container and i.status.state == "running")
    path = os.path.join(node.root, unique("exec-"))
    with open(path, "w+") as out:
        rc = node.runtime.exec(cid, ["sh", "-c", script], stdout=out, stderr=out).wait()
        out.seek(0)
        text = out.read()
    os.unlink(path)
    return rc, text


# ---- emptyDir ----

def test_two_containers_share_an_empty_dir_removed_with_the_pod(node):
    vol = pb.Volume(name="shared", empty_dir=pb.EmptyDirVolumeSource())
    pod = make_pod(("a", "echo hello > /shared/x", [mount("shared", "/shared")]),
                   ("b", "while [ ! -f /in/x ]; do sleep 0.05; done; cat /in/x; "
                         "stat -c %a /in", [mount("shared", "/in")]), vols=[vol])
    w = node.worker(pod)
    out = run_to_end(node, w)
    assert out["b"].split() == ["hello", "777"]
    disk = w.volumes.disk
    assert os.path.isfile(os.path.join(disk, volumes.EMPTY, "shared", "x"))
    w.teardown(0)
    assert not os.path.exists(disk)


def test_size_limit_returns_enospc_to_the_writer_and_nothing_outside_fills(node):
    vol = pb.Volume(name="scratch", empty_dir=pb.EmptyDirVolumeSource(size_limit="8Mi"))
    pod = make_pod(("w", "dd if=/dev/zero of=/scratch/big bs=1M count=32 conv=fsync; "
                         "echo rc=$?; df -k /scratch | tail -1",
                    [mount("scratch", "/scratch")]), vols=[vol])
    w = node.worker(pod)
    out = run_to_end(node, w)["w"]
    assert "No space left on device" in out and "rc=1" in out, out
    image = os.path.join(w.volumes.disk, volumes.IMAGES, "scratch.img")
    # The image holds at most its size on the node's disk, and the container's own
    # writable layer got none of it.
    assert os.stat(image).st_blocks * 512 <= 8 * MI
    assert os.path.getsize(image) == 8 * MI
    for d in os.listdir(node.runtime.state_dir):
        for _, _, names in os.walk(os.path.join(node.runtime.state_dir, d, "upper")):
            assert "big" not in names
    loops = [dev for dev, file in diskimage.loops_backed_under(node.root)]
    assert loops, "the image is loop-mounted"
    w.teardown(0)
    assert diskimage.loops_backed_under(node.root) == []
    assert mounts.under(node.root) == []


def test_memory_empty_dir_is_a_tmpfs_of_its_size_charged_to_the_writer(node):
    vol = pb.Volume(name="mem", empty_dir=pb.EmptyDirVolumeSource(medium="Memory",
                                                                   size_limit="16Mi"))
    pod = make_pod(("w", "grep ' /mem ' /proc/mounts; "
                         "dd if=/dev/zero of=/mem/f bs=1M count=32; echo rc=$?; sleep 300",
                    [mount("mem", "/mem")]), vols=[vol], policy="Always")
    w = node.worker(pod)
    running(w)
    wait_until(lambda: "rc=" in logs(node, w).get("w", ""), 20, "the writer to finish")
    out = logs(node, w)["w"]
    assert "tmpfs" in out and "size=16384k" in out, out
    assert "No space left on device" in out, out
    # tmpfs pages are charged to the memory cgroup of the process that wrote them: the
    # container's, so they count against the pod's memory.
    cid = next(i.id for i in node.runtime.list(prefix=w.uid_prefix + "-"))
    sample = node.runtime.stats_reader.sample(cid)
    assert sample is not None and sample.usage >= 15 * MI, sample


# ---- hostPath ----

@pytest.mark.parametrize("type_, make, want", [
    pytest.param("Directory", "dir", "", id="Directory"),
    pytest.param("Directory", "file", "is not a directory", id="Directory-file"),
    pytest.param("Directory", None, "is not a directory", id="Directory-missing"),
    pytest.param("DirectoryOrCreate", None, "", id="DirectoryOrCreate"),
    pytest.param("File", "file", "", id="File"),
    pytest.param("File", "dir", "is not a file", id="File-dir"),
    pytest.param("FileOrCreate", None, "", id="FileOrCreate"),
    pytest.param("FileOrCreate", "dir", "is not a file", id="FileOrCreate-dir"),
    pytest.param("Socket", "socket", "", id="Socket"),
    pytest.param("Socket", "file", "is not a socket file", id="Socket-file"),
    pytest.param("CharDevice", "file", "is not a character device", id="CharDevice-file"),
    pytest.param("BlockDevice", "dir", "is not a block device", id="BlockDevice-dir"),
    pytest.param("", None, "", id="unset-creates-dir"),
])
def test_host_path_types_check_what_is_there(node, type_, make, want):
    path = os.path.join(node.host_dir, "sub", "thing")
    os.makedirs(os.path.dirname(path))
    held = None
    if make == "dir":
        os.mkdir(path)
    elif make == "file":
        open(path, "w").close()
    elif make == "socket":
        held = socket.socket(socket.AF_UNIX)
        held.bind(path)
    try:
        opened = hostpath.open_checked(LibcSyscalls(), path, type_, (node.host_dir,),
                                       node.state)
    except hostpath.HostPathError as err:
        assert want and str(err) == f"hostPath type check failed: {path} {want}", err
    else:
        assert not want, f"{type_} accepted {make}"
        os.close(opened.fd)
        assert os.path.lexists(path)
    finally:
        if held:
            held.close()


def test_host_path_is_shared_with_the_host_and_refused_outside_the_prefixes(node):
    os.makedirs(os.path.join(node.host_dir, "data"))
    vol = pb.Volume(name="h", host_path=pb.HostPathVolumeSource(
        path=os.path.join(node.host_dir, "data"), type="Directory"))
    w = node.worker(make_pod(("c", "echo from-pod > /h/out", [mount("h", "/h")]), vols=[vol]))
    run_to_end(node, w)
    with open(os.path.join(node.host_dir, "data", "out")) as f:
        assert f.read() == "from-pod\n"
    w.teardown(0)
    assert os.path.exists(os.path.join(node.host_dir, "data", "out")), "host data is kept"

    etc = pb.Volume(name="h", host_path=pb.HostPathVolumeSource(path="/etc"))
    w = node.worker(make_pod(("c", "true", [mount("h", "/h")]), vols=[etc]))
    st = waiting(w, "c")
    assert (st.state, st.reason) == ("waiting", "CreateContainerError")
    assert st.message == ('MountVolume.SetUp failed for volume "h": hostPath "/etc" is not '
                          f"under --allowed-host-paths ({node.host_dir})")
    assert node.runtime.list(prefix=w.uid_prefix + "-") == []


@pytest.mark.parametrize("path", ["/", "/proc/1", "/sys/kernel"])
def test_root_proc_and_sys_are_refused_even_when_listed(path):
    with pytest.raises(hostpath.HostPathError, match="is never allowed"):
        hostpath.placement(path, ("/",), "/var/lib/x")


def test_the_state_dir_is_refused_even_when_listed(node):
    for path in (node.state, os.path.join(node.state, "images"), node.root):
        with pytest.raises(hostpath.HostPathError, match="state dir"):
            hostpath.open_checked(LibcSyscalls(), path, "", ("/",), node.state)


def test_a_symlink_escape_fails_and_the_host_is_untouched(node):
    outside = os.path.join(node.root, "outside")
    os.makedirs(outside)
    os.symlink(outside, os.path.join(node.host_dir, "link"))
    before = sorted(os.listdir(outside))
    for p in ("link", "link/new"):
        vol = pb.Volume(name="h", host_path=pb.HostPathVolumeSource(
            path=os.path.join(node.host_dir, p), type="DirectoryOrCreate"))
        w = node.worker(make_pod(("c", "touch /h/pwned", [mount("h", "/h")]), vols=[vol]))
        st = waiting(w, "c")
        assert st.reason == "CreateContainerError" and "symbolic link" in st.message, st
        assert node.runtime.list(prefix=w.uid_prefix + "-") == []
    assert sorted(os.listdir(outside)) == before


def test_a_symlink_swapped_in_after_the_check_does_not_move_the_mount(node):
    """The fd that was checked is what gets bound: replacing the directory by a symlink to
    somewhere else between the check and the mount changes nothing."""
    real = os.path.join(node.host_dir, "d")
    os.makedirs(real)
    open(os.path.join(real, "mine"), "w").close()
    sysc = LibcSyscalls()
    opened = hostpath.open_checked(sysc, real, "Directory", (node.host_dir,), node.state)
    os.rename(real, real + ".old")
    os.symlink("/etc", real)
    target = os.path.join(node.root, "bound")
    os.makedirs(target)
    try:
        mounts.bind_fd(sysc, opened.fd, target)
        assert os.listdir(target) == ["mine"]
    finally:
        os.close(opened.fd)
        mounts.unmount_under(sysc, target)


def test_a_pod_dir_whose_mounts_will_not_go_is_left_whole(node):
    """Removing a pod's disk dir never empties a hostPath through a mount that stayed."""
    data = os.path.join(node.host_dir, "precious")
    os.makedirs(data)
    open(os.path.join(data, "keep"), "w").close()
    disk = os.path.join(node.state, "pod-disks", "u1")
    target = os.path.join(disk, volumes.HOST, "h")
    os.makedirs(target)
    real = LibcSyscalls()
    opened = hostpath.open_checked(real, data, "Directory", (node.host_dir,), node.state)
    try:
        mounts.bind_fd(real, opened.fd, target)
    finally:
        os.close(opened.fd)
    try:
        stuck = RecordingSyscalls()   # its umount2 does nothing: the mount stays
        assert volumes.remove_disk(stuck, disk) is False
        assert os.path.exists(os.path.join(data, "keep")) and os.path.isdir(disk)
        assert [c.name for c in stuck.calls] == ["umount2"]
    finally:
        assert volumes.remove_disk(real, disk)
    assert not os.path.exists(disk) and os.path.exists(os.path.join(data, "keep"))


# ---- volumeMounts ----

def test_sub_path_sub_path_expr_read_only_and_nested_mounts(node):
    vol = pb.Volume(name="v", empty_dir=pb.EmptyDirVolumeSource())
    data = pb.Volume(name="data", empty_dir=pb.EmptyDirVolumeSource())
    mts = [mount("data", "/data"), mount("v", "/data/logs", sub_path="logs/app"),
           mount("v", "/mine", sub_path_expr="pods/$(POD_NAME)"),
           mount("v", "/ro", read_only=True)]
    pod = make_pod(("c", "echo a > /data/logs/l && echo b > /mine/m && "
                         "(echo x > /ro/nope 2>&1 || echo refused) && ls /data", mts),
                   vols=[vol, data])
    pod.metadata.name = "web-0"   # through the downward API, as a StatefulSet's pods do
    pod.spec.containers[0].env.add(name="POD_NAME", value_from=pb.EnvVarSource(
        field_ref=pb.ObjectFieldSelector(field_path="metadata.name")))
    w = node.worker(pod)
    out = run_to_end(node, w)["c"]
    assert "Read-only file system" in out and "refused" in out, out
    root = os.path.join(w.volumes.disk, volumes.EMPTY, "v")
    with open(os.path.join(root, "logs", "app", "l")) as f:
        assert f.read() == "a\n"
    with open(os.path.join(root, "pods", "web-0", "m")) as f:
        assert f.read() == "b\n"
    assert "logs" in out.split()   # the nested mount point made inside /data


def test_sub_path_expr_with_a_missing_variable_refuses_the_mount(node):
    vol = pb.Volume(name="v", empty_dir=pb.EmptyDirVolumeSource())
    w = node.worker(make_pod(("c", "true", [mount("v", "/m", sub_path_expr="$(NOPE)")]),
                             vols=[vol]))
    st = waiting(w, "c")
    assert st.reason == "CreateContainerConfigError" and "missing value for NOPE" in st.message


def test_a_sub_path_through_a_symlink_out_of_the_volume_is_refused(node):
    vol = pb.Volume(name="v", empty_dir=pb.EmptyDirVolumeSource())
    outside = os.path.join(node.root, "outside")
    os.makedirs(outside)
    w = node.worker(make_pod(("c", f"ln -s {outside} /v/evil; ln -s inner /v/ok; "
                                   "mkdir /v/inner", [mount("v", "/v")]), vols=[vol]))
    run_to_end(node, w)
    c = pb.Container(name="d", image="busybox:test",
                     volume_mounts=[mount("v", "/x", sub_path="evil/f")])
    with pytest.raises(volumes.VolumeProblem, match="leads outside the volume"):
        w.volumes.mounts(c, {})
    c = pb.Container(name="d", image="busybox:test",
                     volume_mounts=[mount("v", "/x", sub_path="ok")])
    assert w.volumes.mounts(c, {})[0][0] == "/x"   # a link that stays inside is fine
    assert os.listdir(outside) == []


def test_a_restarted_agent_adopts_a_pods_volumes_without_mounting_them_again(node):
    os.makedirs(os.path.join(node.host_dir, "h"))
    vols = [pb.Volume(name="s", empty_dir=pb.EmptyDirVolumeSource(size_limit="8Mi")),
            pb.Volume(name="m", empty_dir=pb.EmptyDirVolumeSource(medium="Memory")),
            pb.Volume(name="h", host_path=pb.HostPathVolumeSource(
                path=os.path.join(node.host_dir, "h"), type="Directory"))]
    pod = make_pod(("c", "echo x > /s/f; exec sleep 300",
                    [mount("s", "/s"), mount("m", "/m"), mount("h", "/h"),
                     mount("s", "/sub", sub_path="d")]), vols=vols, policy="Always")
    w = node.worker(pod)
    running(w)
    before = mounts.under(node.state)
    ids = {i.id for i in node.runtime.list(prefix=w.uid_prefix + "-")}
    node.restart_agent()
    w2 = node.worker(pod)
    running(w2)
    node.workers.remove(w)
    assert mounts.under(node.state) == before
    assert {i.id for i in node.runtime.list(prefix=w.uid_prefix + "-")} == ids
    assert exec_out(node, w2, "c", "cat /s/f")[1] == "x\n"
    w2.teardown(0)
    assert mounts.under(node.state) == [] and diskimage.loops_backed_under(node.state) == []
    assert os.path.isdir(os.path.join(node.host_dir, "h"))


# ---- local persistent volumes ----

def volume_data(name: str, claim: str, size: int, *, deleted=(), full=True):
    return agent_pb2.VolumeData(full=full, deleted=list(deleted), volumes=[] if size == 0 else [
        agent_pb2.LocalVolume(name=name, claim_namespace="default", claim_name=claim,
                              capacity_bytes=size)])


RECORDS = ("i=0; while [ $i -lt 200 ]; do echo record-$i >> /db/log; i=$((i+1)); done; "
           "sync; wc -l < /db/log")


def test_a_local_volume_outlives_its_pod_and_the_agent_and_goes_only_when_deleted(node):
    pv, claim = unique("pv-"), "data"
    claim_vol = pb.Volume(name="data", persistent_volume_claim=pb.PersistentVolumeClaimVolumeSource(
        claim_name=claim))
    pod = make_pod(("db", RECORDS + "; sleep 300", [mount("data", "/db")]), vols=[claim_vol],
                   policy="Always")
    w = node.worker(pod)
    st = waiting(w, "db")
    assert (st.reason, st.message) == (
        "ContainerCreating", 'MountVolume.SetUp failed for volume "data": '
        f'persistentvolumeclaim "{claim}" is not bound to this node yet')
    node.local.apply(volume_data(pv, claim, 16 * MI))
    running(w)   # starts by itself once the volume is there
    wait_until(lambda: "200" in logs(node, w).get("db", ""), 20, "the records")

    # An agent killed and restarted: the container runs on with its volume; a new agent
    # (no VolumeData yet) finds the volume from its state dir and adopts the pod.
    first = {i.id for i in node.runtime.list(prefix=w.uid_prefix + "-")}
    node.restart_agent()
    w2 = node.worker(pod)
    running(w2)
    assert {i.id for i in node.runtime.list(prefix=w.uid_prefix + "-")} == first
    assert exec_out(node, w2, "db", "wc -l < /db/log")[1].split() == ["200"]
    node.workers.remove(w)

    # The pod deleted: the data stays; a new pod of the claim sees every record.
    w2.teardown(0)
    node.workers.remove(w2)
    image = os.path.join(node.local_root, pv, "disk.img")
    assert os.path.exists(image)
    reader = node.worker(make_pod(("r", "wc -l < /db/log; tail -1 /db/log",
                                   [mount("data", "/db")]), vols=[claim_vol]))
    assert run_to_end(node, reader)["r"].split() == ["200", "record-199"]
    reader.teardown(0)

    # An agent reset takes the mounts and loop devices down, and keeps the data.
    unmount_all(LibcSyscalls(), node.local_root)
    assert mounts.under(node.local_root) == [] and diskimage.loops_backed_under(node.root) == []
    assert os.path.exists(image)

    # Deleted by the reclaim policy: gone, and reported until VolumeData stops naming it.
    sent = []
    loop = StorageLoop(node.local, lambda r: sent.append(r) or True)
    node.local.apply(volume_data(pv, claim, 0, deleted=[pv]))
    loop.step()
    assert not os.path.exists(os.path.join(node.local_root, pv))
    assert list(sent[-1].deleted) == [pv]
    node.local.apply(agent_pb2.VolumeData(full=True))
    loop.step()
    assert list(sent[-1].deleted) == []


def test_a_full_local_volume_returns_enospc_and_grows_online(node):
    pv, claim = unique("pv-"), "data"
    node.local.apply(volume_data(pv, claim, 16 * MI))
    vol = pb.Volume(name="data", persistent_volume_claim=pb.PersistentVolumeClaimVolumeSource(
        claim_name=claim))
    pod = make_pod(("w", "dd if=/dev/zero of=/db/fill bs=1M count=64 conv=fsync 2>&1; "
                         "echo rc=$?; sleep 300", [mount("data", "/db")]), vols=[vol],
                   policy="Always")
    w = node.worker(pod)
    running(w)
    wait_until(lambda: "rc=" in logs(node, w).get("w", ""), 30, "the writer")
    assert "No space left on device" in logs(node, w)["w"]
    image = os.path.join(node.local_root, pv, "disk.img")
    assert os.stat(image).st_blocks * 512 <= 16 * MI
    used, cap = node.local.usage()[0][1:]
    assert used > 10 * MI and cap <= 16 * MI

    # Expansion: online where the agent may (CAP_SYS_RESOURCE), else once no container has
    # the volume mounted; either way the next pod sees the new size, with the data.
    node.local.apply(volume_data(pv, claim, 32 * MI))
    loop = StorageLoop(node.local, lambda r: True)
    loop.step()
    assert os.path.getsize(image) == 32 * MI
    w.teardown(0)
    loop.step()
    r = node.worker(make_pod(("r", "df -k /db | tail -1; ls -l /db/fill",
                              [mount("data", "/db")]), vols=[vol]))
    out = run_to_end(node, r)["r"].split()
    assert int(out[1]) > 24 * 1024 and "/db/fill" in out, out


def test_a_read_only_claim_refuses_writes(node):
    pv, claim = unique("pv-"), "data"
    node.local.apply(volume_data(pv, claim, 16 * MI))
    vol = pb.Volume(name="data", persistent_volume_claim=pb.PersistentVolumeClaimVolumeSource(
        claim_name=claim, read_only=True))
    w = node.worker(make_pod(("w", "touch /db/x 2>&1; echo rc=$?", [mount("data", "/db")]),
                             vols=[vol]))
    out = run_to_end(node, w)["w"]
    assert "Read-only file system" in out and "rc=1" in out, out


def test_usage_metrics_name_the_claim(node):
    from nodeagent.metrics.collector import AgentCollector

    pv = unique("pv-")
    node.local.apply(volume_data(pv, "data", 16 * MI))
    node.local.sync()
    collector = AgentCollector(node.runtime, dict, "n1", node.root, volumes=node.local)
    found = {(m.name, s.labels["persistentvolumeclaim"]): s.value
             for m in collector.collect() for s in m.samples
             if m.name.startswith("kubelet_volume_stats")}
    assert found[("kubelet_volume_stats_capacity_bytes", "data")] > 12 * MI
    assert ("kubelet_volume_stats_used_bytes", "data") in found
