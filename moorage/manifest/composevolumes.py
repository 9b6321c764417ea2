"""Compose's volumes: the top-level definitions become PersistentVolumeClaims of the stack's
namespace, and each service's `volumes` and `tmpfs` become the pod's volumes and the
container's volumeMounts:

- a named volume: its claim (persistentVolumeClaim), on the local disk of one node;
- a bind mount: hostPath (the agent allows only paths under its --allowed-host-paths);
- tmpfs: emptyDir with medium Memory, sizeLimit from its size;
- an anonymous volume: emptyDir (it lives as long as the pod).

Pure but for `env` (HOME, for `~` in bind paths). A claim's size is `driver_opts.size` (the
option Docker's local driver takes on filesystems with project quotas), else DEFAULT_SIZE.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from moorage.manifest.composeconfigs import object_name
from moorage.manifest.composeproblems import NOT_SUPPORTED, Problems
from moorage.model import names, quantities

# Compose has no size for a volume; Moorage's claims need one.
DEFAULT_SIZE = "1Gi"
LOCAL_DRIVER = "local"
ACCESS_MODE = "ReadWriteOnce"
MEMORY = "Memory"
DIRECTORY_OR_CREATE = "DirectoryOrCreate"

VOLUME_KEYS = {"driver", "driver_opts", "external", "labels", "name"}
DRIVER_OPTS = {"size"}
MOUNT_KEYS = {"type", "source", "target", "read_only", "bind", "volume", "tmpfs"}
MOUNT_TYPES = ("volume", "bind", "tmpfs")
BIND_KEYS = {"create_host_path"}
VOLUME_OPTION_KEYS = {"nocopy", "subpath"}
TMPFS_KEYS = {"size"}
# Short syntax modes: rw and ro, and nocopy (which Moorage always does: see NOCOPY_NOTE).
SHORT_MODES = {"rw", "ro", "nocopy"}

NOCOPY_NOTE = ("volumes: a new volume starts empty: Moorage never copies the image's files at "
               "the mount path into it (as Docker does unless `volume.nocopy: true`)")

_NAME_MAX = 63
# Docker's byte sizes (units.RAMInBytes): binary units, an optional `i` and `b`.
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp]?)i?b?$", re.IGNORECASE)


def byte_quantity(value) -> str:
    """A Docker size (`10G`, `512m`, `1.5GiB`, a number of bytes) as a Kubernetes quantity
    (`10Gi`); binary units, as Docker reads them."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return quantities.format_bytes(value)
    m = _SIZE_RE.match(str(value).strip()) if not isinstance(value, bool) else None
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 10G, 512M or a number of bytes)")
    power = " kmgtp".index(m.group(2).lower() or " ")
    return quantities.format_bytes(int(float(m.group(1)) * 1024 ** power))


@dataclass(frozen=True, slots=True)
class Named:
    """A top-level volume: the claim its services mount."""

    claim: str          # the PersistentVolumeClaim's name
    path: str           # where it is defined, e.g. "volumes.data"
    external: bool = False

    @property
    def volume(self) -> str:
        return pod_volume_name("volume", self.claim)


@dataclass
class Catalog:
    objects: list[dict] = field(default_factory=list)
    defined: dict[str, Named] = field(default_factory=dict)
    external: list[Named] = field(default_factory=list)


def pod_volume_name(prefix: str, name: str) -> str:
    """`PREFIX-NAME`, shortened with a digest of the name when too long for a volume name."""
    text = f"{prefix}-{name}"
    if len(text) <= _NAME_MAX:
        return text
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{text[:_NAME_MAX - 9].rstrip('-')}-{digest}"


def catalog(doc: Mapping, stack: str, labels: Mapping[str, str],
            problems: Problems) -> Catalog:
    """The top-level `volumes`, as claims of namespace `stack` carrying `labels`."""
    out = Catalog()
    entries = doc.get("volumes")
    if entries is None:
        return out
    if not isinstance(entries, Mapping):
        problems.add("volumes", "want a mapping of volume names to their definitions")
        return out
    taken: dict[str, tuple[str, bool]] = {}     # claim -> (where defined, external?)
    for vname, spec in entries.items():
        vname, path = str(vname), f"volumes.{vname}"
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            problems.add(path, "want a mapping (or nothing, for a volume with the defaults)")
            spec = {}
        problems.unsupported(path, VOLUME_KEYS, spec)
        external = _external(spec, path, problems)
        given = spec.get("name", vname)
        if not isinstance(given, str) or not given:
            problems.add(f"{path}.name", "want a non-empty string")
            given = vname
        claim = object_name(given)
        if not claim:
            problems.add(f"{path}.name" if "name" in spec else path,
                         f"{given!r} has no letter or digit to name a PersistentVolumeClaim by")
            claim = "volume"
        named = out.defined[vname] = Named(claim, path, external)
        first, first_external = taken.get(claim, ("", False))
        if first and not (external and first_external):
            problems.add(path, f"becomes the PersistentVolumeClaim {claim!r}, as {first} does; "
                         "rename one (object names keep only lowercase letters, digits and "
                         "'-')")
            continue
        taken[claim] = (path, external)
        driver = spec.get("driver", LOCAL_DRIVER)
        if driver != LOCAL_DRIVER:
            problems.add(f"{path}.driver", f"{driver!r}: only {LOCAL_DRIVER!r} is supported "
                         "(a directory on the disk of the node where the volume is first used)")
        if external:
            for key in ("driver_opts", "labels"):
                if key in spec:
                    problems.add(f"{path}.{key}", "may not be given with external: true (the "
                                 "volume exists already)")
            out.external.append(named)
            continue
        size = _size(spec.get("driver_opts"), f"{path}.driver_opts", problems)
        claim_labels = {**_labels(spec.get("labels"), f"{path}.labels", problems), **labels}
        out.objects.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": stack, "labels": claim_labels},
            "spec": {"accessModes": [ACCESS_MODE],
                     "resources": {"requests": {"storage": size}}}})
    return out


def _external(spec: Mapping, path: str, problems: Problems) -> bool:
    external = spec.get("external", False)
    if isinstance(external, Mapping):
        problems.add(f"{path}.external", "want true or false; give the existing volume's name "
                     "in `name` (external: {name: ...} is deprecated)")
        return True
    if not isinstance(external, bool):
        problems.add(f"{path}.external", f"{external!r}: want true or false")
        return False
    return external


def _size(opts, path: str, problems: Problems) -> str:
    if opts is None:
        return DEFAULT_SIZE
    if not isinstance(opts, Mapping):
        problems.add(path, "want a mapping of options")
        return DEFAULT_SIZE
    for key in opts:
        if key not in DRIVER_OPTS:
            problems.add(f"{path}.{key}", f"{NOT_SUPPORTED}: the local driver takes only size "
                         "(volumes are directories of a node's disk; no type, device or o)")
    if "size" not in opts:
        return DEFAULT_SIZE
    try:
        size = byte_quantity(opts["size"])
    except ValueError as err:
        problems.add(f"{path}.size", str(err))
        return DEFAULT_SIZE
    if size == "0":
        problems.add(f"{path}.size", "must be more than 0")
    return size


def _labels(value, path: str, problems: Problems) -> dict[str, str]:
    """Compose's labels (a map, or a list of KEY=VALUE), as Kubernetes labels."""
    pairs: list[tuple[str, object]] = []
    if isinstance(value, Mapping):
        pairs = [(str(k), "" if v is None else v) for k, v in value.items()]
    elif isinstance(value, list):
        pairs = [(k, v) for k, _, v in (str(item).partition("=") for item in value)]
    elif value is not None:
        problems.add(path, "want a map or a list of KEY=VALUE")
    out = {}
    for k, v in pairs:
        v = str(v).lower() if isinstance(v, bool) else (str(v) if isinstance(v, (int, float))
                                                         else v)
        why = names.label_key(k) or names.label_value(v)
        if why:
            problems.add(f"{path}.{k}", why)
            continue
        out[k] = v
    return out


@dataclass
class Mounts:
    """One service's volumes: the pod's volumes, the container's mounts, and which top-level
    volumes (by Compose name) it mounts."""

    volumes: list[dict] = field(default_factory=list)
    mounts: list[dict] = field(default_factory=list)
    named: list[str] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)     # each mount's Compose path
    copies: bool = False     # some named volume would have had the image's files copied in


@dataclass(frozen=True, slots=True)
class _Mount:
    type: str               # volume, bind, tmpfs, or "" for an anonymous volume
    source: str
    target: str
    read_only: bool = False
    create_host_path: bool = False
    nocopy: bool = False
    subpath: str = ""
    size: str = ""


def mounts(svc: Mapping, path: str, volumes: Catalog, directory: str, env: Mapping[str, str],
           problems: Problems) -> Mounts:
    """A service's `volumes` (short and long syntax) and `tmpfs`. Relative bind sources are
    taken from `directory` (the Compose file's), and must end up absolute."""
    out = Mounts()
    parsed: list[tuple[str, _Mount]] = []
    items = svc.get("volumes")
    if items is not None and not isinstance(items, list):
        problems.add(f"{path}.volumes", "want a list of SOURCE:TARGET[:MODE] strings or of "
                     "mappings with type, source and target")
        items = []
    for i, item in enumerate(items or []):
        where = f"{path}.volumes[{i}]"
        m = _short(item, where, problems) if isinstance(item, str) else \
            _long(item, where, problems)
        if m is not None:
            parsed.append((where, m))
    tmpfs = svc.get("tmpfs")
    if tmpfs is not None:
        for i, item in enumerate([tmpfs] if isinstance(tmpfs, str) else
                                 tmpfs if isinstance(tmpfs, list) else [None]):
            where = f"{path}.tmpfs" if isinstance(tmpfs, str) else f"{path}.tmpfs[{i}]"
            m = _tmpfs_short(item, where, problems)
            if m is not None:
                parsed.append((where, m))
    counts: dict[str, int] = {}
    by_claim: dict[str, dict] = {}
    for where, m in parsed:
        mount: dict = {"mountPath": m.target}
        if m.type == "volume":
            named = volumes.defined.get(m.source)
            if named is None:
                problems.add(where, f"no volume named {m.source!r} in this file's top-level "
                             "volumes")
                continue
            if m.source not in out.named:
                out.named.append(m.source)
            out.copies = out.copies or not m.nocopy
            if named.claim not in by_claim:
                by_claim[named.claim] = {"name": named.volume,
                                         "persistentVolumeClaim": {"claimName": named.claim}}
                out.volumes.append(by_claim[named.claim])
            mount["name"] = named.volume
            if m.subpath:
                mount["subPath"] = m.subpath
        else:
            source = _volume_source(m, where, directory, env, problems)
            if source is None:
                continue
            prefix = {"bind": "bind", "tmpfs": "tmpfs", "": "anonymous"}[m.type]
            n = counts[prefix] = counts.get(prefix, -1) + 1
            mount["name"] = f"{prefix}-{n}"
            out.volumes.append({"name": mount["name"], **source})
        if m.read_only:
            mount["readOnly"] = True
        out.mounts.append({"name": mount.pop("name"), **mount})
        out.wheres.append(where)
    return out


def _volume_source(m: _Mount, where: str, directory: str, env: Mapping[str, str],
                   problems: Problems) -> dict | None:
    if m.type == "tmpfs":
        empty = {"medium": MEMORY}
        if m.size:
            empty["sizeLimit"] = m.size
        return {"emptyDir": empty}
    if m.type == "":
        return {"emptyDir": {}}
    source = m.source
    if source == "~" or source.startswith("~/"):
        home = env.get("HOME", "")
        if not home.startswith("/"):
            problems.add(where, f"{source!r}: `~` needs HOME set to an absolute path in the "
                         "environment of moor stack deploy")
            return None
        source = home + source[1:]
    full = posixpath.normpath(posixpath.join(directory, source))
    if not full.startswith("/"):
        problems.add(where, f"bind source {m.source!r} is relative and the Compose file's "
                     "directory is not known; give an absolute path")
        return None
    host: dict = {"path": full}
    if m.create_host_path:
        host["type"] = DIRECTORY_OR_CREATE
    return {"hostPath": host}


def _target(value, where: str, problems: Problems) -> str | None:
    if not isinstance(value, str) or not value:
        problems.add(where, "want the path in the container")
        return None
    if not value.startswith("/"):
        problems.add(where, f"{value!r}: the path in the container must be absolute")
        return None
    if ".." in value.split("/"):
        problems.add(where, f"{value!r}: must not contain '..'")
        return None
    target = posixpath.normpath(value)
    if target in ("/", "//"):
        problems.add(where, f"{value!r}: nothing can be mounted at /")
        return None
    return target


def _is_path(source: str) -> bool:
    """Compose's rule: a source that starts with `.`, `/` or `~` is a host path, anything
    else a volume's name."""
    return source.startswith((".", "/", "~"))


def _short(text: str, where: str, problems: Problems) -> _Mount | None:
    """`[SOURCE:]TARGET[:MODE]`."""
    parts = text.split(":")
    if len(parts) > 3 or not all(parts[:2]):
        problems.add(where, f"{text!r}: want [SOURCE:]TARGET[:MODE]")
        return None
    if len(parts) == 1:
        target = _target(parts[0], where, problems)
        return _Mount("", "", target) if target else None
    source, target_text = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    ok = True
    for mode in modes:
        if mode not in SHORT_MODES:
            problems.add(where, f"{text!r}: mode {mode!r} is {NOT_SUPPORTED} (rw, ro and "
                         "nocopy are)")
            ok = False
    if "ro" in modes and "rw" in modes:
        problems.add(where, f"{text!r}: give ro or rw, not both")
        ok = False
    kind = "bind" if _is_path(source) else "volume"
    if kind == "bind" and "nocopy" in modes:
        problems.add(where, f"{text!r}: nocopy is for volumes, not bind mounts")
        ok = False
    target = _target(target_text, where, problems)
    if not (ok and target):
        return None
    return _Mount(kind, source, target, read_only="ro" in modes, nocopy="nocopy" in modes)


def _long(item, where: str, problems: Problems) -> _Mount | None:
    if not isinstance(item, Mapping):
        problems.add(where, "want SOURCE:TARGET[:MODE] or a mapping with type, source and "
                     "target")
        return None
    problems.unsupported(where, MOUNT_KEYS, item)
    kind = item.get("type")
    if kind not in MOUNT_TYPES:
        problems.add(f"{where}.type", f"{kind!r}: want volume, bind or tmpfs" if kind is not None
                     else "required: volume, bind or tmpfs")
        return None
    target = _target(item.get("target"), f"{where}.target", problems)
    read_only = item.get("read_only", False)
    if not isinstance(read_only, bool):
        problems.add(f"{where}.read_only", f"{read_only!r}: want true or false")
        read_only = False
    for section in ("bind", "volume", "tmpfs"):
        if section in item and section != kind:
            problems.add(f"{where}.{section}", f"is for type {section}, not {kind}")
    options = _options(item, kind, where, problems)
    source = item.get("source")
    if kind == "tmpfs":
        if source is not None:
            problems.add(f"{where}.source", "a tmpfs has no source")
        return _Mount("tmpfs", "", target, read_only, size=options.get("size", "")) \
            if target else None
    if source is None or source == "":
        if kind == "volume":        # a volume without a source is an anonymous one
            return _Mount("", "", target, read_only) if target else None
        problems.add(f"{where}.source", "required: the path on the host")
        return None
    if not isinstance(source, str):
        problems.add(f"{where}.source", "want a string")
        return None
    if kind == "bind" and not _is_path(source):
        problems.add(f"{where}.source", f"{source!r}: a bind source is a path: start it with "
                     "'/', './' or '~/'")
        return None
    if kind == "volume" and _is_path(source):
        problems.add(f"{where}.source", f"{source!r}: a volume's source is the name of a "
                     "top-level volume (for a host path, use type: bind)")
        return None
    if not target:
        return None
    return _Mount(kind, source, target, read_only,
                  create_host_path=bool(options.get("create_host_path")),
                  nocopy=bool(options.get("nocopy")), subpath=options.get("subpath", ""))


def _options(item: Mapping, kind: str, where: str, problems: Problems) -> dict:
    """The `bind`, `volume` or `tmpfs` section matching the mount's type, checked."""
    section = item.get(kind)
    if section is None:
        return {}
    path = f"{where}.{kind}"
    if not isinstance(section, Mapping):
        problems.add(path, "want a mapping")
        return {}
    allowed = {"bind": BIND_KEYS, "volume": VOLUME_OPTION_KEYS, "tmpfs": TMPFS_KEYS}[kind]
    problems.unsupported(path, allowed, section)
    out: dict = {}
    for key in ("create_host_path", "nocopy"):
        if key in section and key in allowed:
            if not isinstance(section[key], bool):
                problems.add(f"{path}.{key}", f"{section[key]!r}: want true or false")
            else:
                out[key] = section[key]
    if "subpath" in section and kind == "volume":
        sub = section["subpath"]
        if not isinstance(sub, str) or not sub or sub.startswith("/") \
                or ".." in sub.split("/"):
            problems.add(f"{path}.subpath", f"{sub!r}: want a relative path inside the volume, "
                         "without '..'")
        else:
            out["subpath"] = posixpath.normpath(sub)
    if "size" in section and kind == "tmpfs":
        try:
            out["size"] = byte_quantity(section["size"])
        except ValueError as err:
            problems.add(f"{path}.size", str(err))
    return out


def _tmpfs_short(item, where: str, problems: Problems) -> _Mount | None:
    """The service's `tmpfs`: `PATH` or `PATH:size=N` (Docker's --tmpfs options)."""
    if not isinstance(item, str) or not item:
        problems.add(where, "want a path, PATH:size=SIZE, or a list of them")
        return None
    target_text, _, opts = item.partition(":")
    size = ""
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key != "size":
            problems.add(where, f"{item!r}: option {key!r} is {NOT_SUPPORTED} (size is)")
            return None
        try:
            size = byte_quantity(value)
        except ValueError as err:
            problems.add(where, str(err))
            return None
    target = _target(target_text, where, problems)
    return _Mount("tmpfs", "", target, size=size) if target else None


def check_targets(first: list[tuple[str, dict]], then: list[tuple[str, dict]],
                  problems: Problems) -> None:
    """(where, volumeMount) pairs of one container: no mount of `then` at the path of another
    (`first`, the configs' and secrets' files, are checked among themselves by
    composeconfigs). Mounts may nest (/data and /data/logs): the node mounts parents first."""
    seen = {m["mountPath"]: where for where, m in first}
    for where, m in then:
        other = seen.setdefault(m["mountPath"], where)
        if other != where:
            problems.add(where, f"{m['mountPath']!r} is also where {other} is mounted; each "
                         "mount needs a path of its own")
