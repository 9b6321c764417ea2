"""Compose's configs and secrets: the top-level definitions become ConfigMaps and Secrets of the
stack's namespace, and each service's references become one-file mounts, as Swarm mounts them
(configs at /<source>, secrets under /run/secrets, mode 0444, owned by root, read-only).

Pure but for `read`, the caller's way of reading a file, and `env`, the caller's environment.
No problem message quotes a config's or a secret's content.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from moorage.manifest.composeproblems import Problems
from moorage.model import configs

# Reads the file at a path (relative to the working directory or absolute); raises OSError.
Reader = Callable[[str], bytes]

CONFIG, SECRET = "config", "secret"
_KIND = {CONFIG: configs.CONFIG_MAP, SECRET: configs.SECRET}
_SECTION = {CONFIG: "configs", SECRET: "secrets"}
# Where Swarm puts a reference's file when its target is relative or not given.
_TARGET_DIR = {CONFIG: "/", SECRET: "/run/secrets"}
# Swarm's mode and owner for mounted configs and secrets.
DEFAULT_MODE = 0o444
ROOT = 0

CONFIG_KEYS = {"file", "environment", "content", "external", "name"}
SECRET_KEYS = {"file", "environment", "external", "name"}
_SOURCES = {CONFIG: ("file", "environment", "content"), SECRET: ("file", "environment")}
REFERENCE_KEYS = {"source", "target", "uid", "gid", "mode"}

_NOT_NAME_RE = re.compile(r"[^a-z0-9-]+")
_VOLUME_NAME_MAX = 63


def object_name(text: str) -> str:
    """A Compose name made an object name: lowercase, every run of anything but letters,
    digits and '-' one '-', at most 63 characters ("" if nothing is left)."""
    name = _NOT_NAME_RE.sub("-", text.lower()).strip("-")
    return name[:63].strip("-")


@dataclass(frozen=True, slots=True)
class Defined:
    """A top-level config or secret as the stack's pods mount it: one key of one object."""

    what: str           # CONFIG or SECRET
    name: str           # the ConfigMap's or Secret's name
    key: str
    path: str           # where it is defined, e.g. "secrets.db_pw"
    external: bool = False

    @property
    def kind(self) -> str:
        return _KIND[self.what]

    @property
    def volume(self) -> str:
        """The pod volume that projects it: `config-NAME` or `secret-NAME`, shortened with a
        digest of the name when that is too long for a volume name."""
        name = f"{self.what}-{self.name}"
        if len(name) <= _VOLUME_NAME_MAX:
            return name
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        return f"{name[:_VOLUME_NAME_MAX - 9].rstrip('-')}-{digest}"


@dataclass
class Catalog:
    """The file's configs and secrets: the objects to create, and every one a service may
    reference by (CONFIG or SECRET, Compose name); `external` ones must exist already."""

    objects: list[dict] = field(default_factory=list)
    defined: dict[tuple[str, str], Defined] = field(default_factory=dict)
    external: list[Defined] = field(default_factory=list)


def catalog(doc: Mapping, stack: str, labels: Mapping[str, str], source: str,
            env: Mapping[str, str] | None, read: Reader | None, problems: Problems) -> Catalog:
    """The top-level `configs` and `secrets`, as objects of namespace `stack` carrying
    `labels`. A `file` is relative to the Compose file's directory (that of `source`)."""
    out = Catalog()
    # (kind, object name) -> (where it is defined, external?)
    taken: dict[tuple[str, str], tuple[str, bool]] = {}
    directory = posixpath.dirname(source)
    for what in (CONFIG, SECRET):
        section = _SECTION[what]
        entries = doc.get(section)
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            problems.add(section, f"want a mapping of {what} names to their definitions")
            continue
        for cname, spec in entries.items():
            cname, path = str(cname), f"{section}.{cname}"
            defined = out.defined[(what, cname)] = _definition(what, cname, spec, path,
                                                               problems)
            external = defined.external
            first, first_external = taken.get((defined.kind, defined.name), ("", False))
            # Two names for one existing object are fine; two objects under one name are not.
            if first and not (external and first_external):
                problems.add(path, f"becomes the {defined.kind} {defined.name!r}, as {first} "
                             "does; rename one (object names keep only lowercase letters, "
                             "digits and '-')")
                continue
            taken[(defined.kind, defined.name)] = (path, external)
            if external:
                out.external.append(defined)
                continue
            data = _content(what, spec, path, directory, env or {}, read, problems)
            if data is not None:
                out.objects.append(_object(defined, data, stack, labels))
    return out


def _definition(what: str, cname: str, spec, path: str, problems: Problems) -> Defined:
    """The object a definition names, after checking its fields (not its content). After a
    problem it is a best guess, so that services referencing it are not reported too."""
    if not isinstance(spec, Mapping):
        problems.add(path, f"want a mapping with {_one_of(what)}, or external: true")
        spec = {"external": True}
    problems.unsupported(path, CONFIG_KEYS if what == CONFIG else SECRET_KEYS, spec)
    external = spec.get("external", False)
    if isinstance(external, Mapping):
        problems.add(f"{path}.external", "want true or false; give the existing "
                     f"{what}'s name in `name` (external: {{name: ...}} is deprecated)")
    elif not isinstance(external, bool):
        problems.add(f"{path}.external", f"{external!r}: want true or false")
    external = external is not False
    given = [k for k in _SOURCES[what] if k in spec]
    if external:
        for key in given:
            problems.add(f"{path}.{key}", f"may not be given with external: true (the {what} "
                         "exists already)")
    elif not given:
        problems.add(path, f"needs {_one_of(what)}, or external: true")
    elif len(given) > 1:
        problems.add(path, f"give only one of {', '.join(given)}")
    swarm_name = spec.get("name", cname)
    if not isinstance(swarm_name, str) or not swarm_name:
        problems.add(f"{path}.name", "want a non-empty string")
        swarm_name = cname
    name = object_name(swarm_name)
    if not name:
        problems.add(f"{path}.name" if "name" in spec else path,
                     f"{swarm_name!r} has no letter or digit to name a {_KIND[what]} by")
        name = what
    # The key is the name Swarm knows it by, so every file naming an external object agrees.
    key = swarm_name if not configs.key_problem(swarm_name) else name
    return Defined(what, name, key, path, external)


def _one_of(what: str) -> str:
    keys = _SOURCES[what]
    return ", ".join(keys[:-1]) + f" or {keys[-1]}"


def _content(what: str, spec: Mapping, path: str, directory: str, env: Mapping[str, str],
             read: Reader | None, problems: Problems) -> bytes | None:
    """The bytes a definition holds, or None (and a problem) when they cannot be had."""
    if len([k for k in _SOURCES[what] if k in spec]) != 1:
        return None         # _definition has said so
    if "file" in spec:
        where, value = f"{path}.file", spec["file"]
        if not isinstance(value, str) or not value:
            problems.add(where, "want the path of a file")
            return None
        if read is None:
            problems.add(where, "files are read by `moor stack deploy`; none can be read here")
            return None
        file = posixpath.normpath(posixpath.join(directory, value))
        try:
            data = read(file)
        except OSError as err:
            problems.add(where, f"cannot read {file!r}: {err.strerror or err}")
            return None
    elif "environment" in spec:
        where, var = f"{path}.environment", spec["environment"]
        if not isinstance(var, str) or not var:
            problems.add(where, "want the name of an environment variable")
            return None
        text = env.get(var)
        if text is None:
            problems.add(where, f"{what} {path.split('.', 1)[1]!r} reads the variable {var!r}, "
                         "which is not set in the environment of moor stack deploy")
            return None
        data = text.encode()
    else:
        where, text = f"{path}.content", spec.get("content")
        if not isinstance(text, str):
            problems.add(where, "want a string")
            return None
        data = text.encode()
    if len(data) > configs.MAX_DATA_BYTES:
        problems.add(where, f"over {configs.MAX_DATA_BYTES} bytes, the most a {_KIND[what]} "
                     "holds")
        return None
    return data


def _object(defined: Defined, data: bytes, stack: str, labels: Mapping[str, str]) -> dict:
    obj: dict = {"apiVersion": "v1", "kind": defined.kind,
                 "metadata": {"name": defined.name, "namespace": stack, "labels": dict(labels)}}
    if defined.what == SECRET:
        obj["type"] = configs.OPAQUE
        obj["data"] = {defined.key: base64.b64encode(data).decode()}
        return obj
    try:
        obj["data"] = {defined.key: data.decode()}
    except UnicodeDecodeError:
        obj["binaryData"] = {defined.key: base64.b64encode(data).decode()}
    return obj


@dataclass(frozen=True, slots=True)
class _Reference:
    source: str
    target: str         # absolute and normalised
    mode: int


def mounts(svc: Mapping, path: str, files: Catalog,
           problems: Problems) -> tuple[list[dict], list[dict]]:
    """A service's `configs` and `secrets`: the pod's volumes (one per object) and the
    container's volumeMounts, one file each by subPath, so that the files of one directory
    (/run/secrets) are siblings rather than mounts inside mounts."""
    volumes: dict[str, dict] = {}
    out: list[dict] = []
    targets: dict[str, str] = {}        # target -> the reference that mounts it
    for what in (CONFIG, SECRET):
        section = _SECTION[what]
        refs = svc.get(section)
        if refs is None:
            continue
        if not isinstance(refs, list):
            problems.add(f"{path}.{section}", f"want a list of {what} names or of mappings "
                         "with source, target, uid, gid and mode")
            continue
        for i, item in enumerate(refs):
            where = f"{path}.{section}[{i}]"
            ref = _reference(what, item, where, problems)
            if ref is None:
                continue
            defined = files.defined.get((what, ref.source))
            if defined is None:
                problems.add(where, f"no {what} named {ref.source!r} in this file's top-level "
                             f"{section}")
                continue
            first = targets.setdefault(ref.target, where)
            if first != where:
                problems.add(where, f"{ref.target!r} is also where {first} is mounted; each "
                             "file needs a path of its own")
                continue
            volume = volumes.setdefault(defined.volume, _volume(defined))
            out.append({"name": defined.volume, "mountPath": ref.target,
                        "subPath": _item_path(volume, defined, ref.mode), "readOnly": True})
    for target, where in targets.items():
        for other, first in targets.items():
            if target.startswith(other.rstrip("/") + "/"):
                problems.add(where, f"{target!r} is inside {other!r}, where {first} is "
                             "mounted: a mounted file cannot hold another")
    return list(volumes.values()), out


def annotations(mounts: list[dict]) -> dict:
    """The Deployment's metadata for a pod with these mounts: a subPath file never changes
    under a running container, so new content needs new pods."""
    return {"annotations": {configs.RESTART_ON_CHANGE: "true"}} if mounts else {}


def _reference(what: str, item, where: str, problems: Problems) -> _Reference | None:
    """A short (`- NAME`) or long (`{source, target, uid, gid, mode}`) reference."""
    if isinstance(item, str):
        item = {"source": item}
    if not isinstance(item, Mapping):
        problems.add(where, f"want a {what} name or a mapping with source, target, uid, gid "
                     "and mode")
        return None
    problems.unsupported(where, REFERENCE_KEYS, item)
    source = item.get("source")
    if not isinstance(source, str) or not source:
        problems.add(f"{where}.source", f"required: the name of a top-level {what}")
        return None
    ok = True
    for owner in ("uid", "gid"):
        value = item.get(owner)
        if not (value is None or value == "0" or (type(value) is int and value == ROOT)):
            problems.add(f"{where}.{owner}", f"{value!r}: only 0 is supported (Moorage mounts "
                         f"{what}s owned by root); let other users read the file with mode, "
                         f"whose default {DEFAULT_MODE:04o} lets everyone read")
            ok = False
    try:
        mode = file_mode(item.get("mode"))
    except ValueError as err:
        problems.add(f"{where}.mode", str(err))
        ok = False
    target = _target(what, source, item.get("target"), where, problems)
    return _Reference(source, target, mode) if ok and target else None


def _target(what: str, source: str, target, where: str, problems: Problems) -> str | None:
    """Swarm's rule: an absolute target as it is, a relative one (or the source's name, when
    there is none) under / for a config and /run/secrets for a secret."""
    field_ = f"{where}.target"
    if target is None:
        target, field_ = source, where
    elif not isinstance(target, str) or not target:
        problems.add(field_, "want a path")
        return None
    if ".." in target.split("/"):
        problems.add(field_, f"{target!r}: must not contain '..'")
        return None
    full = "/" + posixpath.normpath(posixpath.join(_TARGET_DIR[what], target)).lstrip("/")
    if full == "/":
        problems.add(field_, f"{target!r}: a file cannot be mounted at /")
        return None
    return full


def file_mode(value) -> int:
    """Compose's `mode`: a number (YAML 1.1 reads `0440` as octal, which is what Compose files
    mean by it) or a string of octal digits ("0440", "0o440"); DEFAULT_MODE when None."""
    if value is None:
        return DEFAULT_MODE
    mode = -1
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str):
        digits = value.strip().lower().removeprefix("0o")
        if digits and all(c in "01234567" for c in digits):
            mode = int(digits, 8)
    if 0 <= mode <= configs.MAX_MODE:
        return mode
    if mode > configs.MAX_MODE and isinstance(value, int):
        raise ValueError(f"{value} is {value:#o}, over 0777: write a mode in octal with a "
                         "leading 0 (e.g. 0440)")
    raise ValueError(f"{value!r}: want a file mode from 0 to 0777 in octal (e.g. 0440)")


def _volume(defined: Defined) -> dict:
    if defined.what == SECRET:
        return {"name": defined.volume, "secret": {"secretName": defined.name, "items": []}}
    return {"name": defined.volume, "configMap": {"name": defined.name, "items": []}}


def _item_path(volume: dict, defined: Defined, mode: int) -> str:
    """The file in `volume` holding the object's key with `mode`; one per mode, so that one
    object mounted twice with two modes gets two files."""
    items = volume["secret" if defined.what == SECRET else "configMap"]["items"]
    for item in items:
        if item["mode"] == mode:
            return item["path"]
    path = defined.key if not items else f"{defined.key}-{mode:o}"
    items.append({"key": defined.key, "path": path, "mode": mode})
    return path
