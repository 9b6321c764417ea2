"""A Compose service's `build:` section: what `moor stack deploy --build` builds and pushes
before deploying (Swarm's `docker stack deploy` ignores `build`).

Pure: `parse` reads `build: ./dir` or `{context, dockerfile, args, target, labels}` into a Build
(paths made absolute against the Compose file's directory, as Compose resolves them);
`command` is the builder's command line for it. A cluster pulls every image from a registry, so
a service with `build:` must name in `image:` where the build is pushed; Compose's default
name `<project>-<service>` would exist only on the machine that built it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from moorage.manifest.composeproblems import NOT_SUPPORTED, Problems

BUILD_KEYS = {"context", "dockerfile", "args", "target", "labels"}
_REMOTE = ("http://", "https://", "git://", "git@", "ssh://", "github.com/")


@dataclass(frozen=True, slots=True)
class Build:
    service: str
    image: str
    context: str  # absolute
    dockerfile: str | None  # absolute; None: the context's Dockerfile
    args: tuple[tuple[str, str | None], ...] = ()  # None: taken from the environment
    target: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


def scalar(v) -> str:
    """A Compose scalar as a string: YAML's booleans as Compose writes them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def key_values(value, where: str, problems: Problems) -> list[tuple[str, str | None]]:
    """Compose's two ways of writing KEY=VALUE entries (environment, args, labels): a list of
    `K=V` or bare `K` (value None), or a map whose null values are None."""
    if isinstance(value, Mapping):
        return [(str(k), None if v is None else scalar(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [(k, v if sep else None) for k, sep, v in (str(i).partition("=") for i in value)]
    if value is not None:
        problems.add(where, "want a list of KEY=VALUE or a map")
    return []


def _pairs(value, where: str, problems: Problems, allow_bare: bool
           ) -> list[tuple[str, str | None]]:
    """`[K=V, K]` or `{K: V, K: null}`; a bare K (no value) only where `allow_bare`."""
    out = []
    pairs = key_values(value, where, problems)
    for k, v in pairs:
        if not k:
            problems.add(where, "an entry needs a name")
        elif v is None and not allow_bare:
            problems.add(f"{where}.{k}", "needs a value")
        else:
            out.append((k, v))
    return out


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(path if posixpath.isabs(path) else os.path.join(base, path))


def parse(name: str, svc: Mapping, directory: str, problems: Problems) -> Build | None:
    """The service's build, or None (without `build:`, or with problems added)."""
    if "build" not in svc:
        return None
    path = f"services.{name}.build"
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    if not isinstance(build, Mapping):
        problems.add(path, "want a context directory or a mapping with context, dockerfile, "
                     "args, target, labels")
        return None
    before = len(problems.items)
    for key in build:
        if key not in BUILD_KEYS and not str(key).startswith("x-"):
            problems.add(f"{path}.{key}", NOT_SUPPORTED)
    context = build.get("context", ".")
    if not isinstance(context, str) or not context:
        problems.add(f"{path}.context", "want a directory")
        context = "."
    elif context.startswith(_REMOTE):
        problems.add(f"{path}.context", f"{context!r}: a remote context is {NOT_SUPPORTED}; "
                     "give a directory")
    context = _absolute(context, directory)
    dockerfile = build.get("dockerfile")
    if dockerfile is not None and (not isinstance(dockerfile, str) or not dockerfile):
        problems.add(f"{path}.dockerfile", "want a file name (relative to the context)")
        dockerfile = None
    target = build.get("target")
    if target is not None and (not isinstance(target, str) or not target):
        problems.add(f"{path}.target", "want a stage name")
        target = None
    args = _pairs(build.get("args"), f"{path}.args", problems, allow_bare=True)
    labels = _pairs(build.get("labels"), f"{path}.labels", problems, allow_bare=False)
    image = svc.get("image")
    if not isinstance(image, str) or not image:
        problems.add(f"services.{name}.image", "required with build: the registry name to "
                     f"push the build to and to run from (e.g. registry.cluster.local:5000/"
                     f"{name}:1); every node pulls it from there")
    if len(problems.items) > before:
        return None
    return Build(name, image, context,
                 _absolute(dockerfile, context) if dockerfile else None,
                 tuple(args), target, tuple((k, v or "") for k, v in labels))


def command(build: Build, python: str) -> list[str]:
    """`python -m builder build -t IMAGE [-f ...] [--build-arg ...] [--target ...] [--label
    ...] --push CONTEXT`. A bare build arg is passed bare: the builder takes its value from
    the environment, as `docker build --build-arg K` does."""
    argv = [python, "-m", "builder", "build", "-t", build.image]
    if build.dockerfile:
        argv += ["-f", build.dockerfile]
    for k, v in build.args:
        argv += ["--build-arg", k if v is None else f"{k}={v}"]
    if build.target:
        argv += ["--target", build.target]
    for k, v in build.labels:
        argv += ["--label", f"{k}={v}"]
    return [*argv, "--push", build.context]
