"""`moor build --push` given bad input (issue 16's "Bad input"): each case fails with ONE line on
stderr naming the Dockerfile line, exits non-zero, pushes nothing to a real docker-registry (its
catalog stays empty) and leaves nothing behind: no image record or tag, no container, no mount,
no cgroup, no work dir. And a context's symlink pointing outside it is copied as a symlink,
never followed out."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field

import pytest

from builder import rootview
from nodeagent.runtime.cgroups import remove_parent
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.store import Store
from nodeagent.runtime.runtime import Runtime
from tests import imagebuild
from tests.conftest import TEST_PREFIX, stop_process, unique
from tests.integration.test_images import REGISTRY_BIN, Registry

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs real containers: needs root"),
    pytest.mark.skipif(not os.path.exists(REGISTRY_BIN), reason="needs docker-registry"),
]


@dataclass(frozen=True)
class Bad:
    name: str
    dockerfile: str
    stderr: str  # the one line, {ctx} for the context dir; ending in "..." for a prefix
    files: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    context: str = "ctx"  # relative to the test's dir: what is passed as CONTEXT


CASES = [
    Bad("unknown-instruction", "FROM busybox:test\nRUN true\nFOO bar\n",
        "error: Dockerfile:3: unknown instruction: FOO"),
    Bad("copy-dotdot", "FROM busybox:test\nCOPY ../outside /x\n",
        "error: Dockerfile:2: COPY failed: forbidden path outside the build context: "
        "../outside"),
    Bad("copy-through-dotdot", "FROM busybox:test\nCOPY sub/../../outside /x\n",
        "error: Dockerfile:2: COPY failed: forbidden path outside the build context: "
        "sub/../../outside", files={"sub/a": "a\n"}),
    Bad("add-dotdot", "FROM busybox:test\nWORKDIR /w\nADD ../../etc/passwd ./\n",
        "error: Dockerfile:3: ADD failed: forbidden path outside the build context: "
        "../../etc/passwd"),
    Bad("copy-absolute-outside", "FROM busybox:test\nCOPY /etc/passwd /x\n",
        "error: Dockerfile:2: COPY failed: file not found in build context or excluded by "
        ".dockerignore: stat /etc/passwd: file does not exist"),
    Bad("copy-missing", "FROM busybox:test\nRUN true\nCOPY nothere /x\n",
        "error: Dockerfile:3: COPY failed: file not found in build context or excluded by "
        ".dockerignore: stat nothere: file does not exist"),
    Bad("copy-ignored", "FROM busybox:test\nCOPY secret.txt /x\n",
        "error: Dockerfile:2: COPY failed: file not found in build context or excluded by "
        ".dockerignore: stat secret.txt: file does not exist",
        files={"secret.txt": "s\n", ".dockerignore": "secret.txt\n"}),
    # Not a stage: an image, pulled, as Docker does; no network here, so the end of the line
    # (the resolver's words) is the machine's.
    Bad("from-missing-stage",
        "FROM busybox:test AS build\nRUN true\nFROM busybox:test\nCOPY --from=buidl /x /x\n",
        "error: Dockerfile:4: COPY --from=buidl: no stage of that name, and the image: pulling "
        "docker.io/library/buidl:latest: ..."),
    Bad("from-stage-missing-path",
        "FROM busybox:test AS build\nFROM busybox:test\nCOPY --from=build /etc/nothere /x\n",
        "error: Dockerfile:3: COPY --from=build failed: file not found in that stage or image: "
        "stat /etc/nothere: file does not exist"),
    Bad("from-stage-index", "FROM busybox:test\nCOPY --from=3 /x /x\n",
        "error: Dockerfile:2: COPY --from=3: there is no stage 3 (the Dockerfile has 1)"),
    Bad("cycle-later-stage",
        "FROM busybox:test AS a\nCOPY --from=b /x /x\nFROM busybox:test AS b\n"
        "COPY --from=a /x /x\n",
        'error: Dockerfile:2: cannot copy from stage "b", it needs to be defined before '
        'current stage "a" (a stage cannot copy from a later stage)'),
    Bad("cycle-itself", "FROM busybox:test AS a\nCOPY --from=a /x /x\n",
        'error: Dockerfile:2: cannot copy from stage "a", it needs to be defined before '
        'current stage "a" (a stage cannot copy from itself)'),
    Bad("arg-without-value-in-from", "ARG BASE\nFROM $BASE\nRUN true\n",
        "error: Dockerfile:2: base name ($BASE) should not be blank"),
    Bad("arg-empty-from-cli", "ARG BASE=busybox:test\nFROM ${BASE}\n",
        "error: Dockerfile:2: base name (${BASE}) should not be blank",
        args=("--build-arg", "BASE=")),
    Bad("json-cmd", 'FROM busybox:test\nCMD ["sh", \n',
        "error: Dockerfile:2: malformed JSON in exec form: Expecting value"),
    Bad("json-run", 'FROM busybox:test\nRUN ["echo" "a"]\n',
        "error: Dockerfile:2: malformed JSON in exec form: Expecting ',' delimiter"),
    Bad("json-entrypoint-not-strings", 'FROM busybox:test\nENTRYPOINT ["sh", 1]\n',
        "error: Dockerfile:2: malformed JSON in exec form: when using JSON array syntax, "
        "arrays must be comprised of strings only"),
    Bad("context-is-a-file", "FROM busybox:test\n",
        'error: unable to prepare context: path "{ctx}/Dockerfile" is not a directory',
        context="ctx/Dockerfile"),
    Bad("context-missing", "FROM busybox:test\n",
        'error: unable to prepare context: path "{ctx}/nothere" not found',
        context="ctx/nothere"),
    Bad("failing-run",
        "FROM busybox:test\nRUN echo ok > /ok\nRUN echo partial > /p && false\n",
        'error: Dockerfile:3: process "/bin/sh -c echo partial > /p && false" did not '
        "complete successfully: exit code: 1"),
    Bad("failing-run-exec-form", 'FROM busybox:test\nRUN ["/bin/nothere", "x"]\n',
        'error: Dockerfile:2: process "/bin/nothere x" could not be started: exec: '
        '"/bin/nothere": no such file or directory'),
    Bad("run-as-unknown-user", "FROM busybox:test\nUSER nobodyx\nRUN true\n",
        'error: Dockerfile:3: process "/bin/sh -c true" could not be started: unable to find '
        "user nobodyx: no matching entries in passwd file"),
    Bad("run-as-unknown-group", "FROM busybox:test\nUSER nobody:staffx\nRUN true\n",
        'error: Dockerfile:3: process "/bin/sh -c true" could not be started: unable to find '
        "group staffx: no matching entries in group file"),
    Bad("add-url", "FROM busybox:test\nADD https://example.com/app.tar.gz /opt/\n",
        "error: Dockerfile:2: ADD from a URL is not supported: no network may be reachable "
        "from builds; download it into the context and COPY it"),
    Bad("missing-target", "FROM busybox:test AS build\n",
        'error: target stage "tset" could not be found', args=("--target", "tset")),
    # Decided: a --push name without a registry would go to Docker Hub; refused before
    # building (write docker.io/NAME to mean it).
    Bad("push-without-registry", "FROM busybox:test\nRUN true\n",
        "error: --push: 'web:1' names no registry, so it would go to Docker Hub: name one "
        "(REGISTRY[:PORT]/web:1), or write docker.io/web:1 to mean Docker Hub",
        args=("-t", "web:1")),
    Bad("chown-unknown-user", "FROM busybox:test\nCOPY --chown=nobodyhere a /a\n",
        "error: Dockerfile:2: unable to convert uid/gid chown string to host mapping: can't "
        "find uid for 'nobodyhere': no such entry in the image's /etc/passwd",
        files={"a": "a\n"}),
]


class Root:
    """A build root (/tmp/moortest-builderr-*) with busybox:test, its context dir ctx/."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=TEST_PREFIX + "builderr-")
        self.root = os.path.join(self.dir, "root")
        self.ctx = os.path.join(self.dir, "ctx")
        os.makedirs(self.ctx)
        self.cgroup_root = unique("builderr-")
        import_archive(Store(os.path.join(self.root, "images")),
                       imagebuild.busybox_tar(self.dir, ("busybox:test",)))

    def write(self, rel: str, text: str) -> None:
        path = os.path.join(self.ctx, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def build(self, context: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "MOOR_BUILD_CGROUP_ROOT": self.cgroup_root,
               "DOCKER_CONFIG": os.path.join(self.dir, "docker-config")}
        return subprocess.run([sys.executable, "-m", "builder", "build", "--root", self.root,
                               *args, context], capture_output=True, text=True, timeout=120,
                              env=env)

    def records(self) -> list[str]:
        return sorted(i.reference for i in Store(os.path.join(self.root, "images")).list())

    def leftovers(self) -> list[str]:
        found = []
        for sub in ("containers", "work"):
            path = os.path.join(self.root, sub)
            if os.path.isdir(path):
                found += [f"{sub}/{n}" for n in os.listdir(path) if not n.startswith(".")]
        with open("/proc/mounts") as f:
            found += [f"mount {ln.split()[1]}" for ln in f if self.dir in ln]
        for ctl in os.listdir("/sys/fs/cgroup"):
            if os.path.isdir(os.path.join("/sys/fs/cgroup", ctl, self.cgroup_root)):
                found.append(f"cgroup {ctl}/{self.cgroup_root}")
        return found

    def close(self) -> None:
        Runtime(os.path.join(self.root, "containers"), cgroup_root=self.cgroup_root).remove_all()
        remove_parent(self.cgroup_root)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def registry():
    tmp = tempfile.mkdtemp(prefix=TEST_PREFIX + "builderr-reg-")
    reg = Registry(tmp)
    yield reg
    stop_process(reg.proc)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def root():
    r = Root()
    yield r
    r.close()


def catalog(reg: Registry) -> list[str]:
    with urllib.request.urlopen(f"http://{reg.host}/v2/_catalog", timeout=10) as resp:
        return json.load(resp)["repositories"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_leaves_nothing(root, registry, case):
    root.write("Dockerfile", case.dockerfile)
    for rel, text in case.files.items():
        root.write(rel, text)
    before = root.records()
    name = f"{registry.host}/moortest/bad:1"
    proc = root.build(os.path.join(root.dir, case.context), "-t", name, "-t", name + "-again",
                      "--push", "--insecure-registry", registry.host, *case.args)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    want = case.stderr.replace("{ctx}", root.ctx)
    if want.endswith("..."):
        assert lines[0].startswith(want[:-3]), lines[0]
    else:
        assert lines[0] == want
    assert "The push refers to" not in proc.stdout
    assert catalog(registry) == []
    assert root.records() == before  # no image, no tag
    assert root.leftovers() == []


def test_symlinks_out_of_the_context_stay_symlinks(root):
    outside = os.path.join(root.dir, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("outside\n")
    root.write("Dockerfile", "FROM busybox:test\nCOPY . /ctx/\nCOPY dir/ /dir/\n")
    root.write("dir/file", "in\n")
    links = {"abs": outside + "/secret", "up": "../outside/secret", "dir/updir": "../../outside",
             "etc": "/etc"}
    for rel, target in links.items():
        os.symlink(target, os.path.join(root.ctx, rel))
    proc = root.build(root.ctx, "-t", "links:1")
    assert proc.returncode == 0, proc.stderr
    lowers = Store(os.path.join(root.root, "images")).get("links:1").layer_dirs()
    for rel, target in links.items():
        for dest in (f"/ctx/{rel}",) + ((f"/dir/{rel[4:]}",) if rel.startswith("dir/") else ()):
            path, st = rootview.lookup(lowers, dest, follow_last=False)
            assert stat.S_ISLNK(st.st_mode) and os.readlink(path) == target, dest
    assert not rootview.exists(lowers, "/ctx/outside")
    # A source through such a link resolves inside the context (Docker's scope): not found.
    for source in ("abs", "etc/passwd", "dir/updir/secret"):
        root.write("Dockerfile", f"FROM busybox:test\nCOPY {source} /x\n")
        proc = root.build(root.ctx, "-t", "links:2")
        assert proc.returncode != 0
        assert proc.stderr == ("error: Dockerfile:2: COPY failed: file not found in build "
                               "context or excluded by .dockerignore: stat "
                               f"{source}: file does not exist\n")
    assert root.leftovers() == []
