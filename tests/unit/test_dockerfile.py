"""The Dockerfile parser and stage resolution: BuildKit's line rules (directives, comments,
continuations), each instruction's argument form and flags, and the one-line errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.dockerfile import (
    DockerfileError,
    Healthcheck,
    is_reference,
    parse,
    parse_duration,
    platform_args,
    stage_order,
    unused_build_args,
)
from builder.errors import BuildError


def only(text: str):
    """The one instruction of a one-stage Dockerfile's body."""
    df = parse("FROM busybox\n" + text)
    (ins,) = df.stages[0].instructions
    return ins


def error_of(text: str, **kw) -> str:
    with pytest.raises(DockerfileError) as exc:
        stage_order(parse(text), **kw)
    return str(exc.value)


# -- lines, comments, continuations -------------------------------------------------------

def test_instructions_are_case_insensitive_and_keep_their_lines():
    df = parse("from busybox\n\nrun echo hi\nCmd [\"sh\"]\n")
    run, cmd = df.stages[0].instructions
    assert (run.keyword, run.args, run.line) == ("RUN", ("echo hi",), 3)
    assert (cmd.keyword, cmd.args, cmd.exec_form, cmd.line) == ("CMD", ("sh",), True, 4)


def test_continuation_joins_lines_keeping_the_next_lines_whitespace():
    ins = only("RUN echo a \\\n    b\n")
    assert ins.args == ("echo a     b",)
    assert (ins.line, ins.end_line) == (2, 3)
    assert ins.original == "RUN echo a     b"


def test_continuation_before_trailing_spaces_still_continues():
    assert only("RUN echo a\\  \t\nb\n").args == ("echo ab",)


def test_escaped_escape_at_the_end_is_no_continuation():
    df = parse("FROM busybox\nRUN echo a\\\\\nRUN echo b\n")
    assert [i.args for i in df.stages[0].instructions] == [("echo a\\\\",), ("echo b",)]


def test_comments_and_blank_lines_inside_a_continuation_are_dropped():
    ins = only("RUN echo c\\\n# a comment\n\n   # indented comment\nd\n")
    assert ins.args == ("echo cd",)


def test_comment_only_at_line_start_a_hash_elsewhere_is_an_argument():
    df = parse("# top\n  # indented\nFROM busybox\nRUN echo a # not a comment\n")
    assert df.stages[0].instructions[0].args == ("echo a # not a comment",)


def test_crlf_and_bom_are_accepted():
    df = parse("\ufeffFROM busybox\r\nRUN echo hi\r\n")
    assert df.stages[0].base == "busybox"
    assert df.stages[0].instructions[0].args == ("echo hi",)


def test_empty_file_and_comments_only_have_no_instructions():
    for text in ("", "\n\n", "# just a comment\n"):
        with pytest.raises(DockerfileError, match=r"^Dockerfile: no instructions$"):
            parse(text)


def test_error_path_is_the_given_one():
    with pytest.raises(DockerfileError, match=r"^app/Dockerfile.dev:2: unknown instruction"):
        parse("FROM busybox\nFOO bar\n", path="app/Dockerfile.dev")


def test_errors_are_build_errors():
    with pytest.raises(BuildError):
        parse("")


# -- parser directives --------------------------------------------------------------------

def test_escape_directive_backtick():
    df = parse("# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY c:\\src c:\\dst\n")
    run, copy_ = df.stages[0].instructions
    assert df.escape == "`"
    assert run.args == ("echo a   b",)
    assert copy_.args == ("c:\\src", "c:\\dst")  # backslash is an ordinary character now


def test_directives_are_case_insensitive_with_spaces():
    df = parse("#  ESCAPE = `\n# Syntax=docker/dockerfile:1\nFROM busybox\n")
    assert (df.escape, df.syntax) == ("`", "docker/dockerfile:1")


def test_directive_after_a_comment_or_blank_line_is_a_comment():
    assert parse("# hello\n# escape=`\nFROM busybox\n").escape == "\\"
    assert parse("\n# escape=`\nFROM busybox\n").escape == "\\"
    assert parse("FROM busybox\n# escape=`\nRUN x\n").escape == "\\"


def test_unknown_directive_ends_directives():
    assert parse("# foo=bar\n# escape=`\nFROM busybox\n").escape == "\\"


@pytest.mark.parametrize("text, message", [
    ("# escape=`\n# escape=\\\nFROM busybox\n",
     "Dockerfile:2: only one escape parser directive can be used"),
    ("# escape=x\nFROM busybox\n",
     "Dockerfile:1: invalid escape token 'x' does not match ` or \\"),
])
def test_bad_directives(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse(text)
    assert str(exc.value) == message


# -- exec form and shell form -------------------------------------------------------------

@pytest.mark.parametrize("text, args, exec_form", [
    ('RUN ["echo", "a b"]', ("echo", "a b"), True),
    ("RUN echo [x]", ("echo [x]",), False),
    ("RUN [ -f /etc/passwd ] && echo yes", ("[ -f /etc/passwd ] && echo yes",), False),
    ('CMD ["a"]', ("a",), True),
    ("CMD []", (), True),
    ('ENTRYPOINT ["/bin/app", "--flag"]', ("/bin/app", "--flag"), True),
    ("ENTRYPOINT /bin/app --flag", ("/bin/app --flag",), False),
    ('SHELL ["/bin/bash", "-c"]', ("/bin/bash", "-c"), True),
    ('RUN ["echo", "\\u00e9"]', ("echo", "é"), True),
])
def test_exec_and_shell_forms(text, args, exec_form):
    ins = only(text + "\n")
    assert (ins.args, ins.exec_form) == (args, exec_form)


@pytest.mark.parametrize("text", [
    'RUN ["echo", "hi"',
    "RUN ['echo', 'hi']",
    'CMD ["a", "b",]',
    'ENTRYPOINT ["a" "b"]',
])
def test_malformed_json_in_exec_form(text):
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: malformed JSON in exec form: "):
        parse("FROM busybox\n" + text + "\n")


def test_json_array_of_non_strings_is_refused():
    with pytest.raises(DockerfileError) as exc:
        parse('FROM busybox\nCMD ["a", 1]\n')
    assert str(exc.value) == ("Dockerfile:2: malformed JSON in exec form: when using JSON "
                              "array syntax, arrays must be comprised of strings only")


def test_shell_must_be_json():
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\nSHELL /bin/bash -c\n")
    assert str(exc.value) == "Dockerfile:2: SHELL requires the arguments to be in JSON form"


@pytest.mark.parametrize("keyword", ["RUN", "CMD", "ENTRYPOINT"])
def test_shell_form_needs_a_command(keyword):
    with pytest.raises(DockerfileError, match=f"Dockerfile:2: {keyword} requires at least one"):
        parse(f"FROM busybox\n{keyword}\n")


# -- COPY and ADD --------------------------------------------------------------------------

def test_copy_words_and_flags():
    ins = only("COPY --from=build --chown=app:app --chmod=0644 a b /dst/\n")
    assert ins.args == ("a", "b", "/dst/")
    assert ins.flags == {"from": "build", "chown": "app:app", "chmod": "0644"}
    assert not ins.exec_form


def test_copy_json_form_for_paths_with_spaces():
    ins = only('COPY ["my file", "/dst dir/"]\n')
    assert (ins.args, ins.exec_form) == (("my file", "/dst dir/"), True)


def test_copy_link_is_a_boolean_flag():
    assert only("COPY --link a /b\n").flags == {"link": "true"}
    assert only("COPY --link=false a /b\n").flags == {"link": "false"}
    with pytest.raises(DockerfileError, match="expecting boolean value for flag link, not: x"):
        parse("FROM busybox\nCOPY --link=x a /b\n")


def test_flag_value_may_be_quoted():
    assert only('COPY --chown="1000:1000" a /b\n').flags == {"chown": "1000:1000"}


def test_copy_needs_a_destination():
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\nCOPY onlyone\n")
    assert str(exc.value) == ("Dockerfile:2: COPY requires at least two arguments, but only "
                              "one was provided. Destination could not be determined")


def test_add_flags():
    assert only("ADD --chown=1 --chmod=755 a.tar /x/\n").flags == {"chown": "1", "chmod": "755"}


@pytest.mark.parametrize("text, message", [
    ("RUN --mount=type=cache,target=/root/.cache pip install x",
     "Dockerfile:2: RUN --mount is not supported by this builder"),
    ("RUN --network=none true", "Dockerfile:2: RUN --network is not supported by this builder"),
    ("ADD --checksum=sha256:abc https://example.com/x /x",
     "Dockerfile:2: ADD --checksum is not supported by this builder"),
    ("COPY --exclude=*.md . /src", "Dockerfile:2: COPY --exclude is not supported by this builder"),
    ("COPY --form=build a /b", "Dockerfile:2: unknown flag: --form"),
    ("ADD --from=build a /b", "Dockerfile:2: unknown flag: --from"),
    ("ENV --x=1 A=b", "Dockerfile:2: unknown flag: --x"),
    ("COPY --from=a --from=b a /b", "Dockerfile:2: duplicate flag specified: --from"),
    ("COPY --from a /b", "Dockerfile:2: missing a value on flag: --from"),
])
def test_flag_errors(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\n" + text + "\n")
    assert str(exc.value) == message


def test_double_dash_ends_flags():
    assert only("COPY -- --weird-name /dst\n").args == ("--weird-name", "/dst")


# -- ENV, LABEL, ARG ----------------------------------------------------------------------

def test_env_both_forms():
    ins = only('ENV K=V K2="v 2" K3=a\\ b\n')
    assert ins.args == ("K", "V", "K2", "v 2", "K3", "a b")
    assert ins.pairs == (("K", "V"), ("K2", '"v 2"'), ("K3", "a\\ b"))
    legacy = only("ENV GREETING hello   world\n")
    assert legacy.args == ("GREETING", "hello   world")


def test_env_keeps_variables_for_the_stage_to_expand():
    ins = only("ENV A=$B C='$D'\n")
    assert ins.args == ("A", "$B", "C", "$D")
    assert ins.pairs == (("A", "$B"), ("C", "'$D'"))


@pytest.mark.parametrize("text, message", [
    ("ENV A", "Dockerfile:2: ENV must have two arguments"),
    ("ENV A=1 B", "Dockerfile:2: Syntax error - can't find = in 'B'. Must be of the form: "
                  "name=value"),
    ("ENV =x", "Dockerfile:2: ENV names can not be blank"),
    ("LABEL", "Dockerfile:2: LABEL requires at least one argument"),
    ("ARG", "Dockerfile:2: ARG requires at least one argument"),
    ("ARG =x", "Dockerfile:2: ARG names can not be blank"),
])
def test_name_value_errors(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\n" + text + "\n")
    assert str(exc.value) == message


def test_label_pairs_with_quotes():
    ins = only('LABEL "com.example.vendor"="ACME Inc" version=1.0 description="a \\"b\\""\n')
    assert ins.args == ("com.example.vendor", "ACME Inc", "version", "1.0", "description",
                        'a "b"')


def test_arg_pairs_several_per_line():
    ins = only("ARG A B=2 C=\n")
    assert ins.args == ("A", "B", "C")
    assert ins.pairs == (("A", None), ("B", "2"), ("C", ""))


def test_meta_args_are_the_args_before_the_first_from():
    df = parse("ARG A=1\nARG B\nFROM busybox\nARG A\n")
    assert [(a.name, a.default, a.line) for a in df.meta_args] == [("A", "1", 1), ("B", None, 2)]
    assert df.stages[0].instructions[0].pairs == (("A", None),)


# -- other instructions -------------------------------------------------------------------

@pytest.mark.parametrize("text, args", [
    ("EXPOSE 80 80/udp 8000-8001", ("80", "80/udp", "8000-8001")),
    ("VOLUME /data /logs", ("/data", "/logs")),
    ('VOLUME ["/data dir"]', ("/data dir",)),
    ("USER app:app", ("app:app",)),
    ("WORKDIR /srv/my app", ("/srv/my app",)),
    ("STOPSIGNAL SIGTERM", ("SIGTERM",)),
    ("MAINTAINER Jane <jane@example.com>", ("Jane <jane@example.com>",)),
])
def test_argument_forms(text, args):
    assert only(text + "\n").args == args


@pytest.mark.parametrize("keyword", ["USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"])
def test_one_argument_instructions_need_it(keyword):
    with pytest.raises(DockerfileError, match=f"^Dockerfile:2: {keyword} requires exactly one"):
        parse(f"FROM busybox\n{keyword}\n")


def test_volume_json_with_an_empty_path():
    with pytest.raises(DockerfileError, match="VOLUME specified can not be an empty string"):
        parse('FROM busybox\nVOLUME [""]\n')


def test_healthcheck_shell_and_exec_forms():
    ins = only("HEALTHCHECK --interval=5m --timeout=3s --start-period=1s --retries=3 "
               "CMD curl -f http://localhost/ || exit 1\n")
    assert ins.healthcheck == Healthcheck(test=("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
                                          interval=300_000_000_000, timeout=3_000_000_000,
                                          start_period=1_000_000_000, retries=3)
    ins = only('HEALTHCHECK CMD ["/bin/check", "-q"]\n')
    assert ins.healthcheck == Healthcheck(test=("CMD", "/bin/check", "-q"))
    assert only("HEALTHCHECK NONE\n").healthcheck == Healthcheck(test=("NONE",))


@pytest.mark.parametrize("text, message", [
    ("HEALTHCHECK NONE extra", "HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
    ("HEALTHCHECK RUN x", 'Unknown type "RUN" in HEALTHCHECK (try CMD)'),
    ("HEALTHCHECK --interval=1us CMD x", 'Interval "interval" cannot be less than 1ms'),
    ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
    ("HEALTHCHECK --timeout=soon CMD x", 'HEALTHCHECK --timeout: time: invalid duration "soon"'),
])
def test_healthcheck_errors(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\n" + text + "\n")
    assert str(exc.value) == "Dockerfile:2: " + message


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("1s", 10**9), ("1m30s", 90 * 10**9), ("1.5h", 5400 * 10**9),
    ("300ms", 300 * 10**6), ("2us", 2000), ("10ns", 10),
])
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


def test_onbuild_is_refused():
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\nONBUILD RUN echo hi\n")
    assert str(exc.value) == "Dockerfile:2: ONBUILD is not supported by this builder"


def test_unknown_instruction():
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\nRUN true\n\nFOO bar\n")
    assert str(exc.value) == "Dockerfile:4: unknown instruction: FOO"


def test_no_from_before_an_instruction():
    with pytest.raises(DockerfileError) as exc:
        parse("RUN echo hi\nFROM busybox\n")
    assert str(exc.value) == "Dockerfile:1: no FROM before RUN"


def test_args_only_is_no_stage():
    with pytest.raises(DockerfileError, match="^Dockerfile: no FROM"):
        parse("ARG A=1\n")


# -- heredocs -------------------------------------------------------------------------------

def test_run_heredoc_alone_is_the_script():
    df = parse("FROM busybox\nRUN <<EOF\napt-get update\n# kept: the shell reads it\n"
               "echo $HOME\nEOF\nRUN echo next\n")
    run, nxt = df.stages[0].instructions
    assert run.args == ("apt-get update\n# kept: the shell reads it\necho $HOME\n",)
    assert not run.exec_form and (run.line, run.end_line) == (2, 6)
    assert run.heredocs[0].name == "EOF"
    assert (nxt.args, nxt.line) == (("echo next",), 7)


def test_run_heredoc_with_a_command_is_handed_to_the_shell():
    ins = only("RUN python3 <<'PY' > /out\nprint('hi')\nPY\n")
    assert ins.args == ("python3 <<'PY' > /out\nprint('hi')\nPY",)
    ins = only("RUN cat <<A <<-B\na\nA\n\tb\n\tB\n")
    assert ins.args == ("cat <<A <<-B\na\nA\n\tb\nB",)  # the terminator as named


def test_run_heredoc_chomp_strips_leading_tabs():
    assert only("RUN <<-EOT\n\techo a\n\t\techo b\n\tEOT\n").args == ("echo a\necho b\n",)


@pytest.mark.parametrize("text, message", [
    ("COPY <<EOF /x\nhello\nEOF",
     "Dockerfile:2: COPY with a heredoc (<<EOF) is not supported by this builder"),
    ("RUN <<EOF\nnever ends", "Dockerfile:2: unterminated heredoc <<EOF"),
    ("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF",
     "Dockerfile:2: RUN with a #! heredoc (a script run by its interpreter) is not supported "
     "by this builder"),
])
def test_heredoc_refusals(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse("FROM busybox\n" + text + "\n")
    assert str(exc.value) == message


def test_heredoc_markers_that_are_not_heredocs():
    assert only('RUN ["sh", "-c", "cat <<EOF"]\n').args == ("sh", "-c", "cat <<EOF")
    assert only("RUN echo a <<\n").args == ("echo a <<",)
    assert only("RUN cat<<EOF\n").args == ("cat<<EOF",)  # << must start a word


def test_quoted_heredoc_marker_is_just_a_word():
    assert only('RUN echo "<<EOF"\n').args == ('echo "<<EOF"',)


# -- stages ---------------------------------------------------------------------------------

def test_stage_names_case_insensitive_and_as_any_case():
    df = parse("FROM busybox As Build\nFROM build\n")
    assert df.stages[0].name == "build"
    order = stage_order(df)
    assert [r.index for r in order] == [0, 1]
    assert order[1].base_stage == 0


@pytest.mark.parametrize("text, message", [
    ("FROM busybox AS 1st", "Dockerfile:1: invalid name for build stage: '1st', name can't "
                            "start with a number or contain symbols"),
    ("FROM busybox AS", "Dockerfile:1: FROM requires either one or three arguments"),
    ("FROM busybox AS a b", "Dockerfile:1: FROM requires either one or three arguments"),
])
def test_bad_from(text, message):
    with pytest.raises(DockerfileError) as exc:
        parse(text + "\n")
    assert str(exc.value) == message


def test_from_platform_flag():
    df = parse("ARG P=linux/amd64\nFROM --platform=$P busybox\n")
    assert df.stages[0].platform == "$P"
    assert stage_order(df)[0].platform == "linux/amd64"


MULTI = """\
ARG BASE=busybox
FROM $BASE AS build
RUN make
FROM build AS test
RUN make test
FROM busybox AS docs
RUN make docs
FROM scratch
COPY --from=build /out /out
COPY --from=1 /report /report
COPY --from=alpine:3.19 /etc/alpine-release /
"""


def test_stage_order_default_target_is_the_last_and_only_what_it_needs():
    order = stage_order(parse(MULTI))
    assert [r.index for r in order] == [0, 1, 3]  # docs is not needed
    final = order[-1]
    assert final.deps == (0, 1)
    assert final.from_images == ("alpine:3.19",)
    assert final.copy_from == {9: 0, 10: 1, 11: "alpine:3.19"}
    assert final.is_scratch
    assert order[0].base == "busybox" and order[0].base_stage is None


def test_stage_order_target_by_name_any_case():
    assert [r.index for r in stage_order(parse(MULTI), target="TEST")] == [0, 1]
    assert [r.index for r in stage_order(parse(MULTI), target="docs")] == [2]


def test_target_not_found():
    assert error_of(MULTI, target="x") == 'target stage "x" could not be found'


def test_build_arg_overrides_meta_default_and_defaults_chain():
    df = parse("ARG REG=docker.io\nARG IMG=$REG/library/busybox\nARG TAG=1\nFROM $IMG:$TAG\n")
    assert stage_order(df)[0].base == "docker.io/library/busybox:1"
    got = stage_order(df, build_args={"REG": "registry.local:5000", "TAG": "2"})[0]
    assert got.base == "registry.local:5000/library/busybox:2"
    assert got.meta_args == {"REG": "registry.local:5000",
                             "IMG": "registry.local:5000/library/busybox", "TAG": "2"}


def test_meta_arg_without_value_in_from():
    assert error_of("ARG X\nFROM ${X}\n") == "Dockerfile:2: base name (${X}) should not be blank"
    assert stage_order(parse("ARG X\nFROM ${X}\n"), build_args={"X": "busybox"})[0].base \
        == "busybox"
    # a build arg without a value (the CLI found none in its environment) is not given
    assert error_of("ARG X\nFROM $X\n", build_args={"X": None}) == \
        "Dockerfile:2: base name ($X) should not be blank"


def test_meta_arg_default_with_a_default_form():
    df = parse("ARG X\nFROM ${X:-busybox}\n")
    assert stage_order(df)[0].base == "busybox"


def test_copy_from_a_later_stage():
    text = "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n"
    assert error_of(text, target="a") == ('Dockerfile:2: cannot copy from stage "b", it needs '
                                          'to be defined before current stage "a" (a stage '
                                          'cannot copy from a later stage)')


def test_copy_from_itself():
    text = "FROM busybox AS a\nCOPY --from=a /x /x\n"
    assert error_of(text) == ('Dockerfile:2: cannot copy from stage "a", it needs to be '
                              'defined before current stage "a" (a stage cannot copy from '
                              'itself)')


def test_copy_from_a_later_index_and_a_missing_index():
    assert "cannot copy from stage \"1\"" in error_of(
        "FROM busybox\nCOPY --from=1 /x /x\nFROM busybox\n")
    assert error_of("FROM busybox\nCOPY --from=3 /x /x\n") == (
        "Dockerfile:2: COPY --from=3: there is no stage 3 (the Dockerfile has 1)")


def test_copy_from_a_variable_is_refused():
    assert error_of("FROM busybox\nARG S=a\nCOPY --from=$S /x /x\n").startswith(
        "Dockerfile:3: variable expansion is not supported for --from")


def test_copy_from_an_unknown_name_is_an_image():
    order = stage_order(parse("FROM busybox\nCOPY --from=nginx:latest /etc/nginx /etc/nginx\n"))
    assert order[0].deps == () and order[0].from_images == ("nginx:latest",)


def test_from_a_later_stage_name_is_an_image():
    order = stage_order(parse("FROM later\nFROM busybox AS later\n"), target="later")
    assert [r.index for r in order] == [1]
    first = stage_order(parse("FROM later\nFROM busybox AS later\n"))
    assert first[-1].base == "busybox"


def test_repeated_stage_name_binds_the_latest_earlier_for_from():
    df = parse("FROM busybox AS a\nFROM alpine AS a\nFROM a\n")
    assert stage_order(df)[-1].base_stage == 1


def test_platform_args_are_global_scope():
    df = parse("FROM busybox:$TARGETARCH\n")
    assert stage_order(df, auto_args=platform_args("linux", "arm64"))[0].base == "busybox:arm64"


def test_from_that_expands_to_no_reference_names_the_unset_arg():
    assert error_of("ARG BASE\nFROM ${BASE}:1.0\n") == (
        "Dockerfile:2: invalid reference format: ':1.0' (FROM ${BASE}:1.0; BASE had no value "
        "(an ARG before the first FROM, or --build-arg))")
    assert error_of("FROM Busybox\n").startswith("Dockerfile:1: invalid reference format")


def test_copy_from_neither_stage_nor_reference():
    assert error_of("FROM busybox\nCOPY --from=Not/Valid! /x /x\n") == (
        "Dockerfile:2: COPY --from=Not/Valid!: no stage of that name, and not an image "
        "reference")


@pytest.mark.parametrize("ref, ok", [
    ("busybox", True), ("alpine:3.19", True), ("registry.local:5000/team/app:v1", True),
    ("localhost/a_b__c--d", True), ("a@sha256:" + "0" * 64, True), ("[::1]:5000/x", True),
    (":1.0", False), ("Busybox", False), ("a:", False), ("/x", False), ("a b", False),
])
def test_is_reference(ref, ok):
    assert is_reference(ref) is ok


def test_declaring_an_automatic_arg_keeps_its_value():
    df = parse("ARG TARGETARCH\nFROM busybox:$TARGETARCH\n")
    rs = stage_order(df, auto_args=platform_args("linux", "arm64"))[0]
    assert rs.base == "busybox:arm64" and rs.meta_args["TARGETARCH"] == "arm64"
    rs = stage_order(df, build_args={"TARGETARCH": "riscv64"},
                     auto_args=platform_args("linux", "arm64"))[0]
    assert rs.base == "busybox:riscv64"


def test_every_from_is_checked_even_an_unneeded_one():
    # BuildKit expands every stage's FROM before picking what the target needs
    assert error_of("ARG X\nFROM busybox AS ok\nFROM $X\n", target="ok") == \
        "Dockerfile:3: base name ($X) should not be blank"


# -- properties -----------------------------------------------------------------------------

_word = st.text(alphabet=st.sampled_from("abcxyz019_-./:"), min_size=1, max_size=8)


@given(st.lists(_word, min_size=1, max_size=5))
def test_exec_form_round_trips_any_strings(words):
    ins = only("CMD " + json.dumps(words) + "\n")
    assert ins.args == tuple(words) and ins.exec_form


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\n\r"), max_size=12),
                min_size=1, max_size=4))
def test_exec_form_round_trips_any_text(words):
    ins = only("RUN " + json.dumps(words) + "\n")
    assert ins.args == tuple(words)


@given(st.lists(st.text(alphabet="abc \t$", min_size=1, max_size=6).filter(str.strip),
                min_size=1, max_size=5))
def test_continuations_join_to_the_same_command(pieces):
    one = only("RUN " + "".join(pieces) + "\n")
    split = only("RUN " + "\\\n".join(pieces) + "\n")
    assert split.args == one.args
    assert split.end_line == 2 + len(pieces) - 1


def test_unused_build_args():
    df = parse("ARG G\nFROM busybox AS a\nARG A\nFROM busybox\nARG B\n")
    order = stage_order(df)
    given = {"G": "1", "A": "2", "B": "3", "HTTP_PROXY": "p", "NOPE": "4"}
    assert unused_build_args(df, order, given) == ["A", "NOPE"]  # stage a is not built
