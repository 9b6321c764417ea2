"""End to end on the node: a layered busybox image (with a whiteout and an opaque dir) served by
a real docker-registry is pulled by the pod worker and run; the container sees the merged
layers, the image's Env and Cmd, and its own pid 1 and hostname."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

import pytest

from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.worker import PodWorker
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild as ib
from tests.conftest import TEST_PREFIX
from tests.conftest import stop_process as stop
from tests.integration.test_images import REGISTRY_BIN, Registry

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root"),
    pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry"),
]

SCRIPT = ("echo pid=$$ host=$(hostname) greeting=$GREETING; cat /etc/hello; "
          "test -e /etc/motd && echo motd-present || echo motd-gone; ls /var/www")


@pytest.fixture
def env():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "e2e-")
    os.mkdir(os.path.join(tmp, "registry"))
    reg = Registry(os.path.join(tmp, "registry"))
    runtime = Runtime(os.path.join(tmp, "containers"), cgroup_root=TEST_PREFIX + "e2e")
    images = Store(os.path.join(tmp, "images"))
    workers = []
    yield reg, runtime, images, workers
    for w in workers:
        w.teardown(0)
    runtime.remove_all()
    stop(reg.proc)
    shutil.rmtree(tmp, ignore_errors=True)


def test_pull_from_a_real_registry_and_run(env):
    reg, runtime, images, workers = env
    image = ib.make_image([ib.busybox_rootfs(), ib.whiteout_layer()], oci=True,
                          cmd=["sh", "-c", SCRIPT],
                          env=[f"PATH={ib.PATH}", "GREETING=hello-from-image"])
    ib.push(reg.url, "test/e2e", "1", image)
    pod = pb.Pod(api_version="v1", kind="Pod")
    pod.metadata.name, pod.metadata.namespace = "e2e", "default"
    pod.metadata.uid = str(uuid.uuid4())
    pod.spec.restart_policy = "Never"
    pod.spec.containers.add(name="app", image=f"{reg.host}/test/e2e:1",
                            image_pull_policy="IfNotPresent")
    w = PodWorker(pod, runtime, images, reg.config(), netns_prefix=TEST_PREFIX)
    workers.append(w)
    plan = w.sync()
    deadline = time.time() + 30
    while plan.phase not in ("Succeeded", "Failed") and time.time() < deadline:
        time.sleep(0.1)
        plan = w.sync()
    assert plan.phase == "Succeeded", w.status(plan)
    (info,) = runtime.list()
    with open(os.path.join(runtime.state_dir, info.id, "container.log")) as f:
        out = [line.split(" ", 3)[3].rstrip("\n") for line in f]
    assert out == ["pid=1 host=e2e greeting=hello-from-image", "from layer 2", "motd-gone",
                   "index.html"]
    # The image's two layers were unpacked once each and shared from the store.
    assert len(images.get(f"{reg.host}/test/e2e:1").layer_dirs()) == 2


def test_fork_bomb_is_contained_by_the_pids_limit_and_the_host_stays_healthy(env):
    import subprocess

    from nodeagent.runtime.spec import ContainerSpec

    reg, runtime, images, workers = env
    tmp = os.path.dirname(runtime.state_dir)
    tar = os.path.join(tmp, "bb.tar")
    ib.write_docker_save(tar, ib.make_image(), ["busybox:bomb"])
    (image,) = import_archive(images, tar)
    # The flood runs beside a PID 1 that never forks. With the flood as PID 1 (the classic
    # `b() { b | b & }; b`), busybox sh exits at its first failed fork and the kernel kills
    # the whole pid namespace with it, often before a single sample: nothing to measure.
    spec = ContainerSpec(id=TEST_PREFIX + "bomb",
                         args=("sh", "-c", "(while :; do sleep 60 & done) & exec sleep 600"),
                         lower_dirs=tuple(image.layer_dirs()), pids_limit=64)
    runtime.create(spec)
    runtime.start(spec.id)
    peak = 0
    deadline = time.time() + 10
    while time.time() < deadline and peak < 56:
        peak = max(peak, runtime.stats(spec.id).pids)
        time.sleep(0.1)
    time.sleep(0.5)   # time to break through the limit, if it could
    peak = max(peak, runtime.stats(spec.id).pids)
    assert 56 <= peak <= 64       # it forked up to the limit, and no further
    assert runtime.status(spec.id).state == "running"
    # The host can still start processes while the bomb runs.
    assert subprocess.run(["true"], timeout=10).returncode == 0
    runtime.stop(spec.id, 0)
    runtime.remove(spec.id)
    assert runtime.list() == []
