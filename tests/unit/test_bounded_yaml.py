"""YAML of any shape costs a bounded time: alias bombs, wide aliases and deep nesting are
refused with one line naming the file and document; ordinary anchors (Compose's `<<: *x`)
still work; duplicate-key detection visits every node once."""

from __future__ import annotations

import time

import pytest

from moorage import manifest
from moorage.manifest import compose, yamlload


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


BOMBS = [
    pytest.param(billion_laughs(), "excessive aliasing", id="10-level-anchors"),
    pytest.param(billion_laughs(7), "excessive aliasing", id="7-level-anchors"),
    pytest.param("x: &x " + "y" * 100 + "\nitems: [" + ",".join(["*x"] * 150_000) + "]\n",
                 "excessive aliasing", id="wide-aliases"),
    pytest.param("m: &m {" + ", ".join(f"k{i}: v" for i in range(500)) + "}\nl: [" +
                 ",".join(["*m"] * 400) + "]\n", "excessive aliasing", id="wide-maps"),
    pytest.param("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than", id="deep-flow"),
    pytest.param("".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n",
                 "nested more than", id="deep-block"),
    pytest.param('{"a":' * 3000 + "1" + "}" * 3000, "nested more than", id="deep-json"),
    pytest.param('{"a":' * 200 + "1" + "}" * 200, "nested more than", id="json-over-budget"),
]


@pytest.mark.parametrize("text, why", BOMBS)
def test_bombs_are_refused_quickly_with_one_line(text, why):
    began = time.perf_counter()
    docs, problems = manifest.load_documents("bomb.yaml", text)
    took = time.perf_counter() - began
    assert not docs
    assert len(problems) == 1 and problems[0].startswith("bomb.yaml[0]: refused: "), problems
    assert why in problems[0]
    assert took < 1.0, f"{took:.2f}s"


@pytest.mark.parametrize("text, why", BOMBS[:4])
def test_compose_and_every_other_reader_refuse_them_too(text, why):
    with pytest.raises(compose.ComposeError) as err:
        compose.translate(text, "st")
    assert why in str(err.value)
    with pytest.raises(yamlload.TooComplex):
        yamlload.safe_load_all(text)


def test_the_document_named_is_the_bomb():
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n" + billion_laughs()
    docs, problems = manifest.load_documents("two.yaml", text)
    assert [i for i, _ in docs] == [0]
    assert problems == ["two.yaml[1]: refused: its aliases expand it to over "
                        f"{yamlload.MAX_EXPANDED_NODES} nodes (excessive aliasing)"]


def test_ordinary_anchors_still_work():
    text = """\
x-common: &common
  image: busybox
  environment: {A: "1"}
services:
  web: {<<: *common, command: ["sleep", "1"]}
  db: *common
"""
    objs = compose.translate(text, "st").objects
    images = sorted(o["spec"]["template"]["spec"]["containers"][0]["image"]
                    for o in objs if o["kind"] == "Deployment")
    assert images == ["busybox", "busybox"]
    shared = "base: &b {app: web}\nlabels: [*b, *b, *b]\n"
    assert yamlload.safe_load(shared)["labels"] == [{"app": "web"}] * 3


def test_duplicates_in_an_aliased_mapping_are_reported_once():
    text = "a: &a {k: 1, k: 2}\nb: [" + ",".join(["*a"] * 1000) + "]\n"
    _, problems = manifest.load_documents("d.yaml", text)
    assert problems == ["d.yaml[0] a.k: duplicate field (line 1)"]


def test_a_recursive_alias_is_refused():
    with pytest.raises(yamlload.TooComplex):
        yamlload.safe_load("a: &a [*a]\n")
