"""Builds the ConfigMaps and Secrets of `moor create` from --from-literal, --from-file and
--from-env-file as kubectl builds them: key rules, duplicates, UTF-8 or binaryData.

Pure: files come in already read, and the environment as a mapping. No message here ever
holds a value, since it may be a Secret's.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moorage.model import configs
from moorage.v1 import objects_pb2 as pb

# Kubernetes' rule for environment variable names, which kubectl applies to env-file keys.
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
ENV_NAME_RULE = ("a valid environment variable name must consist of alphabetic characters, "
                 "digits, '_', '-', or '.', and must not start with a digit (e.g. "
                 "'my.env-name', or 'MY_ENV.NAME', or 'MyEnvName1', regex used for validation "
                 "is '[-._a-zA-Z][-._a-zA-Z0-9]*')")
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_DOCKER_SERVER = "https://index.docker.io/v1/"
TLS_CERT_KEY, TLS_PRIVATE_KEY = "tls.crt", "tls.key"


class BuildError(ValueError):
    """A source kubectl would refuse; the message is one line without `error: `."""


@dataclass(frozen=True, slots=True)
class FileSource:
    """One file of --from-file, read: its key (given, or the file's name) and bytes."""

    key: str
    path: str
    content: bytes


@dataclass(frozen=True, slots=True)
class EnvFile:
    path: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Sources:
    literals: Sequence[str] = ()
    files: Sequence[FileSource] = ()
    env_files: Sequence[EnvFile] = ()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parse_literal(source: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (key, value); the value may hold `=` itself."""
    key, sep, value = source.partition("=")
    if not sep:
        # No `=`: the text holds no value to leak, only what was meant as a key.
        raise BuildError(f"invalid literal source {source}, expected key=value")
    return key, value


def parse_file_source(source: str) -> tuple[str, str]:
    """`[KEY=]PATH` -> (key or "" for the file's own name, path), with kubectl's rules."""
    count = source.count("=")
    if count == 0:
        return "", source
    if count > 1:
        raise BuildError("key names or file paths cannot contain '='")
    key, _, path = source.partition("=")
    if not key:
        raise BuildError(f"key name for file path {path} missing")
    if not path:
        raise BuildError(f"file path for key name {key} missing")
    return key, path


def parse_env_file(env: EnvFile, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The KEY=VALUE lines of an env file. As kubectl: leading blanks are dropped, blank lines
    and `#` lines skipped, a BOM on the first line ignored, the value kept as written (no
    quotes removed), and a bare `KEY` takes its value from `environ`."""
    out = []
    for number, raw in enumerate(env.content.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(UTF8_BOM)
        raw = raw.removesuffix(b"\r")   # CRLF files read as their author meant them
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            raise BuildError(f"env file {env.path} contains invalid utf8 bytes at line "
                             f"{number}") from None
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not ENV_NAME.match(key):
            raise BuildError(f"{_quote(key)} is not a valid key name: {ENV_NAME_RULE} "
                             f"(env file {env.path}, line {number})")
        out.append((key, value if sep else environ.get(key, "")))
    return out


class _Keys:
    """The keys added so far, in which section (Data or BinaryData), for kubectl's errors."""

    def __init__(self, what: str, name: str):
        self.what, self.name = what, name
        self.section: dict[str, str] = {}
        self.entries: list[tuple[str, bytes]] = []

    def add(self, key: str, value: bytes, section: str = "Data") -> None:
        problem = configs.key_problem(key)
        if problem:
            raise BuildError(f"{_quote(key)} is not a valid key name for a {self.what}: "
                             f"{problem}")
        if key in self.section:
            raise BuildError(f"cannot add key {_quote(key)}, another key by that name already "
                             f"exists in {self.section[key]} for {self.what} "
                             f"{_quote(self.name)}")
        self.section[key] = section
        self.entries.append((key, value))


def _is_text(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def collect(what: str, name: str, sources: Sources, environ: Mapping[str, str]
            ) -> list[tuple[str, bytes]]:
    """Every (key, bytes) of the sources in kubectl's order (files, literals, env files);
    for a ConfigMap, a file that is not UTF-8 counts as BinaryData in the duplicate errors."""
    if sources.env_files and (sources.files or sources.literals):
        raise BuildError("from-env-file cannot be combined with from-file or from-literal")
    keys = _Keys(what, name)
    for f in sources.files:
        binary = what == configs.CONFIG_MAP and not _is_text(f.content)
        keys.add(f.key, f.content, "BinaryData" if binary else "Data")
    for literal in sources.literals:
        key, value = parse_literal(literal)
        keys.add(key, value.encode())
    for env in sources.env_files:
        for key, value in parse_env_file(env, environ):
            keys.add(key, value.encode())
    return keys.entries


def _metadata(name: str, namespace: str) -> pb.ObjectMeta:
    # As kubectl: the namespace is only in the object when one was asked for.
    return pb.ObjectMeta(name=name, namespace=namespace) if namespace \
        else pb.ObjectMeta(name=name)


def config_map(name: str, namespace: str, sources: Sources,
               environ: Mapping[str, str] | None = None) -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=_metadata(name, namespace))
    for key, value in collect(configs.CONFIG_MAP, name, sources, environ or {}):
        if _is_text(value):
            cm.data[key] = value.decode()
        else:
            cm.binary_data[key] = value
    return cm


def generic_secret(name: str, namespace: str, sources: Sources, type_: str = "",
                   environ: Mapping[str, str] | None = None) -> pb.Secret:
    secret = pb.Secret(metadata=_metadata(name, namespace), type=type_)
    for key, value in collect(configs.SECRET, name, sources, environ or {}):
        secret.data[key] = value
    return secret


def key_pair_problem(cert_pem: bytes, key_pem: bytes) -> str:
    """Why the PEM certificate and private key are not a pair, in Go's crypto/tls words (what
    kubectl reports), or ""."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN" not in cert_pem:
        return "tls: failed to find any PEM data in certificate input"
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        return "tls: failed to find certificate PEM data in certificate input"
    if b"-----BEGIN" not in key_pem:
        return "tls: failed to find any PEM data in key input"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "tls: failed to parse private key"
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return "tls: private key does not match public key"
    return ""


def tls_secret(name: str, namespace: str, cert_pem: bytes, key_pem: bytes) -> pb.Secret:
    secret = pb.Secret(metadata=_metadata(name, namespace), type=configs.TLS)
    secret.data[TLS_CERT_KEY] = cert_pem
    secret.data[TLS_PRIVATE_KEY] = key_pem
    return secret


def docker_config_json(server: str, username: str, password: str, email: str = "") -> bytes:
    """`{"auths": {server: {...}}}` as kubectl writes it: compact, email only when given, and
    `auth` the base64 of `username:password`."""
    entry = {"username": username, "password": password}
    if email:
        entry["email"] = email
    entry["auth"] = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: entry}}, separators=(",", ":")).encode()


def docker_registry_secret(name: str, namespace: str, config_json: bytes | None = None,
                           sources: Sources | None = None) -> pb.Secret:
    """A kubernetes.io/dockerconfigjson Secret from a built config, or from --from-file."""
    secret = pb.Secret(metadata=_metadata(name, namespace), type=configs.DOCKER_CONFIG_JSON)
    if sources is not None:
        for key, value in collect(configs.SECRET, name, sources, {}):
            secret.data[key] = value
    else:
        secret.data[configs.DOCKER_CONFIG_JSON_KEY] = config_json or b""
    return secret
