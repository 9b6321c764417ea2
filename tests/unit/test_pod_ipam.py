"""Pod IP allocation: one IP per live pod, stable per uid, round-robin reuse, restart-safe."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.network.ipam import PodIPAM, PodIPAMError

CIDR = "10.244.3.0/24"


def test_first_ip_skips_vtep_and_gateway(tmp_path):
    ipam = PodIPAM(str(tmp_path), CIDR)
    assert ipam.allocate("a") == "10.244.3.2"
    assert ipam.allocate("b") == "10.244.3.3"
    assert ipam.allocate("a") == "10.244.3.2"        # same uid, same IP


def test_freed_ip_is_not_reused_immediately(tmp_path):
    ipam = PodIPAM(str(tmp_path), CIDR)
    a = ipam.allocate("a")
    ipam.allocate("b")
    assert ipam.release("a") == a
    assert ipam.release("a") is None
    assert ipam.allocate("c") == "10.244.3.4"        # after the last given, not the freed .2


def test_wraps_around_and_exhausts(tmp_path):
    ipam = PodIPAM(str(tmp_path), "10.244.3.0/29")   # pods get .2 - .6
    got = [ipam.allocate(f"p{i}") for i in range(5)]
    assert got == [f"10.244.3.{i}" for i in range(2, 7)]
    with pytest.raises(PodIPAMError, match="no free pod IP"):
        ipam.allocate("p5")
    ipam.release("p1")
    assert ipam.allocate("p5") == "10.244.3.3"       # wrapped around to the only free one


def test_survives_restart(tmp_path):
    ipam = PodIPAM(str(tmp_path), CIDR)
    ipam.allocate("a")
    ipam.allocate("b")
    ipam.release("a")
    again = PodIPAM(str(tmp_path), CIDR)
    assert again.allocations() == {"b": "10.244.3.3"}
    assert again.allocate("c") == "10.244.3.4"       # the next-pointer survived too


def test_changed_subnet_drops_allocations_outside_it(tmp_path):
    ipam = PodIPAM(str(tmp_path), CIDR)
    ipam.allocate("a")
    moved = PodIPAM(str(tmp_path), "10.244.7.0/24")
    assert moved.allocations() == {}
    assert moved.allocate("a") == "10.244.7.2"
    with open(os.path.join(tmp_path, "pod-ips.json")) as f:
        assert json.load(f)["subnet"] == "10.244.7.0/24"


def test_corrupt_state_is_a_clear_error(tmp_path):
    with open(os.path.join(tmp_path, "pod-ips.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(PodIPAMError, match="unreadable"):
        PodIPAM(str(tmp_path), CIDR)


ops = st.lists(st.tuples(st.sampled_from(["alloc", "release", "restart"]),
                         st.integers(min_value=0, max_value=12)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_never_two_live_pods_on_one_ip(steps):
    """Against a model: live pods have distinct IPs in the pod range; a uid keeps its IP while
    live; a freed IP is not the next one handed out while others are free."""
    d = tempfile.mkdtemp(prefix="moortest-")
    try:
        ipam = PodIPAM(d, "10.244.3.0/28")           # 13 pod IPs: .2 - .14
        live: dict[str, str] = {}
        for op, n in steps:
            uid = f"pod-{n}"
            if op == "alloc":
                ip = ipam.allocate(uid)
                if uid in live:
                    assert ip == live[uid]
                live[uid] = ip
            elif op == "release":
                freed = ipam.release(uid)
                assert freed == live.pop(uid, None)
                if freed is not None and len(live) < 12:
                    assert ipam.allocate("probe") != freed
                    ipam.release("probe")
            else:
                ipam = PodIPAM(d, "10.244.3.0/28")
            assert ipam.allocations() == live
            assert len(set(live.values())) == len(live)
            assert all(2 <= int(ip.rsplit(".", 1)[1]) <= 14 for ip in live.values())
    finally:
        shutil.rmtree(d)
