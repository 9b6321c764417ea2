"""Where `moor-agent run` takes its join token from: --token-file or $MOOR_JOIN_TOKEN (off the
command line, so not in `ps`), or --token with a warning."""

from __future__ import annotations

import argparse
import logging

import pytest

from nodeagent.agent import parse_args
from nodeagent.daemon import AgentError, join_token

TOKEN = "MOOR1-abc-def"


def args(**kw):
    return argparse.Namespace(token=kw.get("token"), token_file=kw.get("token_file"))


def test_token_file_is_read_and_stripped(tmp_path, monkeypatch):
    monkeypatch.delenv("MOOR_JOIN_TOKEN", raising=False)
    f = tmp_path / "t"
    f.write_text(TOKEN + "\n")
    assert join_token(args(token_file=str(f))) == TOKEN


def test_environment_is_used_without_flags(monkeypatch):
    monkeypatch.setenv("MOOR_JOIN_TOKEN", " " + TOKEN + " ")
    assert join_token(args()) == TOKEN


def test_command_line_token_works_but_warns(caplog, monkeypatch):
    monkeypatch.setenv("MOOR_JOIN_TOKEN", "other")
    with caplog.at_level(logging.WARNING):
        assert join_token(args(token=TOKEN)) == TOKEN
    assert "visible to every user" in caplog.text and "--token-file" in caplog.text


@pytest.mark.parametrize("content, why", [(None, "cannot read it"), ("  \n", "is empty")])
def test_bad_token_files_are_one_line_errors(tmp_path, content, why):
    f = tmp_path / "t"
    if content is not None:
        f.write_text(content)
    with pytest.raises(AgentError) as err:
        join_token(args(token_file=str(f)))
    assert str(err.value).startswith(f"--token-file {f}: ") and why in str(err.value)
    assert "\n" not in str(err.value)


def test_flag_parses_in_the_daemon_form():
    parsed = parse_args(["--join", "10.0.0.2:7440", "--token-file", "/etc/moorage/join-token"])
    assert parsed.command == "run" and parsed.token_file == "/etc/moorage/join-token"
