"""Pod volumes, the pure parts: manifest checks and their one-line errors, hostPath placement
and type checks, subPathExpr expansion, mount order, the mount table parser, and what the
agent keeps of VolumeData."""

from __future__ import annotations

import stat

import pytest

from moorage.manifest import ManifestError, parse
from moorage.model import podvolumes
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import volumes
from nodeagent.session.hostfacts import HostFacts, build_hello
from nodeagent.storage import hostpath, mounts
from nodeagent.storage.localvolumes import LocalVolumes
from nodeagent.storage.reporting import LOCAL_STORAGE, StorageLoop, fill_hello

POD = """apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  volumes: [VOLUMES]
  containers:
  - name: app
    image: busybox
    volumeMounts: [MOUNTS]
"""


def pod_text(vols: str, mts: str = "{name: v, mountPath: /v}") -> str:
    return POD.replace("VOLUMES", vols).replace("MOUNTS", mts)


def errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as err:
        parse([("f.yaml", text)])
    return err.value.problems


@pytest.mark.parametrize("vols, mts, expected", [
    pytest.param("{name: v}", "{name: v, mountPath: /v}",
                 "spec.volumes[0]: must specify a volume type (configMap, secret, emptyDir, "
                 "hostPath, persistentVolumeClaim)", id="no-type"),
    pytest.param("{name: v, emptyDir: {}, hostPath: {path: /x}}", "{name: v, mountPath: /v}",
                 "spec.volumes[0]: may not specify more than 1 volume type", id="two-types"),
    pytest.param("{name: v, emptyDir: {medium: Disk}}", "{name: v, mountPath: /v}",
                 'spec.volumes[0].emptyDir.medium: Unsupported value: "Disk": supported '
                 'values: "", "Memory"', id="medium"),
    pytest.param("{name: v, emptyDir: {sizeLimit: lots}}", "{name: v, mountPath: /v}",
                 'spec.volumes[0].emptyDir.sizeLimit: "lots" is not a quantity',
                 id="size-limit"),
    pytest.param("{name: v, emptyDir: {sizeLimit: '0'}}", "{name: v, mountPath: /v}",
                 "spec.volumes[0].emptyDir.sizeLimit: \"0\": must be greater than zero",
                 id="size-zero"),
    pytest.param("{name: v, hostPath: {path: data}}", "{name: v, mountPath: /v}",
                 'spec.volumes[0].hostPath.path: "data": must be an absolute path',
                 id="host-relative"),
    pytest.param("{name: v, hostPath: {path: /srv/../etc}}", "{name: v, mountPath: /v}",
                 "spec.volumes[0].hostPath.path: \"/srv/../etc\": must not contain '..'",
                 id="host-backsteps"),
    pytest.param("{name: v, hostPath: {path: /srv, type: Dir}}", "{name: v, mountPath: /v}",
                 'spec.volumes[0].hostPath.type: Unsupported value: "Dir": supported values: '
                 '"", "DirectoryOrCreate", "Directory"', id="host-type"),
    pytest.param("{name: v, hostPath: {}}", "{name: v, mountPath: /v}",
                 "spec.volumes[0].hostPath.path: is required", id="host-path-required"),
    pytest.param("{name: v, emptyDir: {}}", "{name: v, mountPath: /v, subPath: ../x}",
                 "spec.containers[0].volumeMounts[0].subPath: \"../x\": must not contain '..'",
                 id="subpath-backsteps"),
    pytest.param("{name: v, emptyDir: {}}", "{name: v, mountPath: /v, subPath: /x}",
                 'spec.containers[0].volumeMounts[0].subPath: "/x": must be a relative path',
                 id="subpath-absolute"),
    pytest.param("{name: v, emptyDir: {}}",
                 "{name: v, mountPath: /v, subPathExpr: '$(A)/../b'}",
                 "volumeMounts[0].subPathExpr: \"$(A)/../b\": must not contain '..'",
                 id="subpathexpr-backsteps"),
    pytest.param("{name: v, emptyDir: {}}",
                 "{name: v, mountPath: /v, subPath: a, subPathExpr: b}",
                 "spec.containers[0].volumeMounts[0].subPathExpr: subPathExpr and subPath are "
                 "mutually exclusive", id="both"),
    pytest.param("{name: v, emptyDir: {}}",
                 "{name: v, mountPath: /v}, {name: v, mountPath: /v/}",
                 'spec.containers[0].volumeMounts[1].mountPath: "/v/": must be unique',
                 id="mount-path-twice"),
    pytest.param("{name: v, emptyDir: {}}", "{name: w, mountPath: /v}",
                 'spec.containers[0].volumeMounts[0].name: "w": no volume of this pod has this '
                 "name", id="unknown-volume"),
])
def test_bad_volumes_are_one_line_errors_with_the_field_path(vols, mts, expected):
    found = errors(pod_text(vols, mts))
    assert any(expected in p for p in found), found
    assert all("\n" not in p for p in found)


def test_every_volume_type_and_nested_mounts_are_accepted():
    text = pod_text("{name: v, emptyDir: {}}, {name: m, emptyDir: {medium: Memory, "
                    "sizeLimit: 64Mi}}, {name: h, hostPath: {path: /srv/x, type: "
                    "DirectoryOrCreate}}, {name: c, persistentVolumeClaim: {claimName: data}}",
                    "{name: v, mountPath: /data}, {name: m, mountPath: /data/logs}, "
                    "{name: h, mountPath: /h, readOnly: true}, "
                    "{name: c, mountPath: /c, subPathExpr: '$(POD_NAME)'}")
    pod = parse([("f.yaml", text)])[0].obj
    assert [podvolumes.source_of(v) for v in pod.spec.volumes] == [
        "empty_dir", "empty_dir", "host_path", "persistent_volume_claim"]


@pytest.mark.parametrize("expr, env, want", [
    pytest.param("$(POD_NAME)", {"POD_NAME": "web-0"}, ("web-0", []), id="var"),
    pytest.param("logs/$(A)/$(B)", {"A": "a", "B": "b"}, ("logs/a/b", []), id="two"),
    pytest.param("$(NOPE)/x", {}, ("/x", ["NOPE"]), id="missing"),
    pytest.param("$(EMPTY)", {"EMPTY": ""}, ("", ["EMPTY"]), id="empty-is-missing"),
    pytest.param("$$(A)", {"A": "a"}, ("$(A)", []), id="escaped"),
    pytest.param("$A/$(", {"A": "a"}, ("$A/$(", []), id="not-a-reference"),
])
def test_sub_path_expr_expansion(expr, env, want):
    assert podvolumes.expand(expr, env) == want


ALLOWED = ("/srv", "/data/pods", "/var/lib")
STATE = "/var/lib/moorage"


@pytest.mark.parametrize("path, want", [
    pytest.param("/srv", ("/srv", ""), id="the-prefix"),
    pytest.param("/srv/a/b", ("/srv", "a/b"), id="below"),
    pytest.param("/data/pods/x", ("/data/pods", "x"), id="second"),
    pytest.param("/srvx", 'hostPath "/srvx" is not under --allowed-host-paths (/srv, '
                 "/data/pods, /var/lib)", id="not-a-path-prefix"),
    pytest.param("/data", 'hostPath "/data" is not under', id="parent-of-prefix"),
    pytest.param("/", "/ is never allowed", id="root"),
    pytest.param("/proc/self", "/proc is never allowed", id="proc"),
    pytest.param("/sys", "/sys is never allowed", id="sys"),
    pytest.param("/var/lib/moorage/pki", "state dir /var/lib/moorage", id="in-state-dir"),
    pytest.param("/var/lib", "holds or is inside the agent's state dir", id="holds-state-dir"),
    pytest.param("/var/lib/docker", ("/var/lib", "docker"), id="beside-state-dir"),
    pytest.param("/srv/../etc", 'must be an absolute path without ".."', id="backsteps"),
])
def test_host_path_placement(path, want):
    if isinstance(want, tuple):
        assert hostpath.placement(path, ALLOWED, STATE) == want
    else:
        with pytest.raises(hostpath.HostPathError) as err:
            hostpath.placement(path, ALLOWED, STATE)
        assert want in str(err.value)


def test_a_prefix_holding_the_state_dir_is_refused_and_none_allowed_by_default():
    with pytest.raises(hostpath.HostPathError, match="state dir"):
        hostpath.placement("/srv", ("/srv",), "/srv/state")
    with pytest.raises(hostpath.HostPathError, match=r"--allowed-host-paths \(none are "):
        hostpath.placement("/srv", (), "/var/lib/moorage")


@pytest.mark.parametrize("type_, mode, want", [
    ("", None, ""), ("", stat.S_IFREG, ""),
    ("Directory", stat.S_IFDIR, ""), ("Directory", stat.S_IFREG, "is not a directory"),
    ("Directory", None, "is not a directory"),
    ("DirectoryOrCreate", stat.S_IFREG, "is not a directory"),
    ("File", stat.S_IFREG, ""), ("File", stat.S_IFDIR, "is not a file"),
    ("FileOrCreate", stat.S_IFDIR, "is not a file"),
    ("Socket", stat.S_IFSOCK, ""), ("Socket", stat.S_IFREG, "is not a socket file"),
    ("CharDevice", stat.S_IFCHR, ""), ("CharDevice", stat.S_IFBLK, "is not a character device"),
    ("BlockDevice", stat.S_IFBLK, ""), ("BlockDevice", stat.S_IFCHR, "is not a block device"),
])
def test_host_path_type_checks_say_what_kubernetes_says(type_, mode, want):
    got = hostpath.type_problem(type_, mode, "/x")
    assert got == (f"hostPath type check failed: /x {want}" if want else "")


def test_parse_allowed_host_paths():
    assert hostpath.parse_allowed("") == ()
    assert hostpath.parse_allowed("/srv/, /data//x,/srv") == ("/srv", "/data/x")
    with pytest.raises(ValueError, match="want an absolute path"):
        hostpath.parse_allowed("srv")


def test_mounts_are_ordered_parents_first():
    got = volumes.mount_order([("/data/logs/x", "a", False), ("/data", "b", False),
                               ("/a", "c", True), ("/data/logs", "d", False)])
    assert [m[0] for m in got] == ["/a", "/data", "/data/logs", "/data/logs/x"]


def test_memory_default_is_the_pods_limit_only_when_every_container_has_one():
    pod = pb.Pod()
    pod.spec.containers.add(name="a").resources.limits["memory"] = "64Mi"
    assert volumes.memory_default(pod) == 64 * 2**20
    pod.spec.containers.add(name="b")
    assert volumes.memory_default(pod) is None


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 7:0 / /var/lib/x/pod-disks/u/empty/s rw,relatime shared:2 - ext4 /dev/loop0 rw
31 22 0:40 / /var/lib/x/pod-disks/u/empty/with\\040space rw shared:3 - tmpfs tmpfs rw
32 30 8:1 /srv /var/lib/x/pod-disks/u/empty/s/deeper rw shared:1 - ext4 /dev/vda rw
"""


def test_mount_table_unescapes_and_lists_deepest_first():
    under = mounts.under("/var/lib/x/pod-disks/u", MOUNTINFO)
    assert under == ["/var/lib/x/pod-disks/u/empty/s/deeper", "/var/lib/x/pod-disks/u/empty/s",
                     "/var/lib/x/pod-disks/u/empty/with space"]
    assert mounts.source_of("/var/lib/x/pod-disks/u/empty/s", MOUNTINFO) == "/dev/loop0"
    assert mounts.device_of("/var/lib/x/pod-disks/u/empty/s", MOUNTINFO) == "7:0"
    assert mounts.under("/var/lib/x/pod-disks/u/empty/s2", MOUNTINFO) == []


def lv(name: str, claim: str, size: int = 2**20) -> agent_pb2.LocalVolume:
    return agent_pb2.LocalVolume(name=name, claim_namespace="ns", claim_name=claim,
                                 capacity_bytes=size)


def test_volume_data_changes_claims_and_deletes_only_what_it_names(tmp_path):
    local = LocalVolumes(str(tmp_path), None)   # apply does no disk work: no syscalls
    assert local.apply(agent_pb2.VolumeData(full=True, volumes=[lv("pv1", "a"),
                                                                 lv("pv2", "b")])) == \
        {("ns", "a"), ("ns", "b")}
    gen = local.generation
    assert local.apply(agent_pb2.VolumeData(full=True, volumes=[lv("pv1", "a"),
                                                                 lv("pv2", "b")])) == set()
    assert local.generation == gen
    # A full list without pv2: no longer served, but nothing is deleted.
    assert local.apply(agent_pb2.VolumeData(full=True, volumes=[lv("pv1", "a", 2**21)])) == \
        {("ns", "a"), ("ns", "b")}
    assert local._pending_delete == set()
    assert local.for_claim("ns", "b") == ("", 'persistentvolumeclaim "b" is not bound to '
                                              "this node yet")
    local.apply(agent_pb2.VolumeData(deleted=["pv2", "../../etc"]))
    assert local._pending_delete == {"pv2"}


def test_storage_loop_reports_on_change_and_again_to_a_new_session(tmp_path):
    local = LocalVolumes(str(tmp_path), None)
    sent, session = [], [1]
    loop = StorageLoop(local, lambda r: sent.append(r) or True, lambda: session[0])
    loop.step()
    loop.step()
    assert len(sent) == 1
    session[0] = 2
    loop.step()
    assert len(sent) == 2 and loop.passes == 3


def test_hello_says_local_storage_and_allowed_host_paths(tmp_path):
    msg = build_hello("n1", {}, HostFacts(2, 2**30, "10.0.0.1", "h"), [])
    fill_hello(msg.hello, str(tmp_path), ("/srv",))
    assert int(msg.hello.capacity[LOCAL_STORAGE]) > 0
    assert list(msg.hello.allowed_host_paths) == ["/srv"]


@pytest.mark.parametrize("path, want", [
    ("metadata.name", "web-0"), ("metadata.namespace", "db"), ("metadata.uid", "u-1"),
    ("spec.nodeName", "node-1"), ("status.podIP", "10.244.1.5"),
    ("metadata.labels['app']", "pg"), ("metadata.annotations['a/b']", "x"),
    ("metadata.labels['none']", ""),
])
def test_downward_api_field_values(path, want):
    pod = pb.Pod()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = "web-0", "db", "u-1"
    pod.metadata.labels["app"] = "pg"
    pod.metadata.annotations["a/b"] = "x"
    pod.spec.node_name = "node-1"
    assert podvolumes.field_path_problem(path) == ""
    assert podvolumes.field_value(pod, path, "10.244.1.5") == want


def test_field_ref_checks_and_resolution():
    text = pod_text("{name: v, emptyDir: {}}").replace(
        "    volumeMounts:", "    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: "
        "metadata.name}}}, {name: BAD, valueFrom: {fieldRef: {fieldPath: spec.bogus}}}]\n"
        "    volumeMounts:")
    found = errors(text)
    assert any('env[1].valueFrom.fieldRef.fieldPath: Unsupported value: "spec.bogus": '
               'supported values: "metadata.name"' in p for p in found), found
    pod = parse([("f.yaml", text.replace("spec.bogus", "metadata.uid"))])[0].obj
    pod.metadata.uid = "u-9"
    from nodeagent.pods import configenv
    got = configenv.resolve(pod.spec.containers[0], "default", lambda k, n: None, pod)
    assert got.values == {"POD_NAME": ("p", False), "BAD": ("u-9", False)}
