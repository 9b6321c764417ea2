"""The cluster's own registry in a 3-host `moor lab`: `moor registry deploy` loads the
registry's image into one node through the control plane and runs it as a StatefulSet of one;
an image pushed to its NodePort from this machine (the build machine) runs, named
`registry.cluster.local:5000/...`, in a pod on every host with no registry flags; the
registry's pod, deleted, comes back on the same node with its images, and a node pulls a tag
pushed before the restart from it. A second deploy changes nothing.

The registry's image is built by the deploy itself with `moor build`, and the app image is
pushed with `moor push registry.cluster.local:5000/...` and no flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from moorage.cli import registryobjects as ro
from moorage.model.registries import CLUSTER_REGISTRY
from tests import imagebuild
from tests.conftest import TEST_PREFIX
from tests.integration.test_lab import LabUnderTest, wait_for
from tests.integration.test_lab_dns import pexec

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root"),
    pytest.mark.skipif(not os.path.exists(ro.BINARY), reason="needs Debian's docker-registry"),
]

NS = ro.NAMESPACE
APP = "moortest/app"
MARK = "moortest registry image"


def app_image(mark: str):
    return imagebuild.make_image([imagebuild.busybox_rootfs(), [
        imagebuild.TarEntry("etc", kind="dir"),
        imagebuild.TarEntry("etc/moortest-mark", mark.encode() + b"\n")]])


def push(lab, name: str, tag: str, image) -> None:
    """`moor push registry.cluster.local:5000/<name>:<tag>` from the build machine's store,
    with no flags (the address comes from the registries.json the deploy wrote)."""
    from nodeagent.runtime.images.archive import import_archive
    from nodeagent.runtime.images.store import Store

    ref = f"{CLUSTER_REGISTRY}/{name}:{tag}"
    tar = os.path.join(lab.root, f"push-{tag}.tar")
    imagebuild.write_docker_save(tar, image, [ref])
    import_archive(Store(os.path.join(lab.build_root, "images")), tar)
    out = moor(lab, "push", ref)
    assert out.returncode == 0, f"moor push {ref}:\n{out.stdout}\n{out.stderr}"


def moor(lab, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], env=lab.env,
                          capture_output=True, text=True, timeout=timeout)


def get_json(lab, *args: str):
    out = lab.moor("get", *args, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else None


def node_ip(lab, name: str) -> str:
    node = get_json(lab, "node", name)
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def pod_yaml(name: str, node: str, image: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: moortest-reg}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "cat /etc/moortest-mark; while true; do sleep 1; done"]
"""


def running_pod(lab, name: str, ns: str = "default", ready: bool = False):
    pod = get_json(lab, "pod", name, "-n", ns)
    if not pod or pod.get("status", {}).get("phase") != "Running":
        return None
    if ready and not any(c["type"] == "Ready" and c["status"] == "True"
                         for c in pod["status"].get("conditions", [])):
        return None
    return pod


@pytest.fixture(scope="module")
def lab():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "registry-")
    t = LabUnderTest(root)
    t.build_root = os.path.join(root, "build")
    t.env["MOOR_BUILD_ROOT"] = t.build_root
    try:
        out = t.lab("up", "--nodes", "3", "--underlay-cidr", t.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        yield t
    finally:
        for i in (1, 2, 3):
            t.moor("delete", "pod", f"moortest-app-{i}", "--ignore-not-found", "--now")
        t.moor("delete", "pod", "moortest-again", "--ignore-not-found", "--now")
        t.lab("down")
        shutil.rmtree(root, ignore_errors=True)


def test_image_load_delivers_archives_to_nodes(lab):
    tar = imagebuild.busybox_tar(lab.root, ["moortest/loaded:1"])
    out = lab.moor("image", "load", "-i", tar)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [
        f"{lab.name}-h{i}: Loaded image: docker.io/moortest/loaded:1" for i in (1, 2, 3)]
    # From the build machine's store, through `python -m builder save`.
    from nodeagent.runtime.images.archive import import_archive
    from nodeagent.runtime.images.store import Store

    built = imagebuild.busybox_tar(os.path.join(lab.root), ["moortest/built:1"])
    import_archive(Store(os.path.join(lab.build_root, "images")), built)
    out = lab.moor("image", "load", "moortest/built:1", "--node", f"{lab.name}-h3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{lab.name}-h3: Loaded image: docker.io/moortest/built:1\n"
    path = os.path.join(lab.root, "never.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("moortest-never", f"{lab.name}-h3", "moortest/built:1")
                .replace("    command:", "    imagePullPolicy: Never\n    command:"))
    assert lab.moor("apply", "-f", path).returncode == 0
    wait_for(lambda: running_pod(lab, "moortest-never"), 60)
    assert lab.moor("delete", "pod", "moortest-never", "--now").returncode == 0


def test_image_load_refuses_a_bad_archive_and_an_unknown_node(lab):
    bad = os.path.join(lab.root, "bad.tar")
    with open(bad, "wb") as f:
        f.write(b"not a tar" * 100)
    out = lab.moor("image", "load", "-i", bad, "--node", f"{lab.name}-h1")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"{lab.name}-h1: Error from server (Invalid): node "
                                 f"{lab.name}-h1: "), out.stderr
    assert "the image archive: not a readable tar archive" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    out = lab.moor("image", "load", "-i", bad, "--node", "nope")
    assert out.returncode == 1
    assert out.stderr == 'nope: Error from server (NotFound): nodes "nope" not found\n'


def test_a_load_that_stops_before_its_last_frame_loads_nothing(lab):
    import grpc
    import yaml

    from moorage.credentials import channel_credentials
    from moorage.v1 import api_pb2, api_pb2_grpc

    with open(lab.config) as f:
        config = yaml.safe_load(f)
    tar = imagebuild.busybox_tar(lab.root, ["moortest/partial:1"])
    with open(tar, "rb") as f:
        head = f.read(4096)
    node = f"{lab.name}-h2"
    frames = [api_pb2.StreamFrame(image_load=api_pb2.ImageLoadStart(node=node)),
              api_pb2.StreamFrame(data=head)]
    channel = grpc.secure_channel(config["server"], channel_credentials(config["credentials"]))
    with channel, pytest.raises(grpc.RpcError) as err:
        list(api_pb2_grpc.ImagesStub(channel).Load(iter(frames), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "ended before its frame with eof" in err.value.details()
    # The node's store has no such image: a pod that must not pull it waits.
    path = os.path.join(lab.root, "partial.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("moortest-partial", node, "moortest/partial:1")
                .replace("    command:", "    imagePullPolicy: Never\n    command:"))
    assert lab.moor("apply", "-f", path).returncode == 0

    def waiting():
        pod = get_json(lab, "pod", "moortest-partial")
        messages = [c.get("message", "") for c in pod.get("status", {}).get(
            "containerStatuses", [])] if pod else []
        return messages if any(messages) else None
    [message] = wait_for(waiting, 60)
    assert "is not present and imagePullPolicy is Never" in message, message
    assert lab.moor("delete", "pod", "moortest-partial", "--now").returncode == 0


@pytest.fixture(scope="module")
def deployed(lab):
    # The deploy's own path: its Dockerfile built by `moor build`.
    out = moor(lab, "registry", "deploy", "--storage", "1Gi")
    assert out.returncode == 0, f"deploy failed:\n{out.stdout}\n{out.stderr}"
    lab.deploy_output = out.stdout
    sts = get_json(lab, "statefulset", ro.NAME, "-n", NS)
    lab.registry_node = sts["spec"]["template"]["spec"]["nodeSelector"][ro.HOSTNAME_LABEL]
    lab.registry_url = f"http://{node_ip(lab, lab.registry_node)}:{ro.DEFAULT_NODE_PORT}"
    return lab


def test_deploy_runs_the_registry_and_configures_the_build_machine(deployed):
    lab = deployed
    assert f"{lab.registry_node}: Loaded image: {ro.image_ref('2.8.2')}" in lab.deploy_output
    assert f"{CLUSTER_REGISTRY} runs as {NS}/registry-0 on node {lab.registry_node}" \
        in lab.deploy_output
    pod = running_pod(lab, ro.pod_name(), NS, ready=True)
    assert pod["spec"]["nodeName"] == lab.registry_node
    with open(os.path.join(lab.build_root, "registries.json")) as f:
        doc = json.load(f)
    endpoint = lab.registry_url.removeprefix("http://")
    assert doc["mirrors"] == {CLUSTER_REGISTRY: [lab.registry_url]}
    assert set(doc["insecure"]) == {CLUSTER_REGISTRY, endpoint}
    claim = get_json(lab, "pvc", ro.claim_name(), "-n", NS)
    assert claim["status"]["phase"] == "Bound"


def test_an_image_pushed_from_the_build_machine_runs_on_every_host(deployed):
    lab = deployed
    push(lab, APP, "1", app_image(MARK))
    image = f"{CLUSTER_REGISTRY}/{APP}:1"
    path = os.path.join(lab.root, "apps.yaml")
    with open(path, "w") as f:
        f.write("---\n".join(pod_yaml(f"moortest-app-{i}", f"{lab.name}-h{i}", image)
                             for i in (1, 2, 3)))
    out = lab.moor("apply", "-f", path)
    assert out.returncode == 0, out.stderr
    for i in (1, 2, 3):
        pod = wait_for(lambda i=i: running_pod(lab, f"moortest-app-{i}"), 120)
        assert pod["spec"]["nodeName"] == f"{lab.name}-h{i}"
        assert pexec(lab, pod, "cat", "/etc/moortest-mark").stdout == MARK + "\n"
    out = lab.moor("registry", "status")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert ["Node:", lab.registry_node] in [line.split() for line in lines], out.stdout
    assert any(line.split() == [APP, "1"] for line in lines), out.stdout
    assert any(line.startswith("Claim:") and "size 1Gi" in line for line in lines), out.stdout


def test_the_registry_keeps_its_images_across_its_pods_restart(deployed):
    lab = deployed
    # Pushed before the restart, pulled after it: the data must have survived.
    push(lab, APP, "2", app_image(MARK + " 2"))
    before = running_pod(lab, ro.pod_name(), NS, ready=True)
    out = lab.moor("delete", "pod", ro.pod_name(), "-n", NS, "--now")
    assert out.returncode == 0, out.stderr

    def replaced():
        pod = running_pod(lab, ro.pod_name(), NS, ready=True)
        return pod if pod and pod["metadata"]["uid"] != before["metadata"]["uid"] else None
    after = wait_for(replaced, 120)
    assert after["spec"]["nodeName"] == lab.registry_node
    out = wait_for(lambda: (lambda o: o if APP in o.stdout else None)(
        lab.moor("registry", "status")), 60)
    assert any(line.split() == [APP, "1,2"] for line in out.stdout.splitlines()), out.stdout
    # A node that has never had tag 2 pulls it from the restarted registry.
    other = next(i for i in (1, 2, 3) if f"{lab.name}-h{i}" != lab.registry_node)
    path = os.path.join(lab.root, "again.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("moortest-again", f"{lab.name}-h{other}",
                         f"{CLUSTER_REGISTRY}/{APP}:2"))
    assert lab.moor("apply", "-f", path).returncode == 0
    pod = wait_for(lambda: running_pod(lab, "moortest-again"), 120)
    assert pexec(lab, pod, "cat", "/etc/moortest-mark").stdout == MARK + " 2\n"


def test_the_deploy_built_its_image_with_moor_build(deployed):
    assert f"building {ro.image_ref('2.8.2')}" in deployed.deploy_output


def test_a_second_deploy_changes_nothing(deployed):
    lab = deployed
    out = moor(lab, "registry", "deploy", "--storage", "1Gi", )
    assert out.returncode == 0, f"deploy failed:\n{out.stdout}\n{out.stderr}"
    actions = [line.split()[-1] for line in out.stdout.splitlines()
               if line.startswith(("namespace/", "service/", "statefulset/"))]
    assert actions == ["unchanged"] * 4, out.stdout
    out = moor(lab, "registry", "deploy", "--node", next(
        f"{lab.name}-h{i}" for i in (1, 2, 3) if f"{lab.name}-h{i}" != lab.registry_node),
        )
    assert out.returncode == 1 and "the registry's data is on node" in out.stderr


def test_agents_drop_the_alias_when_the_service_goes(deployed):
    lab = deployed
    push(lab, APP, "3", app_image(MARK + " 3"))
    svc = get_json(lab, "service", ro.NAME, "-n", NS)
    cluster_ip = svc["spec"]["clusterIP"]
    assert lab.moor("delete", "service", ro.NAME, "-n", NS).returncode == 0
    path = os.path.join(lab.root, "gone.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("moortest-gone", f"{lab.name}-h1", f"{CLUSTER_REGISTRY}/{APP}:3"))
    assert lab.moor("apply", "-f", path).returncode == 0

    def pull_error():
        pod = get_json(lab, "pod", "moortest-gone")
        messages = [c.get("message", "") for c in pod.get("status", {}).get(
            "containerStatuses", [])] if pod else []
        return next((m for m in messages if m), None)
    message = wait_for(pull_error, 60)
    # Only the registry's own name is left to try, and it is no host.
    assert "registry.cluster.local" in message and cluster_ip not in message, message
    assert lab.moor("delete", "pod", "moortest-gone", "--now").returncode == 0
