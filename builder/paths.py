"""Where the build machine keeps its images, build cache, build containers and registry
settings: one root, `MOOR_BUILD_ROOT` or `--root`, by default /var/lib/moorage/build.

  images/           an image store (the agent's format: blobs, unpacked layers, references)
  cache/            the build cache: one record per step key
  containers/       the containers RUN steps run in (removed after each step)
  work/             per-build scratch (overlay upper dirs, layer tars being written)
  registries.json   mirrors, insecure registries and credentials for push and pull
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_ROOT = "/var/lib/moorage/build"
ROOT_ENV = "MOOR_BUILD_ROOT"


@dataclass(frozen=True, slots=True)
class BuildRoot:
    root: str

    @classmethod
    def from_args(cls, root: str | None) -> BuildRoot:
        return cls(os.path.abspath(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT))

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def cache(self) -> str:
        return os.path.join(self.root, "cache")

    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def work(self) -> str:
        return os.path.join(self.root, "work")

    @property
    def registries(self) -> str:
        return os.path.join(self.root, "registries.json")
