"""A stage's image config under its instructions, with Docker's semantics: ENV and ARG scope,
WORKDIR, EXPOSE, ENTRYPOINT and CMD, HEALTHCHECK, history entries and the final document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.configfmt import go_duration, parse_port
from builder.dockerfile import DockerfileError, parse, stage_order
from builder.stageconfig import DEFAULT_PATH, METADATA, StageState, build_time

NOW = "2024-01-02T03:04:05Z"
BUSYBOX = {
    "architecture": "arm64", "os": "linux", "created": "2020-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/bin:/usr/bin", "HOME=/root"], "Cmd": ["sh"],
               "Labels": {"base": "yes"}},
    "history": [{"created_by": "base layer"}],
    "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
}


def run(body: str, base: dict | None = None, build_args=None, **kw) -> StageState:
    """Build the last stage's state the way the executor does, with fake diff ids."""
    df = parse("FROM busybox\n" + body)
    rs = stage_order(df, build_args=build_args)[-1]
    state = StageState.start(base, meta_args=rs.meta_args, build_args=build_args or {},
                             created=NOW, escape=df.escape, **kw)
    for n, ins in enumerate(rs.stage.instructions):
        if ins.keyword in METADATA:
            state = state.apply(ins)
        elif ins.keyword == "WORKDIR":
            state = state.apply(ins)
            state = state.commit(ins)
        else:
            state = state.commit(ins, diff_id=f"sha256:{n}")
    return state


def env_of(state: StageState) -> dict[str, str]:
    return dict(e.split("=", 1) for e in state.run_env())


def created_by(state: StageState) -> list[str]:
    return [h["created_by"] for h in state.history]


# -- the starting point -------------------------------------------------------------------

def test_scratch_has_root_workdir_default_path_and_no_history():
    doc = StageState.start(None, created=NOW).config_doc()
    assert doc["config"] == {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
    assert doc["history"] == [] and doc["rootfs"] == {"type": "layers", "diff_ids": []}
    assert (doc["os"], doc["architecture"]) == ("linux", "amd64")


def test_scratch_platform_is_a_parameter():
    doc = StageState.start(None, platform=("linux", "arm64", "v8")).config_doc()
    assert (doc["architecture"], doc["variant"]) == ("arm64", "v8")


def test_base_config_is_inherited_and_created_cleared():
    doc = StageState.start(BUSYBOX, created=NOW).config_doc()
    assert doc["config"]["Env"] == ["PATH=/bin:/usr/bin", "HOME=/root"]
    assert doc["config"]["Cmd"] == ["sh"]
    assert doc["architecture"] == "arm64"
    assert doc["history"] == [{"created_by": "base layer"}]
    assert doc["rootfs"]["diff_ids"] == ["sha256:base"]
    assert doc["created"] == NOW


def test_a_base_without_path_gains_the_default():
    state = StageState.start({"config": {"Env": ["A=1"]}})
    assert state.run_env() == ["A=1", f"PATH={DEFAULT_PATH}"]


def test_start_does_not_touch_the_base_document():
    before = json.dumps(BUSYBOX, sort_keys=True)
    run("ENV X=1\nLABEL y=2\n", base=BUSYBOX)
    assert json.dumps(BUSYBOX, sort_keys=True) == before


def test_apply_returns_a_new_state():
    df = parse("FROM busybox\nENV A=1\n")
    start = StageState.start(None)
    after = start.apply(df.stages[0].instructions[0])
    assert "A=1" in after.run_env() and "A=1" not in start.run_env()


def test_base_onbuild_triggers_are_exposed_and_dropped_from_the_config():
    state = StageState.start({"config": {"OnBuild": ["RUN echo hi"]}})
    assert state.onbuild == ("RUN echo hi",)
    assert "OnBuild" not in state.config_doc()["config"]


# -- ENV ----------------------------------------------------------------------------------

def test_env_later_lines_see_earlier_ones_but_one_line_sees_the_old_values():
    state = run("ENV A=1\nENV A=2 B=$A\nENV C=${A}${B}\n")
    env = env_of(state)
    assert (env["A"], env["B"], env["C"]) == ("2", "1", "21")


def test_env_single_quotes_stop_expansion_and_double_quotes_do_not():
    env = env_of(run("ENV X=v\nENV A='$X' B=\"$X\" C=\\$X\n"))
    assert (env["A"], env["B"], env["C"]) == ("$X", "v", "$X")


def test_env_legacy_form_expands_and_unquotes():
    env = env_of(run('ENV X=v\nENV GREETING "hello $X"  there\n'))
    assert env["GREETING"] == "hello v  there"


def test_env_replaces_in_place_and_appends_new_names():
    state = run("ENV HOME=/home/app NEW=1\n", base=BUSYBOX)
    assert state.config_doc()["config"]["Env"] == ["PATH=/bin:/usr/bin", "HOME=/home/app",
                                                   "NEW=1"]


def test_env_history_shows_expanded_values():
    assert created_by(run("ENV A=1\nENV B=\"$A x\"\n")) == ["ENV A=1", "ENV B=1 x"]


# -- ARG ----------------------------------------------------------------------------------

def test_arg_visible_from_its_line_on():
    df = parse("FROM busybox\nENV BEFORE=$V\nARG V=1\nENV AFTER=$V\n")
    state = StageState.start(None)
    for ins in df.stages[0].instructions:
        state = state.apply(ins)
    env = env_of(state)
    assert (env["BEFORE"], env["AFTER"], env["V"]) == ("", "1", "1")


def test_build_arg_overrides_the_default_only_when_declared():
    state = run("ARG V=dflt\nENV GOT=$V UNDECLARED=$OTHER\n",
                build_args={"V": "given", "OTHER": "x"})
    env = env_of(state)
    assert env["GOT"] == "given" and env["UNDECLARED"] == ""
    assert "OTHER" not in env


def test_meta_arg_visible_in_a_stage_only_when_redeclared():
    df = parse("ARG VERSION=1.0\nFROM busybox\nENV A=$VERSION\nARG VERSION\nENV B=$VERSION\n")
    rs = stage_order(df)[0]
    state = StageState.start(None, meta_args=rs.meta_args)
    for ins in rs.stage.instructions:
        state = state.apply(ins)
    env = env_of(state)
    assert (env["A"], env["B"]) == ("", "1.0")


def test_automatic_platform_args_need_declaring_in_a_stage():
    from builder.dockerfile import platform_args
    df = parse("FROM busybox\nENV BEFORE=$TARGETARCH\nARG TARGETARCH\nENV AFTER=$TARGETARCH\n")
    rs = stage_order(df, auto_args=platform_args("linux", "arm64"))[0]
    state = StageState.start(None, meta_args=rs.meta_args)
    for ins in rs.stage.instructions:
        state = state.apply(ins)
    env = env_of(state)
    assert (env["BEFORE"], env["AFTER"]) == ("", "arm64")


def test_arg_without_value_and_without_build_arg_is_unset():
    state = run("ARG V\nENV A=${V:-unset}\n")
    assert env_of(state)["A"] == "unset" and "V" not in env_of(state)
    assert created_by(state)[0] == "ARG V"


def test_several_args_on_a_line_see_each_other():
    env = env_of(run("ARG A=1 B=${A}2\n"))
    assert (env["A"], env["B"]) == ("1", "12")


def test_the_later_of_env_and_arg_wins_as_in_buildkit():
    # ENV after ARG: the ENV. ARG with a value after ENV (or after an inherited Env): the ARG,
    # for RUN and expansion, while the stored Env keeps the ENV's (the classic builder kept
    # the ENV in both orders, a limitation BuildKit does not have).
    state = run("ARG V=arg\nENV V=env\n")
    assert env_of(state)["V"] == state.expand("$V") == "env"
    state = run("ENV V=env\nARG V=arg\n")
    assert env_of(state)["V"] == state.expand("$V") == "arg"
    assert dict(state.env)["V"] == "env"
    state = run("ENV V=env\nARG V\n")
    assert env_of(state)["V"] == "env"  # an ARG without a value shadows nothing
    state = run("ARG V\n", base={"config": {"Env": ["V=inherited"]}}, build_args={"V": "cli"})
    assert env_of(state)["V"] == state.expand("$V") == "cli"
    state = run("ENV V=env\nARG V=arg\nENV V=again\n")
    assert env_of(state)["V"] == "again"


def test_arg_history_shows_resolved_values():
    state = run("ARG A=1 B\nARG C=$A\n", build_args={"B": "two"})
    assert created_by(state) == ["ARG A=1 B=two", "ARG C=1"]


def test_proxy_build_args_reach_run_but_not_the_cache_key_or_history():
    plain = run("RUN make\n")
    proxied = run("RUN make\n", build_args={"HTTP_PROXY": "http://proxy:3128"})
    assert env_of(proxied)["HTTP_PROXY"] == "http://proxy:3128"
    assert proxied.cache_scope() == plain.cache_scope()
    assert created_by(proxied) == created_by(plain)


def test_cache_scope_covers_env_args_user_and_workdir():
    base = run("ARG V=1\nRUN x\n").cache_scope()
    assert run("ARG V=1\nRUN x\n").cache_scope() == base  # stable
    assert run("ARG V=2\nRUN x\n").cache_scope() != base
    assert run("ARG V=1\nENV E=1\nRUN x\n").cache_scope() != base
    assert run("ARG V=1\nUSER app\nRUN x\n").cache_scope() != base
    assert run("ARG V=1\nWORKDIR /w\nRUN x\n").cache_scope() != base
    assert run("ARG V\nRUN x\n").cache_scope() != run("RUN x\n").cache_scope()


# -- RUN, COPY, WORKDIR -------------------------------------------------------------------

def test_run_argv_shell_exec_and_shell_instruction():
    df = parse('FROM busybox\nRUN echo hi\nRUN ["echo", "hi"]\nSHELL ["/bin/bash", "-ec"]\n'
               "RUN echo bash\n")
    a, b, sh, c = df.stages[0].instructions
    state = StageState.start(None)
    assert state.run_argv(a) == ["/bin/sh", "-c", "echo hi"]
    assert state.run_argv(b) == ["echo", "hi"]
    state = state.apply(sh)
    assert state.run_argv(c) == ["/bin/bash", "-ec", "echo bash"]


def test_run_history_in_buildkit_style_with_declared_args():
    state = run("RUN make\nARG V=1 W\nENV V=env\nRUN [\"make\", \"install\"]\n")
    assert created_by(state) == ["RUN /bin/sh -c make # buildkit", "ARG V=1 W", "ENV V=env",
                                 "RUN |2 V=env W= make install # buildkit"]
    assert "empty_layer" not in state.history[0] and state.history[1]["empty_layer"]
    assert state.history[0]["comment"] == "buildkit.dockerfile.v0"
    assert state.history[0]["created"] == NOW


def test_workdir_relative_to_the_previous_and_asks_for_mkdir():
    df = parse("FROM busybox\nWORKDIR /a\nWORKDIR b/../c\nENV D=d\nWORKDIR $D\n")
    w1, w2, env, w3 = df.stages[0].instructions
    state = StageState.start(None).apply(w1)
    assert state.mkdir == "/a"
    state = state.commit(w1)
    assert state.mkdir is None
    state = state.apply(w2)
    assert (state.working_dir, state.mkdir) == ("/a/c", "/a/c")
    state = state.commit(w2, diff_id="sha256:w").apply(env).apply(w3)
    assert state.working_dir == "/a/c/d"
    assert created_by(state.commit(w3)) == ["WORKDIR /a", "WORKDIR /a/c", "ENV D=d",
                                            "WORKDIR /a/c/d"]
    assert state.config_doc()["rootfs"]["diff_ids"] == ["sha256:w"]


def test_copy_spec_expands_and_resolves_the_destination():
    df = parse("FROM busybox\nWORKDIR /app\nARG SRC=src\nARG OWNER=1000\n"
               "COPY --chown=$OWNER:$OWNER --chmod=0644 ${SRC}/ lib/\nCOPY --from=x a .\n"
               'COPY ["a b", "sub dir"]\n')
    state = StageState.start(None)
    wd, a1, a2, c1, c2, c3 = df.stages[0].instructions
    for ins in (wd, a1, a2):
        state = state.apply(ins)
    spec = state.copy_spec(c1)
    assert (spec.sources, spec.dest, spec.chown, spec.chmod) == (("src/",), "/app/lib/",
                                                                 "1000:1000", "0644")
    assert spec.created_by == "COPY --chown=1000:1000 --chmod=0644 src/ lib/ # buildkit"
    spec = state.copy_spec(c2)
    assert (spec.dest, spec.from_, spec.created_by) == ("/app/", "x", "COPY a . # buildkit")
    assert state.copy_spec(c3).dest == "/app/sub dir"


def test_copy_bad_chmod():
    df = parse("FROM busybox\nCOPY --chmod=64a a /b\n")
    with pytest.raises(DockerfileError) as exc:
        StageState.start(None).copy_spec(df.stages[0].instructions[0])
    assert str(exc.value) == ("Dockerfile:2: invalid chmod parameter: '64a'. it should be "
                              "octal string and between 0 and 07777")


# -- the other config instructions ----------------------------------------------------------

def test_user_expose_volume_stopsignal_maintainer():
    state = run("ENV U=app\nUSER $U:staff\nEXPOSE 80 53/UDP 8000-8002/tcp\nVOLUME /data\n"
                'VOLUME ["/logs", "/var/x"]\nSTOPSIGNAL SIGQUIT\nMAINTAINER Jane <j@x.org>\n')
    doc = state.config_doc()
    cfg = doc["config"]
    assert cfg["User"] == "app:staff"
    assert cfg["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {},
                                   "8002/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}, "/var/x": {}}
    assert cfg["StopSignal"] == "SIGQUIT"
    assert doc["author"] == "Jane <j@x.org>"
    assert created_by(state)[1:] == [
        "USER app:staff", "EXPOSE [53/udp 80/tcp 8000/tcp 8001/tcp 8002/tcp]", "VOLUME [/data]",
        "VOLUME [/logs /var/x]", "STOPSIGNAL SIGQUIT", "MAINTAINER Jane <j@x.org>"]
    assert all(h["empty_layer"] for h in state.history)


@pytest.mark.parametrize("spec, ports", [
    ("80", ["80/tcp"]), ("80/tcp", ["80/tcp"]), ("53/UDP", ["53/udp"]),
    ("1-3/sctp", ["1/sctp", "2/sctp", "3/sctp"]), ("127.0.0.1:8080:80", ["80/tcp"]),
])
def test_parse_port(spec, ports):
    assert parse_port(spec) == ports


@pytest.mark.parametrize("body, message", [
    ("EXPOSE 80/icmp", "Dockerfile:2: EXPOSE 80/icmp: invalid proto: icmp"),
    ("EXPOSE http", "Dockerfile:2: EXPOSE http: invalid containerPort: http"),
    ("EXPOSE 70000", "Dockerfile:2: EXPOSE 70000: invalid containerPort: 70000"),
    ("EXPOSE 9-1", "Dockerfile:2: EXPOSE 9-1: invalid range specified for container port: 9-1"),
    ("STOPSIGNAL SIGNOPE", "Dockerfile:2: invalid signal: SIGNOPE"),
    ("STOPSIGNAL 0", "Dockerfile:2: invalid signal: 0"),
    ('ENV A="${B:?needs B}"', "Dockerfile:2: B: needs B"),
    ("USER ${EMPTY}", "Dockerfile:2: USER requires exactly one argument"),
])
def test_config_errors_name_the_line(body, message):
    with pytest.raises(DockerfileError) as exc:
        run(body + "\n")
    assert str(exc.value) == message


@pytest.mark.parametrize("sig", ["SIGTERM", "term", "KILL", "9", "SIGRTMIN+3"])
def test_stopsignal_accepts(sig):
    assert run(f"STOPSIGNAL {sig}\n").config["StopSignal"] == sig


def test_expose_words_from_a_variable_split():
    state = run("ARG PORTS=\"80 443\"\nEXPOSE $PORTS\n")
    assert set(state.config["ExposedPorts"]) == {"80/tcp", "443/tcp"}


def test_labels_merge_over_the_base_and_cli_labels_come_last():
    state = run('LABEL base=overridden a="1 2"\nLABEL b=$UNSET\n', base=BUSYBOX)
    labels = state.config_doc(labels={"a": "cli", "c": "3"})["config"]["Labels"]
    assert labels == {"base": "overridden", "a": "cli", "b": "", "c": "3"}
    assert "LABEL base=overridden a=1 2" in created_by(state)
    assert len(state.history) == 3  # the base's, two LABELs; --label adds no entry


def test_entrypoint_resets_the_inherited_cmd():
    doc = run('ENTRYPOINT ["/app"]\n', base=BUSYBOX).config_doc()
    assert doc["config"]["Entrypoint"] == ["/app"] and "Cmd" not in doc["config"]


def test_entrypoint_keeps_a_cmd_set_in_this_stage():
    doc = run('CMD ["--help"]\nENTRYPOINT ["/app"]\n', base=BUSYBOX).config_doc()
    assert doc["config"]["Cmd"] == ["--help"]


def test_cmd_and_entrypoint_shell_forms_and_history():
    state = run('SHELL ["/bin/bash", "-c"]\nCMD echo "hi"\nENTRYPOINT exec app\n')
    cfg = state.config_doc()["config"]
    assert cfg["Cmd"] == ["/bin/bash", "-c", 'echo "hi"']
    assert cfg["Entrypoint"] == ["/bin/bash", "-c", "exec app"]
    assert cfg["Shell"] == ["/bin/bash", "-c"] and cfg["ArgsEscaped"] is True
    assert created_by(state) == ["SHELL [/bin/bash -c]",
                                 'CMD ["/bin/bash" "-c" "echo \\"hi\\""]',
                                 'ENTRYPOINT ["/bin/bash" "-c" "exec app"]']


def test_empty_entrypoint_clears_it():
    state = run("ENTRYPOINT []\n", base={"config": {"Entrypoint": ["/old"], "Cmd": ["x"]}})
    assert "Entrypoint" not in state.config_doc()["config"]
    assert "Cmd" not in state.config_doc()["config"]


def test_healthcheck_config_shape_and_history():
    state = run("HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://x/\n")
    assert state.config["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f http://x/"],
                                           "Interval": 300_000_000_000,
                                           "Timeout": 3_000_000_000}
    assert created_by(state) == ["HEALTHCHECK {Test:[CMD-SHELL curl -f http://x/] "
                                 "Interval:5m0s Timeout:3s StartPeriod:0s StartInterval:0s "
                                 "Retries:0}"]
    none = run("HEALTHCHECK NONE\n").config["Healthcheck"]
    assert none == {"Test": ["NONE"]}
    exec_form = run('HEALTHCHECK --retries=2 CMD ["/check"]\n').config["Healthcheck"]
    assert exec_form == {"Test": ["CMD", "/check"], "Retries": 2}


# -- the document ---------------------------------------------------------------------------

def test_config_doc_layout():
    doc = run("ENV A=1\nRUN make\n", base=BUSYBOX).config_doc()
    assert list(doc) == ["architecture", "config", "created", "history", "os", "rootfs"]
    assert list(doc["config"]) == ["Env", "Cmd", "Labels"]
    assert doc["history"][1:] == [
        {"created": NOW, "created_by": "ENV A=1", "comment": "buildkit.dockerfile.v0",
         "empty_layer": True},
        {"created": NOW, "created_by": "RUN /bin/sh -c make # buildkit",
         "comment": "buildkit.dockerfile.v0"}]
    assert doc["rootfs"] == {"type": "layers", "diff_ids": ["sha256:base", "sha256:1"]}
    json.dumps(doc)  # serialisable as it stands


def test_a_child_stage_starts_from_the_parent_document_without_its_args():
    df = parse("FROM busybox AS parent\nARG V=1\nENV E=$V\nCMD [\"x\"]\n"
               "FROM parent\nRUN env\nENTRYPOINT [\"/e\"]\n")
    parent_rs, child_rs = stage_order(df)
    parent = StageState.start(None, created=NOW)
    for ins in parent_rs.stage.instructions:
        parent = parent.apply(ins)
    child = StageState.start(parent.config_doc(), created=NOW)
    assert child.args == () and env_of(child)["E"] == "1"
    child = child.commit(child_rs.stage.instructions[0], diff_id="sha256:c")
    child = child.apply(child_rs.stage.instructions[1])
    doc = child.config_doc()
    assert "Cmd" not in doc["config"]  # inherited from the parent stage, reset by ENTRYPOINT
    assert created_by(child)[-2:] == ["RUN /bin/sh -c env # buildkit", 'ENTRYPOINT ["/e"]']
    assert len(doc["history"]) == 5


def test_apply_refuses_a_layer_step():
    df = parse("FROM busybox\nRUN make\n")
    with pytest.raises(DockerfileError, match="Dockerfile:2: RUN is not a config-only"):
        StageState.start(None).apply(df.stages[0].instructions[0])


def test_build_time():
    assert build_time("0", now=1e9) == "1970-01-01T00:00:00Z"
    assert build_time(1700000000, now=0) == "2023-11-14T22:13:20Z"
    assert build_time(None, now=1700000000.25) == "2023-11-14T22:13:20.25Z"
    assert build_time("", now=1700000000) == "2023-11-14T22:13:20Z"
    with pytest.raises(DockerfileError, match="invalid SOURCE_DATE_EPOCH"):
        build_time("yesterday", now=0)


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (1, "1ns"), (1500, "1.5µs"), (300_000_000, "300ms"), (1_500_000_000, "1.5s"),
    (90_000_000_000, "1m30s"), (300_000_000_000, "5m0s"), (3_600_000_000_000, "1h0m0s"),
])
def test_go_duration(ns, text):
    assert go_duration(ns) == text


@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True),
                       st.text(alphabet="abc xyz/:-", max_size=10), min_size=1, max_size=5))
def test_env_values_round_trip_through_double_quotes(values):
    body = "ENV " + " ".join(f'{k}="{v}"' for k, v in values.items()) + "\n"
    env = env_of(run(body))
    assert {k: env[k] for k in values} == values
