"""Docker's variable substitution and quote removal for Dockerfile words (pure).

The instructions that expand (ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR, and
ARG defaults) run each word through `expand`; RUN, CMD and ENTRYPOINT are left to the shell.
The rules are BuildKit's lexer's:

- `$NAME`, `${NAME}`; names are letters, digits and `_` (a name starting with a digit takes the
  digits only: `$1`); `$@ $* $# $? $- $$ $! $0` are looked up as names and so expand to "";
  a `$` before anything else stays literal. Unset names expand to "".
- `${v:-w}` `${v-w}` `${v:+w}` `${v+w}` `${v:?msg}` `${v?msg}` (the last two fail when unset
  or empty), `${v#p}` `${v##p}` `${v%p}` `${v%%p}` `${v/p/r}` `${v//p/r}` with `*` and `?`
  patterns. `${}` is "bad substitution", any other modifier "unsupported modifier".
- Single quotes are literal. Inside double quotes the escape character escapes only `"`, `$`
  and itself (elsewhere it stays); unquoted, it escapes any character and is dropped.
- The escape character is the backslash, or the backtick under the `escape` directive.

`split_words` is the parser's word splitter (quotes kept, for ENV/LABEL/ARG); `expand_words`
expands and then splits where expansion or plain text put unquoted whitespace (EXPOSE).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

DEFAULT_ESCAPE = "\\"
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class ShellWordError(ValueError):
    """A word that cannot be processed: unterminated quote, bad substitution, ${v:?} failing."""


class _Words:
    """Accumulates words: whitespace from plain text or expanded values splits; quoted text and
    escaped characters never do."""

    __slots__ = ("word", "words", "in_word")

    def __init__(self):
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str] | None, escape: str):
        self.text = text
        self.pos = 0
        self.env = env  # None: leave every $ as written (quote removal only)
        self.escape = escape
        self.unset: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos >= len(self.text):
            return ""
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def lookup(self, name: str) -> tuple[str, bool]:
        assert self.env is not None
        if name in self.env:
            return self.env[name], True
        self.unset.add(name)
        return "", False

    # processStopOn: the whole input (stop="") or up to an unescaped stop character
    def until(self, stop: str, raw_escapes: bool = False) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        while self.pos < len(self.text):
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(out), words.done()
            if ch == "$" and self.env is not None:
                value = self.dollar()
                out.append(value)
                words.add_string(value)
            elif ch == "'":
                value = self.single_quote()
                out.append(value)
                words.add_raw(value)
            elif ch == '"':
                value = self.double_quote(raw_escapes)
                out.append(value)
                words.add_raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if raw_escapes:
                        out.append(ch)
                        words.add_raw(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                out.append(ch)
        if stop:
            raise ShellWordError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.done()

    def single_quote(self) -> str:
        self.next()
        start = self.pos
        end = self.text.find("'", start)
        if end < 0:
            raise ShellWordError(
                "unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        return self.text[start:end]

    def double_quote(self, raw_escapes: bool = False) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise ShellWordError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$" and self.env is not None:
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if raw_escapes:
                    out.append(ch)
                nxt = self.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        ch = self.peek()
        if ch.isdigit():
            start = self.pos
            while self.peek().isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if ch and ch in _SPECIAL_PARAMS:
            return self.next()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum()
                                             or self.text[self.pos] == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            return self.lookup(name)[0]
        self.next()
        ch = self.peek()
        if not ch:
            raise ShellWordError("syntax error: missing '}'")
        if ch in "{}:":
            raise ShellWordError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if not ch:
            raise ShellWordError("syntax error: missing '}'")
        if ch == "}":
            return self.lookup(name)[0]
        if ch == "/":
            return self.replace(name)
        modifier = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        if ch not in ("+", "-", "?", "#", "%"):
            raise ShellWordError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.until("}", raw_escapes=ch in "#%")
        except ShellWordError:
            if not self.peek():
                raise ShellWordError("syntax error: missing '}'") from None
            raise
        value, is_set = self.lookup(name)
        empty = not is_set or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not is_set:
                raise ShellWordError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ShellWordError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if null_is_unset:  # ${v:#p} is not a thing
            raise ShellWordError(f"unsupported modifier ({modifier}) in substitution")
        greedy = word.startswith(ch)
        if greedy:
            word = word[1:]
        if ch == "#":
            m = _pattern(word, greedy, anchored="start").search(value)
            return value[m.end():] if m else value
        m = _pattern(word, greedy, anchored="end").search(value)
        return value[:m.start()] if m else value

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.until("/", raw_escapes=True)
        except ShellWordError:
            if not self.peek():
                raise ShellWordError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.until("}", raw_escapes=True)
        except ShellWordError:
            if not self.peek():
                raise ShellWordError("syntax error: missing '}'") from None
            raise
        value, _ = self.lookup(name)
        regex = _pattern(pattern, greedy=True, anchored="")
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)


def _pattern(pattern: str, greedy: bool, anchored: str):
    """A shell wildcard (`*`, `?`, backslash escapes; no brackets) as a regex, anchored at the
    start (`#`), the end (`%`) or nowhere (`/`). Greedy means the longest match."""
    out = []
    i = 0
    star = ".*" if greedy or anchored == "end" else ".*?"
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue
            if i >= len(pattern) or pattern[i] not in "*?\\":
                bad = pattern[i] if i < len(pattern) else ""
                raise ShellWordError(f"invalid pattern ({pattern}) in substitution: "
                                     f"invalid escape '\\{bad}'")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    body = "".join(out)
    if anchored == "start":
        return re.compile("^(?:" + body + ")", re.DOTALL)
    if anchored == "end":
        regex = re.compile("(?:" + body + ")$", re.DOTALL)
        # the longest suffix is the leftmost match, which search finds; the shortest is the
        # one starting last
        return regex if greedy else _LateSuffix(regex)
    return re.compile(body, re.DOTALL)


class _LateSuffix:
    """`${v%p}`: the shortest suffix matching p, i.e. the match that starts last."""

    def __init__(self, regex: re.Pattern[str]):
        self.regex = regex

    def search(self, value: str):
        for start in range(len(value), -1, -1):
            m = self.regex.match(value, start)
            if m:
                return m
        return None


def expand(word: str, env: Mapping[str, str], escape: str = DEFAULT_ESCAPE) -> str:
    """One word, expanded and with its quotes removed (BuildKit's ProcessWord)."""
    return _Lexer(word, env, escape).until("")[0]


def expand_reporting(word: str, env: Mapping[str, str],
                     escape: str = DEFAULT_ESCAPE) -> tuple[str, frozenset[str]]:
    """`expand`, and the names it found unset (for errors that say which ARG had no value)."""
    lexer = _Lexer(word, env, escape)
    return lexer.until("")[0], frozenset(lexer.unset)


def expand_words(text: str, env: Mapping[str, str], escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Expand, then split on unquoted whitespace (BuildKit's ProcessWords)."""
    return _Lexer(text, env, escape).until("")[1]


def unquote(word: str, escape: str = DEFAULT_ESCAPE) -> str:
    """Quote and escape removal alone: every `$` stays as written."""
    return _Lexer(word, None, escape).until("")[0]


def split_words(text: str, escape: str = DEFAULT_ESCAPE) -> list[str]:
    """The parser's word splitter: whitespace outside quotes separates words; quotes and escapes
    are kept in the words (they are removed later, by `expand`)."""
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    i, n = 0, len(text)
    in_word = False
    while i < n:
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = text[i]
            word.append(ch)
            i += 1
            continue
        if ch.isspace():
            if in_word and (blank_ok or word):
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            i += 1
            continue
        in_word = True
        if ch in ("'", '"'):
            quote = ch
            blank_ok = True
        elif ch == escape:
            if i + 1 == n:
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = text[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words
