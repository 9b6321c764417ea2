"""Agent metrics counted as things happen (a container start, an image pull), served on the
agent's /metrics next to what nodeagent/metrics/collector.py reads at scrape time. Registered in no
registry here, so importing this module has no side effect on the default one."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

START_DURATION = Histogram(
    "container_start_duration_seconds",
    "From the agent deciding to start a container to the runtime reporting it started "
    "(includes an image pull when one was needed).", registry=None,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
IMAGE_PULL_DURATION = Histogram(
    "moorage_image_pull_duration_seconds", "Time to pull an image, by result (ok, error).",
    ["result"], registry=None,
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
IMAGE_PULL_BYTES = Counter(
    "moorage_image_pull_bytes", "Bytes of image layers downloaded from registries.",
    registry=None)
EVENT_METRICS = (START_DURATION, IMAGE_PULL_DURATION, IMAGE_PULL_BYTES)


def pull_progress():
    """A Progress callback for Store.pull that counts each layer's downloaded bytes once."""
    done: dict[str, int] = {}

    def progress(p) -> None:
        was = done.get(p.digest, 0)
        if p.done > was:
            IMAGE_PULL_BYTES.inc(p.done - was)
            done[p.digest] = p.done
    return progress


@contextmanager
def timed_pull():
    """Times an image pull into IMAGE_PULL_DURATION under result ok or error."""
    start = time.perf_counter()
    result = "error"
    try:
        yield
        result = "ok"
    finally:
        IMAGE_PULL_DURATION.labels(result).observe(time.perf_counter() - start)
