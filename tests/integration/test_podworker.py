"""A pod run for real by the agent's pod worker: an imported busybox image, a sandbox netns,
containers restarted by policy with back-off, status reported, everything removed after."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

import pytest

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.worker import PodWorker, parse_container_id
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def node():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "agent-")
    images = Store(os.path.join(root, "images"))
    tar = imagebuild.busybox_tar(root)
    import_archive(images, tar)
    runtime = Runtime(os.path.join(root, "containers"), cgroup_root=TEST_PREFIX + "agent")
    workers = []
    yield runtime, images, workers
    for w in workers:
        w.teardown(0)
    runtime.remove_all()
    shutil.rmtree(root, ignore_errors=True)


def make_pod(*containers, policy="Always", grace=1):
    pod = pb.Pod(api_version="v1", kind="Pod")
    pod.metadata.name, pod.metadata.namespace = "p", "default"
    pod.metadata.uid = str(uuid.uuid4())
    pod.spec.restart_policy = policy
    pod.spec.termination_grace_period_seconds = grace
    for name, command in containers:
        c = pod.spec.containers.add(name=name, image="busybox:test",
                                    image_pull_policy="Never")
        c.command.extend(["sh", "-c", command])
    return pod


def wait_exited(runtime, worker, name, attempt, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for info in runtime.list():
            parsed = parse_container_id(info.id)
            if parsed and parsed[1] == name and parsed[2] == attempt and \
                    info.status.state == "exited":
                return info
        time.sleep(0.05)
    raise AssertionError(f"{name} attempt {attempt} did not exit")


def test_on_failure_restarts_with_back_off_then_reports_crash_loop(node):
    runtime, images, workers = node
    clock = Clock()
    w = PodWorker(make_pod(("app", "echo run; exit 3"), policy="OnFailure"), runtime, images,
                  netns_prefix=TEST_PREFIX, clock=clock)
    workers.append(w)
    w.sync()
    wait_exited(runtime, w, "app", 0)
    clock.now = time.time()
    plan = w.sync()                       # first restart: no back-off
    assert plan.phase == "Running"
    wait_exited(runtime, w, "app", 1)
    clock.now = time.time()
    plan = w.sync()                       # second restart waits 10s
    status = w.status(plan).container_statuses[0]
    assert (status.state, status.reason, status.restart_count, status.exit_code) == (
        "waiting", "CrashLoopBackOff", 1, 3)
    assert plan.wake_at == pytest.approx(clock.now + 10, abs=2)
    clock.now += 11
    w.sync()
    wait_exited(runtime, w, "app", 2)
    # One previous instance is kept for `logs --previous`; older ones are removed.
    clock.now = time.time() + 30
    w.sync()
    attempts = sorted(parse_container_id(c.id)[2] for c in runtime.list())
    assert attempts[0] >= 1 and len(attempts) <= 3


def test_never_policy_success_and_two_containers_share_the_sandbox(node):
    runtime, images, workers = node
    pod = make_pod(("a", "readlink /proc/self/ns/net; exit 0"),
                   ("b", "readlink /proc/self/ns/net; exit 0"), policy="Never")
    w = PodWorker(pod, runtime, images, netns_prefix=TEST_PREFIX)
    workers.append(w)
    w.sync()
    wait_exited(runtime, w, "a", 0)
    wait_exited(runtime, w, "b", 0)
    plan = w.sync()
    assert plan.phase == "Succeeded"
    logs = {}
    for info in runtime.list():
        name = parse_container_id(info.id)[1]
        with open(os.path.join(runtime.state_dir, info.id, "container.log")) as f:
            logs[name] = f.read().split()[-1]
    assert logs["a"] == logs["b"] and logs["a"].startswith("net:[")
    # ... and not the host's namespace.
    assert logs["a"] != os.readlink("/proc/self/ns/net")


def test_missing_image_with_never_pull_is_reported_not_started(node):
    runtime, images, workers = node
    pod = make_pod(("app", "true"))
    pod.spec.containers[0].image = "nothere:1"
    w = PodWorker(pod, runtime, images, netns_prefix=TEST_PREFIX)
    workers.append(w)
    plan = w.sync()
    status = w.status(plan).container_statuses[0]
    assert (status.state, status.reason) == ("waiting", "ErrImagePull")
    assert runtime.list() == []
    assert plan.wake_at is not None


def test_teardown_stops_running_containers_and_removes_the_sandbox(node):
    runtime, images, workers = node
    w = PodWorker(make_pod(("app", "sleep 300")), runtime, images, netns_prefix=TEST_PREFIX)
    plan = w.sync()
    deadline = time.time() + 10
    while plan.phase != "Running" and time.time() < deadline:
        time.sleep(0.05)
        plan = w.sync()
    assert plan.phase == "Running"
    w.teardown(0)
    assert runtime.list() == []
    from nodeagent.pods import sandbox
    assert w.netns not in sandbox.existing(TEST_PREFIX)
