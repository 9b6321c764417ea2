"""ConfigMaps and Secrets end to end: a real control plane on a real etcd, two real agents and
real containers. What pods see (env, files, modes, tmpfs), live updates and their atomic swap,
waiting for a missing object, sealing at rest and key rotation, the node authorizer, and that
no Secret value appears in any log, Event or description."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import grpc
import pytest

from moorage.v1 import api_pb2, api_pb2_grpc
from tests import imagebuild
from tests.agents import start_agents
from tests.conftest import TEST_PREFIX, etcd_client, run, start_controlplane, stop_process
from tests.integration.test_images import Registry
from tests.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")

NODE_A, NODE_B = "moortest-cfg-a", "moortest-cfg-b"
# Distinctive values, looked for in every log, Event and description afterwards.
PASSWORD = "pw-" + os.urandom(6).hex()
TOKEN = "tok-" + os.urandom(6).hex()


def pod(name: str, node: str, script: str, **spec) -> dict:
    container = {"name": "app", "image": "busybox:test", "imagePullPolicy": "Never",
                 "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [container], **spec}}


def config_map(name: str, data: dict, binary: dict | None = None) -> dict:
    out = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    if binary:
        out["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return out


def secret(name: str, string_data: dict, type_: str = "Opaque") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_,
            "stringData": string_data}


APP = pod("moortest-app", NODE_A, "exec sleep 3600",
          volumes=[{"name": "cfg", "configMap": {"name": "app-config"}},
                   {"name": "one", "configMap": {"name": "app-config", "defaultMode": 0o600,
                                                 "items": [{"key": "ui", "path": "d/ui.conf",
                                                            "mode": 0o400}]}},
                   {"name": "creds", "secret": {"secretName": "db"}}],
          container={
              "env": [{"name": "DB_PASSWORD",
                       "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                      {"name": "LIVES", "valueFrom": {"configMapKeyRef": {
                          "name": "app-config", "key": "lives"}}},
                      {"name": "NOPE", "valueFrom": {"configMapKeyRef": {
                          "name": "absent", "key": "x", "optional": True}}}],
              "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "app-config"}}],
              "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                               {"name": "one", "mountPath": "/etc/one"},
                               {"name": "cfg", "mountPath": "/etc/sub/ui", "subPath": "ui"},
                               {"name": "creds", "mountPath": "/run/creds"}]})


@pytest.fixture(scope="module")
def registry():
    """A registry that wants a username and password, holding busybox as private/bb:1."""
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "authreg-")
    reg = Registry(tmp, users={"puller": "pull-" + os.urandom(4).hex()})
    try:
        imagebuild.push(reg.url, "private/bb", "1", imagebuild.make_image())
        yield reg
    finally:
        stop_process(reg.proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(etcd_endpoint, registry):
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "configs-")
    cp = start_controlplane(etcd_endpoint, os.path.join(root, "cp"))
    agents = start_agents(cp, root, [NODE_A, NODE_B], imagebuild.busybox_tar(root),
                          extra_args=("--insecure-registry", registry.host))
    env = cp.env()

    def moor(*args, stdin=None, timeout=60):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout)

    try:
        wait_until(lambda: len(_ready_nodes(moor)) == 2, 60, "two Ready nodes")
        applied = apply(moor, config_map("app-config", {"ui": "dark", "lives": "3"},
                                         {"blob": b"\x00\xffbin"}),
                        secret("db", {"password": PASSWORD, "user": "admin"}), APP)
        assert applied.returncode == 0, applied.stderr
        wait_until(lambda: phase(moor, "moortest-app") == "Running", 60, "the app Running")
        yield moor, cp, agents
    finally:
        for a in agents:
            a.cleanup()
        stop_process(cp.proc)
        shutil.rmtree(root, ignore_errors=True)


def apply(moor, *objs):
    return moor("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objs))


def _ready_nodes(moor) -> list[str]:
    out = moor("get", "nodes", "-o", "json")
    items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
    return [n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n["status"].get("conditions", []))]


def get(moor, kind: str, name: str) -> dict:
    out = moor("get", kind, name, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else {}


def phase(moor, name: str) -> str:
    return get(moor, "pod", name).get("status", {}).get("phase", "")


def sh(moor, pod_name: str, script: str) -> str:
    out = moor("exec", pod_name, "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_env_and_files_are_what_was_applied(cluster):
    moor, _, _ = cluster
    env = dict(line.split("=", 1) for line in sh(moor, "moortest-app", "env").splitlines()
               if "=" in line)
    assert env["DB_PASSWORD"] == PASSWORD
    assert env["LIVES"] == "3"
    assert env["CFG_ui"] == "dark" and env["CFG_lives"] == "3"
    assert "NOPE" not in env
    files = sh(moor, "moortest-app", "cat /etc/cfg/ui; echo; cat /etc/cfg/lives; echo; "
               "od -An -tx1 /etc/cfg/blob; cat /run/creds/password; echo; cat /run/creds/user")
    assert files.split() == ["dark", "3", "00", "ff", "62", "69", "6e", PASSWORD, "admin"]
    modes = sh(moor, "moortest-app", "stat -L -c '%a %n' /etc/cfg/ui /etc/one/d/ui.conf "
               "/run/creds/password")
    assert modes.split() == ["644", "/etc/cfg/ui", "400", "/etc/one/d/ui.conf",
                             "644", "/run/creds/password"]
    assert sh(moor, "moortest-app", "cat /etc/sub/ui") == "dark"


def test_volumes_are_tmpfs_read_only_and_not_in_the_spec_on_disk(cluster):
    moor, _, agents = cluster
    mounts = {line.split()[1]: line.split() for line in
              sh(moor, "moortest-app", "cat /proc/mounts").splitlines()}
    for path in ("/run/creds", "/etc/cfg"):
        assert mounts[path][2] == "tmpfs", mounts[path]
        assert mounts[path][3].split(",")[0] == "ro", mounts[path]
    out = moor("exec", "moortest-app", "--", "sh", "-c", "echo x > /run/creds/new")
    assert out.returncode != 0
    # The container's spec on the node's disk names an env file on the tmpfs, not the value.
    state = agents[0].state
    found = []
    for top, _, names in os.walk(state):
        if os.path.join(state, "volumes") in top or "/rootfs" in top or "/upper" in top:
            continue
        for n in names:
            path = os.path.join(top, n)
            try:
                with open(path, "rb") as f:
                    if PASSWORD.encode() in f.read():
                        found.append(path)
            except OSError:
                pass
    assert found == []


def test_updates_reach_files_but_not_env_or_subpath(cluster):
    moor, _, _ = cluster
    assert apply(moor, config_map("app-config", {"ui": "light", "lives": "9"},
                                  {"blob": b"\x00\xffbin"})).returncode == 0
    wait_until(lambda: sh(moor, "moortest-app", "cat /etc/cfg/ui") == "light", 20,
               "the update in the mounted file")
    assert sh(moor, "moortest-app", "cat /etc/one/d/ui.conf") == "light"
    assert sh(moor, "moortest-app", "echo $LIVES $CFG_ui") == "3 dark\n"
    assert sh(moor, "moortest-app", "cat /etc/sub/ui") == "dark"


SWAP_READER = (
    "n=0; while true; do d=$(readlink /etc/cfg/..data) || continue; "
    "a=$(cat /etc/cfg/$d/a 2>/dev/null) || continue; b=$(cat /etc/cfg/$d/b 2>/dev/null) || "
    "continue; [ \"$a\" = \"$b\" ] || echo \"TORN $a $b\"; n=$((n+1)); "
    "echo \"$n $a\" | cut -c1-16 > /tmp/seen.t && mv /tmp/seen.t /tmp/seen; done")


def test_atomic_swap_never_shows_a_partial_set(cluster):
    moor, _, _ = cluster
    big = "x" * 4000
    assert apply(moor, config_map("swap", {"a": f"0{big}", "b": f"0{big}"}),
                 pod("moortest-swap", NODE_B, SWAP_READER, volumes=[
                     {"name": "cfg", "configMap": {"name": "swap"}}], container={
                     "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]})
                 ).returncode == 0
    wait_until(lambda: phase(moor, "moortest-swap") == "Running", 60, "the reader Running")
    for n in range(1, 51):
        assert apply(moor, config_map("swap", {"a": f"{n}{big}", "b": f"{n}{big}"})
                     ).returncode == 0
    # The barrier: the reader has seen the last version.
    seen = wait_until(lambda: (lambda f: f if len(f) == 2 and f[1].startswith("50x") else None)(
        sh(moor, "moortest-swap", "cat /tmp/seen").split()), 30, "the reader to see version 50")
    reads = int(seen[0])
    logs = moor("logs", "moortest-swap")
    assert logs.returncode == 0
    assert "TORN" not in logs.stdout
    assert reads > 50


def test_missing_object_waits_then_starts_by_itself(cluster):
    moor, _, _ = cluster
    waiting = pod("moortest-waits", NODE_B, "exec sleep 3600", container={"env": [
        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "k"}}}]})
    assert apply(moor, waiting).returncode == 0

    def status():
        st = get(moor, "pod", "moortest-waits").get("status", {}).get("containerStatuses", [])
        return st[0] if st else {}
    wait_until(lambda: status().get("reason") == "CreateContainerConfigError", 30,
               "CreateContainerConfigError")
    assert status()["message"] == 'configmap "later" not found'
    events = moor("get", "events", "-o", "json").stdout
    assert 'configmap \\"later\\" not found' in events
    assert apply(moor, config_map("later", {"k": "v"})).returncode == 0
    wait_until(lambda: phase(moor, "moortest-waits") == "Running" and
               status().get("state") == "running", 30, "the pod to start once it exists")
    assert sh(moor, "moortest-waits", "echo $K") == "v\n"


def _raw_etcd(cp) -> list[tuple[bytes, bytes]]:
    async def read():
        client = etcd_client(cp.etcd)
        await client.connect()
        try:
            return [(kv.key, kv.value) for kv in await client.get_prefix(cp.prefix.encode())]
        finally:
            await client.close()
    return run(read())


def _rotate(cp) -> api_pb2.RotateSecretsKeyResponse:
    with cp.channel() as ch:
        return api_pb2_grpc.ClusterStub(ch).RotateSecretsKey(api_pb2.RotateSecretsKeyRequest())


def test_etcd_holds_no_plaintext_and_rotation_keeps_secrets_readable(cluster):
    moor, cp, _ = cluster
    assert apply(moor, secret("api", {"token": TOKEN})).returncode == 0
    raw = _raw_etcd(cp)
    secrets = [(k, v) for k, v in raw if b"/secrets/" in k]
    assert len(secrets) >= 2
    for key, value in raw:
        assert PASSWORD.encode() not in value and TOKEN.encode() not in value, key
    for _, value in secrets:
        assert value.startswith(b"moorage:enc:aesgcm:v1:")
    answer = _rotate(cp)
    assert answer.resealed == len(secrets)
    assert answer.key_id not in answer.previous_key_ids
    for key, value in _raw_etcd(cp):
        if b"/secrets/" in key:
            assert value.startswith(f"moorage:enc:aesgcm:v1:{answer.key_id}:".encode()), key
    got = get(moor, "secret", "api")
    assert base64.b64decode(got["data"]["token"]).decode() == TOKEN
    # The running pod still gets its Secret, now sealed under the new key.
    assert apply(moor, secret("db", {"password": PASSWORD, "user": "root"})).returncode == 0
    wait_until(lambda: sh(moor, "moortest-app", "cat /run/creds/user") == "root", 20,
               "the resealed Secret's update in the pod")


def _node_get(cp, agent, kind: str, name: str):
    from nodeagent.session.identity import NodeIdentity

    ident = NodeIdentity.load_or_create(agent.state, agent.name)
    with grpc.secure_channel(cp.address, ident.channel_credentials()) as ch:
        return api_pb2_grpc.ClusterStub(ch).Get(api_pb2.GetRequest(
            kind=kind, namespace="default", name=name), timeout=10)


def test_a_node_reads_only_what_its_pods_use(cluster):
    _, cp, agents = cluster
    a, b = agents
    assert _node_get(cp, a, "Secret", "db").secret.data["password"] == PASSWORD.encode()
    with pytest.raises(grpc.RpcError) as err:
        _node_get(cp, b, "Secret", "db")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "runs no pod" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _node_get(cp, a, "Secret", "api")      # used by no pod at all
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_secret_volume_goes_with_the_pod(cluster):
    moor, _, agents = cluster
    assert apply(moor, pod("moortest-brief", NODE_B, "exec sleep 3600", volumes=[
        {"name": "s", "secret": {"secretName": "db"}}], container={
        "volumeMounts": [{"name": "s", "mountPath": "/s"}]})).returncode == 0
    wait_until(lambda: phase(moor, "moortest-brief") == "Running", 60, "the pod Running")
    uid = get(moor, "pod", "moortest-brief")["metadata"]["uid"]
    where = os.path.join(agents[1].state, "volumes", uid)
    with open("/proc/mounts") as f:
        assert any(line.split()[1] == where and line.split()[2] == "tmpfs" for line in f)
    assert moor("delete", "pod", "moortest-brief").returncode == 0
    assert not os.path.exists(where)
    with open("/proc/mounts") as f:
        assert not any(line.split()[1].startswith(where) for line in f)


def test_no_secret_value_in_logs_events_or_descriptions(cluster):
    moor, cp, agents = cluster
    texts = {"events": moor("get", "events", "-A", "-o", "yaml").stdout,
             "describe pod": moor("describe", "pod", "moortest-app").stdout,
             "describe secret": moor("describe", "secret", "db").stdout,
             "get secrets": moor("get", "secrets").stdout}
    with open(os.path.join(cp.state_dir, "controlplane.log"), errors="replace") as f:
        texts["control plane log"] = f.read()
    with urllib.request.urlopen(f"http://{cp.metrics}/metrics", timeout=10) as resp:
        texts["control plane metrics"] = resp.read().decode()
    assert "moorage_" in texts["control plane metrics"]
    for agent in agents:
        with open(agent.log_path, errors="replace") as f:
            texts[f"{agent.name} log"] = f.read()
    for where, text in texts.items():
        assert PASSWORD not in text and TOKEN not in text, where
    described = texts["describe pod"]
    for shown in ("DB_PASSWORD:", "<set to the key 'password' in secret 'db'>  Optional: false",
                  "app-config  ConfigMap  Optional: false  Prefix: CFG_",
                  "/run/creds from creds (ro)", '/etc/sub/ui from cfg (ro,path="ui")',
                  "SecretName:", "Secret (a volume populated by a Secret)"):
        assert shown in described, (shown, described)


def deployment(name: str, node: str, annotations: dict | None = None) -> dict:
    template = pod(name, node, "exec sleep 3600", container={"env": [
        {"name": "V", "valueFrom": {"configMapKeyRef": {"name": "roll-cfg", "key": "v"}}}]})
    template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": template["spec"].pop(
        "nodeName")}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": template["spec"]}}}


def running_pods(moor, app: str) -> list[dict]:
    out = moor("get", "pods", "-l", f"app={app}", "-o", "json")
    items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
    return [p for p in items if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def test_restart_on_config_change_rolls_only_the_deployments_that_ask(cluster):
    moor, _, _ = cluster
    assert apply(moor, config_map("roll-cfg", {"v": "1"}),
                 deployment("roller", NODE_B, {"moorage.io/restart-on-config-change": "true"}),
                 deployment("stayer", NODE_B)).returncode == 0
    for app in ("roller", "stayer"):
        wait_until(lambda app=app: len(running_pods(moor, app)) == 1, 60, f"{app} Running")
    stayer = running_pods(moor, "stayer")[0]["metadata"]["uid"]
    first = running_pods(moor, "roller")[0]["metadata"]["name"]
    assert sh(moor, first, "echo $V") == "1\n"
    assert apply(moor, config_map("roll-cfg", {"v": "2"})).returncode == 0
    # The annotated one rolls to a pod that reads the new value...
    wait_until(lambda: [p["metadata"]["name"] for p in running_pods(moor, "roller")]
               not in ([], [first]), 60, "the roller's new pod")
    fresh = running_pods(moor, "roller")[0]["metadata"]["name"]
    assert sh(moor, fresh, "echo $V") == "2\n"
    # ...and, that change having been seen by the controller, the other one did not roll.
    assert [p["metadata"]["uid"] for p in running_pods(moor, "stayer")] == [stayer]
    for name in ("roller", "stayer"):
        assert moor("delete", "deployment", name).returncode == 0


def test_image_pull_secrets_authenticate_pulls(cluster, registry):
    moor, _, _ = cluster
    user, password = registry.url.split("//")[1].split("@")[0].split(":")
    auths = {"auths": {registry.host: {"username": user, "password": password}}}
    image = f"{registry.host}/private/bb:1"
    private = pod("moortest-private", NODE_A, "exec sleep 3600",
                  imagePullSecrets=[{"name": "regcred"}],
                  container={"image": image, "imagePullPolicy": "Always"})
    anonymous = pod("moortest-anon", NODE_A, "exec sleep 3600",
                    container={"image": image, "imagePullPolicy": "Always"})
    assert apply(moor, secret("regcred", {".dockerconfigjson": json.dumps(auths)},
                              "kubernetes.io/dockerconfigjson"), private, anonymous
                 ).returncode == 0
    wait_until(lambda: phase(moor, "moortest-private") == "Running", 60,
               "the pod with imagePullSecrets Running")

    def anon_reason():
        st = get(moor, "pod", "moortest-anon").get("status", {}).get("containerStatuses", [])
        return st[0].get("reason", "") if st else ""
    wait_until(lambda: anon_reason() in ("ErrImagePull", "ImagePullBackOff"), 60,
               "the pod without them to fail its pull")
    assert "wants a username and password: give the pod an imagePullSecrets Secret" in get(
        moor, "pod", "moortest-anon")["status"]["containerStatuses"][0]["message"]
    for name in ("moortest-private", "moortest-anon"):
        assert moor("delete", "pod", name, "--grace-period", "0", "--force").returncode == 0



def test_a_replica_without_the_key_refuses_secrets_in_one_line(cluster, etcd_endpoint):
    from controlplane.store.sealing import Sealer

    moor, cp, _ = cluster
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "cfg-replica-")
    wrong = os.path.join(state, "other.key")
    Sealer.load(wrong, create=True)
    replica = start_controlplane(etcd_endpoint, os.path.join(state, "cp"), prefix=cp.prefix,
                                 extra_args=("--secrets-key-file", wrong))
    try:
        env = dict(os.environ, MOOR_SERVER=replica.address, MOOR_CREDENTIALS=cp.credentials,
                   MOOR_CONFIG=os.path.join(state, "none.yaml"))
        out = subprocess.run([sys.executable, "-m", "moorage.cli.main", "get", "secret", "db",
                              "-o", "json"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot decrypt Secrets sealed with key" in lines[0], lines
        assert wrong in lines[0] and PASSWORD not in out.stdout + out.stderr
        # ConfigMaps are served as ever.
        out = subprocess.run([sys.executable, "-m", "moorage.cli.main", "get", "configmap",
                              "app-config", "-o", "json"], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        stop_process(replica.proc)
    with open(os.path.join(state, "cp", "controlplane.log"), errors="replace") as f:
        said = [line for line in f if "cannot decrypt Secrets" in line]
    assert len(said) == 1, said
    shutil.rmtree(state, ignore_errors=True)


COMPOSE = """
services:
  web:
    image: busybox:test
    command: ["sleep", "3600"]
    configs:
      - source: site
        target: /etc/site.conf
    secrets:
      - db_pw
configs:
  site:
    content: "listen 8080\\n"
secrets:
  db_pw:
    environment: STACK_DB_PW
"""


def test_a_compose_stack_with_configs_and_secrets_runs(cluster, tmp_path):
    moor, cp, _ = cluster
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    env = cp.env(STACK_DB_PW=PASSWORD)
    out = subprocess.run([sys.executable, "-m", "moorage.cli.main", "stack", "deploy", "-c",
                          str(tmp_path / "compose.yaml"), "cfgstack"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout + out.stderr

    def web():
        got = moor("get", "pods", "-n", "cfgstack", "-o", "json")
        items = json.loads(got.stdout)["items"] if got.returncode == 0 else []
        return [p["metadata"]["name"] for p in items if p["status"].get("phase") == "Running"]
    (name,) = wait_until(web, 60, "the stack's web pod Running")
    read = moor("exec", "-n", "cfgstack", name, "--", "sh", "-c",
                "cat /etc/site.conf /run/secrets/db_pw; echo; stat -c %a /run/secrets/db_pw")
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["listen 8080", PASSWORD, "444"]
    assert moor("stack", "rm", "cfgstack").returncode == 0
