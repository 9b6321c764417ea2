"""Renders `moor explain`: per manifest object, where its pods would land and why not elsewhere."""

from __future__ import annotations

from moorage.cli import printers

# Long lists (replicas, rejected nodes) stop here: the first lines say what the rest would.
MAX_LINES = 20
# The runners-up show how close the choice was; a few are enough to see that.
MAX_OTHER_CANDIDATES = 5


def score_text(score: float) -> str:
    return f"{score:.2f}"


def capped(lines: list[str], indent: str) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return [*lines[:MAX_LINES], f"{indent}... and {len(lines) - MAX_LINES} more"]


def object_ref(kind_name: str, name: str) -> str:
    from moorage.model import kinds

    try:
        kind = kinds.lookup(kind_name)
    except kinds.UnknownKind:
        return f"{kind_name.lower()}/{name}"
    return printers.resource_ref(kind, name)


def groups(pods) -> list[list]:
    """The explanations grouped by manifest object, in the order the server answered."""
    by_object: dict[tuple[str, str, str], list] = {}
    for pod in pods:
        by_object.setdefault((pod.kind, pod.namespace, pod.name), []).append(pod)
    return list(by_object.values())


def other_candidates(pod) -> str:
    others = [c for c in pod.candidates if c.node != pod.node]
    if not others:
        return ""
    shown = [f"{c.node} {score_text(c.score)}" for c in others[:MAX_OTHER_CANDIDATES]]
    if len(others) > MAX_OTHER_CANDIDATES:
        shown.append(f"... and {len(others) - MAX_OTHER_CANDIDATES} more")
    return f"(other candidates: {', '.join(shown)})"


def placement(pod, label: str, node_width: int = 0, others: bool = True) -> str:
    line = f"{label} -> {pod.node.ljust(node_width)}   score {score_text(pod.score)}"
    extra = other_candidates(pod) if others else ""
    return f"{line}   {extra}" if extra else line


def details(pod, indent: str) -> list[str]:
    """Why each node was rejected for an unschedulable pod (every node was)."""
    return capped([f"{indent}{r.node}: {r.reason}" for r in pod.rejected], indent)


def not_on(pod, indent: str) -> list[str]:
    seen: set[str] = set()
    lines = []
    for r in pod.rejected:
        if r.node not in seen:
            seen.add(r.node)
            lines.append(f"{indent}not on {r.node}: {r.reason}")
    return capped(lines, indent)


def render_pod(pod, ref: str) -> list[str]:
    if not pod.node:
        return [f"{ref}: unschedulable: {pod.message}", *details(pod, "  ")]
    return [placement(pod, ref), *not_on(pod, "  ")]


def render_replicas(pods: list, ref: str) -> list[str]:
    count = f"{len(pods)} pod" if len(pods) == 1 else f"{len(pods)} pods"
    first = pods[0]
    if all(not p.node and p.message == first.message for p in pods):
        # Replicas that all fail the same way need saying once.
        return [f"{ref} ({count}): unschedulable: {first.message}", *details(first, "  ")]
    name_width = max(len(p.pod) for p in pods)
    node_width = max((len(p.node) for p in pods), default=0)
    rows = []
    for i, p in enumerate(pods):
        if p.node:
            label = "  " + p.pod.ljust(name_width)
            rows.append(placement(p, label, node_width, others=i == 0))
        else:
            rows.append(f"  {p.pod.ljust(name_width)}    unschedulable: {p.message}")
    stuck_count = sum(1 for p in pods if not p.node)
    if stuck_count:
        # Said up front, since the capped list may not reach the pods that fit nowhere.
        count += f", {stuck_count} unschedulable"
    lines = [f"{ref} ({count}):", *capped(rows, "  "), *not_on(first, "  ")]
    stuck = next((p for p in pods if not p.node), None)
    if stuck is not None and stuck is not first:
        # The first pod's rejections don't say why a later one fits nowhere; its own do.
        lines.append(f"  {stuck.pod} fits no node:")
        lines += details(stuck, "    ")
    return lines


def render(response) -> tuple[list[str], bool]:
    """The output lines, and whether every pod would be placed."""
    lines: list[str] = []
    for pods in groups(response.pods):
        ref = object_ref(pods[0].kind, pods[0].name)
        if pods[0].kind == "Pod" and len(pods) == 1:
            lines += render_pod(pods[0], ref)
        else:
            lines += render_replicas(pods, ref)
    return lines, all(p.node for p in response.pods)
