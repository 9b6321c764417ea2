"""Reads manifests: strict YAML/JSON documents into validated, defaulted protobuf objects.

Every problem becomes one line naming the file, the document index and the field path, e.g.
`web.yaml[1] spec.template.spec.containers[0].resources.limits.memory: "12XB" is not a quantity`.
All documents are checked before any result is returned, so a caller can reject a whole apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from moorage.manifest import checks, convert, defaults, yamlload
from moorage.manifest.convert import FieldError, describe
from moorage.model import kinds


@dataclass(frozen=True, slots=True)
class Document:
    source: str
    index: int
    obj: object          # a protobuf object, validated and defaulted
    # The document as written, for callers that need to know what the user left out.
    raw: dict

    @property
    def where(self) -> str:
        return f"{self.source}[{self.index}]"


class ManifestError(ValueError):
    """One or more problems, each a full one-line message."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def located(source: str, index: int, err: FieldError | str) -> str:
    where = f"{source}[{index}]"
    if isinstance(err, str):
        return f"{where}: {err}"
    return f"{where} {err.path}: {err.message}" if err.path else f"{where}: {err.message}"


def _duplicates(root, out: list[FieldError]) -> None:
    """Duplicate keys in every mapping of a document; each node is visited once (an aliased
    mapping is reported at the first path it appears at), iteratively."""
    visited: set[int] = set()
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children = []
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                kpath = convert.join(path, str(key))
                if key is not None:
                    if key in seen:
                        line = key_node.start_mark.line + 1
                        out.append(FieldError(kpath, f"duplicate field (line {line})"))
                    seen.add(key)
                children.append((value_node, kpath))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        stack.extend(reversed(children))   # depth first, in document order


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_documents(source: str, text: str, first_index: int = 0
                   ) -> tuple[list[tuple[int, object]], list[str]]:
    """Splits a file into (index, data) documents; empty documents are skipped but counted.

    A single JSON object is taken as one document: `moor` sends each YAML document it read as
    JSON (as kubectl does), which the server parses far faster than YAML.
    """
    if text.startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
            yamlload.check_data(data)
            return [(first_index, data)], []
        except _DuplicateKey as err:
            return [], [f'{source}[{first_index}]: duplicate field "{err}"']
        except (RecursionError, yamlload.TooComplex):
            return [], [f"{source}[{first_index}]: refused: nested more than "
                        f"{yamlload.MAX_DEPTH} levels deep"]
        except ValueError:
            pass  # not JSON after all (YAML flow style); the YAML parser will say what's wrong
    docs, problems = [], []
    index = first_index
    try:
        for loader, node in yamlload.compose_all(text):
            dups: list[FieldError] = []
            _duplicates(node, dups)
            data = loader.construct_document(node)
            if dups:
                problems += [located(source, index, d) for d in dups]
            elif data is not None:
                docs.append((index, data))
            index += 1
    except yamlload.TooComplex as err:
        problems.append(f"{source}[{index}]: refused: {err}")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        problems.append(f"{source}[{index}]: not valid YAML{line}: {what}")
    return docs, problems


def decode(data, path: str = "") -> tuple[list[object], list[FieldError]]:
    """One document's data into objects (a `kind: List` gives several)."""
    errors: list[FieldError] = []
    if not isinstance(data, dict):
        return [], [FieldError(path, f"expected an object with apiVersion and kind, got "
                                     f"{describe(data)}")]
    kind_name, api_version = data.get("kind"), data.get("apiVersion")
    for field, value in (("apiVersion", api_version), ("kind", kind_name)):
        if value is None:
            errors.append(FieldError(convert.join(path, field), "is required"))
        elif not isinstance(value, str):
            errors.append(FieldError(convert.join(path, field),
                                     f"expected a string, got {describe(value)}"))
    if errors:
        return [], errors
    if kind_name == "List" and api_version == "v1":
        items = data.get("items") or []
        if not isinstance(items, list):
            return [], [FieldError(convert.join(path, "items"), "expected a list")]
        objs = []
        for i, item in enumerate(items):
            got, errs = decode(item, f"{convert.join(path, 'items')}[{i}]")
            objs += got
            errors += errs
        return objs, errors
    kind = kinds.BY_NAME.get(kind_name)
    if kind is None:
        served = ", ".join(k.name for k in kinds.KINDS)
        return [], [FieldError(convert.join(path, "kind"),
                               f"{describe(kind_name)} is not a kind Moorage serves "
                               f"(supported: {served})")]
    if api_version != kind.api_version:
        return [], [FieldError(convert.join(path, "apiVersion"),
                               f"{describe(api_version)} is not served for {kind.name}; "
                               f"use {describe(kind.api_version)}")]
    obj = kind.message()
    body = {k: val for k, val in data.items() if k not in ("apiVersion", "kind")}
    meta = body.get("metadata")
    if isinstance(meta, dict):
        # Server-set fields as `moor get -o yaml` prints them: accepted, then replaced.
        body["metadata"] = {k: val for k, val in meta.items()
                            if k not in convert.SERVER_SET_METADATA or k == "resourceVersion"}
    convert.from_dict(body, obj, path, errors)
    obj.api_version, obj.kind = kind.api_version, kind.name
    if not errors:
        if path:
            errors += [FieldError(f"{path}.{e.path}" if e.path else path, e.message)
                       for e in checks.validate(obj)]
        else:
            errors += checks.validate(obj)
    return [obj], errors


def parse(manifests: list[tuple[str, str] | tuple[str, str, int]],
          default_namespace: str = kinds.DEFAULT_NAMESPACE) -> list[Document]:
    """Every document of every (source, text[, first index]) entry, or ManifestError listing
    all problems."""
    problems: list[str] = []
    out: list[Document] = []
    seen: dict[tuple[str, str, str], str] = {}
    for source, text, *first in manifests:
        docs, load_problems = load_documents(source, text, first[0] if first else 0)
        problems += load_problems
        for index, data in docs:
            objs, errors = decode(data)
            problems += [located(source, index, e) for e in errors]
            if errors:
                continue
            for obj in objs:
                kind = kinds.kind_of(obj)
                if kind.namespaced and not obj.metadata.namespace:
                    obj.metadata.namespace = default_namespace
                defaults.default(obj)
                ident = (kind.name, obj.metadata.namespace, obj.metadata.name)
                here = f"{source}[{index}]"
                if ident in seen:
                    problems.append(located(source, index, FieldError(
                        "metadata.name", f"{kind.name.lower()} {describe(obj.metadata.name)} is "
                                         f"also defined in {seen[ident]}")))
                    continue
                seen[ident] = here
                out.append(Document(source, index, obj, data if isinstance(data, dict) else {}))
    if not out and not problems:
        problems.append("no objects found in the given manifests")
    if problems:
        raise ManifestError(problems)
    return out
