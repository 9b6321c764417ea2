"""cgroup files written and read, on a fake cgroup tree in a temp dir for v1 and v2."""

from __future__ import annotations

import os

import pytest

from nodeagent.runtime.cgroups import Cgroup, Limits, detect_version

MiB = 1024 * 1024


def fake_tree(tmp_path, version):
    if version == 2:
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
        (tmp_path / "cgroup.subtree_control").write_text("")
    else:
        for c in ("memory", "cpu", "cpuacct", "pids"):
            (tmp_path / c).mkdir()
    return str(tmp_path)


def prefill(cg: Cgroup, files: dict[str, str]):
    for controller, path in cg.paths:
        os.makedirs(path, exist_ok=True)
        for name, text in files.items():
            if cg.version == 2 or name.startswith(controller + "."):
                with open(os.path.join(path, name), "w") as f:
                    f.write(text)


def read(path, name):
    with open(os.path.join(path, name)) as f:
        return f.read()


@pytest.mark.parametrize("version", [1, 2])
def test_detect(tmp_path, version):
    assert detect_version(fake_tree(tmp_path, version)) == version


def test_v1_limits(tmp_path):
    mount = fake_tree(tmp_path, 1)
    cg = Cgroup.for_container("moortest-x", "c1", mount=mount)
    assert [c for c, _ in cg.paths] == ["memory", "cpu", "cpuacct", "pids"]
    cg.create(Limits(memory=32 * MiB, cpu_quota_millicores=500, cpu_request_millicores=250,
                     pids=10))
    assert read(cg.path("memory"), "memory.limit_in_bytes") == str(32 * MiB)
    assert read(cg.path("cpu"), "cpu.shares") == "256"
    assert read(cg.path("cpu"), "cpu.cfs_quota_us") == "50000"
    assert read(cg.path("cpu"), "cpu.cfs_period_us") == "100000"
    assert read(cg.path("pids"), "pids.max") == "10"


def test_v2_limits(tmp_path):
    mount = fake_tree(tmp_path, 2)
    cg = Cgroup.for_container("moortest-x", "c1", mount=mount)
    prefill(cg, {"memory.max": "max", "cpu.weight": "100", "cpu.max": "max 100000",
                 "pids.max": "max", "memory.swap.max": "max"})
    cg.create(Limits(memory=32 * MiB, cpu_quota_millicores=1500, cpu_request_millicores=1000,
                     pids=7))
    d = cg.path("")
    assert read(d, "memory.max") == str(32 * MiB)
    assert read(d, "memory.swap.max") == "0"
    assert read(d, "cpu.max") == "150000 100000"
    assert read(d, "cpu.weight") == "39"
    assert read(d, "pids.max") == "7"
    assert read(mount, "cgroup.subtree_control") == "+cpu +memory +pids"


def test_v1_stats_and_oom(tmp_path):
    cg = Cgroup.for_container("moortest-x", "c1", mount=fake_tree(tmp_path, 1))
    prefill(cg, {"cpuacct.usage": "2500000000\n", "memory.usage_in_bytes": "10000\n",
                 "memory.stat": "cache 100\ntotal_inactive_file 3000\n",
                 "pids.current": "4\n",
                 "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"})
    s = cg.stats()
    assert (s.cpu_seconds, s.memory_working_set, s.memory_usage, s.pids) == (2.5, 7000, 10000, 4)
    assert cg.oom_kills() == 2


def test_v2_stats_and_oom(tmp_path):
    cg = Cgroup.for_container("moortest-x", "c1", mount=fake_tree(tmp_path, 2))
    prefill(cg, {"cpu.stat": "usage_usec 1500000\nuser_usec 1\n", "memory.current": "8192\n",
                 "memory.stat": "anon 1\ninactive_file 4096\n", "pids.current": "3\n",
                 "memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"})
    s = cg.stats()
    assert (s.cpu_seconds, s.memory_working_set, s.pids) == (1.5, 4096, 3)
    assert cg.oom_kills() == 1


def test_working_set_never_negative(tmp_path):
    cg = Cgroup.for_container("moortest-x", "c1", mount=fake_tree(tmp_path, 2))
    prefill(cg, {"cpu.stat": "usage_usec 0\n", "memory.current": "10\n",
                 "memory.stat": "inactive_file 99\n", "pids.current": "0\n"})
    assert cg.stats().memory_working_set == 0
