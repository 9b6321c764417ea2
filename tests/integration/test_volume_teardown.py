"""What an agent reset and `moor lab down` do to volumes: a reset takes every volume mount and
loop device down and keeps persistent data; lab down removes the images too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from moorage.lab import teardown
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods.configstore import ConfigStore
from nodeagent.pods.volumes import PodVolumes
from nodeagent.runtime.syscalls import LibcSyscalls
from nodeagent.storage import diskimage, mounts
from nodeagent.storage.localvolumes import LocalVolumes
from tests.conftest import TEST_PREFIX, unique

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real mounts: needs root")


def populate(state: str) -> str:
    """An agent state dir with a mounted local volume and a pod's size-limited emptyDir, as a
    killed agent leaves them; the volume's image path."""
    local = LocalVolumes(os.path.join(state, "local-volumes"), LibcSyscalls())
    pv = unique("pv-")
    local.apply(agent_pb2.VolumeData(full=True, volumes=[agent_pb2.LocalVolume(
        name=pv, claim_namespace="default", claim_name="data", capacity_bytes=8 * 2**20)]))
    local.sync()
    pod = pb.Pod()
    pod.metadata.uid, pod.metadata.namespace = str(uuid.uuid4()), "default"
    pod.spec.volumes.add(name="s", empty_dir=pb.EmptyDirVolumeSource(size_limit="8Mi"))
    pod.spec.volumes.add(name="m", empty_dir=pb.EmptyDirVolumeSource(medium="Memory"))
    assert PodVolumes(pod, os.path.join(state, "volumes"), ConfigStore(),
                      LibcSyscalls()).sync() == ("", "")
    assert len(mounts.under(state)) == 3 and len(diskimage.loops_backed_under(state)) == 2
    return os.path.join(state, "local-volumes", pv, "disk.img")


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix=TEST_PREFIX + "voltear-")
    yield path
    mounts.unmount_under(LibcSyscalls(), path)
    for dev, _ in diskimage.loops_backed_under(path):
        diskimage.detach(dev)
    shutil.rmtree(path, ignore_errors=True)


def test_agent_reset_takes_mounts_and_loops_down_and_keeps_persistent_data(root):
    state = os.path.join(root, "agent")
    image = populate(state)
    out = subprocess.run([sys.executable, "-m", "nodeagent.agent", "--state-dir", state,
                          "--cgroup-root", unique("cg-"), "--netns-prefix", unique("ns-"),
                          "reset"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unmounted local volume" in out.stdout, out.stdout
    assert mounts.under(state) == [] and diskimage.loops_backed_under(state) == []
    assert os.path.exists(image)
    assert not os.path.exists(os.path.join(state, "pod-disks"))


def test_lab_down_removes_volume_mounts_loops_and_images(root):
    name = unique("l").replace("-", "")[:20]
    state = os.path.join(root, "lab")
    populate(os.path.join(state, "h1"))
    said: list[str] = []
    left = teardown.down(name, state, said.append)
    assert left == [], (left, said)
    assert not os.path.exists(state)
    assert diskimage.loops_backed_under(root) == [] and mounts.under(root) == []
