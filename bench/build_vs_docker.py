"""Build and push against Docker: one Dockerfile built by `moor build` and by `docker build`
(BuildKit and the legacy builder of Debian's docker.io 20.10), cold and warm; and one 50 MiB
image pushed by `moor push` and by `docker push` to the same real docker-registry.

The Dockerfile has two stages: the first generates 2000 files and 4 MiB of random bytes in
RUN steps; the second COPYs a context of 3000 small files (30 directories) and 3 x 8 MiB
random files, RUNs over them, and COPY --from's the first stage's output. Every builder sees
the same context and the same busybox base (tests/imagebuild.py, loaded into each before the
clock starts).

- cold: caches cleared before each run: a fresh moor build root (busybox imported into it
  first); for Docker every image removed, `docker builder prune -af`, busybox loaded again;
- warm: the same build again, nothing changed, right after a cold one;
- push: an image of busybox + 50 MiB of random (incompressible) bytes, built by each side
  with its own builder, pushed to a docker-registry with fresh storage for every run
  (`docker push` gzips the layer as it goes; moor's layer was compressed when it was built).

Each figure is the median of 3 runs, from the CLI's start to its exit. Targets (the issue's):
moor <= 1.0x BuildKit, cold and warm; moor push <= 1.0x docker push. A missed target is
printed, not an error. The dockerd is the tests' reference engine (tests/dockerref.py) under
a temp dir, and everything started is stopped and removed at the end.

Run as root: python bench/build_vs_docker.py
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from controlplane.store.local import free_port_block, stop_process  # noqa: E402
from tests import imagebuild  # noqa: E402
from tests.dockerref import (  # noqa: E402
    DOCKER,
    DOCKERD,
    DockerEngine,
    EngineError,
    import_into_root,
    moor_build,
)

PREFIX = "moorbench-"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SMALL_FILES = 3000
BIG_FILES = 3
BIG_BYTES = 8 << 20
PUSH_BYTES = 50 << 20
TARGET = 1.0
BASE = "busybox:test"
REGISTRY_BIN = "/usr/bin/docker-registry"

DOCKERFILE = f"""\
FROM {BASE} AS gen
RUN mkdir -p /gen && i=0 && while [ $i -lt 2000 ]; do echo "generated $i" > /gen/f$i; \\
    i=$((i+1)); done
RUN dd if=/dev/urandom of=/gen/random bs=1M count=4 2>/dev/null

FROM {BASE}
COPY small/ /app/small/
COPY big/ /app/big/
RUN find /app -type f | wc -l > /app/count && cat /app/big/* | md5sum > /app/big.md5
COPY --from=gen /gen /app/gen
RUN cat /app/gen/f1 /app/count > /app/summary
ENV APP_HOME=/app
WORKDIR /app
CMD ["sh"]
"""

PUSH_DOCKERFILE = f"FROM {BASE}\nCOPY blob /blob\n"


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def write_context(path: str) -> None:
    os.makedirs(path)
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    for i in range(SMALL_FILES):
        d = os.path.join(path, "small", f"d{i % 30}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(os.urandom(200 + i % 1800))
    os.makedirs(os.path.join(path, "big"))
    for i in range(BIG_FILES):
        with open(os.path.join(path, "big", f"big{i}"), "wb") as f:
            f.write(os.urandom(BIG_BYTES))


def write_push_context(path: str) -> None:
    os.makedirs(path)
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(PUSH_DOCKERFILE)
    with open(os.path.join(path, "blob"), "wb") as f:
        f.write(os.urandom(PUSH_BYTES))


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class Moor:
    """`moor build` and `moor push` (python -m builder) with build roots under work/."""

    def __init__(self, work: str, base_tar: str):
        self.work, self.base_tar = work, base_tar
        self.root = ""
        self.n = 0

    def fresh_root(self) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
        self.n += 1
        self.root = os.path.join(self.work, f"moor-root-{self.n}")
        os.makedirs(self.root)
        import_into_root(self.root, self.base_tar)

    def build(self, context: str, tag: str) -> None:
        out = moor_build(self.root, context, tag)
        if out.returncode != 0:
            raise RuntimeError(f"moor build: {(out.stderr or out.stdout).strip()[-300:]}")

    def push(self, name: str, registry: str) -> None:
        out = subprocess.run([sys.executable, "-m", "builder", "push", "--root", self.root,
                              "--insecure-registry", registry, "-q", name],
                             capture_output=True, text=True, cwd=ROOT, timeout=600,
                             stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(f"moor push: {(out.stderr or out.stdout).strip()[-300:]}")

    def close(self) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def docker_cold(engine: DockerEngine, base_tar: str) -> None:
    engine.prune()
    engine.load(base_tar)


def bench_builds(engine: DockerEngine, moor: Moor, base_tar: str, context: str,
                 results: dict, errors: dict) -> None:
    builders = {
        "moor": (lambda: moor.fresh_root(), lambda: moor.build(context, "bench/app:1")),
        "buildkit": (lambda: docker_cold(engine, base_tar),
                     lambda: engine.build(context, "bench/app:1", buildkit=True)),
        "legacy": (lambda: docker_cold(engine, base_tar),
                   lambda: engine.build(context, "bench/app:1", buildkit=False)),
    }
    for run in range(RUNS):
        for name, (clear, build) in builders.items():
            if name in errors:
                continue
            try:
                clear()
                cold = timed(build)
                warm = timed(build)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                errors[name] = str(err).splitlines()[0][:200]
                note(f"{name}: {errors[name]}")
                continue
            results.setdefault(("cold", name), []).append(cold)
            results.setdefault(("warm", name), []).append(warm)
            note(f"run {run + 1}: {name} cold {cold:.2f} s, warm {warm:.2f} s")


def start_registry(port: int, data: str) -> subprocess.Popen:
    """Debian's docker-registry on 127.0.0.1:port, storing under data (fresh each run)."""
    config = data + ".yml"
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("docker-registry did not answer GET /v2/")


def bench_push(engine: DockerEngine, moor: Moor, base_tar: str, work: str,
               results: dict, errors: dict) -> str:
    """Returns the registry's name and version."""
    context = os.path.join(work, "push-context")
    write_push_context(context)
    port = free_port_block(1)
    host = f"127.0.0.1:{port}"
    name = f"{host}/bench/push:1"
    sides = {}
    try:
        moor.fresh_root()
        moor.build(context, name)
        sides["moor"] = lambda: moor.push(name, host)
    except RuntimeError as err:
        errors["moor push"] = str(err).splitlines()[0][:200]
    docker_cold(engine, base_tar)
    engine.build(context, name, buildkit=True)
    # 127.0.0.0/8 is an insecure registry to dockerd by default.
    sides["docker"] = lambda: engine.docker("push", name, timeout=600)
    for run in range(RUNS):
        for side, push in sides.items():
            if f"{side} push" in errors:
                continue
            data = os.path.join(work, f"registry-{side}-{run}")
            reg = start_registry(port, data)
            try:
                seconds = timed(push)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                errors[f"{side} push"] = str(err).splitlines()[0][:200]
                continue
            finally:
                stop_process(reg)
                shutil.rmtree(data, ignore_errors=True)
            results.setdefault(("push", side), []).append(seconds)
            note(f"run {run + 1}: {side} push {seconds:.2f} s")
    out = subprocess.run([REGISTRY_BIN, "--version"], capture_output=True, text=True).stdout
    return f"docker-registry {out.split()[-1]}" if out.split() else "docker-registry"


def fmt(x: float | None) -> str:
    return f"{x:.2f} s" if x is not None else "n/a"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> int:
    if os.geteuid() != 0:
        print("build_vs_docker: needs root (builds run containers); skipped")
        return 0
    if not os.path.exists(DOCKERD) or not os.path.exists(DOCKER):
        print("build_vs_docker: needs Debian's docker.io (apt-get install docker.io); skipped")
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    load = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix=PREFIX + "build-")
    engine = DockerEngine(os.path.join(work, "dockerd"), cgroup_parent=PREFIX + "build-docker")
    moor = None
    results: dict = {}
    errors: dict = {}
    registry = "docker-registry"
    try:
        base_tar = imagebuild.busybox_tar(work, repo_tags=(BASE,))
        context = os.path.join(work, "context")
        write_context(context)
        moor = Moor(work, base_tar)
        try:
            engine.start()
        except EngineError as err:
            print(f"build_vs_docker: dockerd cannot run here: {err}; skipped")
            return 0
        bench_builds(engine, moor, base_tar, context, results, errors)
        if os.path.exists(REGISTRY_BIN):
            registry = bench_push(engine, moor, base_tar, work, results, errors)
        else:
            errors["push"] = f"{REGISTRY_BIN} is not installed"
    finally:
        engine.stop()
        if moor:
            moor.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"# moor build vs docker build (dockerd {engine.version}, BuildKit and legacy): one "
          f"Dockerfile, 2 stages, 4 RUN, 3 COPY + 1 COPY --from, a context of {SMALL_FILES} "
          f"small files and {BIG_FILES} x {BIG_BYTES >> 20} MiB; median of {RUNS}; "
          f"{os.cpu_count()} CPUs, load {load:.1f} at start")
    for name, err in errors.items():
        print(f"# {name}: {err}")
    for kind in ("cold", "warm"):
        m, k, leg = (median(results.get((kind, n), [])) for n in ("moor", "buildkit", "legacy"))
        print(f"{kind}: moor {fmt(m)}, docker BuildKit {fmt(k)}, legacy {fmt(leg)}, "
              f"ratio moor/BuildKit {ratio(m, k)} (target <= {TARGET}x)")
    m, d = median(results.get(("push", "moor"), [])), median(results.get(("push", "docker"), []))
    print(f"push {PUSH_BYTES >> 20} MiB image (incompressible) to {registry}, fresh storage each "
          f"run: moor {fmt(m)}, docker {fmt(d)}, ratio moor/docker {ratio(m, d)} "
          f"(target <= {TARGET}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
