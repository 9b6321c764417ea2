"""Finds the control plane `moor` talks to and the credential it presents: flags, environment,
config file, then defaults."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from moorage.cli.errors import CliError

DEFAULT_SERVER = "127.0.0.1:7440"
DEFAULT_PORT = 7440
CONFIG_KEYS = ("server", "credentials")
# What a control plane started with its default --state-dir writes: found without any setting.
DEFAULT_CREDENTIALS = "/var/lib/moorage/controlplane/admin.pem"


@dataclass(frozen=True, slots=True)
class Config:
    server: str
    # An admin.pem-style bundle (certificate, key, CA); None when none was found.
    credentials: str | None = None
    # Where the setting came from, for error messages.
    credentials_source: str = ""


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

    from moorage.manifest import yamlload

    try:
        data = yamlload.safe_load(text)
    except yamlload.TooComplex as exc:
        raise CliError(f"error: the config file {path} is refused: {exc}") from None
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


def load(server_flag: str | None = None, environ: dict[str, str] | None = None,
         credentials_flag: str | None = None) -> Config:
    """Resolves the settings: flags, then MOOR_SERVER / MOOR_CREDENTIALS, then the config file,
    then the defaults. A relative credentials path in the config file is relative to the file."""
    env = os.environ if environ is None else environ
    path = default_config_path()
    settings = read_config_file(path)
    server = server_flag or env.get("MOOR_SERVER") or settings.get("server") or DEFAULT_SERVER
    if credentials_flag:
        creds, source = credentials_flag, "--credentials"
    elif env.get("MOOR_CREDENTIALS"):
        creds, source = env["MOOR_CREDENTIALS"], "$MOOR_CREDENTIALS"
    elif settings.get("credentials"):
        creds = os.path.join(path.parent, os.path.expanduser(settings["credentials"]))
        source = f"the config file {path}"
    elif os.path.exists(DEFAULT_CREDENTIALS):
        creds, source = DEFAULT_CREDENTIALS, "the default location"
    else:
        creds, source = None, ""
    return Config(server=normalize_server(server),
                  credentials=os.path.expanduser(creds) if creds else None,
                  credentials_source=source)


def write_config(path: str | os.PathLike, server: str,
                 credentials: str | None = None) -> pathlib.Path:
    """Writes a config file atomically, readable only by its owner (it names a credential)."""
    import yaml

    target = pathlib.Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": server}
    if credentials:
        data["credentials"] = os.path.abspath(os.path.expanduser(str(credentials)))
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    from moorage.fsutil import write_atomic

    write_atomic(str(target), text, mode=0o600)
    return target


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
