"""A real Prometheus (Debian's package) scrapes a 3-host `moor lab` through deploy/prometheus.yml
and the targets `moor prometheus targets` wrote; the test asks Prometheus' HTTP API.

Prometheus runs in this (the root) network namespace and reaches the lab's hosts over the lab
bridge. It listens on a free loopback port and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import imagebuild
from tests.conftest import TEST_PREFIX
from tests.integration.test_lab import DEPLOYMENT, NODES, LabUnderTest, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="makes netns, links, cgroups: root"),
    pytest.mark.skipif(not os.path.exists(PROMETHEUS),
                       reason="needs Debian's prometheus (make test installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, root: str, targets: str):
        with open(os.path.join(ROOT, "deploy", "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        # The shipped config, with a short interval and this test's targets file.
        config["global"]["scrape_interval"] = "1s"
        for job in config["scrape_configs"]:
            job["file_sd_configs"] = [{"files": [targets], "refresh_interval": "1s"}]
        self.config = os.path.join(root, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, "prometheus.log")
        with open(self.log_path, "wb") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(root, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready():
            assert self.proc.poll() is None, pathlib.Path(self.log_path).read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, timeout)

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.api("query", query=promql)["result"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def setup():
    root = tempfile.mkdtemp(prefix=TEST_PREFIX + "metrics-")
    lab = LabUnderTest(root)
    tar = imagebuild.busybox_tar(root)
    manifests = os.path.join(root, "manifests")
    os.mkdir(manifests)
    with open(os.path.join(manifests, "web.yaml"), "w") as f:
        f.write(DEPLOYMENT)
    prom = None
    try:
        out = lab.lab("up", "--nodes", str(NODES), "--import", tar, "--manifests", manifests,
                      "--underlay-cidr", lab.cidr)
        assert out.returncode == 0, f"lab up failed:\n{out.stdout}\n{out.stderr}"
        targets = os.path.join(root, "targets.json")
        out = lab.moor("prometheus", "targets", "-o", targets)
        assert out.returncode == 0, out.stderr
        prom = Prometheus(root, targets)
        prom.wait_ready()
        yield lab, prom, targets
    finally:
        if prom is not None:
            prom.stop()
        lab.lab("down")
        shutil.rmtree(root, ignore_errors=True)


def running_pods(lab) -> dict[str, str]:
    """pod name -> node of the Deployment's Running pods."""
    out = lab.moor("get", "pods", "-o", "json")
    assert out.returncode == 0, out.stderr
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in json.loads(out.stdout)["items"]
            if p.get("status", {}).get("phase") == "Running"}


def test_targets_file_names_every_agent_and_the_control_plane(setup):
    lab, _, targets = setup
    with open(targets) as f:
        groups = json.load(f)
    net = lab.cidr.rsplit(".", 1)[0]
    agents = {g["labels"]["moorage_node"]: g["targets"] for g in groups
              if g["labels"]["component"] == "agent"}
    assert agents == {f"{lab.name}-h{i}": [f"{net}.{10 + i}:10255"] for i in (1, 2, 3)}
    assert [g["targets"] for g in groups if g["labels"]["component"] == "controlplane"] == [
        [f"{net}.11:7441"]]


def test_every_target_is_up(setup):
    _, prom, _ = setup

    def all_up():
        active = prom.api("targets")["activeTargets"]
        return active if len(active) == NODES + 1 and all(
            t["health"] == "up" for t in active) else None
    active = wait_for(all_up, timeout=60)
    assert sorted(t["labels"]["job"] for t in active) == [
        "moorage-agent"] * NODES + ["moorage-controlplane"]


def test_container_metrics_of_the_example_pods(setup):
    lab, prom, _ = setup
    pods = wait_for(lambda: (p := running_pods(lab)) and len(p) == 3 and p, timeout=90)

    def series(metric: str):
        got = prom.query(f'{metric}{{namespace="default",container="app"}}')
        by_pod = {r["metric"]["pod"]: r["metric"] for r in got}
        return by_pod if set(pods) <= set(by_pod) else None

    for metric in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                   "container_spec_memory_limit_bytes", "kube_pod_container_status_restarts_total",
                   "container_oom_events_total"):
        by_pod = wait_for(lambda m=metric: series(m), timeout=60)
        for name, node in pods.items():
            labels = by_pod[name]
            assert labels["node"] == node, (metric, labels)
            assert labels["job"] == "moorage-agent"
    # Overlay pods: their eth0 counters, read from the host end of their veth.
    def received():
        got = {r["metric"]["pod"] for r in prom.query(
            'container_network_receive_bytes_total{namespace="default",interface="eth0"}')}
        return got if set(pods) <= got else None
    wait_for(received, timeout=30)
    for metric in ("node_cpu_seconds_total", "node_memory_MemAvailable_bytes",
                   "node_filesystem_avail_bytes"):
        nodes = wait_for(lambda m=metric: {r["metric"]["node"] for r in prom.query(m)}, 30)
        assert nodes == {f"{lab.name}-h{i}" for i in (1, 2, 3)}, metric


def test_control_plane_metrics(setup):
    _, prom, _ = setup

    # The counts are refreshed every 15 s, so the first scrapes may predate the nodes.
    def objects():
        counts = {r["metric"]["kind"]: float(r["value"][1])
                  for r in prom.query("moorage_objects")}
        return counts if counts.get("Node") == NODES else None
    counts = wait_for(objects, timeout=60)
    assert counts["Deployment"] >= 1
    ready = wait_for(lambda: [r for r in prom.query(
        'moorage_nodes{condition="Ready",status="True"}') if float(r["value"][1]) == NODES], 60)
    assert len(ready) == 1
    assert wait_for(lambda: prom.query("moorage_leader == 1"), 30)
    assert wait_for(lambda: prom.query(
        "moorage_api_request_duration_seconds_count"), 30)
    assert wait_for(lambda: prom.query("moorage_etcd_request_duration_seconds_count"), 30)
    assert wait_for(lambda: prom.query(
        'moorage_scheduler_scheduling_attempt_duration_seconds_count{result="scheduled"}'), 30)


def test_agent_exposition_parses_with_the_expected_types(setup):
    lab, _, _ = setup
    net = lab.cidr.rsplit(".", 1)[0]
    # Straight from an agent, through the lab bridge, parsed as Prometheus' client does.
    with urllib.request.urlopen(f"http://{net}.11:10255/metrics", timeout=10) as r:
        families = {f.name: f.type for f in text_string_to_metric_families(r.read().decode())}
    want = {"container_cpu_usage_seconds": "counter",
            "container_memory_working_set_bytes": "gauge",
            "container_spec_memory_limit_bytes": "gauge",
            "container_network_receive_bytes": "counter",
            "container_network_transmit_bytes": "counter",
            "container_oom_events": "counter",
            "kube_pod_container_status_restarts": "counter",
            "container_start_duration_seconds": "histogram",
            "moorage_image_pull_duration_seconds": "histogram",
            "moorage_image_pull_bytes": "counter",
            "node_cpu_seconds": "counter",
            "node_memory_MemAvailable_bytes": "gauge",
            "node_memory_MemTotal_bytes": "gauge",
            "node_filesystem_avail_bytes": "gauge",
            "node_filesystem_size_bytes": "gauge"}
    assert {k: families.get(k) for k in want} == want


def test_describe_node_shows_usage_from_the_agent(setup):
    lab, _, _ = setup
    out = lab.moor("describe", "node", f"{lab.name}-h2")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["Usage:", "(live,", "from", "the", "agent)"] in rows
    cpu = next(r for r in rows if r and r[0] == "cpu")
    assert cpu[1].endswith("m") and cpu[2].endswith("%"), cpu
