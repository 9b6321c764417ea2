"""`moor` as a subprocess against a real control plane: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import pathlib
import select
import subprocess
import sys
import time

import grpc
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def moor(controlplane, tmp_path):
    env = controlplane.env(MOOR_CONFIG=str(tmp_path / "none.yaml"))
    env.pop("MOOR_DEBUG", None)

    def run(*args, stdin: str | None = None, server: str | None = None):
        e = dict(env, MOOR_SERVER=server) if server else env
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=e, timeout=60)
    return run


def one_line_error(proc):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    return lines


def ns_yaml(name):
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


def test_apply_directory_then_again_is_unchanged(moor, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        (d / f.name).write_text(f.read_text().replace("shop", "cli-dir"))
    first = moor("apply", "-f", str(d))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "namespace/cli-dir created", "deployment.apps/web created", "service/web created"]
    again = moor("apply", "-f", str(d))
    assert again.stdout.splitlines() == [
        "namespace/cli-dir unchanged", "deployment.apps/web unchanged", "service/web unchanged"]


def test_apply_from_stdin_with_dry_run_writes_nothing(moor):
    proc = moor("apply", "-f", "-", "--dry-run", stdin=ns_yaml("cli-dry"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "namespace/cli-dry created (dry run)"
    get = moor("get", "ns", "cli-dry")
    assert one_line_error(get) == ['Error from server (NotFound): namespaces "cli-dry" not found']


def test_validation_errors_are_one_line_each_with_file_and_path(moor, tmp_path):
    bad = tmp_path / "web.yaml"
    bad.write_text((EXAMPLES / "web.yaml").read_text()
                   .replace("memory: 64Mi", "memory: 12XB").replace("port: 80", "port: 0"))
    proc = moor("apply", "-f", str(bad))
    lines = one_line_error(proc)
    assert f'error: {bad}[0] spec.template.spec.containers[0].resources.limits.memory: ' \
           '"12XB" is not a quantity' in lines
    assert f"error: {bad}[1] spec.ports[0].port: is required" in lines


def test_duplicate_field_is_caught_with_its_path(moor, tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n")
    lines = one_line_error(moor("apply", "-f", str(f)))
    assert lines == [f"error: {f}[0] metadata.name: duplicate field (line 5)"]


def test_missing_file_and_unknown_kind_and_unreachable_server(moor):
    assert one_line_error(moor("apply", "-f", "/nonexistent/x.yaml")) == [
        'error: the path "/nonexistent/x.yaml" does not exist']
    lines = one_line_error(moor("get", "ingresses"))
    assert len(lines) == 1 and 'resource type "ingresses"' in lines[0]
    lines = one_line_error(moor("get", "pods", server="127.0.0.1:1"))
    assert lines == ["error: cannot reach the Moorage control plane at 127.0.0.1:1 (is it "
                     "running? set --server, MOOR_SERVER or the config file)"]


def test_oversized_apply_is_refused_before_sending(moor, tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text(ns_yaml("big") + "# " + "x" * (3 * 1024 * 1024) + "\n")
    lines = one_line_error(moor("apply", "-f", str(f)))
    assert lines == ["error: the manifests are 3.0 MiB in total, over the 3 MiB limit of one "
                     "apply; split them into several applies"]


def test_get_table_json_yaml_and_selectors(moor):
    text = ns_yaml("cli-get") + "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: cli-get, "
        f"labels: {{tier: {'web' if i else 'db'}}}}}\n"
        f"spec: {{containers: [{{name: c, image: busybox}}]}}\n" for i in range(3))
    assert moor("apply", "-f", "-", stdin=text).returncode == 0
    table = moor("get", "pods", "-n", "cli-get", "-l", "tier=web")
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r.split()[0] for r in rows[1:]] == ["p1", "p2"]
    assert rows[1].split()[1:4] == ["0/1", "Pending", "0"]
    listing = json.loads(moor("get", "pods", "-n", "cli-get", "-o", "json").stdout)
    assert listing["kind"] == "List" and len(listing["items"]) == 3
    assert listing["items"][0]["apiVersion"] == "v1" and listing["items"][0]["kind"] == "Pod"
    one = yaml.safe_load(moor("get", "pod", "p0", "-n", "cli-get", "-o", "yaml").stdout)
    assert one["metadata"]["labels"] == {"tier": "db"} and one["status"]["phase"] == "Pending"
    wide = moor("get", "pods", "-A", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[0] == "NAMESPACE" and "NODE" in wide
    empty = moor("get", "pods", "-n", "cli-get", "-l", "tier=none")
    assert empty.returncode == 0 and "No resources found in cli-get namespace." in empty.stderr


def test_get_applied_yaml_can_be_applied_back(moor):
    assert moor("apply", "-f", "-", stdin=ns_yaml("cli-round")).returncode == 0
    out = moor("get", "ns", "cli-round", "-o", "yaml").stdout
    proc = moor("apply", "-f", "-", stdin=out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "namespace/cli-round unchanged"


def test_diff_exit_codes(moor, tmp_path):
    f = tmp_path / "ns.yaml"
    f.write_text(ns_yaml("cli-diff"))
    assert moor("diff", "-f", str(f)).returncode == 1  # would be created
    moor("apply", "-f", str(f))
    same = moor("diff", "-f", str(f))
    assert same.returncode == 0 and same.stdout == ""
    f.write_text(ns_yaml("cli-diff").replace("metadata: {", "metadata: {labels: {a: b}, "))
    changed = moor("diff", "-f", str(f))
    assert changed.returncode == 1 and "+    a: b" in changed.stdout


def test_describe_and_delete(moor):
    assert moor("apply", "-f", "-", stdin=ns_yaml("cli-del")).returncode == 0
    desc = moor("describe", "namespace", "cli-del")
    assert desc.returncode == 0 and "Name:" in desc.stdout and "cli-del" in desc.stdout
    gone = moor("delete", "ns", "cli-del")
    assert gone.returncode == 0 and gone.stdout.strip() == 'namespace "cli-del" deleted'
    again = moor("delete", "ns", "cli-del")
    assert one_line_error(again) == ['Error from server (NotFound): namespaces "cli-del" not found']
    assert moor("delete", "ns", "cli-del", "--ignore-not-found").returncode == 0


def test_version_reports_client_server_and_etcd(moor):
    proc = moor("version")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[:2] == ["Client Version: 0.1.0", "Server Version: 0.1.0"]
    assert "etcd Version: 3." in proc.stdout


def test_help_reads_well(moor):
    proc = moor("--help")
    assert proc.returncode == 0
    for cmd in ("apply", "diff", "get", "describe", "delete", "version"):
        assert cmd in proc.stdout


def test_watch_prints_list_then_changes(moor, controlplane):
    assert moor("apply", "-f", "-", stdin=ns_yaml("cli-watch")).returncode == 0
    env = controlplane.env()
    proc = subprocess.Popen([sys.executable, "-m", "moorage.cli.main", "get", "pods", "-n",
                             "cli-watch", "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        # A barrier: the watch has listed (and says there is nothing yet) before the change.
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready and "No resources found" in proc.stderr.readline()
        pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: w1, namespace: cli-watch}\n"
               "spec: {containers: [{name: c, image: busybox}]}\n")
        assert moor("apply", "-f", "-", stdin=pod).returncode == 0
        line = ""
        deadline = time.monotonic() + 10
        while "w1" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert line.split()[0] == "w1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_yaml_bombs_are_refused_by_the_cli_and_by_the_server(moor, controlplane, tmp_path):
    from moorage.v1 import api_pb2
    from tests.unit.test_bounded_yaml import billion_laughs

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: fine}\n---\n" +
                    billion_laughs())
    assert one_line_error(moor("apply", "-f", str(bomb))) == [
        f"error: {bomb}[1]: refused: its aliases expand it to over 100000 nodes "
        "(excessive aliasing)"]
    assert moor("get", "ns", "fine").returncode != 0          # nothing of it was applied
    # A client that sends the YAML itself meets the same limit on the server.
    with pytest.raises(grpc.RpcError) as err:
        controlplane.stub().Apply(api_pb2.ApplyRequest(manifests=[api_pb2.Manifest(
            source="raw.yaml", content=billion_laughs())]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("raw.yaml[0]: refused: its aliases expand it to over "
                                   "100000 nodes (excessive aliasing)")
