"""Compose `build:` (moorage/manifest/composebuild.py) and `moor stack deploy --build`'s
side of it (moorage/cli/stack.py build_all): what is built, the builder's command line, and
that a failed build stops the deploy."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from moorage.cli import stack
from moorage.cli.errors import CliError
from moorage.manifest import composebuild
from moorage.manifest.compose import ComposeError, translate

DIR = "/srv/app"


def builds(text: str) -> list[composebuild.Build]:
    return translate(textwrap.dedent(text), "moortest-b", source=f"{DIR}/compose.yaml",
                     directory=DIR).builds


def problems(text: str) -> list[str]:
    with pytest.raises(ComposeError) as err:
        translate(textwrap.dedent(text), "moortest-b", directory=DIR)
    return err.value.problems


def test_short_form_is_the_context_relative_to_the_file():
    (b,) = builds("services: {web: {build: ./web, image: reg:5000/web:1}}")
    assert b == composebuild.Build("web", "reg:5000/web:1", "/srv/app/web", None)
    assert composebuild.command(b, "py") == ["py", "-m", "builder", "build", "-t",
                                             "reg:5000/web:1", "--push", "/srv/app/web"]


@pytest.mark.parametrize("args, want", [
    pytest.param("[A=1, B, 'C=x=y']", [("A", "1"), ("B", None), ("C", "x=y")], id="list"),
    pytest.param("{A: 1, B: null, D: true}", [("A", "1"), ("B", None), ("D", "true")],
                 id="map"),
])
def test_long_form(args, want):
    (b,) = builds(f"""\
        services:
          api:
            image: reg:5000/api:2
            build:
              context: ../src
              dockerfile: docker/Dockerfile.api
              args: {args}
              target: runtime
              labels: {{team: core}}
        """)
    assert b.context == "/srv/src" and b.dockerfile == "/srv/src/docker/Dockerfile.api"
    assert list(b.args) == want and b.target == "runtime" and b.labels == (("team", "core"),)
    argv = composebuild.command(b, "py")
    assert argv[:6] == ["py", "-m", "builder", "build", "-t", "reg:5000/api:2"]
    assert argv[6:8] == ["-f", "/srv/src/docker/Dockerfile.api"]
    assert argv[argv.index("B") - 1:argv.index("B") + 1] == ["--build-arg", "B"]
    assert argv[-5:] == ["runtime", "--label", "team=core", "--push", "/srv/src"]


def test_the_build_is_not_an_object_and_the_image_is_deployed():
    t = translate("services: {web: {build: ., image: reg:5000/web:1}}", "moortest-b",
                  directory=DIR)
    (d,) = [o for o in t.objects if o["kind"] == "Deployment"]
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "reg:5000/web:1"


@pytest.mark.parametrize("build, want", [
    pytest.param("{context: ., cache_from: [x]}",
                 "services.web.build.cache_from: not supported by Moorage", id="unknown-key"),
    pytest.param("https://github.com/x/y.git",
                 "services.web.build.context: 'https://github.com/x/y.git': a remote context "
                 "is not supported by Moorage; give a directory", id="remote"),
    pytest.param("{context: ., labels: [team]}", "services.web.build.labels.team: needs a value",
                 id="label-without-value"),
    pytest.param("{context: ., args: 3}", "services.web.build.args: want a list of KEY=VALUE "
                 "or a map", id="args"),
    pytest.param("[a]", "services.web.build: want a context directory or a mapping",
                 id="not-a-mapping"),
    pytest.param("{context: ., target: ''}", "services.web.build.target: want a stage name",
                 id="empty-target"),
])
def test_bad_build_sections(build, want):
    got = problems(f"services: {{web: {{image: reg:5000/web:1, build: {build}}}}}")
    assert len(got) == 1 and want in got[0], got


class Ran:
    def __init__(self, codes):
        self.codes, self.argv = list(codes), []

    def __call__(self, argv):
        self.argv.append(argv)
        return subprocess.CompletedProcess(argv, self.codes.pop(0))


def test_build_all_builds_each_once_and_stops_at_the_first_failure(capsys):
    bs = builds("""\
        services:
          web: {build: ./web, image: reg:5000/web:1}
          worker: {build: ./web, image: reg:5000/web:1}
          api: {build: ./api, image: reg:5000/api:1}
          db: {build: ./db, image: reg:5000/db:1}
        """)
    ran = Ran([0, 3])
    with pytest.raises(CliError) as err:
        stack.build_all(bs, "compose.yaml", run=ran)
    assert [a[-1] for a in ran.argv] == ["/srv/app/web", "/srv/app/api"]
    assert str(err.value) == ("error: compose.yaml: services.api.build: the build of "
                              "reg:5000/api:1 failed (exit 3); nothing was deployed")
    assert capsys.readouterr().out.splitlines() == [
        "building services.web: reg:5000/web:1 from /srv/app/web",
        "building services.api: reg:5000/api:1 from /srv/app/api"]


def test_build_all_without_builds_says_so(capsys):
    stack.build_all([], "compose.yaml", run=Ran([]))
    assert capsys.readouterr().out == "note: compose.yaml: --build: no service has build:\n"
