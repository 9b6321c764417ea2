"""Pure runtime rules: restart policy and back-off, user lookup, cgroup arithmetic."""

from __future__ import annotations

import pytest

from nodeagent.runtime.cgroups import cpu_quota, cpu_shares, cpu_weight
from nodeagent.runtime.restart import ALWAYS, NEVER, ON_FAILURE, backoff, next_restart
from nodeagent.runtime.security import Identity, resolve_user
from nodeagent.runtime.spec import exit_code_of

T = 1000.0  # when the container finished


@pytest.mark.parametrize("policy, code, restarts, now, want", [
    pytest.param(NEVER, 1, 0, T, None, id="never"),
    pytest.param(ON_FAILURE, 0, 0, T, None, id="onfailure-success"),
    pytest.param(ON_FAILURE, 1, 0, T, T, id="onfailure-first-now"),
    pytest.param(ALWAYS, 0, 0, T, T, id="always-first-now"),
    pytest.param(ALWAYS, 0, 1, T, T + 10, id="second-10s"),
    pytest.param(ALWAYS, 0, 2, T, T + 20, id="third-20s"),        # 10 * 2**1
    pytest.param(ALWAYS, 1, 5, T, T + 160, id="sixth-160s"),      # 10 * 2**4
    pytest.param(ALWAYS, 1, 6, T, T + 300, id="capped-5min"),     # 320 capped at 300
    pytest.param(ALWAYS, 1, 50, T, T + 300, id="stays-capped"),
    pytest.param(ALWAYS, 1, 1, T + 60, T + 60, id="backoff-already-over"),
])
def test_next_restart(policy, code, restarts, now, want):
    assert next_restart(policy, code, restarts, T, now) == want


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="Always, OnFailure or Never"):
        next_restart("Sometimes", 1, 0, T, T)


def test_backoff_monotonic():
    values = [backoff(n) for n in range(20)]
    assert values == sorted(values) and values[-1] == 300


PASSWD = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\napp:x:1000:1000::/h:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app,other\n"


@pytest.mark.parametrize("spec, want", [
    pytest.param("0", Identity(0, 0, (0,)), id="root"),
    pytest.param("65534", Identity(65534, 65534, (65534,)), id="uid-listed"),
    pytest.param("4242", Identity(4242, 0, (0,)), id="uid-unlisted"),
    pytest.param("4242:7", Identity(4242, 7, (7,)), id="uid-gid"),
    pytest.param("app", Identity(1000, 1000, (1000, 2000)), id="name-with-supplementary"),
    pytest.param("nobody:app", Identity(65534, 1000, (1000,)), id="names"),
])
def test_resolve_user(spec, want):
    assert resolve_user(spec, PASSWD, GROUP) == want


@pytest.mark.parametrize("spec", ["ghost", "app:ghosts"])
def test_resolve_user_unknown_names(spec):
    with pytest.raises(LookupError, match="not found"):
        resolve_user(spec, PASSWD, GROUP)


@pytest.mark.parametrize("millicores, shares", [
    (None, 2), (0, 2), (1, 2), (100, 102), (250, 256), (1000, 1024), (2500, 2560)])
def test_cpu_shares_as_kubelet(millicores, shares):
    assert cpu_shares(millicores) == shares


@pytest.mark.parametrize("shares, weight", [(2, 1), (1024, 39), (262144, 10000)])
def test_cpu_weight(shares, weight):
    assert cpu_weight(shares) == weight


@pytest.mark.parametrize("millicores, quota", [(None, None), (500, 50_000), (2000, 200_000),
                                               (5, 1000)])
def test_cpu_quota(millicores, quota):
    assert cpu_quota(millicores) == quota


@pytest.mark.parametrize("status, code", [(0, 0), (3 << 8, 3), (9, 137), (15, 143)])
def test_exit_code_of(status, code):
    assert exit_code_of(status) == code


def test_spec_json_round_trip():
    from nodeagent.runtime.spec import ContainerSpec
    spec = ContainerSpec(id="a", args=("sh", "-c", "x"), lower_dirs=("/l1", "/l0"),
                         env=(("A", "1"),), memory_limit=5, netns_path="/var/run/netns/p")
    import json
    assert ContainerSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_status_of_dead_shim_is_shim_lost(tmp_path):
    from dataclasses import asdict

    from nodeagent.runtime.runtime import REASON_SHIM_LOST, read_status
    from nodeagent.runtime.spec import Status, write_json_atomic
    # pid 0 is never alive, so this shim is gone without having written its exit.
    write_json_atomic(str(tmp_path / "status.json"),
                      asdict(Status("running", pid=123, shim_pid=0, shim_start=1)))
    st = read_status(str(tmp_path))
    assert (st.state, st.reason, st.exit_code) == ("exited", REASON_SHIM_LOST, 137)
