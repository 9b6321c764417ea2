"""Docker's variable substitution and quote removal (BuildKit's shell lexer's rules)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.shellwords import (
    ShellWordError,
    expand,
    expand_words,
    split_words,
    unquote,
)

ENV = {"A": "hello world", "E": "", "P": "/usr/local/bin/app.tar.gz", "N": "3", "X_1": "x"}


@pytest.mark.parametrize("word, want", [
    ("$A", "hello world"),
    ("${A}", "hello world"),
    ("pre${A}post", "prehello worldpost"),
    ("$X_1-", "x-"),
    ("$UNSET", ""),
    ("${UNSET}", ""),
    ("$", "$"),
    ("a$", "a$"),
    ("$/x", "$/x"),
    ("$1", ""),
    ("$12b", "b"),
    ("$@", ""),
    ("$$", ""),
])
def test_plain_references(word, want):
    assert expand(word, ENV) == want


@pytest.mark.parametrize("word, want", [
    ("${UNSET:-dflt}", "dflt"),
    ("${E:-dflt}", "dflt"),
    ("${E-dflt}", ""),
    ("${UNSET-dflt}", "dflt"),
    ("${A:-dflt}", "hello world"),
    ("${A:+alt}", "alt"),
    ("${E:+alt}", ""),
    ("${E+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-$A}", "hello world"),
    ("${UNSET:-'$A'}", "$A"),
    ("${UNSET:-a b}", "a b"),
    ("${A:?}", "hello world"),
])
def test_default_and_alternative(word, want):
    assert expand(word, ENV) == want


@pytest.mark.parametrize("word, want", [
    ("${P#*/}", "usr/local/bin/app.tar.gz"),
    ("${P##*/}", "app.tar.gz"),
    ("${P%.*}", "/usr/local/bin/app.tar"),
    ("${P%%.*}", "/usr/local/bin/app"),
    ("${P/a/A}", "/usr/locAl/bin/app.tar.gz"),
    ("${P//a/A}", "/usr/locAl/bin/App.tAr.gz"),
    ("${P#nomatch}", "/usr/local/bin/app.tar.gz"),
    ("${P%?z}", "/usr/local/bin/app.tar."),
])
def test_pattern_modifiers(word, want):
    assert expand(word, ENV) == want


@pytest.mark.parametrize("word, message", [
    ("${}", "syntax error: bad substitution"),
    ("${:-x}", "syntax error: bad substitution"),
    ("${A", "syntax error: missing '}'"),
    ("${A:-x", "syntax error: missing '}'"),
    ("${A:1}", "unsupported modifier (:1) in substitution"),
    ("${A^}", "unsupported modifier (^) in substitution"),
    ("${UNSET:?}", "UNSET: is not allowed to be unset"),
    ("${E:?}", "E: is not allowed to be empty"),
    ("${UNSET?must be set}", "UNSET: must be set"),
    ("'open", "unexpected end of statement while looking for matching single-quote"),
    ('"open', "unexpected end of statement while looking for matching double-quote"),
])
def test_errors(word, message):
    with pytest.raises(ShellWordError) as exc:
        expand(word, ENV)
    assert str(exc.value) == message


@pytest.mark.parametrize("word, want", [
    ("'$A'", "$A"),
    ('"$A"', "hello world"),
    ("\\$A", "$A"),
    ('"\\$A"', "$A"),
    ("a\\nb", "anb"),
    ('"a\\nb"', "a\\nb"),
    ('"a\\"b"', 'a"b'),
    ("'a\\b'", "a\\b"),
    ('"it\'s"', "it's"),
    ("'say \"hi\"'", 'say "hi"'),
    ("a\\ b", "a b"),
    ("trailing\\", "trailing"),
    ("mixed'$A'\"$A\"$A", "mixed$Ahello worldhello world"),
])
def test_quotes_and_escapes(word, want):
    assert expand(word, ENV) == want


def test_backtick_escape():
    assert expand("`$A", ENV, escape="`") == "$A"
    assert expand("\\$A", ENV, escape="`") == "\\hello world"
    assert expand('"a`"b"', ENV, escape="`") == 'a"b'


def test_expand_words_splits_unquoted_whitespace_after_expansion():
    assert expand_words('$A "b c" d', ENV) == ["hello", "world", "b c", "d"]
    assert expand_words('"$A"', ENV) == ["hello world"]
    assert expand_words("80 $E 443", ENV) == ["80", "443"]


def test_unquote_leaves_variables():
    assert unquote('"$A" \'$B\' \\$C') == "$A $B $C"


def test_split_words_keeps_quotes_and_escapes():
    assert split_words('A="x y" B=\'z\' C=d\\ e  D=') == ['A="x y"', "B='z'", "C=d\\ e", "D="]
    assert split_words('""') == ['""']
    assert split_words("   ") == []


# -- properties -----------------------------------------------------------------------------

_plain = st.text(alphabet=st.characters(blacklist_characters="$'\"\\`",
                                        blacklist_categories=("Cs",)), max_size=20)


@given(_plain)
def test_text_without_specials_is_unchanged(text):
    assert expand(text, ENV) == text


@given(st.text(alphabet=st.characters(blacklist_characters="'", blacklist_categories=("Cs",)),
               max_size=20))
def test_single_quotes_keep_anything(text):
    assert expand("'" + text + "'", ENV) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_escaping_every_character_gives_it_back(text):
    escaped = "".join("\\" + ch for ch in text)
    assert expand(escaped, ENV) == text


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
                       st.text(alphabet="abc /-", max_size=8), max_size=4),
       st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True))
def test_braced_reference_is_the_value_or_empty(env, name):
    assert expand("${" + name + "}", env) == env.get(name, "")
    assert expand('"$' + name + '"', env) == env.get(name, "")
