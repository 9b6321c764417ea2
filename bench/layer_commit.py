"""What one build step's layer costs: builder.layers.from_upper on a 50 MiB upper dir of a few
thousand real files (copied from /usr/lib: Python modules and shared libraries), next to GNU
`tar czf` of the same dir and to `tar cf | sha256sum` (what Docker's builders pay: they keep
layers uncompressed and compress only when pushing), then images.commit with the blob unpacked
into the store against the upper dir adopted as it is. Also 20,000 small files.

Run as root (layers keep owners): `python bench/layer_commit.py`. Prints one line per measure;
the best of three runs each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from builder import images, layers  # noqa: E402
from nodeagent.runtime.images.store import Store  # noqa: E402

SOURCES = (("/usr/lib/python3", 25 << 20), ("/usr/lib/x86_64-linux-gnu", 50 << 20))
MAX_FILE = 4 << 20
RUNS = 3


def copy_tree(dest: str) -> tuple[int, int]:
    total = files = 0
    for src, cap in SOURCES:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path) or \
                        os.path.getsize(path) > MAX_FILE:
                    continue
                out = os.path.join(dest, os.path.basename(src), os.path.relpath(path, src))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                shutil.copy2(path, out)
                total += os.path.getsize(path)
                files += 1
                if total >= cap:
                    break
            if total >= cap:
                break
    return total, files


def best(fn) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def shell(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    top = tempfile.mkdtemp(prefix="moortest-benchlayer-")
    try:
        upper = f"{top}/upper"
        total, files = copy_tree(upper)
        mib = total / (1 << 20)
        print(f"upper dir: {mib:.0f} MiB in {files} files; {os.cpu_count()} CPUs")
        out = f"{top}/out"
        for level in (layers.GZIP_LEVEL, 6):
            os.environ[layers.GZIP_LEVEL_ENV] = str(level)
            t = best(lambda: layers.from_upper(upper, out))
            layer = layers.from_upper(upper, out)
            print(f"from_upper gzip -{level}: {t:.2f}s  {mib / t:.0f} MiB/s  "
                  f"blob {layer.size / (1 << 20):.1f} MiB")
        os.environ.pop(layers.GZIP_LEVEL_ENV)
        t_from = best(lambda: layers.from_upper(upper, out))
        t_tgz = best(lambda: shell(f"tar czf {top}/t.tgz -C {upper} ."))
        t_tar = best(lambda: shell(f"tar cf - -C {upper} . | sha256sum"))
        print(f"tar czf: {t_tgz:.2f}s  {mib / t_tgz:.0f} MiB/s   from_upper/tar czf = "
              f"{t_from / t_tgz:.2f}x")
        print(f"tar cf | sha256sum: {t_tar:.2f}s  {mib / t_tar:.0f} MiB/s   from_upper/that = "
              f"{t_from / t_tar:.2f}x")
        for adopt in (False, True):
            shutil.rmtree(f"{top}/store", ignore_errors=True)
            shutil.rmtree(f"{top}/copy", ignore_errors=True)
            shell(f"cp -a {upper} {top}/copy")
            store = Store(f"{top}/store")
            t0 = time.perf_counter()
            layer = layers.from_upper(f"{top}/copy", out, adopt=adopt)
            t1 = time.perf_counter()
            images.commit(store, {"architecture": "amd64", "os": "linux", "config": {}},
                          [layer], None)
            t2 = time.perf_counter()
            print(f"layer + commit, {'adopted' if adopt else 'unpacked'}: {t2 - t0:.2f}s "
                  f"(from_upper {t1 - t0:.2f}s, commit {t2 - t1:.2f}s)")
        small = f"{top}/small"
        for i in range(200):
            os.makedirs(f"{small}/d{i:03}")
            for j in range(100):
                with open(f"{small}/d{i:03}/f{j:03}.txt", "w") as f:
                    f.write(f"file {i} {j}\n" * 20)
        t_small = best(lambda: layers.from_upper(small, out))
        t_small_tgz = best(lambda: shell(f"tar czf {top}/s.tgz -C {small} ."))
        print(f"20200 small entries: from_upper {t_small:.2f}s, tar czf {t_small_tgz:.2f}s  "
              f"= {t_small / t_small_tgz:.2f}x")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
