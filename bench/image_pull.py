"""Benchmark: unpacking a layer with our safe extractor, against GNU tar on the same layer.

Prints seconds per run and the ratio to tar; no assertions. Usage:
  python -m bench.image_pull [--files 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodeagent.runtime.images.layers import unpack_layer  # noqa: E402
from tests.imagebuild import TarEntry, busybox_rootfs, layer_tar  # noqa: E402


def build_layer(path: str, files: int) -> int:
    entries = busybox_rootfs()
    entries += [TarEntry(f"usr/share/d{i // 100}", kind="dir") for i in range(0, files, 100)]
    entries += [TarEntry(f"usr/share/d{i // 100}/f{i}", os.urandom(i % 2048)) for i in range(files)]
    data = gzip.compress(layer_tar(entries), compresslevel=6, mtime=0)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def timed(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="moortest-bench-images-")
    try:
        blob = os.path.join(work, "layer.tar.gz")
        size = build_layer(blob, args.files)
        dest = os.path.join(work, "out")

        def ours():
            shutil.rmtree(dest, ignore_errors=True)
            unpack_layer(blob, dest)

        def tar():
            shutil.rmtree(dest, ignore_errors=True)
            os.mkdir(dest)
            subprocess.run(["tar", "-xzf", blob, "-C", dest, "--same-owner", "-p"], check=True)

        t_ours, t_tar = timed(ours, args.runs), timed(tar, args.runs)
        print(f"layer: {args.files} files + busybox rootfs, {size / 1e6:.1f} MB gzipped")
        print(f"unpack_layer  {t_ours:8.3f} s")
        print(f"GNU tar       {t_tar:8.3f} s")
        print(f"ratio ours/tar {t_ours / t_tar:6.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
