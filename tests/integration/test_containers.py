"""Real containers, as root: busybox rootfs as the only lower layer, our shim and runtime."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nodeagent.runtime import cgroups
from nodeagent.runtime.logs import parse_line
from nodeagent.runtime.runtime import Runtime, StartError
from nodeagent.runtime.security import DEFAULT_CAP_MASK
from nodeagent.runtime.spec import EXITED, RUNNING, ContainerSpec, alive
from tests.conftest import TEST_PREFIX, unique

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

APPLETS = ["sh", "echo", "cat", "sleep", "ls", "hostname", "id", "ps", "mount", "touch", "wget", "grep", "head", "tail", "seq", "readlink", "true", "wc", "kill"]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def rootfs():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "rootfs-")
    root = os.path.join(tmp, "lower")
    for d in ("bin", "etc", "tmp", "work"):
        os.makedirs(os.path.join(root, d))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for name in APPLETS:
        os.symlink("busybox", os.path.join(root, "bin", name))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    yield root
    shutil.rmtree(tmp)


@pytest.fixture(scope="module", autouse=True)
def cgroup_path_report(request):
    """Say which cgroup implementation these tests exercised (printed in the pytest summary)."""
    version = cgroups.detect_version()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ntest_containers: exercising cgroup v{version} "
                                f"({'unified' if version == 2 else 'per-controller hierarchies'})")
    return version


def test_cgroup_version_matches_mount(cgroup_path_report):
    unified = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert cgroup_path_report == (2 if unified else 1)


@pytest.fixture
def rt():
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "state-")
    root = unique("cg-")
    runtime = Runtime(state, cgroup_root=root)
    yield runtime
    runtime.remove_all()
    shutil.rmtree(state, ignore_errors=True)


def make(rootfs: str, script: str, **kw) -> ContainerSpec:
    kw.setdefault("id", unique("c-"))
    return ContainerSpec(args=("sh", "-c", script), lower_dirs=(rootfs,), **kw)


def run(rt: Runtime, spec: ContainerSpec, timeout: float = 30):
    rt.create(spec)
    rt.start(spec.id)
    st = rt.wait(spec.id, timeout)
    assert st.state == EXITED, st
    return st, logged(rt, spec.id)


def text(path: str) -> str:
    with open(path) as f:
        return f.read()


def logged(rt: Runtime, cid: str, stream: str | None = None) -> list[str]:
    with open(os.path.join(rt.state_dir, cid, "container.log")) as f:
        lines = [parse_line(ln) for ln in f]
    return [ln.text for ln in lines if stream is None or ln.stream == stream]


@pytest.mark.parametrize("script, code, reason", [
    pytest.param("exit 0", 0, "Completed", id="zero"),
    pytest.param("exit 3", 3, "Error", id="three"),
])
def test_exit_codes(rt, rootfs, script, code, reason):
    st, _ = run(rt, make(rootfs, script))
    assert (st.exit_code, st.reason) == (code, reason)
    assert st.finished_at >= st.started_at


def test_killed_by_signal_is_128_plus_signal(rt, rootfs):
    spec = make(rootfs, "sleep 60")
    rt.create(spec)
    assert rt.start(spec.id).state == RUNNING
    st = rt.stop(spec.id, grace=0)
    assert st.exit_code == 137


def test_env_cwd_user_hostname_pid1(rt, rootfs):
    spec = make(rootfs, 'echo "$FOO"; pwd; id -u; id -g; hostname; echo $$',
                env=(("FOO", "bar baz"),), cwd="/tmp", user="65534", hostname="box1")
    st, out = run(rt, spec)
    assert st.exit_code == 0
    assert out == ["bar baz", "/tmp", "65534", "65534", "box1", "1"]


def test_user_by_name(rt, rootfs):
    _, out = run(rt, make(rootfs, "id -u; id -g", user="nobody:nogroup"))
    assert out == ["65534", "65534"]


def test_only_stdio_fds_are_open(rt, rootfs):
    # A second command keeps sh from exec'ing ls, so the listing is of the shell's own fds.
    _, out = run(rt, make(rootfs, "ls /proc/$$/fd; true"))
    assert out == ["0", "1", "2"]


def test_masked_and_readonly_paths(rt, rootfs):
    script = ("cat /proc/keys | wc -c; cat /proc/timer_list | wc -c; "
              "test -s /proc/kcore && echo kcore-readable || echo kcore-masked; "
              "echo 1 > /proc/sys/kernel/hostname && echo procsys-writable; "
              "touch /sys/x 2>/dev/null && echo sys-writable || echo sys-ro; ls /sys/firmware | wc -l")
    spec = make(rootfs, script)
    run(rt, spec)
    # /proc/kcore is absent on some kernels; masked or absent, it must read as empty.
    assert logged(rt, spec.id, "stdout") == ["0", "0", "kcore-masked", "sys-ro", "0"]
    assert any("Read-only file system" in e for e in logged(rt, spec.id, "stderr"))


def test_capabilities_and_no_new_privs(rt, rootfs):
    _, out = run(rt, make(rootfs, "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"))
    fields = dict(line.split(":\t") for line in out)
    mask = f"{DEFAULT_CAP_MASK:016x}"
    assert mask == "00000000a80425fb"
    assert (fields["CapEff"], fields["CapPrm"], fields["CapBnd"]) == (mask, mask, mask)
    assert fields["CapInh"] == "0" * 16
    assert fields["NoNewPrivs"] == "1"


def test_non_root_user_has_no_effective_caps(rt, rootfs):
    _, out = run(rt, make(rootfs, "grep -E '^Cap(Eff|Bnd)' /proc/self/status", user="65534"))
    assert out == ["CapEff:\t0000000000000000", f"CapBnd:\t{DEFAULT_CAP_MASK:016x}"]


def test_writes_go_to_upper_dir_only(rt, rootfs):
    spec = make(rootfs, "echo new > /created; echo more >> /etc/passwd; rm /bin/wget")
    before = text(os.path.join(rootfs, "etc/passwd"))
    st, _ = run(rt, spec)
    assert st.exit_code == 0
    upper = os.path.join(rt.state_dir, spec.id, "upper")
    assert text(os.path.join(upper, "created")) == "new\n"
    assert text(os.path.join(upper, "etc/passwd")) == before + "more\n"
    assert text(os.path.join(rootfs, "etc/passwd")) == before
    assert not os.path.exists(os.path.join(rootfs, "created"))
    assert os.path.islink(os.path.join(rootfs, "bin/wget"))


def test_memory_limit_oom_killed(rt, rootfs):
    # busybox tail buffers a newline-free stream whole, so it grows past the limit.
    spec = make(rootfs, "head -c 104857600 /dev/zero | tail; echo survived", memory_limit=32 * MiB)
    st, _ = run(rt, spec)
    assert st.reason == "OOMKilled"


def test_pids_limit(rt, rootfs):
    st, _ = run(rt, make(rootfs, "for i in $(seq 1 40); do sleep 5 & done; echo spawned",
                         pids_limit=10))
    assert st.exit_code != 0
    assert any("can't fork" in e for e in logged(rt, rt.list()[0].id, "stderr"))


def test_joins_given_network_namespace(rt, rootfs):
    name = unique("ns-")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/var/run/netns/{name}"
        _, out = run(rt, make(rootfs, "readlink /proc/self/ns/net", netns_path=path))
        assert out == [f"net:[{os.stat(path).st_ino}]"]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_start_error_is_reported(rt, rootfs):
    spec = ContainerSpec(id=unique("c-"), args=("/no/such/binary",), lower_dirs=(rootfs,))
    rt.create(spec)
    with pytest.raises(StartError, match="No such file"):
        rt.start(spec.id)
    assert rt.status(spec.id).reason == "StartError"


AGENT = """
import sys
from nodeagent.runtime.runtime import Runtime
from nodeagent.runtime.spec import ContainerSpec
rt = Runtime(sys.argv[1], cgroup_root=sys.argv[2])
spec = ContainerSpec(id=sys.argv[3], args=("sleep", "60"), lower_dirs=(sys.argv[4],))
rt.create(spec)
st = rt.start(spec.id)
print(st.pid, st.shim_pid, rt.zygote.pid(), flush=True)
sys.stdin.read()
"""


def test_container_survives_sigkill_of_zygote_and_agent_and_is_readopted(rt, rootfs):
    cid = unique("c-")
    agent = subprocess.Popen([sys.executable, "-c", AGENT, rt.state_dir, rt.cgroup_root, cid,
                              rootfs], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid, shim, zygote = map(int, agent.stdout.readline().split())
    with open(f"/proc/{shim}/cmdline", "rb") as f:
        assert b"nodeagent.runtime.zygote" in f.read()  # the fast path: forked, not exec'd
    os.kill(zygote, signal.SIGKILL)
    time.sleep(0.2)
    assert Runtime(rt.state_dir, cgroup_root=rt.cgroup_root).status(cid).state == RUNNING
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    time.sleep(0.2)
    again = Runtime(rt.state_dir, cgroup_root=rt.cgroup_root)
    [info] = again.list()
    assert (info.id, info.status.state, info.status.pid) == (cid, RUNNING, pid)
    assert (info.status.shim_pid, alive(info.status.pid, info.status.pid_start)) == (shim, True)
    assert again.stop(cid, grace=0).exit_code == 137


def test_zygote_restarted_after_it_died(rt, rootfs):
    run(rt, make(rootfs, "exit 0"))
    first = rt.zygote.pid()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while rt.zygote.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    st, out = run(rt, make(rootfs, "echo again"))
    assert (st.exit_code, out) == (0, ["again"])
    assert rt.zygote.pid() not in (None, first)


def test_exec_fallback_when_zygote_unavailable(rt, rootfs, monkeypatch):
    monkeypatch.setattr(rt.zygote, "start_shim", lambda _config: "")  # as if it died
    st, out = run(rt, make(rootfs, "echo slow path"))
    assert (st.exit_code, out) == (0, ["slow path"])


def test_concurrent_starts(rt, rootfs):
    specs = [make(rootfs, f"echo {i}") for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda s: run(rt, s), specs))
    assert [(st.exit_code, out) for st, out in results] == [(0, [str(i)]) for i in range(12)]


def test_stop_grace_trapped_term_exits_early(rt, rootfs):
    spec = make(rootfs, 'trap "echo bye; exit 0" TERM; echo ready; while true; do sleep 0.1; done')
    rt.create(spec)
    rt.start(spec.id)
    # start() returns at exec; PID 1 drops a TERM that comes before its trap is set.
    deadline = time.monotonic() + 10
    log = os.path.join(rt.state_dir, spec.id, "container.log")
    while not (os.path.exists(log) and logged(rt, spec.id)) and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    st = rt.stop(spec.id, grace=10)
    assert time.monotonic() - t0 < 5
    assert st.exit_code == 0
    assert logged(rt, spec.id) == ["ready", "bye"]


def test_stop_grace_ignored_term_is_killed_after_grace(rt, rootfs):
    spec = make(rootfs, 'trap "" TERM; sleep 60')
    rt.create(spec)
    rt.start(spec.id)
    t0 = time.monotonic()
    st = rt.stop(spec.id, grace=1.0)
    assert 1.0 <= time.monotonic() - t0 < 8
    assert st.exit_code == 137


def test_logs_timestamped_and_ordered(rt, rootfs):
    spec = make(rootfs, "echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three; "
                        "printf 'no newline'")
    run(rt, spec)
    with open(os.path.join(rt.state_dir, spec.id, "container.log")) as f:
        lines = [parse_line(ln) for ln in f]
    assert [(ln.stream, ln.tag, ln.text) for ln in lines] == [
        ("stdout", "F", "one"), ("stderr", "F", "two"), ("stdout", "F", "three"),
        ("stdout", "F", "no newline")]
    stamps = [ln.time for ln in lines]
    assert stamps == sorted(stamps)
    assert all(len(s) == 30 and s.endswith("Z") for s in stamps)


def test_log_rotation_keeps_n_files(rt, rootfs):
    spec = make(rootfs, "for i in $(seq 1 60); do echo line$i; done",
                log_max_bytes=300, log_max_files=3)
    run(rt, spec)
    cdir = os.path.join(rt.state_dir, spec.id)
    names = sorted(n for n in os.listdir(cdir) if n.startswith("container.log"))
    assert names == ["container.log", "container.log.1", "container.log.2"]
    texts = []
    for n in ("container.log.2", "container.log.1", "container.log"):
        assert os.path.getsize(os.path.join(cdir, n)) <= 300
        with open(os.path.join(cdir, n)) as f:
            texts += [parse_line(ln).text for ln in f]
    assert texts[-1] == "line60"
    first = int(texts[0][4:])
    assert texts == [f"line{i}" for i in range(first, 61)]


def test_exec_sees_container_namespaces(rt, rootfs):
    spec = make(rootfs, "sleep 30", hostname="inside", env=(("X", "y"),))
    rt.create(spec)
    rt.start(spec.id)
    p = rt.exec(spec.id, ["sh", "-c", 'hostname; cat /proc/1/cmdline; echo; echo $X; '
                                      'echo $$; readlink /proc/self/ns/pid; id -u'])
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    lines = out.decode().splitlines()
    # busybox sh execs a lone last command, so PID 1 is sleep itself.
    assert lines[:3] == ["inside", "sleep\x0030\x00", "y"]
    assert int(lines[3]) < 100  # a pid from the container's namespace, not the host's
    st = rt.status(spec.id)
    assert lines[4] == os.readlink(f"/proc/{st.pid}/ns/pid")
    p = rt.exec(spec.id, ["sh", "-c", "exit 7"])
    p.communicate(timeout=20)
    assert p.returncode == 7
    rt.stop(spec.id, grace=0)


def test_exec_with_stdin(rt, rootfs):
    spec = make(rootfs, "sleep 30")
    rt.create(spec)
    rt.start(spec.id)
    p = rt.exec(spec.id, ["cat"], stdin=subprocess.PIPE)
    out, _ = p.communicate(b"piped\n", timeout=20)
    assert out == b"piped\n"
    rt.stop(spec.id, grace=0)


def test_stats_of_busy_container(rt, rootfs):
    spec = make(rootfs, "x=$(head -c 1000000 /dev/zero | tr '\\0' a); while true; do :; done",
                memory_limit=64 * MiB)
    rt.create(spec)
    rt.start(spec.id)
    time.sleep(1.0)
    s = rt.stats(spec.id)
    assert s.cpu_seconds > 0.2
    assert s.memory_working_set > 0
    assert s.pids >= 1
    rt.stop(spec.id, grace=0)


def test_remove_leaves_nothing(rt, rootfs):
    spec = make(rootfs, "sleep 60")
    rt.create(spec)
    st = rt.start(spec.id)
    cg_dirs = rt.cgroup(spec.id).dirs()
    assert all(os.path.isdir(d) for d in cg_dirs)
    rt.remove(spec.id)
    assert not os.path.exists(os.path.join(rt.state_dir, spec.id))
    assert not any(os.path.exists(d) for d in cg_dirs)
    assert not alive(st.pid, st.pid_start) and not alive(st.shim_pid, st.shim_start)
    with open("/proc/mounts") as f:
        assert spec.id not in f.read()


def test_tty_container(rt, rootfs):
    _, out = run(rt, make(rootfs, "test -t 0 && test -t 1 && echo on-a-tty; tty", tty=True))
    assert [ln.strip() for ln in out] == ["on-a-tty", "/dev/pts/0"]


def test_exec_with_tty(rt, rootfs):
    spec = make(rootfs, "sleep 30")
    rt.create(spec)
    rt.start(spec.id)
    p = rt.exec(spec.id, ["sh", "-c", "test -t 0 && echo exec-tty"], tty=True)
    assert p.wait(timeout=20) == 0
    got = b""
    while b"exec-tty" not in got:
        try:
            chunk = os.read(p.pty_master, 1024)
        except OSError:  # EIO once the last slave closed and everything was read
            break
        got += chunk
    os.close(p.pty_master)
    assert b"exec-tty" in got
    rt.stop(spec.id, grace=0)


def test_cgroup_v2_core_on_unified_hierarchy():
    """This host's production path is v2: exercise create/add/kill/remove on a real cgroup2
    mount. Without controllers there (hybrid hosts), limits and stats are skipped, not faked."""
    mount = "/sys/fs/cgroup" if cgroups.detect_version() == 2 else "/sys/fs/cgroup/unified"
    if not os.path.exists(os.path.join(mount, "cgroup.procs")):
        pytest.skip("no cgroup2 mount")
    root = unique("cg2-")
    cg = cgroups.Cgroup.for_container(root, "c", mount=mount, version=2)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        cg.create(cgroups.Limits(memory=32 * MiB, pids=10))
        cg.add(proc.pid)
        assert cg.pids() == [proc.pid]
        assert cg.oom_kills() == 0
        assert cg.stats().pids == 1
        cg.remove()
        assert proc.wait(5) == -signal.SIGKILL
        assert not os.path.exists(cg.path(""))
    finally:
        proc.kill()
        proc.wait()
        cgroups.remove_parent(root, mount=mount)
        os.rmdir(os.path.join(mount, root)) if os.path.isdir(os.path.join(mount, root)) else None


def test_minimal_dev(rt, rootfs):
    _, out = run(rt, make(rootfs, "ls /dev; echo x > /dev/shm/f && cat /dev/shm/f; "
                                  "readlink /dev/ptmx; head -c 4 /dev/zero | wc -c"))
    assert out == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                   "stdout", "tty", "urandom", "zero", "x", "pts/ptmx", "4"]


def test_cpu_quota_limits_usage(rt, rootfs):
    spec = make(rootfs, "while true; do :; done", cpu_quota_millicores=200,
                cpu_request_millicores=100)
    rt.create(spec)
    rt.start(spec.id)
    time.sleep(1.0)
    used = rt.stats(spec.id).cpu_seconds
    rt.stop(spec.id, grace=0)
    assert 0.05 < used < 0.5  # 20% of one CPU for ~1s, with slack for start-up


def test_layers_top_first(rt, rootfs):
    top = tempfile.mkdtemp(prefix=TEST_PREFIX + "layer-")
    try:
        with open(os.path.join(top, "msg"), "w") as f:
            f.write("from top\n")
        os.makedirs(os.path.join(top, "etc"))
        with open(os.path.join(top, "etc/passwd"), "w") as f:
            f.write("root:x:0:0::/:/bin/sh\nshadowed:x:7:7::/:/bin/sh\n")
        spec = ContainerSpec(id=unique("c-"), args=("sh", "-c", "cat /msg; id -u shadowed"),
                             lower_dirs=(top, rootfs))
        _, out = run(rt, spec)
        assert out == ["from top", "7"]
    finally:
        shutil.rmtree(top)
