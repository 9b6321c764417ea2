"""YAML with bounded cost: every document is checked, as composed and before anything expands
it, against a budget of nodes (aliases counted as often as they are used) and of nesting depth.

A YAML alias refers to a node by reference, so ten levels of ten aliases each compose to a
few dozen nodes but expand to ten billion on any walk or serialisation. Like Go's yaml
library ("excessive aliasing"), documents whose aliases expand past the budget are refused
with one line naming the document; the check itself visits every composed node once.
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A document that uses aliases may expand to at most this many nodes (a large Kubernetes list
# is a few tens of thousands); one without aliases is bounded by its size alone.
MAX_EXPANDED_NODES = 100_000
# Kubernetes objects nest about 15 levels deep; Compose files fewer.
MAX_DEPTH = 100


class Loader(_BaseLoader):
    """SafeLoader without YAML 1.1 timestamps: Kubernetes keeps `2024-01-01T00:00:00Z` a
    string."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


class TooComplex(ValueError):
    """A document over the node or depth budget; the message says which and by how much."""


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_node(root) -> None:
    """Raises TooComplex when the document at `root` nests deeper than MAX_DEPTH or, through
    its aliases, expands to more than MAX_EXPANDED_NODES. Iterative, and each distinct node is
    visited once (its expanded size is remembered), so the check costs what composing did."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    shared = False
    # Post-order over distinct nodes: (node, children visited?).
    stack: list[tuple[object, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[key] > MAX_DEPTH:
                raise TooComplex(f"nested more than {MAX_DEPTH} levels deep")
            if shared and size[key] > MAX_EXPANDED_NODES:
                raise TooComplex(f"its aliases expand it to over {MAX_EXPANDED_NODES} nodes "
                                 "(excessive aliasing)")
            continue
        if key in size:
            shared = True
            continue
        if key in on_path:
            raise TooComplex("an alias refers to a node that contains it")
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in size or id(kid) in on_path:
                shared = True
            stack.append((kid, False))
    if shared and size[id(root)] > MAX_EXPANDED_NODES:
        raise TooComplex(f"its aliases expand it to over {MAX_EXPANDED_NODES} nodes "
                         "(excessive aliasing)")


def check_data(data) -> None:
    """The depth budget for data that came from JSON (which has no aliases)."""
    stack = [(data, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            raise TooComplex(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)


def compose_all(text: str) -> Iterator[tuple[Loader, object]]:
    """(loader, node) for each document, each checked by `check_node`; the caller constructs
    the data with `loader.construct_document(node)`. yaml.YAMLError and TooComplex propagate."""
    loader = Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            check_node(node)
            yield loader, node
    finally:
        loader.dispose()


def safe_load_all(text: str) -> list:
    """Every document's data (None for an empty one), within the budgets."""
    return [loader.construct_document(node) for loader, node in compose_all(text)]


def safe_load(text: str):
    """The single document's data (None when empty), within the budgets."""
    docs = safe_load_all(text)
    if len(docs) > 1:
        raise yaml.YAMLError("expected a single document, but found several")
    return docs[0] if docs else None
