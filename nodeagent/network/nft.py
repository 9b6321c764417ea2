"""The agent's one way to run nftables: `nft` with a script on stdin, in this namespace or in
the network namespace at a path (started from a thread that entered it: runtime/netns.py)."""

from __future__ import annotations

import subprocess

from nodeagent.runtime.netns import on_thread

NFT = "nft"
TIMEOUT_SECONDS = 30.0


def run(args: list[str], script: str | None = None,
        netns_path: str | None = None) -> subprocess.CompletedProcess:
    """`nft ARGS`, fed `script`; the completed process (the caller checks returncode)."""
    def call() -> subprocess.CompletedProcess:
        return subprocess.run([NFT, *args], input=script, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS)
    if netns_path is None:
        return call()
    return on_thread(call, netns_path, TIMEOUT_SECONDS + 5)
