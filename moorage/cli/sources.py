"""Reads the manifest files named by `-f` (files, directories, stdin) for apply, diff and delete."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from moorage.cli.errors import CliError

# One apply is one etcd transaction and one gRPC message; both have limits a little above this.
MAX_APPLY_BYTES = 3 * 1024 * 1024
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"


@dataclass(frozen=True, slots=True)
class Source:
    name: str       # the path as the user gave it (or joined onto it), or <stdin>
    content: str

    @property
    def size(self) -> int:
        return len(self.content.encode("utf-8"))


def read_sources(paths: list[str], recursive: bool = False, stdin=None) -> list[Source]:
    """Every manifest file under `paths`, in order; directories contribute their sorted files."""
    sources: list[Source] = []
    for path in paths:
        if path == "-":
            stream = stdin if stdin is not None else sys.stdin
            sources.append(Source(STDIN_NAME, stream.read()))
        elif os.path.isdir(path):
            files = _directory_files(path, recursive)
            if not files:
                hint = "" if recursive else "; use -R to include subdirectories"
                raise CliError(f'error: the path "{path}" has no manifests '
                               f"({', '.join('*' + s for s in MANIFEST_SUFFIXES)}){hint}")
            sources.extend(_read_file(f) for f in files)
        else:
            sources.append(_read_file(path))
    return sources


def _directory_files(path: str, recursive: bool) -> list[str]:
    def wanted(name: str) -> bool:
        return name.lower().endswith(MANIFEST_SUFFIXES) and not name.startswith(".")

    if not recursive:
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise _read_error(path, exc) from None
        return [os.path.join(path, n) for n in names
                if wanted(n) and os.path.isfile(os.path.join(path, n))]
    found = []
    for root, dirs, names in os.walk(path):
        # Sorted in place so the walk itself, and therefore the apply order, is stable.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(names) if wanted(n))
    return found


def _read_file(path: str) -> Source:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise _read_error(path, exc) from None
    try:
        text = data.decode("utf-8-sig")  # editors on Windows like to add a BOM
    except UnicodeDecodeError as exc:
        raise CliError(f'error: the path "{path}" is not UTF-8 text (byte {exc.start})') from None
    return Source(path, text)


def _read_error(path: str, exc: OSError) -> CliError:
    if isinstance(exc, FileNotFoundError):
        return CliError(f'error: the path "{path}" does not exist')
    reason = (exc.strerror or str(exc)).lower()
    return CliError(f'error: cannot read the path "{path}": {reason}')


def format_mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def check_size(sources: list[Source], limit: int = MAX_APPLY_BYTES) -> None:
    """Refuses an apply the server would reject anyway, before sending megabytes to it."""
    total = sum(s.size for s in sources)
    if total > limit:
        raise CliError(f"error: the manifests are {format_mib(total)} in total, over the "
                       f"{limit // (1024 * 1024)} MiB limit of one apply; "
                       "split them into several applies")


def to_manifests(sources: list[Source]):
    """One Manifest per document, as JSON, numbered within its file (kubectl also reads YAML
    itself and sends JSON). YAML syntax errors and duplicate fields are reported here; every
    other check is the server's."""
    import json

    from moorage.manifest import load_documents
    from moorage.v1 import api_pb2

    out, problems = [], []
    for s in sources:
        docs, found = load_documents(s.name, s.content)
        problems += found
        for index, data in docs:
            if _json_safe(data):
                content = json.dumps(data, separators=(",", ":"))
            else:  # e.g. a non-string key: let the server's YAML path report it precisely
                import yaml

                content = yaml.safe_dump(data)
            out.append(api_pb2.Manifest(source=s.name, index=index, content=content))
    if problems:
        raise CliError("\n".join(f"error: {p}" for p in problems))
    return out


def _json_safe(data) -> bool:
    if isinstance(data, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in data.items())
    if isinstance(data, list):
        return all(_json_safe(v) for v in data)
    return data is None or isinstance(data, (str, int, float, bool))


@dataclass(frozen=True, slots=True)
class Reference:
    kind: str
    namespace: str   # empty when the manifest does not say
    name: str
    where: str       # `web.yaml[1]`, for error messages


def object_references(sources: list[Source]) -> list[Reference]:
    """Kind, namespace and name of every document, for `delete -f` (which needs no full parse)."""
    import yaml

    from moorage.manifest import yamlload

    refs: list[Reference] = []
    for source in sources:
        try:
            documents = yamlload.safe_load_all(source.content)
        except yamlload.TooComplex as exc:
            raise CliError(f"error: {source.name}: refused: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "cannot be parsed"
            raise CliError(f"error: {source.name}: not valid YAML{line}: {problem}") from None
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            where = f"{source.name}[{index}]"
            items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" \
                else [doc]
            if not isinstance(items, list):
                raise CliError(f"error: {where}: items must be a list")
            refs.extend(_reference(item, where) for item in items)
    return refs


def _reference(doc, where: str) -> Reference:
    if not isinstance(doc, dict):
        raise CliError(f"error: {where}: expected an object with kind and metadata")
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(kind, str) or not kind:
        raise CliError(f"error: {where}: kind is missing")
    if not isinstance(name, str) or not name:
        raise CliError(f"error: {where}: metadata.name is missing")
    namespace = metadata.get("namespace") or ""
    if not isinstance(namespace, str):
        raise CliError(f"error: {where}: metadata.namespace must be a string")
    return Reference(kind, namespace, name, where)
