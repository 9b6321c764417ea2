"""Starts, owns and stops a local single-member etcd (the control plane's default store).

The child dies with its parent (PR_SET_PDEATHSIG), keeps its data under the given directory,
and reuses the ports it chose the first time, because etcd records its peer URL in its data.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
# Big enough for one multi-object apply (the API caps a request below this).
MAX_REQUEST_BYTES = 8 * 1024 * 1024
MAX_TXN_OPS = 4096


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (a control plane uses port .. port + 3)."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LocalEtcd:
    data_dir: str
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    process: subprocess.Popen | None = None
    log_path: str = ""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> LocalEtcd:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.path.exists(binary):
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        ports_file = os.path.join(self.data_dir, "ports.json")
        if not (self.client_port and self.peer_port) and os.path.exists(ports_file):
            with open(ports_file) as f:
                saved = json.load(f)
            self.client_port, self.peer_port = saved["client"], saved["peer"]
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        with open(ports_file, "w") as f:
            json.dump({"client": self.client_port, "peer": self.peer_port}, f)
        client_url = f"http://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        args = [
            binary, "--name", "moorage", "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"moorage={peer_url}",
            "--max-request-bytes", str(MAX_REQUEST_BYTES), "--max-txn-ops", str(MAX_TXN_OPS),
            "--logger", "zap", "--log-outputs", self.log_path,
        ]
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        # A panic goes to stderr, not the zap log: keep it next to the log for diagnosis.
        with open(os.path.join(self.data_dir, "etcd.stderr"), "ab") as stderr:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                preexec_fn=_die_with_parent, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see "
                                   f"{self.log_path} and etcd.stderr beside it")
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as resp:
                    if json.load(resp).get("health") in ("true", True):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, timeout)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not started)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class EtcdLost(RuntimeError):
    """The local etcd died and could not be brought back; the message says why, in a line."""


# Restarts allowed within RESTART_WINDOW_SECONDS before the control plane gives up (and exits,
# so that systemd restarts it and an operator sees why).
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 120.0
RESTART_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0)
WATCH_SECONDS = 0.2


async def supervise(etcd: LocalEtcd, log, on_restart=lambda: None) -> None:
    """Keeps the control plane's own etcd running: when the child exits (kill -9, a crash) it
    is reaped and started again on the same data dir and ports, with back-off. Raises EtcdLost
    when it cannot be brought back; runs until cancelled otherwise."""
    import asyncio

    restarts: list[float] = []
    while True:
        proc = etcd.process
        if proc is None or proc.poll() is None:
            await asyncio.sleep(WATCH_SECONDS)
            continue
        log.warning("the local etcd (pid %d) exited with %s; starting it again on its data dir",
                    proc.pid, _exit_text(proc.returncode))
        etcd.process = None
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_SECONDS] + [now]
        if len(restarts) > MAX_RESTARTS:
            raise EtcdLost(f"the local etcd died {len(restarts)} times in "
                           f"{RESTART_WINDOW_SECONDS:.0f}s; giving up (see {etcd.log_path})")
        last = ""
        for delay in RESTART_BACKOFF_SECONDS:
            try:
                await asyncio.to_thread(etcd.start)
                break
            except RuntimeError as err:
                last = str(err)
                log.warning("restarting the local etcd failed: %s; retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
        else:
            raise EtcdLost(f"the local etcd exited and could not be started again "
                           f"({len(RESTART_BACKOFF_SECONDS)} attempts): {last}")
        on_restart()
        log.info("the local etcd is running again (pid %d)", etcd.process.pid)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
