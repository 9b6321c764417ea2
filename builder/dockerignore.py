"""`.dockerignore` with Docker's rules (moby/patternmatcher, which BuildKit, the CLI and buildx
share). Pure: patterns in, answers out.

Reading (`read_patterns`): a line starting with `#` in column 1 is a comment (`  # x` is the
pattern `# x`); each line is trimmed, a leading `!` makes it an exception, the rest is cleaned
as Go's filepath.Clean does and one leading `/` is dropped. A lone `!` is an error.

Matching (`Matcher.excluded`): patterns are anchored at the context root and a pattern that
matches a parent directory matches everything below it (`foo` excludes `foo/bar`, not
`a/foo`). `*` is any run of characters but `/`, `?` one character but `/`, `**` any number of
directories (`**/x`, `a/**`, `a/**/b`), `[...]` a class as in Go's filepath.Match, `\\` escapes.
The lines are read in order and the last one that matches decides: an exclusion applies only
while the path is included, an exception only while it is excluded.

Walking: a directory that is excluded may still hold a path an exception brings back;
`Matcher.may_descend(dir)` says whether a walk must enter it (conservatively: it may answer yes
for a directory with nothing to bring back, never no for one that has). A walk that enters one
sends a re-included file's parent directories too.

The Dockerfile and the ignore file are read by the builder whatever the patterns say; the
patterns decide only what COPY and ADD see of the context, as in Docker (which sends both and
drops them from the context when they are excluded).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from builder.errors import BuildError

IGNORE_FILE = ".dockerignore"


class DockerignoreError(BuildError):
    pass


def ignore_file_candidates(dockerfile: str) -> list[str]:
    """Where the ignore file may be, in order of precedence, relative to where each name is
    looked up: `<Dockerfile name>.dockerignore` beside the Dockerfile (Docker's
    Dockerfile-specific ignore file), then `.dockerignore` at the context root."""
    return [dockerfile + IGNORE_FILE, IGNORE_FILE]


def clean(path: str) -> str:
    """Go's path.Clean for a slash-separated path ("" is ".")."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out = posixpath.normpath(path)
    if rooted and out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


def normalize(pattern: str) -> str:
    """One pattern as the ignore file's reader leaves it: trimmed, cleaned, one leading "/"
    dropped, a leading "!" kept ("" for a blank line)."""
    pattern = pattern.strip()
    invert = pattern.startswith("!")
    if invert:
        pattern = pattern[1:].strip()
    if pattern:
        pattern = clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    return "!" + pattern if invert else pattern


def read_patterns(text: str, path: str = IGNORE_FILE) -> list[tuple[str, int]]:
    """The patterns of an ignore file's text, each with its line number."""
    out: list[tuple[str, int]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if number == 1:
            line = line.removeprefix("\ufeff")
        if line.startswith("#") or not line.strip():
            continue
        out.append((normalize(line), number))
    return out


# -- one pattern ----------------------------------------------------------------------------

_ESCAPED = set(".+()|{}$")  # regex specials with no meaning in filepath.Match


def _check_syntax(pattern: str) -> None:
    """Raise ValueError where Go's filepath.Match reports ErrBadPattern."""
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("syntax error in pattern")
            i += 2
            continue
        if ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            ranges = 0
            while True:
                if i < n and pattern[i] == "]" and ranges > 0:
                    i += 1
                    break
                i = _class_char(pattern, i)
                if i < n and pattern[i] == "-":
                    i = _class_char(pattern, i + 1)
                ranges += 1
            continue
        if ch == "]":
            raise ValueError("syntax error in pattern")
        i += 1


def _class_char(pattern: str, i: int) -> int:
    if i >= len(pattern) or pattern[i] in "-]":
        raise ValueError("syntax error in pattern")
    if pattern[i] == "\\":
        if i + 1 >= len(pattern):
            raise ValueError("syntax error in pattern")
        return i + 2
    return i + 1


def _to_regex(pattern: str) -> tuple[str, str]:
    """patternmatcher's compile: (kind, regex source); kind is exact, prefix, suffix or regexp,
    the first three compared as strings, as patternmatcher does."""
    kind = "exact"
    out = ["^"]
    i, n = 0, len(pattern)
    first = True
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out.append(".*")
                        kind = "regexp"
                else:
                    out.append("(.*/)?")
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                out.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            out.append("[^/]")
            kind = "regexp"
        elif ch in _ESCAPED:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
                kind = "regexp"
            else:
                out.append("\\\\")
        elif ch in "[]":
            out.append(ch)
            kind = "regexp"
        else:
            out.append(re.escape(ch) if ch in "*?[]\\" else ch)
        first = False
    return kind, "".join(out) + "$"


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str          # cleaned, without the leading "!"
    exception: bool
    line: int
    kind: str
    regex: re.Pattern[str] | None
    dirs: tuple[str, ...]

    @classmethod
    def compile(cls, text: str, line: int = 0) -> Pattern:
        exception = text.startswith("!")
        if exception:
            text = text[1:]
            if not text:
                raise ValueError('illegal exclusion pattern: "!"')
        text = clean(text)
        _check_syntax(text)
        kind, source = _to_regex(text)
        regex = None
        if kind == "regexp":
            try:
                regex = re.compile(source, re.DOTALL)
            except re.error:
                raise ValueError("syntax error in pattern") from None
        return cls(text=text, exception=exception, line=line, kind=kind, regex=regex,
                   dirs=tuple(text.split("/")))

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None

    def match_or_parent(self, path: str) -> bool:
        if self.match(path):
            return True
        parts = path.split("/")
        return any(self.match("/".join(parts[:i])) for i in range(1, len(parts)))

    def could_reach(self, dirs: Sequence[str]) -> bool:
        """Whether this pattern may match the directory `dirs` (components), one of its
        parents, or something below it. Conservative for `**` inside a component."""
        if any("**" in p and p != "**" for p in self.dirs):
            return True
        return _reach(self.dirs, 0, tuple(dirs), 0)


def _reach(pat: tuple[str, ...], pi: int, path: tuple[str, ...], di: int) -> bool:
    if di == len(path) or pi == len(pat):
        return True  # the path ran out (something below may match) or the pattern did (a
        # parent matched)
    if pat[pi] == "**":
        return _reach(pat, pi + 1, path, di) or _reach(pat, pi, path, di + 1)
    component = Pattern.compile(pat[pi])
    if not component.match(path[di]):
        return False
    return _reach(pat, pi + 1, path, di + 1)


# -- the matcher ----------------------------------------------------------------------------

class Matcher:
    """The patterns of one ignore file. Immutable after construction."""

    __slots__ = ("patterns", "has_exceptions")

    def __init__(self, patterns: Sequence[str | tuple[str, int]], path: str = IGNORE_FILE):
        """`patterns` as written in an ignore file (each normalised as the reader does), or
        (pattern, line) pairs from read_patterns, whose line numbers errors name."""
        compiled = []
        for item in patterns:
            text, line = (item, 0) if isinstance(item, str) else item
            text = normalize(text)
            if not text:
                continue
            try:
                compiled.append(Pattern.compile(text, line))
            except ValueError as exc:
                where = f"{path}:{line}" if line else path
                raise DockerignoreError(f"{where}: {exc}: {text!r}") from None
        self.patterns: tuple[Pattern, ...] = tuple(compiled)
        self.has_exceptions = any(p.exception for p in compiled)

    @classmethod
    def from_text(cls, text: str, path: str = IGNORE_FILE) -> Matcher:
        return cls(read_patterns(text, path), path)

    def excluded(self, relpath: str) -> bool:
        """Whether the context path (slash-separated, relative to the context root) is left
        out of what COPY and ADD see. The root itself never is."""
        path = clean(relpath.lstrip("/")) if relpath.strip("/") else "."
        if path == ".":
            return False
        matched = False
        for p in self.patterns:
            if p.exception != matched:
                continue  # an exclusion only while included, an exception only while excluded
            if p.match_or_parent(path):
                matched = not p.exception
        return matched

    def may_descend(self, reldir: str) -> bool:
        """For an excluded directory: whether an exception could bring back something inside
        it, so a walk must enter it rather than skip it whole."""
        if not self.has_exceptions:
            return False
        path = clean(reldir.lstrip("/")) if reldir.strip("/") else "."
        if path == ".":
            return True
        dirs = path.split("/")
        return any(p.exception and p.could_reach(dirs) for p in self.patterns)
