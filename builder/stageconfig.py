"""A build stage's image config as its instructions change it, with Docker's semantics (pure:
every method returns a new StageState and reads no clock or file).

How the executor drives it, per stage:

    state = StageState.start(base_config, meta_args=rs.meta_args, build_args=...,
                             created=build_time(source_date_epoch, now), escape=df.escape)
    for ins in stage.instructions:
        if ins.keyword in METADATA:        # config only: apply() also writes the history
            state = state.apply(ins)
        elif ins.keyword == "WORKDIR":     # apply(), then create state.mkdir, then commit()
            state = state.apply(ins)
            ...mkdir -p state.mkdir (owned by state.user) if it is not None...
            state = state.commit(ins, diff_id=<the layer's diff id, or None for no layer>)
        elif ins.keyword == "RUN":         # state.run_argv(ins), state.run_env(), state.user,
            ...                            # state.working_dir; key on state.cache_scope()
            state = state.commit(ins, diff_id=...)
        else:                              # COPY/ADD: state.copy_spec(ins)
            state = state.commit(ins, diff_id=...)
    config = state.config_doc(labels=cli_labels)

A stage built FROM an earlier stage starts from that stage's config_doc(); its ARGs do not
carry over (an ARG's scope ends with its stage, as Docker documents).

History follows BuildKit's style, which `docker build` uses today: created_by is the
instruction (`ENV A=1`, `CMD ["/bin/sh" "-c" "x"]`, `RUN /bin/sh -c make # buildkit`), comment
`buildkit.dockerfile.v0`, and `empty_layer: true` for an entry that made no layer.

Where BuildKit and Docker's documentation differ, the documentation decides here: an ENV wins
over an ARG of the same name whatever their order, and ARGs end with their stage.
"""

from __future__ import annotations

import copy
import json
import posixpath
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from builder import shellwords
from builder.configfmt import check_signal, go_duration, go_list, go_quote_list, parse_port
from builder.dockerfile import (
    PROXY_ARGS,
    DockerfileError,
    Healthcheck,
    Instruction,
)
from builder.dockerfile_text import error

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
HISTORY_COMMENT = "buildkit.dockerfile.v0"

# Instructions that change the config only: apply() does all of their work.
METADATA = frozenset({"ENV", "ARG", "LABEL", "USER", "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT",
                      "HEALTHCHECK", "SHELL", "STOPSIGNAL", "MAINTAINER"})
# Instructions whose work the executor does, recording it with commit().
LAYER_STEPS = frozenset({"RUN", "COPY", "ADD", "WORKDIR"})


def build_time(source_date_epoch: str | int | None, now: float) -> str:
    """The `created` time of new history entries and of the config: SOURCE_DATE_EPOCH when
    given, else `now` (seconds since the epoch), as RFC 3339 UTC."""
    if source_date_epoch not in (None, ""):
        try:
            seconds = int(source_date_epoch)
        except ValueError:
            raise DockerfileError(f"invalid SOURCE_DATE_EPOCH: {source_date_epoch!r}") from None
        return rfc3339(seconds)
    return rfc3339(now)


def rfc3339(seconds: float) -> str:
    whole = int(seconds)
    frac = seconds - whole
    stamp = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(whole))
    if frac > 0:
        digits = f"{frac:.9f}"[2:].rstrip("0")
        if digits:
            stamp += "." + digits
    return stamp + "Z"


@dataclass(frozen=True, slots=True)
class CopySpec:
    """A COPY or ADD with its words expanded: the sources as written (relative to the context
    or the --from stage's root), the destination made absolute against WORKDIR (a trailing "/"
    kept: it means "into this directory")."""
    sources: tuple[str, ...]
    dest: str
    chown: str | None
    chmod: str | None
    from_: str | None
    link: bool
    created_by: str


@dataclass(frozen=True, slots=True)
class StageState:
    """One stage's config, environment and ARG scope, history and layers so far."""
    env: tuple[tuple[str, str], ...]
    args: tuple[tuple[str, str | None], ...]  # the stage's declared ARGs, in order
    meta_args: Mapping[str, str | None] = field(hash=False)
    build_args: Mapping[str, str] = field(hash=False)
    config: Mapping = field(hash=False)       # every other Config field, Docker's names
    history: tuple[Mapping, ...] = ()
    diff_ids: tuple[str, ...] = ()
    base: Mapping = field(default_factory=dict, hash=False)  # architecture, os, variant, author
    created: str = ""
    escape: str = "\\"
    path: str = "Dockerfile"
    cmd_set: bool = False
    mkdir: str | None = None   # the directory a just-applied WORKDIR asks the executor to make
    onbuild: tuple[str, ...] = ()  # the base's ONBUILD triggers (Docker would run them)
    # ARGs with a value declared after an ENV of the same name: BuildKit lets the later of
    # the two win, in RUN's environment and in expansion (the stored Env keeps the ENV).
    args_over_env: frozenset[str] = frozenset()

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def start(cls, base_config: Mapping | None, *,
              meta_args: Mapping[str, str | None] | None = None,
              build_args: Mapping[str, str | None] | None = None, created: str = "",
              escape: str = "\\", path: str = "Dockerfile",
              platform: tuple[str, str, str] = ("linux", "amd64", "")) -> StageState:
        """A stage's state from its base image's config document (None for scratch: Docker's
        scratch has WorkingDir "/" and the default PATH). A base without PATH gains the default
        one, as BuildKit adds it."""
        doc = copy.deepcopy(dict(base_config or {}))
        cfg = dict(doc.get("config") or {})
        if base_config is None:
            cfg["WorkingDir"] = "/"
        env_list = cfg.pop("Env", None) or []
        env: list[tuple[str, str]] = []
        for item in env_list:
            k, _, v = item.partition("=")
            env = _set(env, k, v)
        if not any(k == "PATH" for k, _ in env):
            env.append(("PATH", DEFAULT_PATH))
        onbuild = tuple(cfg.pop("OnBuild", None) or ())
        base = {k: doc[k] for k in ("architecture", "os", "variant", "os.version", "author")
                if doc.get(k)}
        if base_config is None or "architecture" not in base:
            base.update(os=platform[0], architecture=platform[1])
            if platform[2]:
                base["variant"] = platform[2]
        rootfs = doc.get("rootfs") or {}
        given = {k: v for k, v in (build_args or {}).items() if v is not None}
        return cls(env=tuple(env), args=(), meta_args=dict(meta_args or {}), build_args=given,
                   config=cfg, history=tuple(doc.get("history") or ()),
                   diff_ids=tuple(rootfs.get("diff_ids") or ()), base=base, created=created,
                   escape=escape, path=path, onbuild=onbuild)

    # -- reading ----------------------------------------------------------------------------

    @property
    def working_dir(self) -> str:
        return self.config.get("WorkingDir") or "/"

    @property
    def user(self) -> str:
        return self.config.get("User") or ""

    @property
    def shell(self) -> tuple[str, ...]:
        return tuple(self.config.get("Shell") or DEFAULT_SHELL)

    def arg_values(self) -> dict[str, str]:
        """The ARGs in scope that have a value."""
        return {k: v for k, v in self.args if v is not None}

    def expansion_env(self) -> dict[str, str]:
        """What `$NAME` means in this stage now: ENV values over ARG values, but an ARG
        declared (with a value) after the ENV of its name wins."""
        out = self.arg_values()
        out.update(self.env)
        out.update({k: v for k, v in self.args if k in self.args_over_env and v is not None})
        return out

    def run_env(self) -> list[str]:
        """The environment a RUN sees: the image's Env (with the values of ARGs declared
        after an ENV of their name), then the ARGs in scope that no Env shadows, then the
        proxy build args (never declared, never stored)."""
        names = {k for k, _ in self.env}
        over = {k: v for k, v in self.args if k in self.args_over_env and v is not None}
        out = [f"{k}={over.get(k, v)}" for k, v in self.env]
        for k, v in self.args:
            if v is not None and k not in names:
                out.append(f"{k}={v}")
                names.add(k)
        for k in sorted(self.build_args):
            if k in PROXY_ARGS and k not in names:
                out.append(f"{k}={self.build_args[k]}")
        return out

    def cache_scope(self) -> str:
        """A stable string of everything in the state a step's cache key must cover: the env,
        the ARGs in scope (BuildKit keys a RUN on them), the user, the working directory and
        the shell. Proxy build args stay out, as in Docker."""
        doc = {"env": [list(p) for p in self.env],
               "args": sorted([k, v] for k, v in self.args),
               "args_over_env": sorted(self.args_over_env),
               "user": self.user, "workdir": self.working_dir, "shell": list(self.shell)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def expand(self, word: str, line: int = 0) -> str:
        try:
            return shellwords.expand(word, self.expansion_env(), self.escape)
        except shellwords.ShellWordError as exc:
            raise self._error(line, str(exc)) from None

    def run_argv(self, ins: Instruction) -> list[str]:
        """A RUN's command line: exec form as written, shell form under SHELL (or /bin/sh -c)."""
        if ins.exec_form:
            return list(ins.args)
        return [*self.shell, ins.args[0]]

    def copy_spec(self, ins: Instruction) -> CopySpec:
        """A COPY's or ADD's words expanded with the stage's variables."""
        words = [self.expand(w, ins.line) for w in ins.args]
        sources, dest = tuple(words[:-1]), words[-1]
        chown = self.expand(ins.flags["chown"], ins.line) if "chown" in ins.flags else None
        chmod = self.expand(ins.flags["chmod"], ins.line) if "chmod" in ins.flags else None
        if chmod is not None:
            _check_chmod(chmod, lambda m: self._error(ins.line, m))
        parts = [ins.keyword]
        if chown is not None:
            parts.append(f"--chown={chown}")
        if chmod is not None:
            parts.append(f"--chmod={chmod}")
        parts += [*sources, dest]
        return CopySpec(sources=sources, dest=self.resolve_dest(dest), chown=chown, chmod=chmod,
                        from_=ins.flags.get("from"), link=ins.flags.get("link") == "true",
                        created_by=" ".join(parts) + " # buildkit")

    def resolve_dest(self, dest: str) -> str:
        if dest.startswith("/"):
            return dest
        slash = dest.endswith("/") or dest in (".", "")
        joined = posixpath.normpath(posixpath.join(self.working_dir, dest))
        if joined.startswith("//"):
            joined = "/" + joined.lstrip("/")
        return joined.rstrip("/") + "/" if slash else joined

    def created_by(self, ins: Instruction) -> str:
        """The history text for a step the executor ran (RUN, COPY, ADD, WORKDIR)."""
        if ins.keyword == "RUN":
            return "RUN " + self._run_text(self.run_argv(ins)) + " # buildkit"
        if ins.keyword in ("COPY", "ADD"):
            return self.copy_spec(ins).created_by
        if ins.keyword == "WORKDIR":
            return f"WORKDIR {self.working_dir}"
        raise self._error(ins.line, f"{ins.keyword} is not a step the executor runs")

    def _run_text(self, argv: list[str]) -> str:
        # BuildKit's runCommandString: "|N k=v ..." for the stage's declared ARGs, then argv
        env = dict(self.env)
        shown: dict[str, str] = {}
        for k, v in self.args:
            over = k in self.args_over_env and v is not None
            shown[k] = v if over else env.get(k, v if v is not None else "")
        prefix = [f"|{len(shown)}", *(f"{k}={v}" for k, v in shown.items())] if shown else []
        return " ".join(prefix + argv)

    # -- changing ---------------------------------------------------------------------------

    def commit(self, ins: Instruction, diff_id: str | None = None,
               created_by: str | None = None) -> StageState:
        """Record a step the executor ran: a history entry (empty_layer unless a diff_id is
        given) and the layer's diff id."""
        text = created_by if created_by is not None else self.created_by(ins)
        state = self._with_history(text, empty_layer=diff_id is None)
        if diff_id is not None:
            state = replace(state, diff_ids=(*state.diff_ids, diff_id))
        return replace(state, mkdir=None)

    def apply(self, ins: Instruction) -> StageState:
        """Apply a config-only instruction (METADATA) or WORKDIR (whose directory the executor
        then makes, see `mkdir`), with Docker's semantics."""
        handler = _HANDLERS.get(ins.keyword)
        if handler is None:
            raise self._error(ins.line, f"{ins.keyword} is not a config-only instruction")
        return handler(replace(self, mkdir=None), ins)

    def with_labels(self, labels: Mapping[str, str]) -> StageState:
        """`--label` from the command line: merged last, without a history entry."""
        merged = dict(self.config.get("Labels") or {})
        merged.update(labels)
        return self._set(Labels=merged)

    def config_doc(self, labels: Mapping[str, str] | None = None) -> dict:
        """The image config document in Docker's layout."""
        state = self.with_labels(labels) if labels else self
        cfg: dict = {}
        order = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                 "Labels", "StopSignal", "ArgsEscaped", "Healthcheck", "Shell")
        source = dict(state.config)
        source["Env"] = [f"{k}={v}" for k, v in state.env]
        for key in order:
            if source.get(key) not in (None, "", [], {}, False):
                cfg[key] = source[key]
        for key, value in source.items():  # fields of the base this builder does not model
            if key not in cfg and key not in order and key != "OnBuild" \
                    and value not in (None, "", [], {}, False):
                cfg[key] = value
        doc: dict = dict(state.base)
        doc["config"] = cfg
        if state.created:
            doc["created"] = state.created
        doc["history"] = [dict(h) for h in state.history]
        doc["rootfs"] = {"type": "layers", "diff_ids": list(state.diff_ids)}
        return dict(sorted(doc.items()))

    # -- helpers ----------------------------------------------------------------------------

    def _error(self, line: int, message: str) -> DockerfileError:
        return error(self.path, line, message)

    def _set(self, **fields) -> StageState:
        cfg = dict(self.config)
        for k, v in fields.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        return replace(self, config=cfg)

    def _with_history(self, created_by: str, empty_layer: bool) -> StageState:
        entry: dict = {}
        if self.created:
            entry["created"] = self.created
        entry["created_by"] = created_by
        entry["comment"] = HISTORY_COMMENT
        if empty_layer:
            entry["empty_layer"] = True
        return replace(self, history=(*self.history, entry))


def _set(env: list[tuple[str, str]] | tuple, key: str, value: str) -> list[tuple[str, str]]:
    out = list(env)
    for i, (k, _) in enumerate(out):
        if k == key:
            out[i] = (key, value)
            return out
    out.append((key, value))
    return out


def _check_chmod(mode: str, err) -> None:
    if mode and all(c in "01234567" for c in mode):
        if int(mode, 8) <= 0o7777:
            return
    elif mode and all(c in "ugoarwxXst+-=," for c in mode):
        return  # symbolic (chmod(1) style), BuildKit 1.14+
    raise err(f"invalid chmod parameter: '{mode}'. it should be octal string and between 0 "
              "and 07777")


# -- one handler per config-only instruction -------------------------------------------------

def _env(st: StageState, ins: Instruction) -> StageState:
    # one environment applies through the line: `ENV a=1 b=$a` sees the a from before it
    values = [(st.expand(k, ins.line), st.expand(v or "", ins.line)) for k, v in ins.pairs]
    env = list(st.env)
    for k, v in values:
        if not k:
            raise st._error(ins.line, "ENV names can not be blank")
        env = _set(env, k, v)
    st = replace(st, env=tuple(env), args_over_env=st.args_over_env - {k for k, _ in values})
    return st._with_history("ENV " + " ".join(f"{k}={v}" for k, v in values), True)


def _label(st: StageState, ins: Instruction) -> StageState:
    values = [(st.expand(k, ins.line), st.expand(v or "", ins.line)) for k, v in ins.pairs]
    labels = dict(st.config.get("Labels") or {})
    for k, v in values:
        if not k:
            raise st._error(ins.line, "LABEL names can not be blank")
        labels[k] = v
    st = st._set(Labels=labels)
    return st._with_history("LABEL " + " ".join(f"{k}={v}" for k, v in values), True)


def _arg(st: StageState, ins: Instruction) -> StageState:
    args = list(st.args)
    shown = []
    for name, default in ins.pairs:
        if name in st.build_args:
            value: str | None = st.build_args[name]
        elif default is not None:
            value = st.expand(default, ins.line)  # later ARGs on the line see earlier ones
        else:
            value = st.meta_args.get(name)
        args = [(k, v) for k, v in args if k != name] + [(name, value)]
        over = st.args_over_env - {name}
        if value is not None and any(k == name for k, _ in st.env):
            over |= {name}
        st = replace(st, args=tuple(args), args_over_env=over)
        shown.append(name if value is None else f"{name}={value}")
    return st._with_history("ARG " + " ".join(shown), True)


def _user(st: StageState, ins: Instruction) -> StageState:
    user = st.expand(ins.args[0], ins.line)
    if not user:
        raise st._error(ins.line, "USER requires exactly one argument")
    return st._set(User=user)._with_history(f"USER {user}", True)


def _workdir(st: StageState, ins: Instruction) -> StageState:
    path = st.expand(ins.args[0], ins.line)
    if not path:
        raise st._error(ins.line, "invalid empty working directory")
    if not path.startswith("/"):
        path = posixpath.join(st.working_dir, path)
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    st = st._set(WorkingDir=path)
    return replace(st, mkdir=path)


def _expose(st: StageState, ins: Instruction) -> StageState:
    try:
        words = shellwords.expand_words(" ".join(ins.args), st.expansion_env(), st.escape)
    except shellwords.ShellWordError as exc:
        raise st._error(ins.line, str(exc)) from None
    ports = dict(st.config.get("ExposedPorts") or {})
    added: list[str] = []
    for word in sorted(words):
        try:
            for key in parse_port(word):
                ports[key] = {}
                added.append(key)
        except ValueError as exc:
            raise st._error(ins.line, f"EXPOSE {word}: {exc}") from None
    st = st._set(ExposedPorts=dict(sorted(ports.items())))
    return st._with_history("EXPOSE " + go_list(added), True)


def _volume(st: StageState, ins: Instruction) -> StageState:
    vols = dict(st.config.get("Volumes") or {})
    added = []
    for word in ins.args:
        v = st.expand(word, ins.line).strip()
        if not v:
            raise st._error(ins.line, "VOLUME specified can not be an empty string")
        vols[v] = {}
        added.append(v)
    return st._set(Volumes=vols)._with_history("VOLUME " + go_list(added), True)


def _cmd(st: StageState, ins: Instruction) -> StageState:
    cmd = list(ins.args) if ins.exec_form else [*st.shell, ins.args[0]]
    st = replace(st._set(Cmd=cmd, ArgsEscaped=True), cmd_set=True)
    return st._with_history("CMD " + go_quote_list(cmd), True)


def _entrypoint(st: StageState, ins: Instruction) -> StageState:
    ep = list(ins.args) if ins.exec_form else [*st.shell, ins.args[0]]
    fields: dict = {"Entrypoint": ep or None, "ArgsEscaped": True}
    if not st.cmd_set:
        fields["Cmd"] = None  # an ENTRYPOINT drops the CMD the stage inherited
    st = st._set(**fields)
    return st._with_history("ENTRYPOINT " + go_quote_list(ep), True)


def healthcheck_config(hc: Healthcheck) -> dict:
    """Docker's HealthConfig JSON (zero values omitted, as Go's omitempty does)."""
    out: dict = {"Test": list(hc.test)}
    for key, value in (("Interval", hc.interval), ("Timeout", hc.timeout),
                       ("StartPeriod", hc.start_period), ("StartInterval", hc.start_interval),
                       ("Retries", hc.retries)):
        if value:
            out[key] = value
    return out


def _healthcheck(st: StageState, ins: Instruction) -> StageState:
    hc = ins.healthcheck
    assert hc is not None
    text = (f"HEALTHCHECK {{Test:{go_list(list(hc.test))} Interval:{go_duration(hc.interval)} "
            f"Timeout:{go_duration(hc.timeout)} StartPeriod:{go_duration(hc.start_period)} "
            f"StartInterval:{go_duration(hc.start_interval)} Retries:{hc.retries}}}")
    return st._set(Healthcheck=healthcheck_config(hc))._with_history(text, True)


def _shell(st: StageState, ins: Instruction) -> StageState:
    return st._set(Shell=list(ins.args))._with_history("SHELL " + go_list(list(ins.args)), True)


def _stopsignal(st: StageState, ins: Instruction) -> StageState:
    sig = st.expand(ins.args[0], ins.line)
    try:
        check_signal(sig)
    except ValueError as exc:
        raise st._error(ins.line, str(exc)) from None
    return st._set(StopSignal=sig)._with_history(f"STOPSIGNAL {sig}", True)


def _maintainer(st: StageState, ins: Instruction) -> StageState:
    base = dict(st.base)
    base["author"] = ins.args[0]
    st = replace(st, base=base)
    return st._with_history(f"MAINTAINER {ins.args[0]}", True)


_HANDLERS = {
    "ENV": _env, "LABEL": _label, "ARG": _arg, "USER": _user, "WORKDIR": _workdir,
    "EXPOSE": _expose, "VOLUME": _volume, "CMD": _cmd, "ENTRYPOINT": _entrypoint,
    "HEALTHCHECK": _healthcheck, "SHELL": _shell, "STOPSIGNAL": _stopsignal,
    "MAINTAINER": _maintainer,
}
