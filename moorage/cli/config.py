"""Finds the control plane `moor` talks to, and its token: flags, environment, config file."""

from __future__ import annotations

import os
import pathlib
import tempfile
from dataclasses import dataclass

from moorage.cli.client import CliError

DEFAULT_SERVER = "127.0.0.1:7440"
DEFAULT_PORT = 7440
CONFIG_KEYS = ("server", "token")


@dataclass(frozen=True, slots=True)
class Config:
    server: str
    token: str | None = None


def default_config_path() -> pathlib.Path:
    explicit = os.environ.get("MOOR_CONFIG")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return pathlib.Path(base) / "moorage" / "config.yaml"


def normalize_server(server: str) -> str:
    """`host` becomes `host:7440`; anything else is passed to gRPC as written."""
    server = server.strip()
    if not server:
        raise CliError("error: the server address is empty; use HOST:PORT")
    # A bare IPv6 address has colons but no port; only bracketed forms can carry one.
    if ":" not in server or (server.count(":") > 1 and not server.startswith("[")):
        if ":" in server:
            return f"[{server}]:{DEFAULT_PORT}"
        return f"{server}:{DEFAULT_PORT}"
    return server


def read_config_file(path: pathlib.Path) -> dict[str, str]:
    """The file's settings; an absent file is no settings, a malformed one is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"error: cannot read the config file {path}: {_reason(exc)}") from None
    import yaml  # only when a config file exists, to keep `moor --help` fast

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise CliError(f"error: the config file {path} is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"error: the config file {path} must be a mapping with keys "
                       f"{', '.join(CONFIG_KEYS)}")
    settings: dict[str, str] = {}
    for key, value in data.items():
        # Strict, because a misspelt `sever:` silently ignored would send requests elsewhere.
        if key not in CONFIG_KEYS:
            raise CliError(f'error: the config file {path} has an unknown key "{key}" '
                           f"(known: {', '.join(CONFIG_KEYS)})")
        if value is None:
            continue
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise CliError(f'error: the config file {path}: "{key}" must be a string')
        settings[key] = str(value)
    return settings


def load(server_flag: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Resolves the settings: --server, then MOOR_SERVER, then the config file, then the default."""
    env = os.environ if environ is None else environ
    settings = read_config_file(default_config_path())
    server = server_flag or env.get("MOOR_SERVER") or settings.get("server") or DEFAULT_SERVER
    token = settings.get("token") or None
    return Config(server=normalize_server(server), token=token)


def write_config(path: str | os.PathLike, server: str, token: str | None = None) -> pathlib.Path:
    """Writes a config file atomically, readable only by its owner since it may hold a token."""
    import yaml

    target = pathlib.Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": server}
    if token:
        data["token"] = token
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
