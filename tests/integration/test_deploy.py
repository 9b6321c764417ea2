"""deploy/ and the Vagrantfile, checked with the tools that will run them: `vagrant validate`,
`bash -n`, `systemd-analyze verify` and `promtool check config` (make test installs vagrant and
prometheus; systemd-analyze comes with systemd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import TEST_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
UNITS = sorted(os.path.join(DEPLOY, "systemd", n) for n in os.listdir(
    os.path.join(DEPLOY, "systemd")))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (make test installs it)")
    return path


@pytest.fixture
def dotfile():
    # vagrant keeps machine state in .vagrant/; keep it out of the checkout.
    path = tempfile.mkdtemp(prefix=TEST_PREFIX + "vagrant-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Debian has no VirtualBox, and vagrant refuses to validate for a provider it cannot find:
# its settings block is checked with --ignore-provider, the libvirt one in full.
@pytest.mark.parametrize("flags, workers", [
    pytest.param((), "2", id="libvirt"),
    pytest.param(("--ignore-provider",), "3", id="any-provider-3-workers"),
])
def test_vagrant_validate(dotfile, flags, workers):
    vagrant = _need("vagrant")
    env = dict(os.environ, VAGRANT_DOTFILE_PATH=dotfile, VAGRANT_DEFAULT_PROVIDER="libvirt",
               MOORAGE_WORKERS=workers, VAGRANT_CHECKPOINT_DISABLE="1")
    out = subprocess.run([vagrant, "validate", *flags], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout
    status = subprocess.run([vagrant, "status"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    machines = [line.split()[0] for line in status.stdout.splitlines() if "not created" in line]
    assert machines == ["cp"] + [f"w{i}" for i in range(1, int(workers) + 1)], status.stdout


def test_install_script_parses():
    out = subprocess.run(["bash", "-n", os.path.join(DEPLOY, "install.sh")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.access(os.path.join(DEPLOY, "install.sh"), os.X_OK)


def test_install_script_refuses_without_a_role():
    out = subprocess.run(["bash", os.path.join(DEPLOY, "install.sh")], capture_output=True,
                         text=True)
    assert out.returncode != 0
    assert "--role" in out.stderr


def test_systemd_units_verify():
    analyze = _need("systemd-analyze")
    out = subprocess.run([analyze, "verify", *UNITS], capture_output=True, text=True)
    # The venv's commands exist only once install.sh ran; anything else is a real problem.
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()
                and "/opt/moorage/venv/bin/" not in line]
    assert problems == []


def test_agent_unit_leaves_containers_running():
    with open(os.path.join(DEPLOY, "systemd", "moorage-agent.service")) as f:
        unit = f.read()
    assert "\nKillMode=process\n" in unit


def test_prometheus_config_checks():
    promtool = _need("promtool")
    out = subprocess.run([promtool, "check", "config", os.path.join(DEPLOY, "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
