"""The build cache: one record per step key under BuildRoot.cache, naming the layer the step
made (its blob stays in the image store) and when, so an unchanged step is reused across builds
and stages.

A step's key chains its parent's key with what the step sees: the layers below it, the
instruction as expanded, the ARGs and ENV in scope (stageconfig's cache_scope), and for COPY and
ADD the checksum of the copied content (not mtimes). A stage's first key is its base's identity:
the config digest of a pulled image, "scratch", or another stage's layers and config.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from moorage.fsutil import write_atomic

_VERSION = 1


def _digest(parts: Sequence[str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()


def image_base_key(config_digest: str) -> str:
    return _digest(["image", config_digest])


SCRATCH_KEY = _digest(["scratch"])


def stage_base_key(diff_ids: Sequence[str], config_doc: dict) -> str:
    """Another stage as a base: its layers and its config, without the timestamps and
    history that differ between two builds of the same content."""
    config = {k: v for k, v in config_doc.items() if k not in ("created", "history")}
    return _digest(["stage", *diff_ids, json.dumps(config, sort_keys=True)])


def step_key(parent: str, diff_ids: Sequence[str], instruction: str, scope: str,
             content: str = "") -> str:
    """The key of one step on top of parent (the previous step's key or the base's)."""
    return _digest(["step", _VERSION, parent, _digest(diff_ids), instruction, scope, content])


@dataclass(frozen=True, slots=True)
class CachedLayer:
    digest: str  # the compressed blob, in the image store
    diff_id: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    layer: CachedLayer | None  # None: the step changed no file (a WORKDIR that existed)
    created: str  # RFC 3339, when the step first ran: the image history's timestamp
    created_by: str = ""

    def to_json(self) -> dict:
        return {"version": _VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict) -> Record:
        layer = doc.get("layer")
        return cls(doc["key"], CachedLayer(**layer) if layer else None, doc.get("created", ""),
                   doc.get("created_by", ""))


class Cache:
    """Records in a directory; a record that cannot be read is a miss, never an error."""

    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key.split(":", 1)[1] + ".json")

    def get(self, key: str) -> Record | None:
        try:
            with open(self._path(key)) as f:
                doc = json.load(f)
            if doc.get("version") != _VERSION or doc.get("key") != key:
                return None
            return Record.from_json(doc)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, record: Record) -> None:
        # Unsynced: a record lost in a crash is only a cache miss next time.
        write_atomic(self._path(record.key), json.dumps(record.to_json()), sync=False)

    def mark(self, probe: str) -> None:
        """Records that a step with this probe (its key without the content checksum) was
        stored (see seen)."""
        path = os.path.join(self.dir, "probes", probe.split(":", 1)[1])
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w"):
                pass

    def seen(self, probe: str) -> bool:
        """False when no step with this probe was ever stored: the step is sure to miss, so
        a COPY can checksum what it copies as it copies it instead of reading it twice."""
        return os.path.exists(os.path.join(self.dir, "probes", probe.split(":", 1)[1]))

    def drop(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
