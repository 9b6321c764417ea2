"""What is wrong with a Compose file, gathered for one report: each problem is a line naming
the file and the key's path, as the Compose readers (services, configs, secrets) find them."""

from __future__ import annotations

from collections.abc import Mapping

NOT_SUPPORTED = "not supported by Moorage"


class Problems:
    def __init__(self, source: str):
        self.source, self.items = source, []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}")

    def unsupported(self, path: str, allowed: set[str], mapping: Mapping) -> None:
        for key in mapping:
            if key not in allowed and not str(key).startswith("x-"):
                self.add(f"{path}.{key}", NOT_SUPPORTED)
