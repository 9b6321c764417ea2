"""`moor stack deploy|ls|ps|rm` against a real control plane (no agents): the objects a Compose
file makes (configs and secrets too), listing, and removal."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import unique

COMPOSE = textwrap.dedent("""\
    services:
      front:
        image: busybox:test
        command: ["sh", "-c", "sleep 3600"]
        ports: ["30123:8080"]
        depends_on: [back]
      back:
        image: busybox:test
        expose: ["8080"]
        deploy: {replicas: 2}
    """)


@pytest.fixture
def moor(controlplane, tmp_path):
    env = controlplane.env(MOOR_CONFIG=str(tmp_path / "none.yaml"))

    def run(*args, extra_env=None):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                              capture_output=True, text=True, env={**env, **(extra_env or {})},
                              timeout=60)
    return run


def items(moor, *args) -> list[dict]:
    out = moor("get", *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["items"]


def test_stack_deploy_ls_ps_rm(moor, tmp_path):
    name = unique("stack")
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE)
    out = moor("stack", "deploy", "-c", str(path), name)
    assert out.returncode == 0, out.stderr
    assert "services.front.depends_on" in out.stdout
    assert f'stack "{name}" deployed' in out.stdout

    deps = {d["metadata"]["name"]: d for d in items(moor, "deployments", "-n", name)}
    assert set(deps) == {"front", "back"} and deps["back"]["spec"]["replicas"] == 2
    svcs = {s["metadata"]["name"]: s for s in items(moor, "services", "-n", name)}
    assert svcs["front"]["spec"]["type"] == "NodePort"
    assert svcs["front"]["spec"]["ports"][0]["nodePort"] == 30123
    assert svcs["back"]["spec"]["ports"][0]["port"] == 8080
    for obj in (*deps.values(), *svcs.values()):
        assert obj["metadata"]["labels"]["moorage.io/stack"] == name

    again = moor("stack", "deploy", "-c", str(path), name)       # idempotent
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout

    out = moor("stack", "ls")
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith(name))
    assert row == [name, "2", name]

    out = moor("stack", "ps", name)
    if out.returncode == 0:          # pods exist once the deployment controller has run
        assert {line.split()[1] for line in out.stdout.splitlines()[1:]} <= {"front", "back"}
    else:
        assert "has no pods" in out.stderr

    out = moor("stack", "rm", name)
    assert out.returncode == 0, out.stderr
    assert f"namespace/{name} deleted" in out.stdout
    assert name not in moor("stack", "ls").stdout
    out = moor("stack", "rm", name)
    assert out.returncode == 1 and f'no stack named "{name}"' in out.stderr


def test_unsupported_key_applies_nothing(moor, tmp_path):
    name = unique("stack")
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE + "    cap_add: [NET_ADMIN]\n")
    out = moor("stack", "deploy", "-c", str(path), name)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {path}: services.back.cap_add: not supported by Moorage"
    assert moor("get", "namespace", name).returncode != 0


def test_default_name_is_the_directory(moor, tmp_path):
    name = unique("dir")
    d = tmp_path / name
    d.mkdir()
    (d / "compose.yaml").write_text("services: {web: {image: busybox:test}}\n")
    out = moor("stack", "deploy", "-c", str(d / "compose.yaml"))
    assert out.returncode == 0, out.stderr
    assert f'stack "{name}" deployed' in out.stdout
    assert moor("stack", "rm", name).returncode == 0


PASSWORD = "pw-" + os.urandom(8).hex()
WITH_FILES = textwrap.dedent("""\
    configs:
      app.ini: {file: conf/app.ini}
    secrets:
      db_pw: {environment: STACK_DB_PW}
      tls_key: {external: true, name: shared_tls}
    services:
      web:
        image: busybox:test
        configs: [{source: app.ini, target: /etc/app/app.ini, mode: 0440}]
        secrets: [db_pw, {source: tls_key, target: tls.key}]
    """)


def test_configs_and_secrets(moor, tmp_path):
    name = unique("stack")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.ini").write_text("level=debug\n")
    path = tmp_path / "compose.yaml"
    path.write_text(WITH_FILES)
    env = {"STACK_DB_PW": PASSWORD}

    # An external secret must exist first; nothing is applied until it does.
    out = moor("stack", "deploy", "-c", str(path), name, extra_env=env)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: {path}: secrets.tls_key: external: no Secret "
                                 f"'shared-tls' in namespace '{name}'"), out.stderr
    assert moor("get", "namespace", name).returncode != 0
    ns = tmp_path / "ns.json"
    ns.write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    assert moor("apply", "-f", str(ns)).returncode == 0
    made = moor("create", "secret", "generic", "shared-tls", "-n", name, "--from-literal",
                "tls.key=KEY")
    assert made.returncode == 0, made.stderr
    out = moor("stack", "deploy", "-c", str(path), name, extra_env=env)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"error: {path}: secrets.tls_key: external: the Secret "
                                  "'shared-tls' has no key 'shared_tls', the one the stack "
                                  "mounts (it has: 'tls.key')")
    assert items(moor, "deployments", "-n", name) == []
    assert moor("delete", "secret", "shared-tls", "-n", name).returncode == 0
    made = moor("create", "secret", "generic", "shared-tls", "-n", name, "--from-literal",
                "shared_tls=KEY")
    assert made.returncode == 0, made.stderr

    out = moor("stack", "deploy", "-c", str(path), name, extra_env=env)
    assert out.returncode == 0, out.stderr
    assert "configmap/app-ini created" in out.stdout and "secret/db-pw created" in out.stdout
    cm = items(moor, "configmaps", "-n", name)
    assert [(c["metadata"]["name"], c["data"]) for c in cm] == [
        ("app-ini", {"app.ini": "level=debug\n"})]
    secrets = {s["metadata"]["name"]: s for s in items(moor, "secrets", "-n", name)}
    assert set(secrets) == {"db-pw", "shared-tls"}
    pw = secrets["db-pw"]
    assert pw["type"] == "Opaque" and pw["metadata"]["labels"]["moorage.io/stack"] == name
    assert base64.b64decode(pw["data"]["db_pw"]).decode() == PASSWORD

    (dep,) = items(moor, "deployments", "-n", name)
    spec = dep["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert {p: (m["name"], m["subPath"], m.get("readOnly")) for p, m in mounts.items()} == {
        "/etc/app/app.ini": ("config-app-ini", "app.ini", True),
        "/run/secrets/db_pw": ("secret-db-pw", "db_pw", True),
        "/run/secrets/tls.key": ("secret-shared-tls", "shared_tls", True)}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config-app-ini"]["configMap"]["items"] == [
        {"key": "app.ini", "path": "app.ini", "mode": 0o440}]
    assert volumes["secret-db-pw"]["secret"]["secretName"] == "db-pw"
    assert volumes["secret-shared-tls"]["secret"]["items"] == [
        {"key": "shared_tls", "path": "shared_tls", "mode": 0o444}]

    again = moor("stack", "deploy", "-c", str(path), name, extra_env=env)
    assert again.returncode == 0, again.stderr
    assert "secret/db-pw unchanged" in again.stdout and "configmap/app-ini unchanged" in \
        again.stdout, again.stdout
    for run in (out, again):
        assert PASSWORD not in run.stdout + run.stderr

    # Deploying labelled the namespace the stack's, so rm takes it, the external Secret too.
    out = moor("stack", "rm", name)
    assert out.returncode == 0 and f"namespace/{name} deleted" in out.stdout, out.stderr


def test_unset_variable_applies_nothing(moor, tmp_path):
    name = unique("stack")
    path = tmp_path / "compose.yaml"
    path.write_text("secrets: {db_pw: {environment: MOORTEST_UNSET}}\n"
                    "services: {web: {image: busybox:test, secrets: [db_pw]}}\n")
    out = moor("stack", "deploy", "-c", str(path), name)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: {path}: secrets.db_pw.environment: secret 'db_pw' reads the variable "
        "'MOORTEST_UNSET', which is not set in the environment of moor stack deploy")
    assert moor("get", "namespace", name).returncode != 0


def test_named_volume_stack_keeps_its_claim_on_rm(moor, tmp_path):
    name = unique("stack")
    path = tmp_path / "compose.yaml"
    path.write_text("volumes: {data: {driver_opts: {size: 2G}}}\n"
                    "services:\n  db: {image: busybox:test, ports: ['5432'], "
                    "volumes: [data:/var/lib/db, ./conf:/etc/db:ro]}\n")
    try:
        out = moor("stack", "deploy", "-c", str(path), name)
        assert out.returncode == 0, out.stderr
        assert "note: " in out.stdout and "starts empty" in out.stdout
        (sts,) = items(moor, "statefulsets", "-n", name)
        assert sts["spec"]["serviceName"] == "db-headless"
        spec = sts["spec"]["template"]["spec"]
        assert {v["name"]: v for v in spec["volumes"]}["bind-0"]["hostPath"] == {
            "path": str(tmp_path / "conf")}
        svcs = {s["metadata"]["name"]: s["spec"] for s in items(moor, "services", "-n", name)}
        assert svcs["db-headless"]["clusterIP"] == "None" and svcs["db"]["clusterIP"] != "None"
        (claim,) = items(moor, "pvc", "-n", name)
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        ls = moor("volume", "ls", "-n", name)
        assert ls.returncode == 0, ls.stderr
        assert ls.stdout.splitlines()[1].split() == ["local", "data", "2Gi", "-", "-"]
        out = moor("stack", "ls")
        assert next(line.split() for line in out.stdout.splitlines()
                    if line.startswith(name)) == [name, "1", name]

        out = moor("stack", "rm", name)
        assert out.returncode == 0, out.stderr
        assert "statefulset/db deleted" in out.stdout and "service/db-headless deleted" in \
            out.stdout
        assert f"volumes kept: data (remove them with `moor volume rm -n {name} data`, or " \
               f"the namespace and all in it with `moor delete namespace {name}`)" in out.stdout
        assert items(moor, "statefulsets", "-n", name) == []
        assert [c["metadata"]["name"] for c in items(moor, "pvc", "-n", name)] == ["data"]
        out = moor("volume", "rm", "-n", name, "data", "nope")
        assert out.returncode == 1 and out.stdout == "data\n"
        assert out.stderr.strip() == "Error: No such volume: nope"
    finally:
        moor("delete", "namespace", name)
