""".dockerignore with Docker's rules: reading, cleaning, wildcards, `**`, exceptions (the last
match wins), parent matches, and when a walk must enter an excluded directory."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.dockerignore import (
    DockerignoreError,
    Matcher,
    ignore_file_candidates,
    read_patterns,
)


def test_read_patterns_cleans_and_keeps_line_numbers():
    text = "\ufeff# comment\n  # not a comment\n\n /abs/path/ \n!./a/../b\n./x//y\n"
    assert read_patterns(text) == [("# not a comment", 2), ("abs/path", 4), ("!b", 5),
                                   ("x/y", 6)]


def test_comment_only_in_column_one():
    m = Matcher.from_text("#a\n #b\n")
    assert not m.excluded("#a")
    assert m.excluded("#b")


@pytest.mark.parametrize("pattern, path, want", [
    ("foo", "foo", True),
    ("foo", "foo/bar/baz", True),       # a parent match counts
    ("foo", "a/foo", False),            # anchored at the root
    ("/foo", "foo", True),
    ("foo/", "foo/x", True),
    ("*.md", "README.md", True),
    ("*.md", "docs/a.md", False),       # * does not cross /
    ("*/*.md", "docs/a.md", True),
    ("**/*.md", "a/b/c.md", True),
    ("**/*.md", "c.md", True),
    ("a/**", "a/b/c", True),
    ("a/**", "ab", False),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "a/b/c/zz", False),
    ("**", "anything/at/all", True),
    ("temp?", "temp1", True),
    ("temp?", "temp/", False),
    ("temp?", "temp12", False),
    ("[ab].txt", "a.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[^ab].txt", "c.txt", True),
    ("[a-c]x", "bx", True),
    ("file\\*", "file*", True),
    ("file\\*", "fileX", False),
    ("a.b", "aXb", False),               # . is literal
    ("(x)+", "(x)+", True),
    ("./build", "build/out", True),
    ("x/../y", "y", True),
])
def test_single_pattern(pattern, path, want):
    assert Matcher([pattern]).excluded(path) is want


def test_root_is_never_excluded():
    assert not Matcher(["*", "**"]).excluded(".")
    assert not Matcher(["*"]).excluded("")


def test_exceptions_last_match_wins():
    m = Matcher.from_text("*.md\n!README.md\nREADME-secret.md\n")
    assert m.excluded("CHANGES.md")
    assert not m.excluded("README.md")
    assert m.excluded("README-secret.md")
    m = Matcher.from_text("!README.md\n*.md\n")  # the exception comes first: nothing left
    assert m.excluded("README.md")


def test_docs_example_of_the_reference():
    m = Matcher.from_text("*/temp*\n*/*/temp*\ntemp?\n")
    assert m.excluded("somedir/temporary.txt")
    assert m.excluded("somedir/temp")
    assert m.excluded("somedir/subdir/temporary.txt")
    assert m.excluded("tempa")
    assert not m.excluded("temporary.txt")


def test_exception_inside_an_excluded_directory():
    m = Matcher.from_text("docs\n!docs/keep.md\n")
    assert m.excluded("docs")
    assert m.excluded("docs/other.md")
    assert not m.excluded("docs/keep.md")
    assert m.may_descend("docs")


def test_exception_of_a_whole_directory_brings_back_its_contents():
    m = Matcher.from_text("vendor\n!vendor/keep\n")
    assert not m.excluded("vendor/keep/a/b")
    assert m.excluded("vendor/drop/a")


@pytest.mark.parametrize("patterns, directory, want", [
    (["node_modules"], "node_modules", False),           # no exception at all
    (["docs", "!docs/keep.md"], "docs", True),
    (["docs", "!other/keep.md"], "docs", False),
    (["*", "!*/keep"], "anything", True),
    (["*", "!src/*/keep"], "src", True),
    (["*", "!src/*/keep"], "src/x", True),
    (["*", "!src/*/keep"], "lib", False),
    (["*", "!**/keep"], "a/b/c", True),
    (["*", "!a"], "a/b", True),                           # a parent is brought back
    (["*", "!a/b/c"], "a/x", False),
])
def test_may_descend(patterns, directory, want):
    assert Matcher(patterns).may_descend(directory) is want


@pytest.mark.parametrize("text, message", [
    ("ok\n[a\n", ".dockerignore:2: syntax error in pattern: '[a'"),
    ("!\n", ".dockerignore:1: illegal exclusion pattern: \"!\": '!'"),
    ("a]\n", ".dockerignore:1: syntax error in pattern: 'a]'"),
    ("[]a\n", ".dockerignore:1: syntax error in pattern: '[]a'"),
    ("x\\\n", ".dockerignore:1: syntax error in pattern: 'x\\\\'"),
])
def test_bad_patterns(text, message):
    with pytest.raises(DockerignoreError) as exc:
        Matcher.from_text(text)
    assert str(exc.value) == message


def test_ignore_file_candidates():
    assert ignore_file_candidates("Dockerfile.dev") == ["Dockerfile.dev.dockerignore",
                                                         ".dockerignore"]


# -- properties -----------------------------------------------------------------------------

_name = st.text(alphabet="abcxyz.-_", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
_path = st.lists(_name, min_size=1, max_size=4).map("/".join)


@given(_path, _path)
def test_a_matched_directory_excludes_everything_below(directory, rest):
    m = Matcher([directory])
    assert m.excluded(directory)
    assert m.excluded(directory + "/" + rest)


@given(_path)
def test_an_exception_of_the_same_path_restores_it(path):
    assert not Matcher([path, "!" + path]).excluded(path)


@given(st.lists(_name, min_size=1, max_size=4), st.lists(_name, min_size=0, max_size=3))
def test_double_star_prefix_matches_at_any_depth(prefix, tail):
    name = tail[-1] if tail else prefix[-1]
    path = "/".join(prefix + tail)
    assert Matcher(["**/" + name]).excluded(path)


@given(st.text(alphabet="ab*?", min_size=1, max_size=5), _name)
def test_single_component_agrees_with_fnmatch(pattern, name):
    # within one path component, * and ? mean what fnmatch means
    assert Matcher([pattern]).excluded(name) is fnmatch.fnmatchcase(name, pattern) or \
        "**" in pattern


@given(st.lists(st.sampled_from(["a", "a/b", "*", "!a/b", "!a", "**/c", "!**/c", "b"]),
                max_size=5), _path)
def test_may_descend_never_misses_a_re_included_path(patterns, path):
    m = Matcher(patterns)
    parts = path.split("/")
    for i in range(1, len(parts)):
        directory = "/".join(parts[:i])
        if m.excluded(directory) and not m.excluded(path):
            assert m.may_descend(directory)
