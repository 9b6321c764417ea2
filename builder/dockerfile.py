"""The Dockerfile front end (pure): parser directives, escapes, line continuations, comments,
exec-form JSON, instructions with their flags, stages, and errors naming the line.

BuildKit's parser is the reference (docs.docker.com's "Dockerfile reference" is its text); where
the two differ, what `docker build` does today decides, except where noted.

Interface (the executor, buildcmd/executor, relies on it):

  parse(text, path="Dockerfile") -> Dockerfile        raises DockerfileError
  Dockerfile.meta_args: tuple[Arg, ...]                ARGs before the first FROM
  Dockerfile.stages:    tuple[Stage, ...]
  Dockerfile.escape:    "\\" or "`" (the `# escape=` directive); .syntax: the `# syntax=` value
                       (accepted and otherwise ignored: no frontend image is ever run)
  Stage.index, .name ("" when unnamed, else lower-cased), .base (FROM's image word, unexpanded),
       .platform (FROM --platform, unexpanded, "" when absent), .instructions (FROM excluded),
       .line, .original
  Instruction.keyword ("RUN", ...), .flags {"from": "...", "chown": ...}, .args (tuple of
       words; shell form: one string), .exec_form, .line (1-based, first line), .end_line,
       .original (as written, continuations joined: what progress prints), .pairs,
       .healthcheck
  stage_order(df, target, build_args, auto_args=None) -> list[ResolvedStage]   the stages the
       target needs, in build order, with each FROM expanded by the meta ARGs; refuses missing
       stages, cycles, ARGs without value in FROM (DockerfileError naming the line).
       build_args: {name: value}, a None value counting as not given; auto_args:
       platform_args(os, arch) for TARGETARCH and the like
  ResolvedStage.stage, .index, .name, .base (expanded), .base_stage (index or None),
       .is_scratch, .platform (expanded), .deps (stage indexes), .from_images,
       .copy_from {COPY line: stage index | image ref}, .meta_args (for StageState.start)
  unused_build_args(df, order, build_args) -> the build args no ARG of the build declares

Instruction.args, per keyword (words are as written: quotes kept and variables unexpanded,
except where said; StageState.expand / copy_spec expand them as Docker does):

  RUN CMD ENTRYPOINT   shell form: (the command text,) and exec_form False; exec form
                       (a JSON array): the array's strings and exec_form True
  SHELL                the JSON array's strings (SHELL must be JSON)
  COPY ADD             the source words, then the destination as the last word; JSON form
                       (exec_form True) for paths with spaces
  ENV LABEL            (key, value, key, value, ...) with quotes and escapes removed but
                       variables NOT expanded; .pairs holds the same pairs as written (quotes
                       kept) for StageState, which expands them with Docker's rules
  ARG                  the names; .pairs is ((name, default or None), ...), defaults as written
  EXPOSE FROM          the whitespace-separated words
  VOLUME               the paths (JSON or words)
  USER WORKDIR STOPSIGNAL MAINTAINER   (the rest of the line,)
  HEALTHCHECK          the command as for CMD (empty for NONE); .healthcheck the parsed config

Flags are `--name=value` words before the arguments; a boolean flag (`--link`) may be bare and
is stored as "true" or "false". Each instruction takes only its own flags; the ones this
builder does not implement (RUN --mount/--network/--security/--device, COPY --exclude/--parents,
ADD --checksum/--keep-git-dir/--unpack/--exclude) are refused by name, as are ONBUILD and
heredocs in COPY and ADD. A RUN with heredocs (`RUN <<EOF`) becomes shell form as in BuildKit:
args is (the script,) when the command is the heredoc alone, else (the line, then each body and
its terminator,) for the shell to read; .heredocs keeps the bodies.

Errors are one line, `<path>:<line>: <what>`, or `<path>: <what>` when no line applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from builder import shellwords
from builder.dockerfile_text import (
    WHITESPACE,
    DockerfileError,
    Heredoc,
    JSONArrayError,
    LogicalLine,
    error,
    is_reference,
    json_array,
    logical_lines,
    parse_duration,
    split_flags,
)

__all__ = ["Arg", "Dockerfile", "DockerfileError", "Healthcheck", "Heredoc", "Instruction",
           "ResolvedStage", "Stage", "find_stage", "is_reference", "meta_arg_values", "parse",
           "parse_duration", "platform_args", "stage_order", "unused_build_args"]


# -- the parsed shapes ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    default: str | None  # as written (quotes kept); None: `ARG NAME` without a value
    line: int


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Docker's HealthConfig: Test is ["NONE"], ["CMD", arg...] or ["CMD-SHELL", command];
    durations in nanoseconds, 0 meaning "the runtime's default"."""
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: tuple[str, ...]
    flags: dict[str, str] = field(default_factory=dict, hash=False)
    exec_form: bool = False
    line: int = 0
    original: str = ""
    end_line: int = 0
    pairs: tuple[tuple[str, str | None], ...] = ()
    healthcheck: Healthcheck | None = None
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str
    base: str
    platform: str
    instructions: tuple[Instruction, ...]
    line: int
    original: str = ""

    @property
    def display_name(self) -> str:
        """The name progress and errors use: the AS name, else stage-N, as BuildKit does."""
        return self.name or f"stage-{self.index}"


@dataclass(frozen=True, slots=True)
class Dockerfile:
    path: str
    escape: str
    meta_args: tuple[Arg, ...]
    stages: tuple[Stage, ...]
    syntax: str | None = None

    def error(self, line: int | None, message: str) -> DockerfileError:
        return error(self.path, line, message)


# -- instruction table ---------------------------------------------------------------------

# keyword -> (string flags, boolean flags)
_FLAGS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "FROM": (frozenset({"platform"}), frozenset()),
    "COPY": (frozenset({"from", "chown", "chmod"}), frozenset({"link"})),
    "ADD": (frozenset({"chown", "chmod"}), frozenset({"link"})),
    "HEALTHCHECK": (frozenset({"interval", "timeout", "start-period", "start-interval",
                               "retries"}), frozenset()),
}
_UNSUPPORTED_FLAGS: dict[str, frozenset[str]] = {
    "RUN": frozenset({"mount", "network", "security", "device"}),
    "COPY": frozenset({"exclude", "parents"}),
    "ADD": frozenset({"checksum", "keep-git-dir", "unpack", "exclude"}),
}
KEYWORDS = frozenset({"FROM", "RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "ENV", "LABEL",
                      "ARG", "EXPOSE", "VOLUME", "USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER",
                      "HEALTHCHECK", "ONBUILD"})
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")


# -- flags ----------------------------------------------------------------------------------

def _parse_flags(keyword: str, words: list[str], path: str, line: int) -> dict[str, str]:
    strings, bools = _FLAGS.get(keyword, (frozenset(), frozenset()))
    unsupported = _UNSUPPORTED_FLAGS.get(keyword, frozenset())
    out: dict[str, str] = {}
    for word in words:
        name, eq, value = word[2:].partition("=")
        if name in unsupported:
            raise error(path, line, f"{keyword} --{name} is not supported by this builder")
        if name not in strings and name not in bools:
            raise error(path, line, f"unknown flag: --{name}")
        if name in out:
            raise error(path, line, f"duplicate flag specified: --{name}")
        if name in bools:
            if not eq:
                value = "true"
            elif value.lower() not in ("true", "false"):
                raise error(path, line,
                             f"expecting boolean value for flag {name}, not: {value}")
            value = value.lower()
        elif not eq:
            raise error(path, line, f"missing a value on flag: --{name}")
        out[name] = value
    return out


# -- argument forms -------------------------------------------------------------------------

def _heredoc_command(rest: str, docs: tuple[Heredoc, ...], err) -> str:
    """A RUN with here-documents as the shell-form text BuildKit runs: a command that is one
    heredoc alone runs its body as the script; anything else is the line followed by each body
    and its terminator, for the shell to read as real here-documents. Bodies are never
    expanded by the builder (BuildKit ignores the quoting of the name for RUN)."""
    if len(docs) == 1 and rest.strip() == docs[0].word:
        body = docs[0].content
        if docs[0].chomp:
            body = re.sub(r"(?m)^\t+", "", body)
        if body.startswith("#!"):
            raise err("RUN with a #! heredoc (a script run by its interpreter) is not "
                      "supported by this builder")
        return body
    return rest + "".join("\n" + d.content + d.name for d in docs)


# -- one instruction ------------------------------------------------------------------------

_MIN_HEALTH_DURATION = 1_000_000  # 1ms, Docker's container.MinimumDuration


def _health_duration(flags: dict[str, str], name: str, path: str, line: int) -> int:
    value = flags.get(name, "")
    if not value:
        return 0
    try:
        d = parse_duration(value)
    except ValueError as exc:
        raise error(path, line, f"HEALTHCHECK --{name}: {exc}") from None
    if d == 0:
        return 0
    if d < _MIN_HEALTH_DURATION:
        raise error(path, line, f'Interval "{name}" cannot be less than 1ms')
    return d


def _parse_instruction(ln: LogicalLine, escape: str, path: str) -> Instruction:
    stripped = ln.text.strip()
    parts = WHITESPACE.split(stripped, maxsplit=1)
    word = parts[0]
    keyword = word.upper()
    rest = parts[1] if len(parts) > 1 else ""
    line = ln.start

    def err(message: str) -> DockerfileError:
        return error(path, line, message)

    if keyword not in KEYWORDS:
        raise err(f"unknown instruction: {word}")
    if keyword == "ONBUILD":
        raise err("ONBUILD is not supported by this builder")
    flag_words, rest = split_flags(rest)
    rest = rest.strip()
    flags = _parse_flags(keyword, flag_words, path, line)
    base = dict(keyword=keyword, flags=flags, line=line, original=stripped, end_line=ln.end)

    if ln.heredocs:
        if keyword != "RUN":
            raise err(f"{keyword} with a heredoc ({ln.heredocs[0].word}) is not supported by "
                      "this builder")
        return Instruction(args=(_heredoc_command(rest, ln.heredocs, err),), heredocs=ln.heredocs,
                           **base)

    try:
        if keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
            words = json_array(rest)
            if words is not None:
                return Instruction(args=tuple(words), exec_form=True, **base)
            if keyword == "SHELL":
                raise err("SHELL requires the arguments to be in JSON form")
            if not rest:
                raise err(f"{keyword} requires at least one argument")
            return Instruction(args=(rest,), **base)
        if keyword in ("COPY", "ADD", "VOLUME"):
            words = json_array(rest)
            exec_form = words is not None
            if words is None:
                words = WHITESPACE.split(rest) if rest else []
            if keyword == "VOLUME":
                if not words:
                    raise err("VOLUME requires at least one argument")
                if any(not w.strip() for w in words):
                    raise err("VOLUME specified can not be an empty string")
            elif len(words) < 2:
                raise err(f"{keyword} requires at least two arguments, but only one was "
                          "provided. Destination could not be determined")
            return Instruction(args=tuple(words), exec_form=exec_form, **base)
        if keyword == "HEALTHCHECK":
            return _parse_healthcheck(rest, base, flags, path, line)
    except JSONArrayError as exc:
        raise err(f"malformed JSON in exec form: {exc}") from None

    if keyword in ("ENV", "LABEL"):
        pairs = _parse_name_values(keyword, rest, escape, err)
        args: list[str] = []
        for k, v in pairs:
            try:
                args += [shellwords.unquote(k, escape), shellwords.unquote(v or "", escape)]
            except shellwords.ShellWordError as exc:
                raise err(f"{keyword}: {exc}") from None
        return Instruction(args=tuple(args), pairs=tuple(pairs), **base)
    if keyword == "ARG":
        words = shellwords.split_words(rest, escape)
        if not words:
            raise err("ARG requires at least one argument")
        arg_pairs: list[tuple[str, str | None]] = []
        for w in words:
            name, eq, value = w.partition("=")
            if not name:
                raise err("ARG names can not be blank")
            arg_pairs.append((name, value if eq else None))
        return Instruction(args=tuple(n for n, _ in arg_pairs), pairs=tuple(arg_pairs), **base)
    if keyword in ("FROM", "EXPOSE"):
        words = WHITESPACE.split(rest) if rest else []
        if not words:
            raise err(f"{keyword} requires at least one argument")
        return Instruction(args=tuple(words), **base)
    # USER WORKDIR STOPSIGNAL MAINTAINER: the rest of the line
    if not rest:
        raise err(f"{keyword} requires exactly one argument")
    return Instruction(args=(rest,), **base)


def _parse_name_values(keyword: str, rest: str, escape: str, err) -> list[tuple[str, str]]:
    words = shellwords.split_words(rest, escape)
    if not words:
        raise err(f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        # the legacy form: KEY rest-of-line
        parts = WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise err(f"{keyword} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for w in words:
        if "=" not in w:
            raise err(f"Syntax error - can't find = in {w!r}. Must be of the form: name=value")
        k, _, v = w.partition("=")
        if not k:
            raise err(f"{keyword} names can not be blank")
        pairs.append((k, v))
    return pairs


def _parse_healthcheck(rest: str, base: dict, flags: dict[str, str], path: str,
                       line: int) -> Instruction:
    parts = WHITESPACE.split(rest, maxsplit=1) if rest else []
    if not parts:
        raise error(path, line, "HEALTHCHECK requires at least one argument")
    kind = parts[0].upper()
    cmd = parts[1].strip() if len(parts) > 1 else ""
    if kind == "NONE":
        if cmd:
            raise error(path, line, "HEALTHCHECK NONE takes no arguments")
        return Instruction(args=(), healthcheck=Healthcheck(test=("NONE",)), **base)
    if kind != "CMD":
        raise error(path, line, f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    words = json_array(cmd)
    if words is not None:
        if not words:
            raise error(path, line, "Missing command after HEALTHCHECK CMD")
        test = ("CMD", *words)
        args, exec_form = tuple(words), True
    else:
        if not cmd:
            raise error(path, line, "Missing command after HEALTHCHECK CMD")
        test = ("CMD-SHELL", cmd)
        args, exec_form = (cmd,), False
    retries = 0
    if flags.get("retries", ""):
        try:
            retries = int(flags["retries"])
        except ValueError:
            raise error(path, line, f"HEALTHCHECK --retries: invalid number "
                                     f"{flags['retries']!r}") from None
        if retries < 0:
            raise error(path, line, f"--retries cannot be negative ({retries})")
    hc = Healthcheck(test=test,
                     interval=_health_duration(flags, "interval", path, line),
                     timeout=_health_duration(flags, "timeout", path, line),
                     start_period=_health_duration(flags, "start-period", path, line),
                     start_interval=_health_duration(flags, "start-interval", path, line),
                     retries=retries)
    return Instruction(args=args, exec_form=exec_form, healthcheck=hc, **base)


# -- the whole file -------------------------------------------------------------------------

def parse(text: str, path: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile's text into its meta ARGs and stages. Pure; raises DockerfileError."""
    lines, escape, syntax = logical_lines(text, path)
    if not lines:
        raise error(path, None, "no instructions")
    meta: list[Arg] = []
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    header: Instruction | None = None

    def close() -> None:
        if header is not None:
            stages.append(_stage(len(stages), header, current or [], path))

    for ln in lines:
        ins = _parse_instruction(ln, escape, path)
        if ins.keyword == "FROM":
            close()
            header, current = ins, []
            continue
        if header is None:
            if ins.keyword == "ARG":
                meta.extend(Arg(n, d, ins.line) for n, d in ins.pairs)
                continue
            raise error(path, ins.line, f"no FROM before {ins.keyword}")
        assert current is not None
        current.append(ins)
    close()
    if not stages:
        raise error(path, None, "no FROM: the Dockerfile has no build stage")
    return Dockerfile(path=path, escape=escape, meta_args=tuple(meta), stages=tuple(stages),
                      syntax=syntax)


def _stage(index: int, ins: Instruction, body: list[Instruction], path: str) -> Stage:
    args = ins.args
    name = ""
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise error(path, ins.line, f"invalid name for build stage: {args[2]!r}, name "
                                         "can't start with a number or contain symbols")
    elif len(args) != 1:
        raise error(path, ins.line, "FROM requires either one or three arguments")
    return Stage(index=index, name=name, base=args[0], platform=ins.flags.get("platform", ""),
                 instructions=tuple(body), line=ins.line, original=ins.original)


# -- stages ---------------------------------------------------------------------------------

SCRATCH = "scratch"

PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                        "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})


def platform_args(os_name: str = "linux", arch: str = "amd64",
                  variant: str = "") -> dict[str, str]:
    """The automatic platform ARGs (TARGETPLATFORM, BUILDARCH, ...) for one native platform:
    global-scope values, visible in a stage only after `ARG NAME`."""
    plat = f"{os_name}/{arch}" + (f"/{variant}" if variant else "")
    out = {}
    for prefix in ("TARGET", "BUILD"):
        out.update({f"{prefix}PLATFORM": plat, f"{prefix}OS": os_name,
                    f"{prefix}ARCH": arch, f"{prefix}VARIANT": variant})
    return out


@dataclass(frozen=True, slots=True)
class ResolvedStage:
    """One stage to build: its FROM expanded, what it depends on, and where each COPY --from
    reads."""
    stage: Stage
    base: str                     # the expanded FROM word ("scratch", an image, a stage name)
    base_stage: int | None        # the index of the earlier stage it builds on, if any
    platform: str                 # FROM --platform, expanded ("" when absent)
    deps: tuple[int, ...]         # indexes of the stages it needs (base and COPY --from)
    from_images: tuple[str, ...]  # images it copies from (COPY --from=<image>)
    copy_from: Mapping[int, int | str]  # COPY line -> stage index or image reference
    meta_args: Mapping[str, str | None]  # the global ARG values (after --build-arg)

    @property
    def index(self) -> int:
        return self.stage.index

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def is_scratch(self) -> bool:
        return self.base_stage is None and self.base.lower() == SCRATCH


def meta_arg_values(df: Dockerfile, build_args: Mapping[str, str | None] | None = None,
                    auto_args: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The global ARGs' values: a --build-arg wins, else the default expanded with the ARGs
    before it, else None (declared without a value). `auto_args` (platform_args()) are
    predeclared. A build arg given as None (`--build-arg NAME` with NAME unset) counts as not
    given: the CLI resolves a bare name from its environment."""
    given = {k: v for k, v in (build_args or {}).items() if v is not None}
    values: dict[str, str | None] = {k: given.get(k, v) for k, v in (auto_args or {}).items()}
    for arg in df.meta_args:
        if arg.name in given:
            values[arg.name] = given[arg.name]
        elif arg.default is not None:
            env = {k: v for k, v in values.items() if v is not None}
            try:
                values[arg.name] = shellwords.expand(arg.default, env, df.escape)
            except shellwords.ShellWordError as exc:
                raise df.error(arg.line, f"ARG {arg.name}: {exc}") from None
        else:
            values.setdefault(arg.name, None)  # `ARG TARGETARCH` keeps the automatic value
    return values


def find_stage(df: Dockerfile, name: str) -> Stage | None:
    """The stage a --target or --from name means: names are case-insensitive, and the last
    definition of a repeated name wins, as BuildKit binds it."""
    key = name.lower()
    found = None
    for st in df.stages:
        if st.name and st.name == key:
            found = st
    return found


def stage_order(df: Dockerfile, target: str | None = None,
                build_args: Mapping[str, str | None] | None = None,
                auto_args: Mapping[str, str] | None = None) -> list[ResolvedStage]:
    """The stages `target` (default: the last) needs, in build order (file order, which every
    dependency respects), each with its FROM and COPY --from resolved."""
    metas = meta_arg_values(df, build_args, auto_args)
    env = {k: v for k, v in metas.items() if v is not None}
    resolved: list[ResolvedStage] = []
    for st in df.stages:
        try:
            base, unset = shellwords.expand_reporting(st.base, env, df.escape)
            platform = shellwords.expand(st.platform, env, df.escape) if st.platform else ""
        except shellwords.ShellWordError as exc:
            raise df.error(st.line, f"FROM: {exc}") from None
        if not base:
            raise df.error(st.line, f"base name ({st.base}) should not be blank")
        if st.platform and not platform:
            raise df.error(st.line, f"empty platform value from expression {st.platform}")
        base_stage = None
        for earlier in df.stages[:st.index]:
            if earlier.name and earlier.name == base.lower():
                base_stage = earlier.index  # the latest earlier definition
        if base_stage is None and not is_reference(base):
            hint = ""
            if unset:
                names = ", ".join(sorted(unset))
                hint = f"; {names} had no value (an ARG before the first FROM, or --build-arg)"
            raise df.error(st.line, f"invalid reference format: {base!r} (FROM {st.base}{hint})")
        deps: set[int] = set() if base_stage is None else {base_stage}
        images: list[str] = []
        copy_from: dict[int, int | str] = {}
        for ins in st.instructions:
            if ins.keyword != "COPY" or "from" not in ins.flags:
                continue
            ref = _copy_source(df, st, ins)
            copy_from[ins.line] = ref
            if isinstance(ref, int):
                deps.add(ref)
            elif ref not in images:
                images.append(ref)
        resolved.append(ResolvedStage(stage=st, base=base, base_stage=base_stage,
                                      platform=platform, deps=tuple(sorted(deps)),
                                      from_images=tuple(images), copy_from=copy_from,
                                      meta_args=metas))

    if target:
        chosen = find_stage(df, target)
        if chosen is None:
            raise DockerfileError(f'target stage "{target}" could not be found')
        want = chosen.index
    else:
        want = len(df.stages) - 1
    needed: set[int] = set()
    _visit(df, resolved, want, needed, [])
    return [r for r in resolved if r.index in needed]


def unused_build_args(df: Dockerfile, order: list[ResolvedStage],
                      build_args: Mapping[str, str | None]) -> list[str]:
    """The --build-arg names that no ARG of the stages built (nor of the global scope)
    declares, proxy args aside: Docker's legacy builder warned "One or more build-args were not
    consumed"."""
    declared = {a.name for a in df.meta_args}
    for rs in order:
        for ins in rs.stage.instructions:
            if ins.keyword == "ARG":
                declared.update(name for name, _ in ins.pairs)
    return sorted(k for k in build_args if k not in declared and k not in PROXY_ARGS)


def _visit(df: Dockerfile, resolved: list[ResolvedStage], index: int, needed: set[int],
           path: list[int]) -> None:
    # references only ever point backwards, so a cycle cannot be written; the check stays as
    # the guard of that invariant
    if index in path:
        raise df.error(df.stages[index].line, "circular dependency detected on stage: "
                       f"{df.stages[index].display_name}")
    if index in needed:
        return
    path.append(index)
    for dep in resolved[index].deps:
        _visit(df, resolved, dep, needed, path)
    path.pop()
    needed.add(index)


def _copy_source(df: Dockerfile, st: Stage, ins: Instruction) -> int | str:
    word = ins.flags["from"]
    if "$" in word:
        raise df.error(ins.line, "variable expansion is not supported for --from, define a new "
                       "stage with FROM using ARG from global scope as a workaround")
    if not word:
        raise df.error(ins.line, "COPY --from needs a stage name, a stage index or an image")
    named = find_stage(df, word)
    index: int | None = named.index if named else None
    if index is None and word.isdigit():
        index = int(word)
        if index >= len(df.stages):
            raise df.error(ins.line, f"COPY --from={word}: there is no stage {index} (the "
                           f"Dockerfile has {len(df.stages)})")
    if index is None:
        if not is_reference(word):
            raise df.error(ins.line, f"COPY --from={word}: no stage of that name, and not an "
                           "image reference")
        return word  # an image reference
    if index >= st.index:
        what = "itself" if index == st.index else "a later stage"
        raise df.error(ins.line, f'cannot copy from stage "{word}", it needs to be defined '
                       f'before current stage "{st.display_name}" (a stage cannot copy from '
                       f"{what})")
    return index
