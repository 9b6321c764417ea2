"""The Dockerfile's text layer (pure): physical lines to logical ones (parser directives, BOM
and CRLF, comments, continuations, heredoc bodies), and the word-level forms instructions share
(leading flags, JSON arrays, Go durations, image references). BuildKit's parser is the
reference; `builder.dockerfile` builds instructions and stages on top of this."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from builder import shellwords
from builder.errors import BuildError


class DockerfileError(BuildError):
    """A Dockerfile that cannot be built: the message names the file and, where one applies,
    the line."""


def error(path: str, line: int | None, message: str) -> DockerfileError:
    return DockerfileError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A here-document read after its instruction's line: `name` without quotes, `chomp` for
    `<<-` (leading tabs stripped), `content` the raw lines, each ending in a newline."""
    word: str
    name: str
    chomp: bool
    content: str


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})
WHITESPACE = re.compile(r"[\t\v\f\r ]+")
HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_BOM = "\ufeff"


def _continuation(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    # the escape token at the end of a line (before spaces or tabs) continues it, unless it is
    # itself escaped; on a line of its own it continues too
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def _is_comment(raw: str) -> bool:
    return raw.lstrip().startswith("#")


@dataclass(slots=True)
class LogicalLine:
    text: str
    start: int
    end: int
    heredocs: tuple[Heredoc, ...] = ()


def logical_lines(text: str, path: str) -> tuple[list[LogicalLine], str, str | None]:
    """Split into instructions: directives read, comments dropped, continuations joined."""
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    raw = [r[:-1] if r.endswith("\r") else r for r in raw]
    if raw and raw[0].startswith(_BOM):
        raw[0] = raw[0][len(_BOM):]

    escape = shellwords.DEFAULT_ESCAPE
    syntax: str | None = None
    seen: set[str] = set()
    i = 0
    while i < len(raw):
        stripped = raw[i].lstrip()
        m = _DIRECTIVE.match(stripped) if stripped.startswith("#") else None
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise error(path, i + 1, f"only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise error(path, i + 1,
                             f"invalid escape token '{value}' does not match ` or \\")
            escape = value
        elif key == "syntax":
            syntax = value
        i += 1

    cont = _continuation(escape)
    lines: list[LogicalLine] = []
    n = len(raw)
    i = 0
    while i < n:
        first = raw[i].lstrip()
        start = i + 1
        i += 1
        if first.startswith("#"):
            continue
        line, more = _trim_continuation(first, cont)
        if not more and not line.strip():
            continue
        while more and i < n:
            nxt = raw[i]
            i += 1
            if _is_comment(nxt) or not nxt.strip():
                continue  # comments and blank lines inside a continuation are skipped
            part, more = _trim_continuation(nxt, cont)
            line += part
        docs = []
        for word, name, chomp in _heredoc_markers(line):
            body: list[str] = []
            while True:
                if i >= n:
                    raise error(path, start, f"unterminated heredoc {word}")
                nxt = raw[i]
                i += 1
                if (nxt.lstrip("\t") if chomp else nxt) == name:
                    break
                body.append(nxt + "\n")
            docs.append(Heredoc(word, name, chomp, "".join(body)))
        lines.append(LogicalLine(line, start, i, tuple(docs)))
    return lines, escape, syntax


def _heredoc_markers(line: str) -> list[tuple[str, str, bool]]:
    """The here-documents a RUN, COPY or ADD line opens (`<<EOF`, `<<-"EOF"`, `3<<EOF`): a word
    that starts with `<<` (a file descriptor may come first) names one, unless the instruction
    is in JSON form. The name is lexed with `\\` as the escape, whatever the directive."""
    parts = WHITESPACE.split(line.strip(), maxsplit=1)
    if parts[0].upper() not in ("RUN", "COPY", "ADD") or len(parts) < 2:
        return []
    _, rest = split_flags(parts[1])
    if rest.lstrip().startswith("["):
        return []
    found = []
    for word in shellwords.split_words(rest):
        m = HEREDOC.match(word)
        if not m or not m.group(3):
            continue
        try:
            names = shellwords.expand_words(m.group(3), {}, shellwords.DEFAULT_ESCAPE)
        except shellwords.ShellWordError:
            continue
        if len(names) == 1:
            found.append((word, names[0], m.group(2) == "-"))
    return found


def _trim_continuation(line: str, cont: re.Pattern[str]) -> tuple[str, bool]:
    if cont.search(line):
        return cont.sub(r"\1", line, count=1), True
    return line, False


# -- words -------------------------------------------------------------------------------

def split_flags(rest: str) -> tuple[list[str], str]:
    """The leading `--flag[=value]` words (quotes and backslashes in them processed), and the
    rest of the line. A lone `--` ends the flags."""
    flags: list[str] = []
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i].isspace():
            i += 1
        if not rest.startswith("--", i):
            return flags, rest[i:]
        word: list[str] = []
        quote = ""
        while i < n:
            ch = rest[i]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\" and i + 1 < n:
                    i += 1
                    word.append(rest[i])
                else:
                    word.append(ch)
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote = ch
            elif ch == "\\" and i + 1 < n:
                i += 1
                word.append(rest[i])
            else:
                word.append(ch)
            i += 1
        text = "".join(word)
        if text == "--":
            return flags, rest[i:].lstrip()
        flags.append(text)


class JSONArrayError(ValueError):
    pass


def json_array(rest: str) -> list[str] | None:
    """The strings of a JSON array, or None when the text is not meant as one. Text that starts
    like an array of strings (`["`, `['` or `[]`) must be one: Docker would quietly run a
    broken array through the shell, which only fails later, with a confusing error; a shell
    command that merely starts with `[` (`[ -f x ] && ...`) stays shell form."""
    text = rest.strip()
    if not text.startswith("["):
        return None
    after = text[1:].lstrip()
    if not after or after[0] not in "\"']":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise JSONArrayError(str(exc).split(":")[0] if after[0] != "'" else
                         "strings must be in double quotes") from None
    if not isinstance(value, list):
        raise JSONArrayError("not a JSON array")
    if not all(isinstance(v, str) for v in value):
        raise JSONArrayError(
            "when using JSON array syntax, arrays must be comprised of strings only")
    return value


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds ("1m30s", "500ms", "0")."""
    s = text
    sign = 1
    if s[:1] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(round(total))



# distribution/reference's grammar: [domain[:port]/]path[:tag][@digest], path lower-case
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")


def is_reference(text: str) -> bool:
    """Whether text is an image reference Docker would accept (`busybox`, `alpine:3.19`,
    `registry.local:5000/team/app@sha256:...`)."""
    return len(text) <= 255 + 128 + 80 and bool(_REFERENCE.match(text))

# Build args every RUN may see without an ARG, and that never enter the image or a cache key.
