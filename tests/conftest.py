"""Shared fixtures: a real etcd per session, a store per test under its own key prefix, and a
session-end check that fails the run if anything named with the test prefix is left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid

import aetcd
import pytest

from controlplane.etcd_local import LocalEtcd
from controlplane.store import Store

# Everything a test creates (temp dirs, netns, links, cgroups) carries this in its name, so the
# session-end check can find leftovers.
TEST_PREFIX = "moortest-"


def unique(name: str = "") -> str:
    return f"{TEST_PREFIX}{name}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def etcd_endpoint():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "etcd-")
    etcd = LocalEtcd(tmp).start()
    yield etcd.endpoint
    etcd.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tmp_state():
    path = tempfile.mkdtemp(prefix=TEST_PREFIX)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def etcd_client(endpoint: str) -> aetcd.Client:
    host, port = endpoint.rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=10)


@pytest.fixture
def store_factory(etcd_endpoint):
    """Makes Stores under a fresh key prefix, closed at the end (use inside asyncio.run)."""
    prefix = "/" + unique()

    async def make() -> Store:
        client = etcd_client(etcd_endpoint)
        await client.connect()
        return Store(client, prefix=prefix)

    yield make


def run(coro):
    return asyncio.run(coro)


# ---- leftovers ----

def _leftovers() -> list[str]:
    found = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if TEST_PREFIX in cmd:
            found.append(f"process {pid}: {cmd[:120]}")
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found += [f"netns {line.split()[0]}" for line in out.splitlines() if TEST_PREFIX in line]
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += [f"link {line.split(':')[1].strip()}" for line in out.splitlines()
                  if TEST_PREFIX.rstrip("-") in line]
    except FileNotFoundError:
        pass
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if TEST_PREFIX in line]
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if TEST_PREFIX in d:
                found.append(f"cgroup {os.path.join(root, d)}")
        if root.count("/") > 6:
            dirs[:] = []
    return found


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return
    left = _leftovers()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "tests left these behind:\n  " + "\n  ".join(left)
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = 1
