"""Mount and hardening sequences, recorded through the fake Syscalls (no root needed)."""

from __future__ import annotations

import errno
import stat

import pytest

from nodeagent.runtime.container_init import harden, prepare
from nodeagent.runtime.rootfs import (
    DEV_FLAGS,
    MASKED_PATHS,
    PROC_FLAGS,
    READONLY_PATHS,
    SYS_FLAGS,
    RootfsPlan,
    mask_paths,
    overlay_options,
    pivot,
    readonly_paths,
    setup_rootfs,
)
from nodeagent.runtime.security import DEFAULT_CAP_MASK, Identity, cap_mask
from nodeagent.runtime.spec import ContainerSpec
from nodeagent.runtime.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    MNT_DETACH,
    MS_BIND,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    Call,
    RecordingSyscalls,
)

PLAN = RootfsPlan(("/layers/top", "/layers/base"), "/s/c/upper", "/s/c/work", "/s/c/rootfs")


def mounts(fake: RecordingSyscalls) -> list[tuple]:
    return [(c.args[0], c.args[1], c.args[2], c.args[3]) for c in fake.named("mount")]


def test_rootfs_mount_sequence():
    fake = RecordingSyscalls()
    setup_rootfs(fake, PLAN)
    r = "/s/c/rootfs"
    assert mounts(fake) == [
        (None, "/", None, MS_REC | MS_PRIVATE),
        ("overlay", r, "overlay", 0),
        ("proc", f"{r}/proc", "proc", PROC_FLAGS),
        ("tmpfs", f"{r}/dev", "tmpfs", DEV_FLAGS),
        ("devpts", f"{r}/dev/pts", "devpts", fake.named("mount")[4].args[3]),
        ("shm", f"{r}/dev/shm", "tmpfs", fake.named("mount")[5].args[3]),
        ("sysfs", f"{r}/sys", "sysfs", SYS_FLAGS),
    ]
    assert SYS_FLAGS & MS_RDONLY
    overlay = fake.named("mount")[1].args[4]
    assert overlay == ("lowerdir=/layers/top:/layers/base,upperdir=/s/c/upper,"
                       "workdir=/s/c/work")
    assert "ptmxmode=0666" in fake.named("mount")[4].args[4]
    assert "newinstance" in fake.named("mount")[4].args[4]


def test_dev_nodes_and_links():
    fake = RecordingSyscalls()
    setup_rootfs(fake, PLAN)
    nodes = {c.args[0].rsplit("/", 1)[1]: c.args[1:] for c in fake.named("mknod")}
    assert set(nodes) == {"null", "zero", "full", "random", "urandom", "tty"}
    assert all(stat.S_ISCHR(mode) and mode & 0o777 == 0o666 for mode, _ in nodes.values())
    links = {c.args[1].rsplit("/", 1)[1]: c.args[0] for c in fake.named("symlink")}
    assert links == {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                     "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
                     "ptmx": "pts/ptmx"}


def test_devices_are_made_after_dev_tmpfs_and_before_pivot():
    fake = RecordingSyscalls()
    setup_rootfs(fake, PLAN)
    pivot(fake, PLAN.merged)
    names = [c.name for c in fake.calls]
    dev_tmpfs = next(i for i, c in enumerate(fake.calls)
                     if c.name == "mount" and c.args[1].endswith("/dev"))
    first_mknod = names.index("mknod")
    assert dev_tmpfs < first_mknod < names.index("pivot_root")


def test_pivot_detaches_old_root():
    fake = RecordingSyscalls()
    pivot(fake, "/new")
    assert fake.calls == [Call("chdir", ("/new",)), Call("pivot_root", (".", ".")),
                          Call("umount2", (".", MNT_DETACH)), Call("chdir", ("/",))]


@pytest.mark.parametrize("path", ["/a,b", "/a:b"])
def test_overlay_refuses_separator_paths(path):
    with pytest.raises(ValueError, match="contains"):
        overlay_options(RootfsPlan((path,), "/u", "/w", "/m"))


def test_overlay_names_a_repeated_layer_once_where_it_is_topmost():
    # Two identical layers share one store dir; overlayfs refuses a lowerdir given twice.
    opts, _ = overlay_options(RootfsPlan(("/l/b", "/l/a", "/l/b", "/l/c", "/l/a"), "/u", "/w",
                                         "/m"))
    assert opts == "lowerdir=/l/b:/l/a:/l/c,upperdir=/u,workdir=/w"


def test_masked_paths_files_get_dev_null_dirs_get_ro_tmpfs():
    fake = RecordingSyscalls()
    kinds = {"/proc/kcore": "file", "/proc/keys": "file", "/sys/firmware": "dir",
             "/proc/acpi": "dir"}
    mask_paths(fake, kind=kinds.get)
    assert mounts(fake) == [
        ("tmpfs", "/proc/acpi", "tmpfs", MS_RDONLY),
        ("/dev/null", "/proc/kcore", None, MS_BIND),
        ("/dev/null", "/proc/keys", None, MS_BIND),
        ("tmpfs", "/sys/firmware", "tmpfs", MS_RDONLY),
    ]
    for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
              "/proc/latency_stats", "/proc/timer_stats", "/sys/firmware"):
        assert p in MASKED_PATHS


def test_readonly_paths_bind_then_remount_ro():
    fake = RecordingSyscalls()
    readonly_paths(fake, kind=lambda p: "dir")
    got = mounts(fake)
    assert len(got) == 2 * len(READONLY_PATHS)
    for p, (bind, remount) in zip(READONLY_PATHS, zip(got[::2], got[1::2])):
        assert bind == (p, p, None, MS_BIND | MS_REC)
        assert remount[3] & (MS_BIND | MS_REMOUNT | MS_RDONLY) == MS_BIND | MS_REMOUNT | MS_RDONLY
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"} <= set(
        READONLY_PATHS)


@pytest.mark.parametrize("netns_fd, want", [
    pytest.param(-1, [Call("unshare", (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET,))],
                 id="new-netns"),
    pytest.param(7, [Call("setns", (7, CLONE_NEWNET)),
                     Call("unshare", (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC,))],
                 id="join-pod-netns"),
])
def test_prepare_namespaces(netns_fd, want, monkeypatch):
    monkeypatch.setattr("nodeagent.runtime.rootfs._kind", lambda p: None)
    fake = RecordingSyscalls()
    spec = ContainerSpec(id="abc", args=("sh",), lower_dirs=("/l",), hostname="h")
    prepare(fake, spec, "/s/abc", netns_fd)
    assert fake.calls[:len(want)] == want
    assert fake.named("sethostname") == [Call("sethostname", ("h",))]
    # The hostname is set before pivot_root, masks after it.
    names = [c.name for c in fake.calls]
    assert names.index("sethostname") < names.index("pivot_root")


def test_default_cap_mask_is_dockers():
    assert DEFAULT_CAP_MASK == 0xA80425FB
    assert cap_mask(("CHOWN", "KILL")) == 0b100001


def test_harden_drops_caps_then_user_then_no_new_privs():
    fake = RecordingSyscalls()
    harden(fake, Identity(65534, 65534, (65534,)), cap_last=40)
    dropped = [c.args[1] for c in fake.named("prctl") if c.args[0] == PR_CAPBSET_DROP]
    kept = [cap for cap in range(41) if cap not in dropped]
    assert kept == [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
    names = [c.name for c in fake.calls if c.name != "prctl"]
    assert names == ["capset", "setgroups", "setgid", "setuid"]
    assert fake.named("capset") == [Call("capset", (DEFAULT_CAP_MASK, DEFAULT_CAP_MASK, 0))]
    assert fake.calls[-1] == Call("prctl", (PR_SET_NO_NEW_PRIVS, 1, 0))


def test_injected_failure_names_the_call():
    fake = RecordingSyscalls(fail={"pivot_root": errno.EINVAL})
    with pytest.raises(OSError, match="pivot_root"):
        pivot(fake, "/new")


def test_many_layers_use_relative_lowerdirs():
    base = "/var/lib/moorage/layers"
    layers = tuple(f"{base}/sha256-{i:064x}/fs" for i in range(45))
    fake = RecordingSyscalls()
    setup_rootfs(fake, RootfsPlan(layers, "/s/u", "/s/w", "/s/m"))
    overlay = next(c for c in fake.calls if c.name == "mount" and c.args[2] == "overlay")
    assert fake.calls[fake.calls.index(overlay) - 1] == Call("chdir", (base,))
    assert overlay.args[4].startswith(f"lowerdir=sha256-{0:064x}/fs:")
    assert len(overlay.args[4]) <= 4000


def test_too_many_layers_is_a_clear_error():
    layers = tuple(f"/l/{i:0200x}" for i in range(40))
    with pytest.raises(ValueError, match="40 layers do not fit"):
        overlay_options(RootfsPlan(layers, "/u", "/w", "/m"))
