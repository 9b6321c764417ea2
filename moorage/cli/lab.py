"""`moor lab up|status|down`: a real multi-host cluster on this machine, one network namespace
per host (see moorage/lab)."""

from __future__ import annotations

import argparse
import os
import sys

from moorage import lab as defaults

EXAMPLES = """\
examples:
  sudo moor lab up                          3 hosts, a control plane in the first
  sudo moor lab up --nodes 5 --manifests examples/
  sudo moor lab up --import busybox.tar     images for pods with imagePullPolicy: Never
  moor get nodes -o wide                    the lab's nodes (up points moor at the lab)
  sudo ip netns exec moorlab-h2 ip addr     look around inside host 2
  sudo moor lab status
  sudo moor lab down                        stop and remove everything of the lab"""


def add_parser(subparsers) -> None:
    """Adds `lab` and its subcommands to `moor`'s subcommands."""
    lab = subparsers.add_parser(
        "lab", help="run a multi-host cluster on this machine, a network namespace per host",
        description="A cluster on this machine: each host a network namespace on a bridge "
        "(the underlay), a control plane in host 1 and an agent in every host, as processes "
        "that stay up until `moor lab down`. Needs root.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    def named(sp):
        sp.add_argument("--name", default=defaults.DEFAULT_NAME,
                        help=f"the lab's name, in every netns, link and cgroup it makes "
                             f"(default {defaults.DEFAULT_NAME})")
        sp.add_argument("--state-dir", metavar="DIR",
                        help=f"its processes' state and logs (default "
                             f"{defaults.STATE_ROOT}/NAME)")

    up = sub.add_parser("up", help="make the hosts and start the cluster",
                        description="Make the hosts and start the cluster; waits until every "
                        "node is Ready and points moor's config file at the lab.")
    named(up)
    up.add_argument("--nodes", type=int, default=defaults.DEFAULT_NODES, metavar="N",
                    help=f"how many hosts (default {defaults.DEFAULT_NODES})")
    up.add_argument("--manifests", metavar="DIR", help="apply these manifests once it is up")
    up.add_argument("--underlay-cidr", default=defaults.DEFAULT_CIDR, metavar="CIDR",
                    help=f"the hosts' network; .1 is this machine, host i is .(10+i) "
                         f"(default {defaults.DEFAULT_CIDR})")
    up.add_argument("--import", dest="images", action="append", default=[], metavar="TAR",
                    help="a `docker save` tarball imported into every host before it starts "
                         "(repeatable)")
    up.add_argument("--registry-mirror", action="append", default=[], metavar="REGISTRY=URL",
                    help="passed to every agent (repeatable)")
    up.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                    help="passed to every agent (repeatable)")
    up.add_argument("--allowed-host-paths", default="", metavar="DIR,...",
                    help="passed to every agent: where pods may mount hostPath volumes "
                         "(default none)")
    named(sub.add_parser("status", help="the lab's hosts, addresses and processes"))
    named(sub.add_parser("down", help="stop the lab and remove everything it made"))


def run(args: argparse.Namespace) -> int:
    from moorage.lab.hosts import LabError
    from moorage.lab.state import state_dir_for

    try:
        if os.geteuid() != 0:
            raise LabError("moor lab needs root: it makes network namespaces, links and "
                           "cgroups (try sudo)")
        state_dir = state_dir_for(args.name, args.state_dir)
        if args.lab_command == "up":
            return _up(args, state_dir)
        if args.lab_command == "status":
            return _status(args.name, state_dir)
        return _down(args.name, state_dir)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _up(args: argparse.Namespace, state_dir: str) -> int:
    from moorage.lab import cluster

    lab = cluster.plan(args.name, args.nodes, args.underlay_cidr, state_dir)
    flags = [*(f for m in args.registry_mirror for f in ("--registry-mirror", m)),
             *(f for r in args.insecure_registry for f in ("--insecure-registry", r))]
    if args.allowed_host_paths:
        flags += ["--allowed-host-paths", args.allowed_host_paths]
    cluster.up(lab, images=tuple(os.path.abspath(i) for i in args.images),
               agent_flags=tuple(flags), manifests=args.manifests,
               say=lambda line: print(line, flush=True))
    print("\n" + cluster.usage(lab))
    return 0


def _status(name: str, state_dir: str) -> int:
    from moorage.lab import cluster
    from moorage.lab.processes import alive

    lab, rows = cluster.status(name, state_dir)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    pid = f"pid {lab.controlplane_pid or '-'}"
    if lab.controlplane_pid and not alive(lab.controlplane_pid, lab.controlplane_dir):
        pid += " dead"
    print(f"\ncontrol plane {lab.address} in {lab.hosts[0].name}, {pid}; state {lab.state_dir}")
    return 0


def _down(name: str, state_dir: str) -> int:

    from moorage.lab.teardown import down

    said = []

    def say(line: str) -> None:
        said.append(line)
        print(line, flush=True)
    left = down(name, state_dir, say=say)
    if left:
        print(f"error: lab {name}: these are left:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    print(f"lab {name} is gone" if said else f"nothing of lab {name} was found")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moor")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(["lab", *sys.argv[1:]]))
