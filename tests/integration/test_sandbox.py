"""Pod sandboxes are real network namespaces: created once, loopback up, removed cleanly."""

from __future__ import annotations

import os
import subprocess

from nodeagent.pods import sandbox
from nodeagent.runtime.syscalls import LibcSyscalls
from tests.conftest import TEST_PREFIX

SANDBOXES = sandbox.Sandboxes(LibcSyscalls())


def test_sandbox_lifecycle():
    name = sandbox.sandbox_name("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", prefix=TEST_PREFIX)
    assert name == TEST_PREFIX + "0f1e2d3c4b5a"
    try:
        p = SANDBOXES.ensure(name)
        assert SANDBOXES.ensure(name) == p          # idempotent
        assert name in sandbox.existing(TEST_PREFIX)
        out = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        assert "UP" in out or "UNKNOWN" in out
        # Nothing else lives in a new sandbox: its only interface is loopback.
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"],
                               capture_output=True, text=True, check=True).stdout
        assert len(links.strip().splitlines()) == 1
    finally:
        SANDBOXES.remove(name)
    assert name not in sandbox.existing(TEST_PREFIX)
    SANDBOXES.remove(name)                          # removing twice is fine


def test_sandbox_repairs_a_pin_without_namespace_and_loopback_down():
    name = sandbox.sandbox_name("1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", prefix=TEST_PREFIX)
    pin = sandbox.path(name)
    os.makedirs(os.path.dirname(pin), exist_ok=True)
    open(pin, "w").close()          # what a create cut short between its two steps leaves
    try:
        assert SANDBOXES.ensure(name) == pin
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "down"],
                       check=True)
        SANDBOXES.ensure(name)        # an existing namespace gets its loopback back up
        out = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        assert ",UP" in out, out
        # The namespace is not the host's: the host's links are not in it.
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link"],
                               capture_output=True, text=True, check=True).stdout
        assert len(links.strip().splitlines()) == 1
    finally:
        SANDBOXES.remove(name)
    assert not os.path.exists(pin)
