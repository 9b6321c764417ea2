"""`moor stack deploy|ls|ps|rm` against a real control plane (no agents): the objects a Compose
file makes, listing, and removal."""

from __future__ import annotations

import json
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

    def run(*args):
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args],
                              capture_output=True, text=True, env=env, timeout=60)
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
    path.write_text(COMPOSE + "    volumes: [/data]\n")
    out = moor("stack", "deploy", "-c", str(path), name)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {path}: services.back.volumes: not supported by Moorage"
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
