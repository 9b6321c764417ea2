"""`moor prometheus targets`: Prometheus file_sd targets for every agent and control plane.

Prometheus re-reads a file_sd file when it changes, so running this from cron or a systemd timer
keeps the scrape targets in step with the node list (deploy/prometheus.yml reads the file). The
file is replaced by rename, so Prometheus never reads half of it.
"""

from __future__ import annotations

import argparse
import json
import sys

from moorage.fsutil import write_atomic
from moorage.model import hostport

AGENT_METRICS_PORT = 10255       # moor-agent --metrics-listen's default port
CONTROLPLANE_METRICS_PORT = 7441  # moor-controlplane --metrics-listen's default port
INTERNAL_IP = "InternalIP"
# The `component` label tells the jobs in deploy/prometheus.yml which targets are theirs.
AGENT, CONTROLPLANE = "agent", "controlplane"


def add_commands(sub, add_globals) -> None:
    cmd = sub.add_parser(
        "prometheus", help="make Prometheus scrape targets from the node list",
        description="Prometheus integration. `targets` writes file_sd JSON naming every "
        "node's agent metrics address (InternalIP:10255) and the control plane's "
        "(the --server host, port 7441, unless --controlplane is given).",
        epilog="examples:\n"
        "  moor prometheus targets -o /etc/prometheus/moorage-targets.json\n"
        "  moor prometheus targets --controlplane 10.0.0.2:7441 --controlplane 10.0.0.3:7441",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_globals(cmd, suppress=True)
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    act = actions.add_parser("targets", help="write file_sd targets (JSON)",
                             description="Write Prometheus file_sd targets (JSON) for every "
                             "node's agent and the control plane(s).")
    add_globals(act, suppress=True)
    act.add_argument("-o", "--output", default="-", metavar="FILE",
                     help="write here, replacing it atomically (default: standard output)")
    act.add_argument("--agent-port", type=int, default=AGENT_METRICS_PORT, metavar="PORT",
                     help=f"the agents' metrics port (default {AGENT_METRICS_PORT})")
    act.add_argument("--controlplane", action="append", default=[], metavar="HOST:PORT",
                     help="a control plane's metrics address; repeat for each replica "
                     f"(default: the --server host, port {CONTROLPLANE_METRICS_PORT})")


def internal_ip(node) -> str:
    for a in node.status.addresses:
        if a.type == INTERNAL_IP and a.address:
            return a.address
    return ""


_hostport = hostport.join
server_host = hostport.host_of


def file_sd(nodes, controlplanes: list[str], agent_port: int) -> tuple[list[dict], list[str]]:
    """(target groups, warnings): one group per agent, labelled with its node, and one group of
    control planes. Nodes without an InternalIP are left out with a warning."""
    groups, warnings = [], []
    if controlplanes:
        groups.append({"targets": sorted(controlplanes),
                       "labels": {"component": CONTROLPLANE}})
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        ip = internal_ip(node)
        if not ip:
            warnings.append(f"node {node.metadata.name} reports no InternalIP: left out")
            continue
        # `moorage_node`, not `node`: the agent's own series carry `node` already.
        groups.append({"targets": [_hostport(ip, agent_port)],
                       "labels": {"component": AGENT, "moorage_node": node.metadata.name}})
    return groups, warnings


def prometheus(ctx) -> int:
    from moorage.model import kinds

    args, client = ctx.args, ctx.client()
    listing = client.list(kinds.BY_NAME["Node"])
    nodes = [kinds.unwrap(item) for item in listing.items]
    controlplanes = args.controlplane or [
        _hostport(server_host(client.server), CONTROLPLANE_METRICS_PORT)]
    groups, warnings = file_sd(nodes, controlplanes, args.agent_port)
    for line in warnings:
        sys.stderr.write(f"warning: {line}\n")
    text = json.dumps(groups, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_atomic(args.output, text)
        agents = sum(1 for g in groups if g["labels"]["component"] == AGENT)
        print(f"wrote {args.output}: {agents} agents, {len(controlplanes)} control plane(s)")
    return 0


HANDLERS = {"prometheus": prometheus}
