"""Formats objects the way kubectl does: tables, ages, port lists, names and YAML/JSON documents."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from moorage.model import configs, deployments, statefulsets

COLUMN_GAP = "   "
NONE = "<none>"


# ---- names ---------------------------------------------------------------------------------

def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def qualified_kind(kind) -> str:
    """`deployment.apps`, `pod`: the singular resource type kubectl prints before a name."""
    group = _group(kind.api_version)
    return f"{kind.name.lower()}.{group}" if group else kind.name.lower()


def resource_ref(kind, name: str) -> str:
    return f"{qualified_kind(kind)}/{name}"


def object_ref(obj) -> str:
    from moorage.model.kinds import kind_of

    return resource_ref(kind_of(obj), obj.metadata.name)


# ---- time ----------------------------------------------------------------------------------

def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime; None when empty or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Bands of kubectl's human durations: below `limit` seconds, show `big` units, plus `small`
# units when the remainder is not zero and `small` is given.
_MIN, _HOUR, _DAY, _YEAR = 60, 3600, 86400, 365 * 86400
_BANDS = (
    (10 * _MIN, (_MIN, "m"), (1, "s")),
    (3 * _HOUR, (_MIN, "m"), None),
    (8 * _HOUR, (_HOUR, "h"), (_MIN, "m")),
    (48 * _HOUR, (_HOUR, "h"), None),
    (8 * _DAY, (_DAY, "d"), (_HOUR, "h")),
    (2 * _YEAR, (_DAY, "d"), None),
    (8 * _YEAR, (_YEAR, "y"), (_DAY, "d")),
)


def human_duration(seconds: float) -> str:
    """`45s`, `5m3s`, `12m`, `3h`, `5d`: short and coarser as it grows, as kubectl's AGE."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"  # the server's clock is ahead of ours by more than jitter
    if whole < 2 * _MIN:
        return f"{max(whole, 0)}s"
    for limit, (big, big_unit), small in _BANDS:
        if whole < limit:
            count = whole // big
            if small is None:
                return f"{count}{big_unit}"
            rest = (whole % big) // small[0]
            return f"{count}{big_unit}{rest}{small[1]}" if rest else f"{count}{big_unit}"
    return f"{whole // _YEAR}y"


def format_age(timestamp: str, now: datetime | None = None) -> str:
    then = parse_time(timestamp)
    if then is None:
        return "<unknown>"
    now = now or datetime.now(UTC)
    return human_duration((now - then).total_seconds())


# ---- small formatters ----------------------------------------------------------------------

def format_labels(labels: Mapping[str, str], separator: str = ",") -> str:
    if not labels:
        return NONE
    return separator.join(f"{k}={v}" for k, v in sorted(labels.items()))


def format_label_selector(selector) -> str:
    """A LabelSelector in the string syntax `app=web,tier in (a,b),!canary`."""
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        op = req.operator
        if op == "Exists":
            parts.append(req.key)
        elif op == "DoesNotExist":
            parts.append(f"!{req.key}")
        else:
            word = "notin" if op == "NotIn" else op.lower()
            parts.append(f"{req.key} {word} ({','.join(req.values)})")
    return ",".join(parts) or NONE


def int_or_string(value) -> str:
    which = value.WhichOneof("value")
    return "" if which is None else str(getattr(value, which))


def format_service_ports(spec) -> str:
    """`80/TCP`, `80:30080/TCP` (with a node port), comma-separated; `<none>` without ports."""
    out = []
    for port in spec.ports:
        protocol = port.protocol or "TCP"
        if port.node_port:
            out.append(f"{port.port}:{port.node_port}/{protocol}")
        else:
            out.append(f"{port.port}/{protocol}")
    return ",".join(out) or NONE


def or_none(value) -> str:
    return str(value) if value not in ("", None) else NONE


# ---- tables --------------------------------------------------------------------------------

def column_widths(rows: Iterable[Sequence[str]]) -> list[int]:
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i >= len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return widths


def format_row(row: Sequence[str], widths: Sequence[int]) -> str:
    # The last cell is never padded, so lines carry no trailing spaces.
    cells = [cell.ljust(widths[i]) if i < len(widths) else cell
             for i, cell in enumerate(row[:-1])]
    return COLUMN_GAP.join([*cells, *row[-1:]]).rstrip()


def render_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the header first) as left-aligned lines, columns three spaces apart."""
    widths = column_widths(rows)
    return [format_row(row, widths) for row in rows]


def node_status(node) -> str:
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    if ready is None:
        status = "Unknown"
    else:
        status = "Ready" if ready.status == "True" else "NotReady"
    if node.spec.unschedulable:
        status += ",SchedulingDisabled"
    return status


def node_roles(node) -> str:
    roles = set()
    for key, value in node.metadata.labels.items():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or NONE


def node_address(node, kind: str = "InternalIP") -> str:
    return next((a.address for a in node.status.addresses if a.type == kind), NONE)


def pod_status(pod) -> str:
    """What kubectl's STATUS column says: Terminating while the pod is being deleted; else a
    container's trouble wins over the pod's phase."""
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    status = pod.status.reason or pod.status.phase or "Pending"
    statuses = list(pod.status.container_statuses)
    waiting = [c for c in statuses if c.state.lower() == "waiting" and c.reason]
    if waiting:
        return waiting[-1].reason
    terminated = [c for c in statuses if c.state.lower() == "terminated"]
    if statuses and len(terminated) == len(statuses):
        last = terminated[-1]
        return last.reason or f"ExitCode:{last.exit_code}"
    return status


def event_last_seen(event) -> str:
    return event.last_timestamp or event.first_timestamp or event.metadata.creation_timestamp


def _pod_row(pod, now):
    statuses = pod.status.container_statuses
    ready = sum(1 for c in statuses if c.ready)
    total = len(pod.spec.containers) or len(statuses)
    restarts = sum(c.restart_count for c in statuses)
    base = [pod.metadata.name, f"{ready}/{total}", pod_status(pod), str(restarts),
            format_age(pod.metadata.creation_timestamp, now)]
    return base, [or_none(pod.status.pod_ip), or_none(pod.spec.node_name)]


def _deployment_row(deploy, now):
    status = deploy.status
    base = [deploy.metadata.name, f"{status.ready_replicas}/{deployments.desired_replicas(deploy)}",
            str(status.updated_replicas), str(status.available_replicas),
            format_age(deploy.metadata.creation_timestamp, now)]
    containers = deploy.spec.template.spec.containers
    wide = [",".join(c.name for c in containers) or NONE,
            ",".join(c.image for c in containers) or NONE,
            format_label_selector(deploy.spec.selector)]
    return base, wide


def _stateful_set_row(sts, now):
    # kubectl: READY is ready/desired; wide adds the containers and images.
    base = [sts.metadata.name,
            f"{sts.status.ready_replicas}/{statefulsets.desired_replicas(sts)}",
            format_age(sts.metadata.creation_timestamp, now)]
    containers = sts.spec.template.spec.containers
    return base, [",".join(c.name for c in containers) or NONE,
                  ",".join(c.image for c in containers) or NONE]


def _service_row(svc, now):
    spec = svc.spec
    base = [svc.metadata.name, spec.type or "ClusterIP", or_none(spec.cluster_ip),
            format_service_ports(spec), format_age(svc.metadata.creation_timestamp, now)]
    return base, [format_labels(spec.selector)]


def _node_row(node, now):
    info = node.status.node_info
    base = [node.metadata.name, node_status(node), node_roles(node),
            format_age(node.metadata.creation_timestamp, now), or_none(info.agent_version)]
    return base, [node_address(node), info.kernel_version or "<unknown>"]


def _namespace_row(ns, now):
    return [ns.metadata.name, ns.status.phase or "Active",
            format_age(ns.metadata.creation_timestamp, now)], []


def _event_row(event, now):
    involved = event.involved_object
    target = f"{involved.kind.lower()}/{involved.name}" if involved.kind else involved.name
    first = event.first_timestamp or event.metadata.creation_timestamp
    wide = [event.source.component or NONE, format_age(first, now), str(event.count or 1),
            event.metadata.name]
    return [format_age(event_last_seen(event), now), event.type or "Normal", event.reason,
            target], wide, [" ".join(event.message.split())]


def _config_map_row(cm, now):
    # DATA counts the keys of data and binaryData together, as kubectl does.
    return [cm.metadata.name, str(len(cm.data) + len(cm.binary_data)),
            format_age(cm.metadata.creation_timestamp, now)], []


def _secret_row(secret, now):
    return [secret.metadata.name, secret.type or configs.OPAQUE, str(len(secret.data)),
            format_age(secret.metadata.creation_timestamp, now)], []


# kind -> (columns, wide-only columns, row function). Event rows also return a trailing part
# (the message) that stays last even in wide output, since it is the longest cell.
TABLES = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"], _pod_row),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                   ["CONTAINERS", "IMAGES", "SELECTOR"], _deployment_row),
    "StatefulSet": (["NAME", "READY", "AGE"], ["CONTAINERS", "IMAGES"], _stateful_set_row),
    "Service": (["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"], ["SELECTOR"], _service_row),
    "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "KERNEL-VERSION"],
             _node_row),
    "Namespace": (["NAME", "STATUS", "AGE"], [], _namespace_row),
    "Event": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
              ["SOURCE", "FIRST SEEN", "COUNT", "NAME"], _event_row),
    "ConfigMap": (["NAME", "DATA", "AGE"], [], _config_map_row),
    "Secret": (["NAME", "TYPE", "DATA", "AGE"], [], _secret_row),
}


def table_header(kind, wide: bool = False, all_namespaces: bool = False) -> list[str]:
    columns, extra, _ = TABLES[kind.name]
    header = list(columns)
    if wide and extra:
        if kind.name == "Event":
            header = header[:-1] + extra + header[-1:]
        else:
            header += extra
    if all_namespaces and kind.namespaced:
        header.insert(0, "NAMESPACE")
    return header


def table_row(obj, kind, wide: bool = False, all_namespaces: bool = False,
              now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    parts = TABLES[kind.name][2](obj, now)
    base, extra, tail = parts[0], parts[1], (parts[2] if len(parts) > 2 else [])
    row = [*base, *(extra if wide else []), *tail]
    if all_namespaces and kind.namespaced:
        row.insert(0, obj.metadata.namespace)
    return row


def sort_events(events: Iterable) -> list:
    """Oldest first, so the latest event sits next to the prompt."""
    earliest = datetime.min.replace(tzinfo=UTC)
    return sorted(events, key=lambda e: parse_time(event_last_seen(e)) or earliest)


def sort_for_display(kind, objects: list) -> list:
    """Events read best in time order; everything else keeps the server's (name) order."""
    return sort_events(objects) if kind.name == "Event" else objects


# ---- documents -----------------------------------------------------------------------------

def object_dict(obj) -> dict:
    from moorage.manifest.convert import object_to_dict

    return object_to_dict(obj)


def list_dict(objects: Iterable, resource_version: str = "") -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": [object_dict(o) for o in objects],
            "metadata": {"resourceVersion": resource_version}}


def dump(data, output: str) -> str:
    """`data` as JSON (indented 4, as kubectl) or YAML, ending with a newline."""
    if output == "json":
        return json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
