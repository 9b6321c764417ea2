"""Renders `moor describe`: an object's fields in readable sections, then the events about it."""

from __future__ import annotations

from datetime import UTC, datetime

from moorage.cli import describeconfig
from moorage.cli import printers as p
from moorage.model import configs, deployments, statefulsets

PADDING = 2
# A big cluster rejects a pod on many nodes; the first ones show the pattern.
MAX_SCHEDULING_DETAILS = 20


def align(rows: list[list[str]], padding: int = PADDING) -> list[str]:
    """Aligns tab-separated cells the way Go's tabwriter does for kubectl describe.

    A column is aligned over a run of consecutive lines that all have a cell in it; a line
    without one (a section title) ends the run, so each section lines up on its own.
    """
    widths = [[0] * (len(row) - 1) for row in rows]

    def fit(start: int, end: int, col: int) -> None:
        i = start
        while i < end:
            if len(rows[i]) - 1 <= col:
                i += 1
                continue
            j = i
            while j < end and len(rows[j]) - 1 > col:
                j += 1
            width = max(len(rows[k][col]) for k in range(i, j)) + padding
            for k in range(i, j):
                widths[k][col] = width
            fit(i, j, col + 1)
            i = j

    fit(0, len(rows), 0)
    lines = []
    for n, row in enumerate(rows):
        padded = "".join(cell.ljust(widths[n][c]) for c, cell in enumerate(row[:-1]))
        lines.append((padded + row[-1]).rstrip())
    return lines


class Writer:
    """Collects indented lines of cells; `text()` aligns them."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def line(self, level: int, *cells: str) -> None:
        cells = tuple(str(c) for c in cells) or ("",)
        self.rows.append(["  " * level + cells[0], *cells[1:]])

    def field(self, level: int, key: str, value) -> None:
        self.line(level, f"{key}:", p.or_none(value))

    def multi(self, level: int, key: str, values: list[str]) -> None:
        """A field with one value per line, as Labels and Annotations are shown."""
        if not values:
            self.line(level, f"{key}:", p.NONE)
            return
        self.line(level, f"{key}:", values[0])
        for value in values[1:]:
            self.line(level, "", value)

    def mapping(self, level: int, key: str, data) -> None:
        if not data:
            self.line(level, f"{key}:", p.NONE)
            return
        self.line(level, f"{key}:")
        for k, v in sorted(data.items()):
            self.line(level + 1, f"{k}:", v)

    def table(self, level: int, header: list[str], rows: list[list[str]]) -> None:
        self.line(level, *header)
        self.line(level, *("-" * len(h) for h in header))
        for row in rows:
            self.line(level, *row)

    def text(self) -> str:
        return "\n".join(align(self.rows)) + "\n"


def format_timestamp(text: str) -> str:
    """RFC 1123 with offset, as kubectl describe prints times; the raw text if unparsable."""
    when = p.parse_time(text)
    return when.strftime("%a, %d %b %Y %H:%M:%S %z") if when else p.or_none(text)


def _pairs(data) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(data.items())]


def _metadata(w: Writer, obj, namespaced: bool) -> None:
    meta = obj.metadata
    w.field(0, "Name", meta.name)
    if namespaced:
        w.field(0, "Namespace", meta.namespace)
    w.multi(0, "Labels", _pairs(meta.labels))
    w.multi(0, "Annotations", [f"{k}: {v}" for k, v in sorted(meta.annotations.items())])
    w.field(0, "CreationTimestamp", format_timestamp(meta.creation_timestamp))
    if meta.owner_references:
        ref = meta.owner_references[0]
        w.field(0, "Controlled By", f"{ref.kind}/{ref.name}")


def _probe(probe) -> str:
    if probe.HasField("http_get"):
        get = probe.http_get
        how = f"http-get {get.scheme.lower() or 'http'}://{get.host}:{p.int_or_string(get.port)}"
        how += get.path
    elif probe.HasField("tcp_socket"):
        how = f"tcp-socket {probe.tcp_socket.host}:{p.int_or_string(probe.tcp_socket.port)}"
    elif probe.HasField("exec"):
        how = "exec " + str(list(probe.exec.command))
    else:
        return p.NONE
    return (f"{how} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds or 1}s "
            f"period={probe.period_seconds or 10}s #success={probe.success_threshold or 1} "
            f"#failure={probe.failure_threshold or 3}")


def _containers(w: Writer, level: int, spec, statuses=None) -> None:
    by_name = {s.name: s for s in statuses or ()}
    w.line(level, "Containers:")
    for c in spec.containers:
        w.line(level + 1, f"{c.name}:")
        inner = level + 2
        w.field(inner, "Image", c.image)
        ports = [f"{port.container_port}/{port.protocol or 'TCP'}" for port in c.ports]
        w.field(inner, "Ports" if len(ports) > 1 else "Port", ", ".join(ports))
        host_ports = [f"{port.host_port}/{port.protocol or 'TCP'}" for port in c.ports
                      if port.host_port]
        if host_ports:
            w.field(inner, "Host Port", ", ".join(host_ports))
        if c.command:
            w.multi(inner, "Command", list(c.command))
        if c.args:
            w.multi(inner, "Args", list(c.args))
        status = by_name.get(c.name)
        if status is not None:
            _container_state(w, inner, status)
        if c.resources.limits:
            w.mapping(inner, "Limits", c.resources.limits)
        if c.resources.requests:
            w.mapping(inner, "Requests", c.resources.requests)
        for label, probe in (("Liveness", c.liveness_probe), ("Readiness", c.readiness_probe),
                             ("Startup", c.startup_probe)):
            if probe.ByteSize():
                w.field(inner, label, _probe(probe))
        if c.env_from:
            w.multi(inner, "Environment Variables from", describeconfig.env_from(c))
        w.mapping(inner, "Environment", describeconfig.environment(c))
        w.multi(inner, "Mounts", describeconfig.mounts(c, spec))


def _container_state(w: Writer, level: int, status) -> None:
    state = status.state.capitalize() or "Unknown"
    w.field(level, "State", state)
    if status.reason:
        w.field(level + 1, "Reason", status.reason)
    if status.message:
        w.field(level + 1, "Message", status.message)
    if state == "Terminated":
        w.field(level + 1, "Exit Code", status.exit_code)
    if status.started_at:
        w.field(level + 1, "Started", format_timestamp(status.started_at))
    if status.finished_at:
        w.field(level + 1, "Finished", format_timestamp(status.finished_at))
    w.field(level, "Ready", "True" if status.ready else "False")
    w.field(level, "Restart Count", status.restart_count)


def _conditions(w: Writer, conditions, columns: list[tuple[str, str]]) -> None:
    if not conditions:
        w.line(0, "Conditions:", p.NONE)
        return
    w.line(0, "Conditions:")
    rows = [[p.or_none(getattr(c, attr)) if attr != "status" else c.status or "Unknown"
             for _, attr in columns] for c in conditions]
    w.table(1, [title for title, _ in columns], rows)


def _pod(w: Writer, pod) -> None:
    node = pod.spec.node_name
    if node and pod.status.host_ip:
        node = f"{node}/{pod.status.host_ip}"
    w.field(0, "Node", node)
    if pod.status.start_time:
        w.field(0, "Start Time", format_timestamp(pod.status.start_time))
    status = p.pod_status(pod)
    if pod.metadata.deletion_timestamp:
        status += (f" (grace period {pod.metadata.deletion_grace_period_seconds}s, until "
                   f"{format_timestamp(pod.metadata.deletion_timestamp)})")
    w.field(0, "Status", status)
    scheduled = next((c for c in pod.status.conditions if c.type == "PodScheduled"), None)
    if scheduled is not None and scheduled.status == "False":
        # Why a pod is Pending is the first thing an operator looks for.
        w.field(0, "Reason", scheduled.reason or "Unschedulable")
        w.field(0, "Message", scheduled.message)
    else:
        if pod.status.reason:
            w.field(0, "Reason", pod.status.reason)
        if pod.status.message:
            w.field(0, "Message", pod.status.message)
    if pod.status.scheduling_details:
        _scheduling(w, pod, scheduled)
    w.field(0, "IP", pod.status.pod_ip)
    _containers(w, 0, pod.spec, pod.status.container_statuses)
    _conditions(w, pod.status.conditions, [("Type", "type"), ("Status", "status")])
    describeconfig.volumes(w, pod.spec)
    w.multi(0, "Node-Selectors", _pairs(pod.spec.node_selector))
    tolerations = []
    for t in pod.spec.tolerations:
        text = t.key + (f"={t.value}" if t.value else "") + (f":{t.effect}" if t.effect else "")
        if t.operator == "Exists":
            text += " op=Exists"
        if t.toleration_seconds:
            text += f" for {t.toleration_seconds}s"
        tolerations.append(text.strip())
    w.multi(0, "Tolerations", tolerations)


def _scheduling(w: Writer, pod, scheduled) -> None:
    """The scheduler's verdict per node, so "why is it Pending" needs no log reading."""
    message = scheduled.message if scheduled is not None and scheduled.status == "False" else ""
    w.field(0, "Scheduling", message)
    details = pod.status.scheduling_details
    for d in details[:MAX_SCHEDULING_DETAILS]:
        w.line(1, f"{d.node}:", d.reason)
    if len(details) > MAX_SCHEDULING_DETAILS:
        w.line(1, f"... and {len(details) - MAX_SCHEDULING_DETAILS} more")


def _deployment(w: Writer, deploy) -> None:
    spec, status = deploy.spec, deploy.status
    w.field(0, "Selector", p.format_label_selector(spec.selector))
    desired = deployments.desired_replicas(deploy)
    w.field(0, "Replicas", f"{desired} desired | {status.updated_replicas} "
            f"updated | {status.replicas} total | {status.available_replicas} available | "
            f"{status.unavailable_replicas} unavailable")
    strategy = spec.strategy.type or "RollingUpdate"
    w.field(0, "StrategyType", strategy)
    w.field(0, "MinReadySeconds", spec.min_ready_seconds)
    if strategy == "RollingUpdate":
        rolling = spec.strategy.rolling_update
        unavailable = p.int_or_string(rolling.max_unavailable) or "25%"
        surge = p.int_or_string(rolling.max_surge) or "25%"
        w.field(0, "RollingUpdateStrategy", f"{unavailable} max unavailable, {surge} max surge")
    if spec.paused:
        w.field(0, "Paused", "true")
    w.line(0, "Pod Template:")
    w.multi(1, "Labels", _pairs(spec.template.metadata.labels))
    if spec.template.metadata.annotations:
        w.multi(1, "Annotations", _pairs(spec.template.metadata.annotations))
    _containers(w, 1, spec.template.spec)
    _conditions(w, status.conditions,
                [("Type", "type"), ("Status", "status"), ("Reason", "reason")])


def _stateful_set(w: Writer, sts) -> None:
    spec, status = sts.spec, sts.status
    w.field(0, "Selector", p.format_label_selector(spec.selector))
    w.field(0, "Service Name", spec.service_name)
    w.field(0, "Replicas", f"{statefulsets.desired_replicas(sts)} desired | "
            f"{status.replicas} total")
    if spec.ordinals.start:
        w.field(0, "Ordinals Start", spec.ordinals.start)
    w.field(0, "Pod Management Policy", statefulsets.pod_management_policy(sts))
    strategy = statefulsets.update_strategy(sts)
    w.field(0, "Update Strategy", strategy)
    if strategy == statefulsets.ROLLING_UPDATE:
        w.field(1, "Partition", statefulsets.partition(sts))
        unavailable = p.int_or_string(spec.update_strategy.rolling_update.max_unavailable)
        if unavailable:
            w.field(1, "Max Unavailable", unavailable)
    w.field(0, "Pods Status", f"{status.ready_replicas} Ready / {status.available_replicas} "
            f"Available / {status.updated_replicas} Updated / {status.current_replicas} Current")
    w.field(0, "Current Revision", status.current_revision)
    w.field(0, "Update Revision", status.update_revision)
    w.field(0, "PVC Retention Policy", f"whenDeleted: {statefulsets.when_deleted(sts)}, "
            f"whenScaled: {statefulsets.when_scaled(sts)}")
    w.line(0, "Pod Template:")
    w.multi(1, "Labels", _pairs(spec.template.metadata.labels))
    if spec.template.metadata.annotations:
        w.multi(1, "Annotations", _pairs(spec.template.metadata.annotations))
    _containers(w, 1, spec.template.spec)
    if not spec.volume_claim_templates:
        w.field(0, "Volume Claims", p.NONE)
    else:
        w.line(0, "Volume Claims:")
    for claim in spec.volume_claim_templates:
        cs = claim.spec
        w.field(1, "Name", claim.metadata.name)
        w.field(1, "StorageClass", cs.storage_class_name if cs.HasField("storage_class_name")
                else "")
        w.multi(1, "Labels", _pairs(claim.metadata.labels))
        w.multi(1, "Annotations", _pairs(claim.metadata.annotations))
        w.field(1, "Capacity", cs.resources.requests.get("storage", ""))
        w.field(1, "Access Modes", "[" + " ".join(cs.access_modes) + "]")


def _node(w: Writer, node) -> None:
    taints = [f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}"
              for t in node.spec.taints]
    w.multi(0, "Taints", taints)
    w.field(0, "Unschedulable", "true" if node.spec.unschedulable else "false")
    _conditions(w, node.status.conditions, [
        ("Type", "type"), ("Status", "status"), ("LastHeartbeatTime", "last_heartbeat_time"),
        ("LastTransitionTime", "last_transition_time"), ("Reason", "reason"),
        ("Message", "message")])
    w.line(0, "Addresses:")
    for address in node.status.addresses:
        w.line(1, f"{address.type}:", address.address)
    w.mapping(0, "Capacity", node.status.capacity)
    w.mapping(0, "Allocatable", node.status.allocatable)
    info = node.status.node_info
    w.line(0, "System Info:")
    for key, value in (("Kernel Version", info.kernel_version), ("OS Image", info.os_image),
                       ("Operating System", info.operating_system),
                       ("Architecture", info.architecture),
                       ("Agent Version", info.agent_version)):
        w.field(1, key, value)
    if node.spec.pod_cidr:
        w.field(0, "PodCIDR", node.spec.pod_cidr)


def _service(w: Writer, svc, endpoints=None) -> None:
    """`endpoints`: the service's agent_pb2.ServiceEntry as computed from the pods now, or
    None when they could not be listed (the line is left out)."""
    spec = svc.spec
    w.field(0, "Selector", p.format_labels(spec.selector))
    w.field(0, "Type", spec.type or "ClusterIP")
    w.field(0, "IP", spec.cluster_ip)
    if not spec.ports:
        w.field(0, "Port", p.NONE)
    for i, port in enumerate(spec.ports):
        protocol = port.protocol or "TCP"
        name = port.name or "<unset>"
        w.line(0, "Port:", f"{name}  {port.port}/{protocol}")
        target = p.int_or_string(port.target_port) or str(port.port)
        w.line(0, "TargetPort:", f"{target}/{protocol}")
        if port.node_port:
            w.line(0, "NodePort:", f"{name}  {port.node_port}/{protocol}")
        if endpoints is not None:
            addrs = [f"{e.ip}:{e.ports[i]}" for e in endpoints.endpoints if e.ports[i]]
            w.line(0, "Endpoints:", _endpoint_list(addrs))
    if endpoints is not None and not spec.ports:
        w.line(0, "Endpoints:", _endpoint_list([e.ip for e in endpoints.endpoints]))


def _endpoint_list(addrs: list[str], show: int = 3) -> str:
    """As kubectl: the first few, then how many more; <none> for none."""
    if not addrs:
        return p.NONE
    more = f" + {len(addrs) - show} more..." if len(addrs) > show else ""
    return ",".join(addrs[:show]) + more


def _namespace(w: Writer, ns) -> None:
    w.field(0, "Status", ns.status.phase or "Active")


def _event(w: Writer, event) -> None:
    ref = event.involved_object
    w.field(0, "Involved Object", f"{ref.kind}/{ref.name}" if ref.kind else ref.name)
    w.field(0, "Type", event.type or "Normal")
    w.field(0, "Reason", event.reason)
    w.field(0, "Message", event.message)
    w.field(0, "Source", event.source.component)
    w.field(0, "Count", event.count or 1)
    w.field(0, "First Timestamp", format_timestamp(event.first_timestamp))
    w.field(0, "Last Timestamp", format_timestamp(event.last_timestamp))


def _short_metadata(w: Writer, obj) -> None:
    """All of a ConfigMap's or a Secret's metadata that kubectl describe shows."""
    meta = obj.metadata
    w.field(0, "Name", meta.name)
    w.field(0, "Namespace", meta.namespace)
    w.multi(0, "Labels", _pairs(meta.labels))
    w.multi(0, "Annotations", [f"{k}: {v}" for k, v in sorted(meta.annotations.items())])


def _config_map(w: Writer, cm) -> None:
    """kubectl's layout: each key, a rule, its value and a blank line; binary keys by size."""
    w.line(0, "")
    w.line(0, "Data")
    w.line(0, "====")
    for key, value in sorted(cm.data.items()):
        w.line(0, f"{key}:")
        w.line(0, "----")
        for line in value.split("\n"):
            w.line(0, line)
        w.line(0, "")
    w.line(0, "")
    w.line(0, "BinaryData")
    w.line(0, "====")
    for key, value in sorted(cm.binary_data.items()):
        w.line(0, f"{key}: {len(value)} bytes")
    w.line(0, "")


def _secret(w: Writer, secret) -> None:
    """The type and each key's size: never a value."""
    w.line(0, "")
    w.field(0, "Type", secret.type or configs.OPAQUE)
    w.line(0, "")
    w.line(0, "Data")
    w.line(0, "====")
    for key, value in sorted(secret.data.items()):
        w.line(0, f"{key}:", f"{len(value)} bytes")


# A Service's section also takes its endpoints: `describe` calls _service itself.
_SECTIONS = {"Pod": _pod, "Deployment": _deployment, "StatefulSet": _stateful_set,
             "Node": _node, "Namespace": _namespace, "Event": _event, "ConfigMap": _config_map,
             "Secret": _secret}
# Kinds whose describe has kubectl's four metadata lines only.
_SHORT_METADATA = ("ConfigMap", "Secret")
# Kinds described without events, as kubectl describes them.
NO_EVENTS = ("Event", "Secret")


def event_age(event, now: datetime) -> str:
    """`3m`, or `3m (x4 over 10m)` for an event seen several times, as kubectl shows."""
    last = p.format_age(p.event_last_seen(event), now)
    if event.count > 1 and event.first_timestamp:
        return f"{last} (x{event.count} over {p.format_age(event.first_timestamp, now)})"
    return last


def events_section(w: Writer, events, now: datetime) -> None:
    if not events:
        w.line(0, "Events: <none>")
        return
    w.line(0, "Events:")
    rows = []
    for event in events:
        source = event.source.component
        if event.source.host:
            source = f"{source}, {event.source.host}" if source else event.source.host
        rows.append([event.type or "Normal", event.reason, event_age(event, now),
                     source or p.NONE, " ".join(event.message.split())])
    w.table(1, ["Type", "Reason", "Age", "From", "Message"], rows)


def related_events(obj, events) -> list:
    """The events about `obj`: the server's field selector narrows by name, this by kind too."""
    from moorage.model.kinds import kind_of

    kind = kind_of(obj).name
    meta = obj.metadata
    mine = [e for e in events
            if e.involved_object.name == meta.name
            and e.involved_object.kind in ("", kind)
            and (not meta.uid or not e.involved_object.uid or e.involved_object.uid == meta.uid)]
    return p.sort_events(mine)


def usage_section(w: Writer, usage) -> None:
    """A node's live usage (api NodeUsage, measured by its agent just now), as `moor top`."""
    from moorage.cli.streams import format_cpu, format_memory, format_percent

    w.line(0, "Usage:", "(live, from the agent)")
    w.table(1, ["Resource", "Used", "Of capacity"], [
        ["cpu", format_cpu(usage.cpu_cores),
         format_percent(usage.cpu_cores, usage.cpu_capacity_cores)],
        ["memory", format_memory(usage.memory_working_set_bytes),
         format_percent(usage.memory_working_set_bytes, usage.memory_capacity_bytes)]])


def describe(obj, events=None, events_error: str = "", now: datetime | None = None,
             usage=None, endpoints=None) -> str:
    """The describe text of one object; `events` are Event objects (already fetched); `usage`
    a node's NodeUsage when its agent answered (the section is left out otherwise);
    `endpoints` a Service's ServiceEntry (moorage.model.endpoints.service_entry)."""
    from moorage.model.kinds import kind_of

    now = now or datetime.now(UTC)
    kind = kind_of(obj)
    w = Writer()
    if kind.name in _SHORT_METADATA:
        _short_metadata(w, obj)
    else:
        _metadata(w, obj, kind.namespaced)
    if kind.name == "Service":
        _service(w, obj, endpoints)
    else:
        _SECTIONS[kind.name](w, obj)
    if usage is not None:
        usage_section(w, usage)
    if kind.name not in NO_EVENTS:
        if events_error:
            w.line(0, "Events:", f"<cannot list: {events_error}>")
        else:
            events_section(w, related_events(obj, events or []), now)
    return w.text()
