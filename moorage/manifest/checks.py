"""Semantic checks and Kubernetes defaults for decoded objects (types were checked already).

Pure: `validate(obj)` returns every problem as a FieldError with its field path; `default(obj)`
fills what Kubernetes would fill (protocol TCP, restartPolicy Always, 25% surge...), in place.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from moorage.manifest import configchecks, statefulsetchecks, storagechecks
from moorage.manifest.convert import FieldError, describe, join
from moorage.model import images, quantities, selectors, storage
from moorage.model import names as naming
from moorage.model.kinds import kind_of
from moorage.model.network import NODE_PORT_RANGE

MAX_REPLICAS = 10_000
MAX_ANNOTATIONS_BYTES = 256 * 1024
RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PROTOCOLS = ("TCP", "UDP")
SERVICE_TYPES = ("ClusterIP", "NodePort")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NODE_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_PERCENT = re.compile(r"^[0-9]+%$")


class _Errors(list):
    def add(self, path: str, message: str) -> None:
        self.append(FieldError(path, message))

    def required(self, path: str, value: str, check) -> bool:
        """Add "is required" for an empty value, else what `check` finds; True when it passes."""
        reason = check(value) if value else "is required"
        if reason:
            self.add(path, reason)
        return not reason


def validate(obj) -> list[FieldError]:
    errs = _Errors()
    kind = kind_of(obj)
    _metadata(obj.metadata, kind, errs)
    check = _KIND_CHECKS.get(kind.name)
    if check:
        check(obj, errs)
    return errs


# ---- metadata ----

def _metadata(meta, kind, errs: _Errors) -> None:
    name_check = (naming.dns1123_label if kind.name in ("Namespace", "Service")
                  else naming.dns1123_subdomain)
    errs.required("metadata.name", meta.name, name_check)
    if kind.namespaced:
        if meta.namespace:
            reason = naming.dns1123_label(meta.namespace)
            if reason:
                errs.add("metadata.namespace", reason)
    elif meta.namespace:
        errs.add("metadata.namespace", f"{kind.name} is not namespaced; remove the namespace")
    _labels(meta.labels, "metadata.labels", errs)
    size = 0
    for key, value in meta.annotations.items():
        reason = naming.label_key(key)
        if reason:
            errs.add(join("metadata.annotations", key), reason)
        size += len(key) + len(value)
    if size > MAX_ANNOTATIONS_BYTES:
        errs.add("metadata.annotations",
                 f"total size {size} bytes is over the {MAX_ANNOTATIONS_BYTES} byte limit")


def _labels(labels, path: str, errs: _Errors) -> None:
    for key, value in labels.items():
        reason = naming.label_key(key) or naming.label_value(value)
        if reason:
            errs.add(join(path, key), reason)


# ---- pods ----

def _pod_spec(spec, path: str, errs: _Errors, *, in_template: bool,
              owner: str = "a Deployment", claim_volumes: dict | None = None) -> None:
    """`claim_volumes`: volumes a controller adds to every pod (a StatefulSet's claim
    templates, by name), which mounts may name too."""
    if not spec.containers:
        errs.add(f"{path}.containers", "at least one container is required")
    names: set[str] = set()
    host_ports: set[tuple[int, str]] = set()
    vols = configchecks.volumes(spec, path, errs)
    for name, vol in (claim_volumes or {}).items():
        vols.setdefault(name, vol)
    for i, c in enumerate(spec.containers):
        _container(c, f"{path}.containers[{i}]", names, host_ports, errs)
        configchecks.mounts(c, f"{path}.containers[{i}]", vols, errs)
        configchecks.env_sources(c, f"{path}.containers[{i}]", errs)
    if spec.restart_policy and spec.restart_policy not in RESTART_POLICIES:
        errs.add(f"{path}.restartPolicy", _one_of(spec.restart_policy, RESTART_POLICIES))
    if in_template and spec.restart_policy not in ("", "Always"):
        errs.add(f"{path}.restartPolicy",
                 f'{describe(spec.restart_policy)}: {owner}\'s pods must use "Always"')
    _labels(spec.node_selector, f"{path}.nodeSelector", errs)
    if spec.node_name:
        reason = naming.dns1123_subdomain(spec.node_name)
        if reason:
            errs.add(f"{path}.nodeName", reason)
    if spec.termination_grace_period_seconds < 0:
        errs.add(f"{path}.terminationGracePeriodSeconds", "must not be negative")
    if spec.hostname:
        reason = naming.dns1123_label(spec.hostname)
        if reason:
            errs.add(f"{path}.hostname", reason)
    _affinity(spec.affinity, f"{path}.affinity", errs)
    for i, t in enumerate(spec.tolerations):
        tp = f"{path}.tolerations[{i}]"
        if t.operator not in ("", "Equal", "Exists"):
            errs.add(f"{tp}.operator", _one_of(t.operator, ("Equal", "Exists")))
        if t.operator == "Exists" and t.value:
            errs.add(f"{tp}.value", 'must be empty when operator is "Exists"')
        if not t.key and t.operator != "Exists":
            errs.add(f"{tp}.key", 'is required unless operator is "Exists"')
        if t.key and naming.label_key(t.key):
            errs.add(f"{tp}.key", naming.label_key(t.key))
        if t.effect and t.effect not in TAINT_EFFECTS:
            errs.add(f"{tp}.effect", _one_of(t.effect, TAINT_EFFECTS))


def _container(c, path: str, names: set, host_ports: set, errs: _Errors) -> None:
    if errs.required(f"{path}.name", c.name, naming.dns1123_label) and c.name in names:
        errs.add(f"{path}.name", f"duplicate container name {describe(c.name)}")
    if c.name:
        names.add(c.name)
    errs.required(f"{path}.image", c.image, images.image_reference)
    if c.image_pull_policy and c.image_pull_policy not in PULL_POLICIES:
        errs.add(f"{path}.imagePullPolicy", _one_of(c.image_pull_policy, PULL_POLICIES))
    port_names: set[str] = set()
    for i, p in enumerate(c.ports):
        pp = f"{path}.ports[{i}]"
        reason = naming.port_number(p.container_port)
        if reason:
            errs.add(f"{pp}.containerPort", reason if p.container_port else "is required")
        if p.host_port:
            reason = naming.port_number(p.host_port)
            if reason:
                errs.add(f"{pp}.hostPort", reason)
            key = (p.host_port, p.protocol or "TCP")
            if key in host_ports:
                errs.add(f"{pp}.hostPort", f"{p.host_port}/{key[1]} is already used in this pod")
            host_ports.add(key)
        if p.protocol and p.protocol not in PROTOCOLS:
            errs.add(f"{pp}.protocol", _one_of(p.protocol, PROTOCOLS))
        if p.name:
            reason = naming.port_name(p.name)
            if reason:
                errs.add(f"{pp}.name", reason)
            elif p.name in port_names:
                errs.add(f"{pp}.name", f"duplicate port name {describe(p.name)}")
            port_names.add(p.name)
        if p.host_ip:
            _ip(p.host_ip, f"{pp}.hostIP", errs)
    for i, e in enumerate(c.env):
        if not e.name:
            errs.add(f"{path}.env[{i}].name", "is required")
        elif not _ENV_NAME.match(e.name):
            errs.add(f"{path}.env[{i}].name",
                     f"{describe(e.name)} is not a valid environment variable name")
    parsed = {}
    for section in ("requests", "limits"):
        for rname, raw in getattr(c.resources, section).items():
            try:
                parsed[(section, rname)] = quantities.parse_resource(rname, raw)
            except quantities.QuantityError as err:
                errs.add(join(f"{path}.resources.{section}", rname), str(err))
    for (section, rname), amount in parsed.items():
        limit = parsed.get(("limits", rname))
        if section == "requests" and limit is not None and amount > limit:
            errs.add(join(f"{path}.resources.requests", rname),
                     f"{describe(c.resources.requests[rname])} is more than the limit "
                     f"{describe(c.resources.limits[rname])}")
    for probe_name in ("liveness_probe", "readiness_probe", "startup_probe"):
        if c.HasField(probe_name):
            _probe(getattr(c, probe_name), f"{path}.{_camel(probe_name)}", port_names, errs)
            # As Kubernetes: one success is all a liveness or startup probe may ask for.
            if probe_name != "readiness_probe" and getattr(c, probe_name).success_threshold > 1:
                errs.add(f"{path}.{_camel(probe_name)}.successThreshold",
                         "must be 1 for liveness and startup probes")


def _probe(probe, path: str, port_names: set, errs: _Errors) -> None:
    handlers = [h for h in ("http_get", "tcp_socket", "exec") if probe.HasField(h)]
    if len(handlers) != 1:
        errs.add(path, "needs exactly one of httpGet, tcpSocket or exec")
    for h in handlers:
        if h == "exec":
            if not probe.exec.command:
                errs.add(f"{path}.exec.command", "is required")
            continue
        port = getattr(probe, h).port
        _port_ref(port, f"{path}.{_camel(h)}.port", errs, names=port_names, required=True)
    if probe.HasField("http_get") and probe.http_get.scheme not in ("", "HTTP", "HTTPS"):
        errs.add(f"{path}.httpGet.scheme", _one_of(probe.http_get.scheme, ("HTTP", "HTTPS")))
    for fname in ("initial_delay_seconds", "timeout_seconds", "period_seconds",
                  "success_threshold", "failure_threshold"):
        if getattr(probe, fname) < 0:
            errs.add(f"{path}.{_camel(fname)}", "must not be negative")


def _affinity(aff, path: str, errs: _Errors) -> None:
    na = aff.node_affinity
    req = na.required_during_scheduling_ignored_during_execution
    rpath = f"{path}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    if na.HasField("required_during_scheduling_ignored_during_execution") and \
            not req.node_selector_terms:
        errs.add(f"{rpath}.nodeSelectorTerms", "at least one term is required")
    for i, term in enumerate(req.node_selector_terms):
        _node_term(term, f"{rpath}.nodeSelectorTerms[{i}]", errs)
    ppath = f"{path}.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution"
    for i, pref in enumerate(na.preferred_during_scheduling_ignored_during_execution):
        if not 1 <= pref.weight <= 100:
            errs.add(f"{ppath}[{i}].weight", f"{pref.weight} is not in 1-100")
        _node_term(pref.preference, f"{ppath}[{i}].preference", errs)
    anti = aff.pod_anti_affinity
    apath = f"{path}.podAntiAffinity"
    terms = [(f"{apath}.requiredDuringSchedulingIgnoredDuringExecution[{i}]", t)
             for i, t in enumerate(anti.required_during_scheduling_ignored_during_execution)]
    for i, w in enumerate(anti.preferred_during_scheduling_ignored_during_execution):
        wp = f"{apath}.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
        if not 1 <= w.weight <= 100:
            errs.add(f"{wp}.weight", f"{w.weight} is not in 1-100")
        terms.append((f"{wp}.podAffinityTerm", w.pod_affinity_term))
    for tp, term in terms:
        if not term.topology_key:
            errs.add(f"{tp}.topologyKey", "is required")
        elif naming.label_key(term.topology_key):
            errs.add(f"{tp}.topologyKey", naming.label_key(term.topology_key))
        _label_selector(term.label_selector, f"{tp}.labelSelector", errs)


def _node_term(term, path: str, errs: _Errors) -> None:
    for i, r in enumerate(term.match_expressions):
        rp = f"{path}.matchExpressions[{i}]"
        if naming.label_key(r.key):
            errs.add(f"{rp}.key", naming.label_key(r.key))
        if r.operator not in NODE_OPERATORS:
            errs.add(f"{rp}.operator", _one_of(r.operator, NODE_OPERATORS))
        elif r.operator in ("In", "NotIn") and not r.values:
            errs.add(f"{rp}.values", f"operator {r.operator} needs at least one value")
        elif r.operator in ("Exists", "DoesNotExist") and r.values:
            errs.add(f"{rp}.values", f"operator {r.operator} takes no values")
        elif r.operator in ("Gt", "Lt") and (len(r.values) != 1 or not r.values[0].isdigit()):
            errs.add(f"{rp}.values", f"operator {r.operator} needs exactly one integer value")


def _label_selector(sel, path: str, errs: _Errors) -> None:
    _labels(sel.match_labels, f"{path}.matchLabels", errs)
    for i, e in enumerate(sel.match_expressions):
        try:
            selectors.Requirement(e.key, e.operator, tuple(e.values))
        except selectors.SelectorError as err:
            errs.add(f"{path}.matchExpressions[{i}]", str(err))


def _pod(obj, errs: _Errors) -> None:
    _pod_spec(obj.spec, "spec", errs, in_template=False)


# ---- deployments ----

def _selector_and_template(spec, errs: _Errors) -> None:
    """A workload's selector is required and must select its template's labels."""
    if not spec.HasField("selector") or not (spec.selector.match_labels or
                                             spec.selector.match_expressions):
        errs.add("spec.selector", "is required (matchLabels or matchExpressions)")
    else:
        _label_selector(spec.selector, "spec.selector", errs)
    tmpl = spec.template
    _labels(tmpl.metadata.labels, "spec.template.metadata.labels", errs)
    if spec.HasField("selector"):
        try:
            reqs = selectors.requirements_from_label_selector(
                dict(spec.selector.match_labels),
                [{"key": e.key, "operator": e.operator, "values": list(e.values)}
                 for e in spec.selector.match_expressions])
            if reqs and not selectors.matches(reqs, tmpl.metadata.labels):
                errs.add("spec.template.metadata.labels",
                         f"{describe(_fmt_labels(tmpl.metadata.labels))} do not match "
                         f"spec.selector {describe(selectors.format_selector(reqs))}")
        except selectors.SelectorError:
            pass  # reported above


def _deployment(obj, errs: _Errors) -> None:
    spec = obj.spec
    if spec.HasField("replicas") and not 0 <= spec.replicas <= MAX_REPLICAS:
        errs.add("spec.replicas", f"{spec.replicas} is not in 0-{MAX_REPLICAS}")
    _selector_and_template(spec, errs)
    tmpl = spec.template
    _pod_spec(tmpl.spec, "spec.template.spec", errs, in_template=True)
    st = spec.strategy
    if st.type and st.type not in ("RollingUpdate", "Recreate"):
        errs.add("spec.strategy.type", _one_of(st.type, ("RollingUpdate", "Recreate")))
    if st.HasField("rolling_update"):
        if st.type == "Recreate":
            errs.add("spec.strategy.rollingUpdate", 'must not be set when type is "Recreate"')
        surge = _int_or_percent(st.rolling_update.max_surge,
                                "spec.strategy.rollingUpdate.maxSurge", errs)
        unavailable = _int_or_percent(st.rolling_update.max_unavailable,
                                      "spec.strategy.rollingUpdate.maxUnavailable", errs)
        if surge == 0 and unavailable == 0:
            errs.add("spec.strategy.rollingUpdate",
                     "maxSurge and maxUnavailable must not both be 0")
    for fname in ("min_ready_seconds", "revision_history_limit", "progress_deadline_seconds"):
        if getattr(spec, fname) < 0:
            errs.add(f"spec.{_camel(fname)}", "must not be negative")


def _int_or_percent(ios, path: str, errs: _Errors):
    which = ios.WhichOneof("value")
    if which is None:
        return None
    if which == "int_val":
        if ios.int_val < 0:
            errs.add(path, "must not be negative")
        return ios.int_val
    if not _PERCENT.match(ios.str_val) or int(ios.str_val[:-1]) > 100:
        errs.add(path, f'{describe(ios.str_val)} is not an integer or a percentage like "25%"')
        return None
    return int(ios.str_val[:-1])


# ---- services ----

def _service(obj, errs: _Errors) -> None:
    spec = obj.spec
    if spec.type and spec.type not in SERVICE_TYPES:
        if spec.type in ("LoadBalancer", "ExternalName"):
            errs.add("spec.type", f"{describe(spec.type)} is not supported by Moorage "
                                  "(use ClusterIP or NodePort)")
        else:
            errs.add("spec.type", _one_of(spec.type, SERVICE_TYPES))
    headless = spec.cluster_ip == "None"
    if spec.cluster_ip and not headless:
        _ip(spec.cluster_ip, "spec.clusterIP", errs)
    if headless and spec.type == "NodePort":
        errs.add("spec.clusterIP", 'a NodePort service cannot be headless ("None")')
    if not spec.ports and not headless:
        errs.add("spec.ports", "at least one port is required")
    _labels(spec.selector, "spec.selector", errs)
    seen_names, seen_ports = set(), set()
    for i, p in enumerate(spec.ports):
        pp = f"spec.ports[{i}]"
        reason = naming.port_number(p.port)
        if reason:
            errs.add(f"{pp}.port", reason if p.port else "is required")
        if p.protocol and p.protocol not in PROTOCOLS:
            errs.add(f"{pp}.protocol", _one_of(p.protocol, PROTOCOLS))
        key = (p.port, p.protocol or "TCP")
        if key in seen_ports:
            errs.add(f"{pp}.port", f"duplicate port {p.port}/{key[1]}")
        seen_ports.add(key)
        if len(spec.ports) > 1 and not p.name:
            errs.add(f"{pp}.name", "is required when a service has more than one port")
        if p.name:
            if naming.port_name(p.name):
                errs.add(f"{pp}.name", naming.port_name(p.name))
            elif p.name in seen_names:
                errs.add(f"{pp}.name", f"duplicate port name {describe(p.name)}")
            seen_names.add(p.name)
        if p.HasField("target_port"):
            _port_ref(p.target_port, f"{pp}.targetPort", errs)
        if p.node_port:
            if spec.type != "NodePort":
                errs.add(f"{pp}.nodePort", 'may only be set when type is "NodePort"')
            elif not NODE_PORT_RANGE[0] <= p.node_port <= NODE_PORT_RANGE[1]:
                errs.add(f"{pp}.nodePort", f"{p.node_port} is not in the node port range "
                                           f"{NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")


# ---- nodes and events ----

def _node(obj, errs: _Errors) -> None:
    for i, t in enumerate(obj.spec.taints):
        tp = f"spec.taints[{i}]"
        if not t.key or naming.label_key(t.key):
            errs.add(f"{tp}.key", naming.label_key(t.key) or "is required")
        if t.value and naming.label_value(t.value):
            errs.add(f"{tp}.value", naming.label_value(t.value))
        if t.effect not in TAINT_EFFECTS:
            errs.add(f"{tp}.effect", _one_of(t.effect, TAINT_EFFECTS))
    if obj.spec.pod_cidr:
        try:
            ipaddress.ip_network(obj.spec.pod_cidr)
        except ValueError:
            errs.add("spec.podCIDR", f"{describe(obj.spec.pod_cidr)} is not a CIDR")
    for section in ("capacity", "allocatable"):
        for rname, raw in getattr(obj.status, section).items():
            try:
                if rname == storage.LOCAL_STORAGE:   # the agent's room for local volumes
                    quantities.memory_bytes(raw)
                else:
                    quantities.parse_resource(rname, raw)
            except quantities.QuantityError as err:
                errs.add(join(f"status.{section}", rname), str(err))


def _event(obj, errs: _Errors) -> None:
    if obj.type and obj.type not in ("Normal", "Warning"):
        errs.add("type", _one_of(obj.type, ("Normal", "Warning")))
    if not obj.involved_object.name:
        errs.add("involvedObject.name", "is required")


_KIND_CHECKS = {"Pod": _pod, "Deployment": _deployment, "Service": _service, "Node": _node,
                "Event": _event, "ConfigMap": configchecks.config_map,
                "Secret": configchecks.secret,
                "PersistentVolumeClaim": storagechecks.persistent_volume_claim,
                "PersistentVolume": storagechecks.persistent_volume,
                "StorageClass": storagechecks.storage_class,
                "StatefulSet": functools.partial(
                    statefulsetchecks.stateful_set, max_replicas=MAX_REPLICAS,
                    selector_and_template=_selector_and_template, pod_spec=_pod_spec)}


# ---- helpers ----

def _port_ref(ios, path: str, errs: _Errors, *, names=None, required=False) -> None:
    which = ios.WhichOneof("value")
    if which is None:
        if required:
            errs.add(path, "is required")
    elif which == "int_val":
        reason = naming.port_number(ios.int_val)
        if reason:
            errs.add(path, reason)
    else:
        reason = naming.port_name(ios.str_val)
        if reason:
            errs.add(path, reason)
        elif names is not None and ios.str_val not in names:
            errs.add(path, f"no container port is named {describe(ios.str_val)}")


def _ip(text: str, path: str, errs: _Errors) -> None:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        errs.add(path, f"{describe(text)} is not an IPv4 address")


def _one_of(value: str, allowed) -> str:
    return f"{describe(value)} is not one of {', '.join(allowed)}"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.title() for w in rest)


def _fmt_labels(labels) -> str:
    return ",".join(f"{k}={val}" for k, val in sorted(labels.items()))


# ---- defaults ----
