"""Benchmark: `moor push` against `docker push` of the same image (busybox and 50 MiB of
incompressible layers) to the same kind of registry (Debian's docker-registry on loopback, a
fresh one for every push, so that nothing is skipped). Target: moor <= 1.0x docker.

Each tool pushes as it works: moor from its store's compressed blobs (what `moor build`
writes), dockerd from its layer store (it compresses on push what it holds uncompressed).
Prints seconds per run (best of --runs) and the ratio; no assertions. As root. Usage:
  python -m bench.push_vs_docker [--mib 50] [--layers 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodeagent.runtime.images.archive import import_archive  # noqa: E402
from nodeagent.runtime.images.store import Store  # noqa: E402
from tests import imagebuild as ib  # noqa: E402
from tests.conftest import stop_process  # noqa: E402
from tests.dockerref import DockerEngine  # noqa: E402
from tests.integration.test_images import Registry  # noqa: E402


def make_image(mib: int, layers: int) -> ib.TestImage:
    per = (mib << 20) // layers
    return ib.make_image([ib.busybox_rootfs()] + [
        [ib.TarEntry(f"data{i}", os.urandom(per))] for i in range(layers)])


def timed_push(work: str, push) -> float:
    """One push to a registry of its own, started and stopped outside the timing."""
    reg_dir = tempfile.mkdtemp(prefix="moortest-benchreg-", dir=work)
    reg = Registry(reg_dir)
    try:
        start = time.perf_counter()
        push(reg.host)
        return time.perf_counter() - start
    finally:
        stop_process(reg.proc)
        shutil.rmtree(reg_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="moortest-bench-push-")
    engine = DockerEngine(os.path.join(work, "dockerd"))
    try:
        image = make_image(args.mib, args.layers)
        size = sum(len(b.data) for b in image.layers)
        build_root = os.path.join(work, "build")
        layout = os.path.join(work, "layout")
        ib.write_oci_layout(layout, image, "bench/push:1")
        store = Store(os.path.join(build_root, "images"))
        (found,) = import_archive(store, layout)
        tarball = os.path.join(work, "image.tar")
        ib.write_docker_save(tarball, image, ["bench/push:1"])
        engine.start()
        engine.load(tarball)
        env = {**os.environ, "DOCKER_CONFIG": os.path.join(work, "docker-config")}

        def moor(host: str) -> None:
            ref = f"{host}/bench/push:1"
            store.add_image(ref, _manifest(store, found))
            subprocess.run([sys.executable, "-m", "builder", "push", "--root", build_root,
                            "-q", ref], check=True, env=env, stdout=subprocess.DEVNULL)

        def docker(host: str) -> None:
            engine.docker("tag", "bench/push:1", f"{host}/bench/push:1")
            engine.docker("push", f"{host}/bench/push:1", timeout=600)

        t_moor = min(timed_push(work, moor) for _ in range(args.runs))
        t_docker = min(timed_push(work, docker) for _ in range(args.runs))
        print(f"image: busybox + {args.layers} layers, {size / 2**20:.1f} MiB of blobs, "
              f"docker {engine.version}, best of {args.runs}")
        print(f"moor push     {t_moor:8.3f} s")
        print(f"docker push   {t_docker:8.3f} s")
        print(f"ratio moor/docker {t_moor / t_docker:6.2f}x (target <= 1.0x)")
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def _manifest(store: Store, image):
    from nodeagent.runtime.images.registry import parse_manifest

    with open(store.blob_path(image.manifest_digest), "rb") as f:
        return parse_manifest(f.read(), image.manifest_digest)


if __name__ == "__main__":
    main()
