"""Compose files to Moorage objects, as `docker stack deploy` turns them into Swarm services.

Pure: `translate` takes the file's text and the stack's name and returns the manifests (plain
dicts) or raises ComposeError listing every problem, each as `FILE: KEY.PATH: what`; nothing is
applied unless the whole file translates.

A stack NAME becomes:
- a Namespace NAME (created if missing), labelled `moorage.io/stack: NAME`;
- per Compose service, a Deployment and a Service, both named after it, so other services
  reach it by name (cluster DNS, `<svc>` via the pod's search domains).
  The Service is a ClusterIP one carrying the service's `ports` and `expose` ports; a NodePort
  one when a port is published (the routing mesh: every node answers on it; the published port
  must be in the NodePort range); a headless one (its name resolves to its pods' IPs, so every
  port works, like Swarm's `endpoint_mode: dnsrr`) when it has no ports or asks for dnsrr.
- per top-level config or secret, a ConfigMap or Secret mounted as files (composeconfigs.py);
- per top-level volume, a PersistentVolumeClaim; service volumes become claim, hostPath and
  emptyDir mounts (composevolumes.py). A service that mounts a named volume is a one-replica
  StatefulSet rather than a Deployment, so that two copies of it never write one volume (a
  Deployment's rolling update starts the new pod before the old one stops); its governing
  Service is its own when that is headless, else `<service>-headless`. More replicas of it are
  refused: each would need a volume of its own, which Compose cannot say.
- a service's `build:` is no object: it is returned in Translation.builds (composebuild.py)
  for `moor stack deploy --build` to build and push before the apply.
Every object carries `moorage.io/stack: NAME`; pods also `moorage.io/service: <service>`.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from moorage.manifest import composebuild, composeconfigs, composevolumes, yamlload
from moorage.manifest.composeproblems import NOT_SUPPORTED, Problems
from moorage.model.network import NODE_PORT_RANGE

STACK_LABEL = "moorage.io/stack"
SERVICE_LABEL = "moorage.io/service"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Docker's healthcheck defaults.
HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTH_RETRIES = 30, 30, 3

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_BYTES_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmg]?)b?$", re.IGNORECASE)
_CONSTRAINT_RE = re.compile(r"^\s*([\w.\-/]+)\s*(==|!=)\s*(\S+)\s*$")

TOP_LEVEL = {"version", "name", "services", "configs", "secrets", "volumes"}
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "ports", "expose",
                "deploy", "healthcheck", "depends_on", "working_dir", "configs", "secrets",
                "volumes", "tmpfs"}
# The governing Service of a StatefulSet made from a service whose own Service has a VIP.
HEADLESS_SUFFIX = "-headless"
_SERVICE_NAME_MAX = 63
DEPLOY_KEYS = {"mode", "replicas", "resources", "placement", "endpoint_mode"}
RESOURCE_KEYS = {"cpus", "memory"}
HEALTH_KEYS = {"test", "interval", "timeout", "retries", "start_period", "disable"}


class ComposeError(Exception):
    """Every problem found, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Translation:
    objects: list[dict]
    # Things accepted but not enforced (depends_on ordering), for the user to read.
    notes: list[str] = field(default_factory=list)
    # `external: true` configs and secrets: the stack uses them but does not create them.
    external: list[composeconfigs.Defined] = field(default_factory=list)
    # `external: true` volumes: claims that must exist already.
    external_volumes: list[composevolumes.Named] = field(default_factory=list)
    # Services with `build:`, built and pushed by `moor stack deploy --build` before the apply.
    builds: list[composebuild.Build] = field(default_factory=list)


@dataclass(frozen=True)
class _Context:
    """What every service of one file is translated against."""

    stack: str
    env: Mapping[str, str]
    names: set[str]
    files: composeconfigs.Catalog
    volumes: composevolumes.Catalog
    directory: str


def check_name(name: str, what: str) -> str | None:
    """None if `name` can name a namespace or object (DNS-1123 label); else why not."""
    if not _NAME_RE.match(name):
        return (f"{what} {name!r} must be lowercase letters, digits and '-', start and end "
                "with a letter or digit, at most 63 characters")
    return None


def duration_seconds(value) -> float:
    """Compose durations: `1m30s`, `500ms`, `10s`, or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _whole_seconds(value) -> int:
    """Probes count whole seconds: anything shorter becomes 1."""
    s = duration_seconds(value)
    return max(1, int(s + 0.999)) if s > 0 else 0


def memory_quantity(value) -> str:
    """Docker's byte values (binary units: 512m, 1g, 1.5GB, a plain number of bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    m = _BYTES_RE.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a byte value (e.g. 512M, 1G)")
    number, unit = m.group(1), m.group(2).lower()
    if unit in ("", "b"):
        return str(int(float(number)))
    power = "kmg".index(unit) + 1
    if "." in number:
        return str(int(float(number) * 1024 ** power))
    return f"{number}{'KMG'[power - 1]}i"


def cpu_quantity(value) -> str:
    """`cpus: "0.5"` -> `500m`."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of CPUs (e.g. 0.5)") from None
    if cpus <= 0:
        raise ValueError(f"{value!r}: must be more than 0")
    return f"{round(cpus * 1000)}m"


@dataclass(frozen=True)
class _Port:
    target: int
    published: int | None
    protocol: str


def _ports(svc: Mapping, path: str, problems: Problems) -> list[_Port]:
    out: list[_Port] = []
    for i, item in enumerate(svc.get("ports") or []):
        where = f"{path}.ports[{i}]"
        try:
            port = _parse_port(item)
        except ValueError as err:
            problems.add(where, str(err))
            continue
        lo, hi = NODE_PORT_RANGE
        if port.published is not None and not lo <= port.published <= hi:
            problems.add(where, f"published port {port.published} is outside the NodePort range "
                         f"{lo}-{hi} (every node publishes it, as Swarm's routing mesh does); "
                         f'publish one in range, e.g. "{lo + port.target % 1000}:{port.target}", '
                         f'or give only the container port ("{port.target}") to reach it inside '
                         "the cluster")
            continue
        out.append(port)
    for i, item in enumerate(svc.get("expose") or []):
        try:
            target, proto = _port_number(str(item).partition("/")[0]), \
                (str(item).partition("/")[2] or "tcp")
            out.append(_Port(target, None, _protocol(proto)))
        except ValueError as err:
            problems.add(f"{path}.expose[{i}]", str(err))
    return out


def _port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _protocol(text: str) -> str:
    if text.lower() not in ("tcp", "udp"):
        raise ValueError(f"protocol {text!r}: want tcp or udp")
    return text.upper()


def _parse_port(item) -> _Port:
    if isinstance(item, Mapping):
        unknown = set(item) - {"target", "published", "protocol", "mode"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: {NOT_SUPPORTED}")
        if item.get("mode", "ingress") != "ingress":
            raise ValueError(f"mode {item['mode']!r}: only ingress (the routing mesh) is "
                             "supported")
        if "target" not in item:
            raise ValueError("target: the container port is required")
        published = item.get("published")
        return _Port(_port_number(str(item["target"])),
                     None if published is None else _port_number(str(published)),
                     _protocol(str(item.get("protocol", "tcp"))))
    text = str(item)
    spec, _, proto = text.partition("/")
    parts = spec.split(":")
    if any("-" in p for p in parts):
        raise ValueError(f"{text!r}: port ranges are {NOT_SUPPORTED}")
    if len(parts) > 2:
        raise ValueError(f"{text!r}: a host IP is {NOT_SUPPORTED}; give PUBLISHED:TARGET")
    if len(parts) == 2:
        return _Port(_port_number(parts[1]), _port_number(parts[0]), _protocol(proto or "tcp"))
    return _Port(_port_number(parts[0]), None, _protocol(proto or "tcp"))


def _argv(value, where: str, problems: Problems) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            problems.add(where, f"cannot split {value!r}: {err}")
            return None
    if isinstance(value, list) and all(isinstance(a, (str, int, float)) for a in value):
        return [str(a) for a in value]
    problems.add(where, "want a string or a list of strings")
    return None


def _environment(value, where: str, env: Mapping[str, str],
                 problems: Problems) -> list[dict]:
    """List (`K=V`, or `K` taken from the deploying shell's environment, as Compose does) or
    map form; a value-less variable that is unset in the shell is left out."""
    out = []
    for k, v in composebuild.key_values(value, where, problems):
        if not k:
            problems.add(where, "a variable needs a name")
            continue
        if v is None:
            v = env.get(k)
            if v is None:
                continue
        out.append({"name": k, "value": v})
    return out


def _resources(deploy: Mapping, where: str, problems: Problems) -> dict:
    res = deploy.get("resources") or {}
    problems.unsupported(where, {"limits", "reservations"}, res)
    out: dict = {}
    for section, k8s in (("limits", "limits"), ("reservations", "requests")):
        values = res.get(section) or {}
        problems.unsupported(f"{where}.{section}", RESOURCE_KEYS, values)
        amounts = {}
        for key, convert, name in (("cpus", cpu_quantity, "cpu"),
                                   ("memory", memory_quantity, "memory")):
            if key in values:
                try:
                    amounts[name] = convert(values[key])
                except ValueError as err:
                    problems.add(f"{where}.{section}.{key}", str(err))
        if amounts:
            out[k8s] = amounts
    return out


def _placement(deploy: Mapping, where: str, problems: Problems) -> dict:
    """`node.labels.K == V` and `node.hostname == H` go to nodeSelector; `!=` to node
    affinity (NotIn)."""
    placement = deploy.get("placement") or {}
    problems.unsupported(where, {"constraints"}, placement)
    selector: dict[str, str] = {}
    not_in: list[dict] = []
    for i, text in enumerate(placement.get("constraints") or []):
        m = _CONSTRAINT_RE.match(str(text))
        field_, op, value = m.groups() if m else (None, None, None)
        if field_ == "node.hostname":
            key = HOSTNAME_LABEL
        elif field_ and field_.startswith("node.labels.") and len(field_) > len("node.labels."):
            key = field_[len("node.labels."):]
        else:
            problems.add(f"{where}.constraints[{i}]",
                         f"{text!r}: only node.labels.KEY and node.hostname with == or != "
                         "are supported")
            continue
        if op == "==":
            selector[key] = value
        else:
            not_in.append({"key": key, "operator": "NotIn", "values": [value]})
    out: dict = {}
    if selector:
        out["nodeSelector"] = selector
    if not_in:
        out["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": not_in}]}}}
    return out


def _healthcheck(hc: Mapping, where: str, problems: Problems) -> dict:
    """Docker marks a container unhealthy after `retries` failed checks and Swarm replaces
    it: a liveness probe. Swarm routes to a task only once healthy: the same check as a
    readiness probe."""
    problems.unsupported(where, HEALTH_KEYS, hc)
    if hc.get("disable"):
        return {}
    test = hc.get("test")
    if isinstance(test, str):
        argv = ["/bin/sh", "-c", test]
    elif isinstance(test, list) and test and test[0] == "NONE":
        return {}
    elif isinstance(test, list) and len(test) >= 2 and test[0] == "CMD":
        argv = [str(a) for a in test[1:]]
    elif isinstance(test, list) and len(test) == 2 and test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", str(test[1])]
    else:
        problems.add(f"{where}.test", 'want ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"] or '
                     "a shell command")
        return {}
    timing = {}
    for key, default, name in (("interval", HEALTH_INTERVAL, "periodSeconds"),
                               ("timeout", HEALTH_TIMEOUT, "timeoutSeconds"),
                               ("start_period", 0, "initialDelaySeconds")):
        try:
            timing[name] = _whole_seconds(hc.get(key, default))
        except ValueError as err:
            problems.add(f"{where}.{key}", str(err))
    retries = hc.get("retries", HEALTH_RETRIES)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
        problems.add(f"{where}.retries", f"{retries!r}: want a whole number of at least 1")
        retries = HEALTH_RETRIES
    if timing.get("periodSeconds") == 0:
        timing["periodSeconds"] = HEALTH_INTERVAL
    liveness = {"exec": {"command": argv}, **timing, "failureThreshold": retries}
    readiness = {"exec": {"command": argv}, "periodSeconds": timing.get("periodSeconds", 30),
                 "timeoutSeconds": timing.get("timeoutSeconds", 30), "failureThreshold": 1}
    return {"livenessProbe": liveness, "readinessProbe": readiness}


def _service(name: str, svc, ctx: _Context, problems: Problems, notes: list[str],
             builds: list[composebuild.Build]) -> list[dict]:
    path = f"services.{name}"
    stack, env, names = ctx.stack, ctx.env, ctx.names
    if not isinstance(svc, Mapping):
        problems.add(path, "want a mapping")
        return []
    why = check_name(name, "service name")
    if why:
        problems.add(path, why)
    for key in svc:
        if key not in SERVICE_KEYS and not str(key).startswith("x-"):
            problems.add(f"{path}.{key}", NOT_SUPPORTED)
    image = svc.get("image")
    if "build" in svc:
        build = composebuild.parse(name, svc, ctx.directory, problems)
        if build:
            builds.append(build)
    elif not isinstance(image, str) or not image:
        problems.add(f"{path}.image", "required: the image to run")
    container: dict = {"name": name, "image": image}
    entrypoint = _argv(svc.get("entrypoint"), f"{path}.entrypoint", problems)
    command = _argv(svc.get("command"), f"{path}.command", problems)
    # Compose's entrypoint replaces the image's ENTRYPOINT, command its CMD: Kubernetes'
    # command and args.
    if entrypoint is not None:
        container["command"] = entrypoint
    if command is not None:
        container["args"] = command
    if svc.get("working_dir"):
        container["workingDir"] = str(svc["working_dir"])
    envs = _environment(svc.get("environment"), f"{path}.environment", env, problems)
    if envs:
        container["env"] = envs
    ports = _ports(svc, path, problems)
    if ports:
        container["ports"] = [{"containerPort": p.target, "protocol": p.protocol}
                              for p in {(p.target, p.protocol): p for p in ports}.values()]
    deploy, replicas, endpoint_mode = _deploy(svc, path, problems)
    resources = _resources(deploy, f"{path}.deploy.resources", problems)
    if resources:
        container["resources"] = resources
    if "healthcheck" in svc:
        hc = svc["healthcheck"]
        if isinstance(hc, Mapping):
            container.update(_healthcheck(hc, f"{path}.healthcheck", problems))
        else:
            problems.add(f"{path}.healthcheck", "want a mapping")
    depends = svc.get("depends_on") or []
    for other in (list(depends) if isinstance(depends, (list, Mapping)) else []):
        if other not in names:
            problems.add(f"{path}.depends_on", f"no service named {other!r} in this file")
    if depends:
        notes.append(f"{path}.depends_on: accepted, but services start together (there is no "
                     f"start order); make {name} retry until what it needs answers")

    pod_labels = {STACK_LABEL: stack, SERVICE_LABEL: name}
    pod_spec: dict = {"containers": [container], **_placement(
        deploy, f"{path}.deploy.placement", problems)}
    volumes, mounts = composeconfigs.mounts(svc, path, ctx.files, problems)
    stored = composevolumes.mounts(svc, path, ctx.volumes, ctx.directory, env, problems)
    composevolumes.check_targets(
        [(f"{path}.{'secrets' if m['name'].startswith('secret-') else 'configs'}", m)
         for m in mounts], list(zip(stored.wheres, stored.mounts)), problems)
    if stored.copies and composevolumes.NOCOPY_NOTE not in notes:
        notes.append(composevolumes.NOCOPY_NOTE)
    if mounts or stored.mounts:
        container["volumeMounts"] = mounts + stored.mounts
        pod_spec["volumes"] = volumes + stored.volumes
    metadata = {"name": name, "namespace": stack, "labels": {STACK_LABEL: stack},
                **composeconfigs.annotations(mounts)}
    spec = {"replicas": replicas, "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}
    service = _service_object(name, stack, pod_labels, ports, endpoint_mode, path, problems)
    if not stored.named:
        return [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
                 "spec": spec}, service]
    if replicas > 1:
        problems.add(f"{path}.deploy.replicas",
                     f"{replicas} replicas cannot share the named volume "
                     f"{stored.named[0]!r}: a volume is a directory on one node's disk, so its "
                     "replicas would either write the same files at once or run on other nodes "
                     "with forked data; use replicas: 1 (or for scratch data a tmpfs or an "
                     "anonymous volume)")
    out = [service]
    governing = name
    if service["spec"].get("clusterIP") != "None":
        governing = name + HEADLESS_SUFFIX
        if governing in names or len(governing) > _SERVICE_NAME_MAX:
            problems.add(path, f"needs a headless Service {governing!r} for its StatefulSet, "
                         "and that name is " + ("another service's" if governing in names
                                                else "too long (at most 63 characters)"))
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": governing, "namespace": stack,
                                 "labels": {STACK_LABEL: stack}},
                    "spec": {"selector": pod_labels, "clusterIP": "None",
                             "type": "ClusterIP"}})
    spec["serviceName"] = governing
    if mounts:
        notes.append(f"{path}: runs as a StatefulSet, whose pod does not restart by itself "
                     "when a config or secret it mounts changes; for new content, moor "
                     f"rollout restart statefulset/{name} -n {stack}")
    # Its Services first: the StatefulSet's governing Service is checked against the apply.
    return [*out, {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata,
                   "spec": spec}]


def _deploy(svc, path: str, problems: Problems) -> tuple[Mapping, int, str]:
    """The service's `deploy` section: (the section, replicas, endpoint mode)."""
    deploy = svc.get("deploy") or {}
    if not isinstance(deploy, Mapping):
        problems.add(f"{path}.deploy", "want a mapping")
        deploy = {}
    problems.unsupported(f"{path}.deploy", DEPLOY_KEYS, deploy)
    if deploy.get("mode", "replicated") != "replicated":
        problems.add(f"{path}.deploy.mode", f"{deploy['mode']!r}: only replicated is supported")
    replicas = deploy.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        problems.add(f"{path}.deploy.replicas", f"{replicas!r}: want a whole number >= 0")
        replicas = 1
    endpoint_mode = deploy.get("endpoint_mode", "vip")
    if endpoint_mode not in ("vip", "dnsrr"):
        problems.add(f"{path}.deploy.endpoint_mode", f"{endpoint_mode!r}: want vip or dnsrr")
    return deploy, replicas, endpoint_mode


def _service_object(name: str, stack: str, pod_labels: dict, ports, endpoint_mode: str,
                    path: str, problems: Problems) -> dict:
    """The Service every Compose service gets, so the others reach it by name."""
    service_spec: dict = {"selector": pod_labels}
    if endpoint_mode == "dnsrr" or not ports:
        service_spec["clusterIP"] = "None"
    service_spec["type"] = ("NodePort" if any(p.published for p in ports)
                            and endpoint_mode != "dnsrr" else "ClusterIP")
    if endpoint_mode == "dnsrr" and any(p.published for p in ports):
        problems.add(f"{path}.ports", "published ports need endpoint_mode vip (the default)")
    seen: set[tuple[int, str]] = set()
    service_ports = []
    for p in ports:
        if (p.target, p.protocol) in seen:
            continue
        seen.add((p.target, p.protocol))
        sp = {"name": f"{p.protocol.lower()}-{p.target}", "protocol": p.protocol,
              "port": p.target, "targetPort": p.target}
        if p.published:
            sp["nodePort"] = p.published
        service_ports.append(sp)
    if service_ports:
        service_spec["ports"] = service_ports
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": stack, "labels": {STACK_LABEL: stack}},
            "spec": service_spec}


def translate(text: str, stack: str, *, source: str = "compose.yaml",
              env: Mapping[str, str] | None = None,
              read: composeconfigs.Reader | None = None,
              directory: str | None = None) -> Translation:
    """The stack's Namespace, ConfigMaps, Secrets, PersistentVolumeClaims, Deployments,
    StatefulSets and Services; ComposeError listing every problem. `read` reads configs' and
    secrets' files (composeconfigs.Reader); relative bind mounts are taken from `directory`
    (default: that of `source`), and refused unless that makes them absolute."""
    problems = Problems(source)
    try:
        doc = yamlload.safe_load(text)
    except yamlload.TooComplex as err:
        raise ComposeError([f"{source}: refused: {err}"]) from None
    except yaml.YAMLError as err:
        raise ComposeError([f"{source}: not valid YAML: {err}".splitlines()[0]]) from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), Mapping) \
            or not doc["services"]:
        raise ComposeError([f"{source}: services: a Compose file needs at least one service"])
    why = check_name(stack, "stack name")
    if why:
        problems.add("(stack name)", why)
    problems.unsupported("", TOP_LEVEL, doc)
    problems.items = [p.replace(": .", ": ", 1) for p in problems.items]
    files = composeconfigs.catalog(doc, stack, {STACK_LABEL: stack}, source, env, read, problems)
    volumes = composevolumes.catalog(doc, stack, {STACK_LABEL: stack}, problems)
    objects: list[dict] = [{"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": stack, "labels": {STACK_LABEL: stack}}},
                           *files.objects, *volumes.objects]
    notes: list[str] = []
    builds: list[composebuild.Build] = []
    ctx = _Context(stack, env or {}, {str(n) for n in doc["services"]}, files, volumes,
                   posixpath.dirname(source) if directory is None else directory)
    for name, svc in doc["services"].items():
        objects += _service(str(name), svc, ctx, problems, notes, builds)
    if problems.items:
        raise ComposeError(problems.items)
    return Translation(objects, notes, files.external, volumes.external, builds)


def default_stack_name(path: str) -> str:
    """The directory the Compose file is in, made a valid name (Compose's project name)."""
    import os

    base = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return composeconfigs.object_name(base) or "stack"
