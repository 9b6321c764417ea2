"""`moor create configmap|secret`, their tables and descriptions, `moor rollout restart` and
`moor secrets rotate-key`, as a subprocess against a real control plane on a real etcd."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from moorage.model.timestamps import parse_rfc3339
from tests.builders import deployment_yaml
from tests.conftest import TEST_PREFIX, start_controlplane, stop_process, unique
from tests.unit.test_cli_configs import make_pair
from tests.wait import wait_until

# Looked for in every output but `-o yaml|json`, and in the control plane's log.
PASSWORD = "pw-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def cp(etcd_endpoint):
    state = tempfile.mkdtemp(prefix=TEST_PREFIX + "cli-cfg-")
    # The Deployment controller must run (rollout restart); pods need no node to be made.
    plane = start_controlplane(etcd_endpoint, state,
                               extra_args=("--no-scheduler", "--controllers",
                                           "--no-node-lifecycle"))
    yield plane
    stop_process(plane.proc)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def moor(cp):
    env = cp.env()
    env.pop("MOOR_DEBUG", None)
    runs = []

    def run(*args, server: str | None = None):
        e = dict(env, MOOR_SERVER=server) if server else env
        proc = subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                              capture_output=True, text=True, env=e, timeout=60)
        runs.append((args, proc))
        return proc
    yield run
    # Only the object's own YAML or JSON may carry a Secret's value (as base64, never plain).
    for args, proc in runs:
        assert PASSWORD not in proc.stdout + proc.stderr, args


@pytest.fixture
def namespace(moor):
    name = unique("ns-")
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    assert moor_apply(moor, manifest).returncode == 0
    yield name
    done = moor("delete", "namespace", name, "--timeout", "60s")
    assert done.returncode == 0, done.stderr


def moor_apply(moor, manifest: dict):
    path = os.path.join(tempfile.mkdtemp(prefix=TEST_PREFIX), "m.json")
    try:
        with open(path, "w") as f:
            json.dump(manifest, f)
        return moor("apply", "-f", path)
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def ok(proc) -> str:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def error_line(proc) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_configmap_create_get_describe_and_already_exists(moor, namespace, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nginx.conf").write_text("worker_processes 1;\n")
    (conf / "logo.png").write_bytes(b"\x89PNG\r\n\xff")
    env = tmp_path / "app.env"
    env.write_text("# settings\nLEVEL=2\n\nMODE=fast\n")
    ns = ("-n", namespace)
    assert ok(moor("create", "configmap", "files", *ns, "--from-file", str(conf),
                   "--from-literal", "extra=1")) == "configmap/files created\n"
    assert ok(moor("create", "cm", "env", *ns, "--from-env-file", str(env))) == \
        "configmap/env created\n"

    rows = table(ok(moor("get", "configmaps", *ns)))
    assert rows[0] == ["NAME", "DATA", "AGE"]
    assert [r[:2] for r in rows[1:]] == [["env", "2"], ["files", "3"]]
    every = table(ok(moor("get", "cm", "-A")))
    assert every[0] == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert [namespace, "files", "3"] in [r[:3] for r in every[1:]]

    doc = yaml.safe_load(ok(moor("get", "cm", "files", *ns, "-o", "yaml")))
    assert doc["data"] == {"extra": "1", "nginx.conf": "worker_processes 1;\n"}
    assert base64.b64decode(doc["binaryData"]["logo.png"]) == b"\x89PNG\r\n\xff"

    text = ok(moor("describe", "configmap", "files", *ns))
    assert text.startswith(f"Name:         files\nNamespace:    {namespace}\n")
    assert "\nData\n====\nextra:\n----\n1\n\nnginx.conf:\n----\nworker_processes 1;\n" in text
    assert "\nBinaryData\n====\nlogo.png: 7 bytes\n" in text
    assert text.endswith("Events: <none>\n")

    # Creating it again is refused and writes nothing: the object keeps its revision.
    before = doc["metadata"]["resourceVersion"]
    assert error_line(moor("create", "cm", "files", *ns, "--from-literal", "other=2")) == \
        'Error from server (AlreadyExists): configmaps "files" already exists'
    assert error_line(moor("create", "cm", "files", *ns, "--from-literal", "x=1",
                           "--dry-run=server")) == \
        'Error from server (AlreadyExists): configmaps "files" already exists'
    again = yaml.safe_load(ok(moor("get", "cm", "files", *ns, "-o", "yaml")))
    assert again["metadata"]["resourceVersion"] == before and "other" not in again["data"]

    # Deleted, the name can be created again (no stale answer from the server's cache).
    ok(moor("delete", "cm", "files", *ns))
    assert ok(moor("create", "cm", "files", *ns, "--from-literal", "new=1")) == \
        "configmap/files created\n"


def test_dry_runs_write_nothing(moor, namespace):
    name = unique("dry-")
    # A client dry run does not talk to the server at all: it works with none reachable.
    out = ok(moor("create", "cm", name, "-n", namespace, "--from-literal", "a=b",
                  "--dry-run=client", "-o", "yaml", server="127.0.0.1:1"))
    assert yaml.safe_load(out) == {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": name, "namespace": namespace},
                                   "data": {"a": "b"}}
    # A server dry run is checked there; its answer is the barrier: it has finished.
    assert ok(moor("create", "cm", name, "-n", namespace, "--from-literal", "a=b",
                   "--dry-run=server")) == f"configmap/{name} created (server dry run)\n"
    bad = moor("create", "secret", "generic", name, "-n", namespace, "--from-literal",
               "a=b", "--type", "kubernetes.io/tls", "--dry-run=server")
    assert bad.returncode == 1 and 'data["tls.crt"]: is required' in bad.stderr
    for kind in ("configmap", "secret"):
        assert error_line(moor("get", kind, name, "-n", namespace)) == \
            f'Error from server (NotFound): {kind}s "{name}" not found'


def test_secrets_create_get_describe_without_showing_values(moor, cp, namespace, tmp_path):
    ns = ("-n", namespace)
    assert ok(moor("create", "secret", "generic", "db", *ns, "--from-literal",
                   f"password={PASSWORD}", "--from-literal", "user=root")) == \
        "secret/db created\n"
    cert, key = make_pair()
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    ok(moor("create", "secret", "tls", "web-tls", *ns, "--cert", str(tmp_path / "tls.crt"),
            "--key", str(tmp_path / "tls.key")))
    ok(moor("create", "secret", "docker-registry", "regcred", *ns, "--docker-server",
            "registry.example:5000", "--docker-username", "ci", "--docker-password",
            PASSWORD))

    rows = table(ok(moor("get", "secrets", *ns)))
    assert rows[0] == ["NAME", "TYPE", "DATA", "AGE"]
    assert [r[:3] for r in rows[1:]] == [["db", "Opaque", "2"],
                                         ["regcred", "kubernetes.io/dockerconfigjson", "1"],
                                         ["web-tls", "kubernetes.io/tls", "2"]]

    # -o yaml prints base64, as kubectl does.
    doc = yaml.safe_load(ok(moor("get", "secret", "db", *ns, "-o", "yaml")))
    assert base64.b64decode(doc["data"]["password"]).decode() == PASSWORD
    reg = json.loads(ok(moor("get", "secret", "regcred", *ns, "-o", "json")))
    auths = json.loads(base64.b64decode(reg["data"][".dockerconfigjson"]))["auths"]
    assert auths == {"registry.example:5000": {
        "username": "ci", "password": PASSWORD,
        "auth": base64.b64encode(f"ci:{PASSWORD}".encode()).decode()}}
    tls = yaml.safe_load(ok(moor("get", "secret", "web-tls", *ns, "-o", "yaml")))
    assert base64.b64decode(tls["data"]["tls.key"]) == key

    text = ok(moor("describe", "secret", "db", *ns))
    assert "\nType:  Opaque\n\nData\n====\n" in text
    assert f"password:  {len(PASSWORD)} bytes\n" in text and "user:      4 bytes" in text
    assert "root" not in text
    assert error_line(moor("create", "secret", "generic", "db", *ns, "--from-literal",
                           f"password={PASSWORD}")) == \
        'Error from server (AlreadyExists): secrets "db" already exists'
    with open(os.path.join(cp.state_dir, "controlplane.log"), errors="replace") as f:
        assert PASSWORD not in f.read()


def test_rotate_key_keeps_secrets_readable(moor, cp, namespace):
    ok(moor("create", "secret", "generic", "api", "-n", namespace, "--from-literal",
            f"token={PASSWORD}"))
    line = ok(moor("secrets", "rotate-key")).rstrip("\n")
    match = re.fullmatch(r"secrets key rotated to (\w+): (\d+) Secrets? sealed again; copy "
                         r"(\S+) to every other control-plane replica \(it still holds the old "
                         r"keys ([\w, ]+) for reading\)", line)
    assert match, line
    new_id, count, key_file, old = match.groups()
    assert int(count) >= 1 and new_id not in old.split(", ")
    assert key_file == os.path.join(cp.state_dir, "secrets.key")
    doc = yaml.safe_load(ok(moor("get", "secret", "api", "-n", namespace, "-o", "yaml")))
    assert base64.b64decode(doc["data"]["token"]).decode() == PASSWORD


def test_rollout_restart_rolls_new_pods(moor, namespace):
    name = unique("web-")
    with tempfile.TemporaryDirectory(prefix=TEST_PREFIX) as tmp:
        path = os.path.join(tmp, "d.yaml")
        with open(path, "w") as f:
            f.write(deployment_yaml(name, namespace=namespace))
        ok(moor("apply", "-f", path))
    ns = ("-n", namespace)

    def hashes() -> set[str]:
        pods = json.loads(ok(moor("get", "pods", *ns, "-l", f"app={name}", "-o", "json")))
        return {p["metadata"]["labels"].get("pod-template-hash") for p in pods["items"]}

    first = wait_until(hashes, 30, "the deployment's first pod")
    assert ok(moor("rollout", "restart", f"deployment/{name}", *ns)) == \
        f"deployment.apps/{name} restarted\n"
    d = json.loads(ok(moor("get", "deploy", name, *ns, "-o", "json")))
    stamp = d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
    assert parse_rfc3339(stamp) is not None and d["metadata"]["generation"] == 2
    # The new template is rolled out: pods with another template hash appear.
    wait_until(lambda: hashes() - first, 30, "pods of the restarted template")
    assert error_line(moor("rollout", "restart", "deploy/none", *ns)) == \
        'Error from server (NotFound): deployments.apps "none" not found'
