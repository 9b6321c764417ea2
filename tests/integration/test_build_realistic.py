"""`moor build` as an operator coming from Docker uses it, beyond what test_build_vs_docker
compares (tests/buildcases.py's REALISTIC and ESCAPE are built by both there): the realistic
image's output and that it runs, SOURCE_DATE_EPOCH making two builds one image, -q, several -t,
--label, -f outside the context (with its own .dockerignore) and from stdin, --target in any
case; the step headers against docker's BuildKit; then `moor tag`, `moor images` filters and
`moor rmi` of a base that a built image uses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from builder import rootview
from nodeagent.runtime.images.store import Store
from tests import buildcases
from tests import imagebuild as ib
from tests.dockerref import DOCKER, docker_engine  # noqa: F401 - the session's dockerd
from tests.integration.test_build_errors import Root

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root")]

HEADER = re.compile(r"^#\d+ (\[[^\]]*\d+/\d+\] .*)$")
ID_LINE = re.compile(r"^sha256:[0-9a-f]{64}$")


@pytest.fixture
def root():
    r = Root()
    yield r
    r.close()


def moor(root: Root, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_CONFIG": os.path.join(root.dir, "docker-config")}
    return subprocess.run([sys.executable, "-m", "builder", args[0], "--root", root.root,
                           *args[1:]], input=stdin, capture_output=True, text=True, env=env,
                          timeout=120)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    return proc.stdout


def headers(output: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in map(HEADER.match, output.splitlines()) if m))


def store(root: Root) -> Store:
    return Store(os.path.join(root.root, "images"))


def test_realistic_image_output_runs_and_reproduces(root):
    case = buildcases.REALISTIC
    case.write(root.ctx)
    out = ok(root.build(root.ctx, "-t", "real:1", "-t", "reg.moortest.invalid:5000/real:1",
                        "--label", "team=ops", "--build-arg", "VERSION=2.1"))
    heads = headers(out)
    assert [h.split("] ")[0] + "]" for h in heads] == [f"[{i}/6]" for i in range(1, 7)]
    assert heads[0] == "[1/6] FROM docker.io/library/busybox:test"
    assert "# the group too" not in heads[1] and heads[1].endswith("chown 1000:1000 /home/app")
    assert heads[3] == "[4/6] COPY --chown=1000:1000 . ."
    lines = out.splitlines()
    image = store(root).get("real:1")
    assert lines[-4:-1] == [f"Successfully built {image.config_digest[7:19]}",
                            "Successfully tagged real:1",
                            "Successfully tagged reg.moortest.invalid:5000/real:1"]
    lowers = image.layer_dirs()
    path = "/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert rootview.read_file(lowers, "/home/app/whoami") == f"/home/app 1000 {path}\n"
    assert rootview.read_file(lowers, "/home/app/tool.out") == "tool\n"
    assert rootview.read_file(lowers, "/opt/app/VERSION") == "1.0\n"       # ADD unpacked
    assert not rootview.exists(lowers, "/opt/app.tar.gz")
    for gone in ("/app/.git", "/app/pkg/a.pyc", "/app/pkg/sub/b.pyc", "/app/README.md"):
        assert not rootview.exists(lowers, gone), gone
    owner = rootview.lookup(lowers, "/app/pkg/keep.pyc")[1]
    assert (owner.st_uid, owner.st_gid) == (1000, 1000)

    # It runs as its ENTRYPOINT + CMD say (here: as a RUN of an image built on it).
    root.write("Dockerfile", 'FROM real:1\nRUN ["/app/entry.sh", "serve"]\n')
    assert "entry serve" in ok(root.build(root.ctx, "-t", "runs:1"))

    # SOURCE_DATE_EPOCH: one image (ID) from two --no-cache builds, whatever the clock says.
    case.write(root.ctx)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    ids = []
    for mtime in (1_800_000_000, 1_900_000_000):  # after the epoch: clamped to it
        os.utime(os.path.join(root.ctx, "entry.sh"), (mtime, mtime))
        proc = subprocess.run([sys.executable, "-m", "builder", "build", "--root", root.root,
                               "-q", "--no-cache", "-t", "repro:1", root.ctx],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env,
                                   "MOOR_BUILD_CGROUP_ROOT": root.cgroup_root})
        assert proc.returncode == 0, proc.stderr
        assert ID_LINE.match(proc.stdout.strip()) and proc.stdout.count("\n") == 1  # -q
        ids.append(proc.stdout.strip())
    assert ids[0] == ids[1]
    config = store(root).get("repro:1")
    with open(store(root).blob_path(config.config_digest)) as f:
        assert '"created":"2023-11-14T22:13:20Z"' in f.read().replace(" ", "")
    assert root.leftovers() == []


def test_dockerfile_elsewhere_from_stdin_and_target(root):
    elsewhere = os.path.join(root.dir, "dockerfiles")
    os.makedirs(elsewhere)
    dockerfile = os.path.join(elsewhere, "app.Dockerfile")
    with open(dockerfile, "w") as f:
        f.write("FROM busybox:test AS Base\nCOPY . /ctx/\nFROM base AS test\nRUN ls /ctx\n"
                "FROM base\nRUN echo final > /final\n")
    with open(dockerfile + ".dockerignore", "w") as f:  # beside it: wins over the context's
        f.write("secret\n")
    root.write(".dockerignore", "kept-by-the-other\n")
    root.write("secret", "s\n")
    root.write("kept-by-the-other", "k\n")
    out = ok(root.build(root.ctx, "-f", dockerfile, "--target", "TEST", "-t", "else:test"))
    assert headers(out) == ["[base 1/2] FROM docker.io/library/busybox:test",
                            "[base 2/2] COPY . /ctx/", "[test 1/1] RUN ls /ctx"]
    lowers = store(root).get("else:test").layer_dirs()
    assert rootview.exists(lowers, "/ctx/kept-by-the-other")
    assert not rootview.exists(lowers, "/ctx/secret")
    assert not rootview.exists(lowers, "/final")

    proc = moor(root, "build", "-q", "-f", "-", "-t", "stdin:1", root.ctx,
                stdin="FROM busybox:test\nRUN echo from-stdin > /s\n")
    assert ID_LINE.match(ok(proc).strip())
    assert rootview.read_file(store(root).get("stdin:1").layer_dirs(), "/s") == "from-stdin\n"
    bad = moor(root, "build", "-f", "-", root.ctx, stdin="FROM busybox:test\nNOPE\n")
    assert bad.returncode == 1 and bad.stderr == "error: Dockerfile:2: unknown instruction: NOPE\n"

    lower = os.path.join(root.dir, "lower")  # only a `dockerfile`: docker takes it
    os.makedirs(lower)
    with open(os.path.join(lower, "dockerfile"), "w") as f:
        f.write("FROM busybox:test\nRUN echo lower > /lower\n")
    ok(root.build(lower, "-t", "lower:1"))
    assert rootview.read_file(store(root).get("lower:1").layer_dirs(), "/lower") == "lower\n"


def test_step_headers_match_docker(root, docker_engine):  # noqa: F811
    dockerfile = ("FROM busybox:test AS base\n" + "".join(f"RUN echo {i}\n" for i in range(10))
                  + "ENV A=1\nFROM scratch AS tools\nCOPY --from=base /bin/busybox /bb\n"
                  "FROM base\nRUN echo last\nCOPY --from=tools /bb /df\n")
    root.write("Dockerfile", dockerfile)
    docker_engine.load(ib.busybox_tar(root.dir, repo_tags=(buildcases.BASE,)))
    want = subprocess.run([DOCKER, "build", "--network", "host", "--progress", "plain",
                           "--no-cache", root.ctx], capture_output=True, text=True,
                          env=docker_engine.env(True), timeout=300)
    assert want.returncode == 0, want.stderr[-2000:]
    got = ok(root.build(root.ctx, "-t", "steps:1"))
    # Stages side by side print in either order; FROM scratch or a stage is no step.
    assert sorted(headers(got)) == sorted(headers(want.stderr))
    assert "[base 10/11] RUN echo 8" in headers(got)
    assert "[tools 1/1] COPY --from=base /bin/busybox /bb" in headers(got)


def test_tag_images_filters_and_rmi_of_a_used_base(root):
    root.write("Dockerfile", "FROM busybox:test\nLABEL tier=web\nRUN echo child > /child\n")
    ok(root.build(root.ctx, "-t", "child:1"))
    assert ok(moor(root, "tag", "child:1", "reg.moortest.invalid:5000/team/child:2")) == ""
    bad = moor(root, "tag", "nope:1", "x:1")
    assert (bad.returncode, bad.stderr) == (1, "Error response from daemon: No such image: "
                                               "nope:1\n")

    def rows(*args: str) -> list[list[str]]:
        return [line.split()[:2] for line in ok(moor(root, "images", *args)).splitlines()[1:]]

    assert rows("--filter", "label=tier=web") == [["child", "1"],
                                                  ["reg.moortest.invalid:5000/team/child", "2"]]
    assert rows("-f", "reference=*/team/*") == [["reg.moortest.invalid:5000/team/child", "2"]]
    assert rows("busy*") == [["busybox", "test"]]
    assert rows("-f", "dangling=true") == []

    # The base goes by name; what was built on it keeps its layers and builds on.
    assert ok(moor(root, "rmi", "busybox:test")) == "Untagged: busybox:test\n"
    assert [r[0] for r in rows()] == ["child", "reg.moortest.invalid:5000/team/child"]
    root.write("Dockerfile", "FROM child:1\nRUN cat /child /bin/busybox > /dev/null\n")
    ok(root.build(root.ctx, "-t", "grandchild:1"))
    root.write("Dockerfile", "FROM busybox:test\n")
    proc = root.build(root.ctx, "-t", "again:1")
    assert proc.returncode == 1 and proc.stderr.startswith(
        "error: Dockerfile:1: pulling docker.io/library/busybox:test: ")
    assert len(proc.stderr.splitlines()) == 1
    assert root.leftovers() == []
