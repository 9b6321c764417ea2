"""`moor-agent`: the node agent. `run` keeps this node's pods running; the other commands look
at and manage the node's images and containers directly, as `crictl` does for a kubelet.

`run --join HOST:PORT` runs the pods a control plane assigns to this node (nodeagent/daemon.py);
`run --pod-manifests DIR` runs the pods described in DIR (as the kubelet's static pods): add a
file and its pod starts, change it and its containers restart, remove it and the pod goes.
Containers outlive the agent: stopping or killing `moor-agent run` leaves them running, and the
next `run` adopts them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

from nodeagent.daemon import (
    TOKEN_ENV,
    AgentError,
    Node,
    host_policy,
    registry_config,
    run,
    run_joined,
    static_source,
)
from nodeagent.metrics import collector as metrics
from nodeagent.pods.manager import Wakeup
from nodeagent.pods.worker import parse_container_id
from nodeagent.runtime.images.archive import import_archive
from nodeagent.runtime.images.registry import Progress
from nodeagent.runtime.logs import follow

log = logging.getLogger("moorage.agent")

DEFAULT_STATE_DIR = "/var/lib/moorage/agent"


# ---- crictl-like commands ----

def _progress_printer(out=sys.stderr):
    seen: dict[str, tuple[int, int]] = {}

    def show(p: Progress) -> None:
        seen[p.digest] = (p.done, p.total)
        done = sum(d for d, _ in seen.values())
        total = sum(t for _, t in seen.values())
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        out.write(f"\r{pct}  {done / 2**20:7.1f} / {total / 2**20:.1f} MiB  "
                  f"({len(seen)} layers)")
        out.flush()
    return show


def cmd_pull(node: Node, args) -> int:
    show = _progress_printer() if sys.stderr.isatty() or args.progress else None
    image = node.images.pull(args.image, registry_config(args.registry_mirror,
                                                         args.insecure_registry), show)
    if show:
        sys.stderr.write("\n")
    print(f"{image.reference} {image.manifest_digest}")
    return 0


def cmd_images(node: Node, args) -> int:
    rows = [("IMAGE", "DIGEST", "LAYERS")]
    rows += [(i.reference, i.manifest_digest[:19], str(len(i.layer_digests)))
             for i in node.images.list()]
    _table(rows)
    return 0


def cmd_ps(node: Node, args) -> int:
    rows = [("CONTAINER", "NAME", "ATTEMPT", "STATE", "EXIT", "REASON")]
    for info in node.runtime.list():
        parsed = parse_container_id(info.id)
        st = info.status
        rows.append((info.id, parsed[1] if parsed else "-", str(parsed[2]) if parsed else "-",
                     st.state, "" if st.exit_code is None else str(st.exit_code), st.reason))
    _table(rows)
    return 0


def cmd_logs(node: Node, args) -> int:
    path = os.path.join(node.runtime.state_dir, args.container, "container.log")
    if not os.path.exists(path):
        raise AgentError(f"container {args.container!r} has no logs here "
                         f"(see `moor-agent ps --state-dir {node.state_dir}`)")
    done = (lambda: node.runtime.status(args.container).state != "running") \
        if args.follow else (lambda: True)
    for line in follow(path, done=done):
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        sys.stdout.flush()
    return 0


def cmd_exec(node: Node, args) -> int:
    proc = node.runtime.exec(args.container, args.argv, stdout=None, stderr=None,
                             stdin=sys.stdin if args.stdin else None)
    return proc.wait()


def cmd_reset(node: Node, args) -> int:
    """Removes every container of this state dir, the runtime's cgroup parent, the pod
    network namespaces with this agent's prefix and the pods' volumes: the node as if the agent
    had never run (what `moor lab down` asks of each host). Prints one line per thing
    removed."""
    from nodeagent.pods import sandbox, volumes
    from nodeagent.runtime.cgroups import remove_parent
    from nodeagent.runtime.syscalls import LibcSyscalls
    from nodeagent.storage.localvolumes import unmount_all

    count = len(node.runtime.list())
    node.runtime.remove_all()
    if count:
        print(f"removed {count} container{'s' if count != 1 else ''}")
    remove_parent(args.cgroup_root)
    sandboxes = sandbox.Sandboxes(LibcSyscalls())
    for ns in sandbox.existing(args.netns_prefix):
        sandboxes.remove(ns)
        print(f"removed pod netns {ns}")
    for uid in volumes.remove_all(LibcSyscalls(), node.volumes_root):
        print(f"removed the volumes of pod {uid}")
    # Persistent volumes keep their data: only their mounts and loop devices go.
    for point in unmount_all(LibcSyscalls(), node.local_volumes_root):
        print(f"unmounted local volume {point}")
    return 0


def cmd_gc(node: Node, args) -> int:
    in_use = [d for info in node.runtime.list()
              for d in node.runtime.spec(info.id).lower_dirs]
    freed = node.images.gc(args.keep, in_use_layer_dirs=in_use)
    print(f"freed {freed / 2**20:.1f} MiB")
    return 0


def _table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="moor-agent", description="The Moorage node agent: runs this node's pods, and "
        "shows and manages its images and containers.")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR")
    p.add_argument("--cgroup-root", default="moorage", metavar="NAME",
                   help="parent cgroup of this agent's containers (default moorage)")
    p.add_argument("--netns-prefix", default="moorage-", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def registry_flags(sp):
        sp.add_argument("--registry-mirror", action="append", default=[],
                        metavar="REGISTRY=URL",
                        help="try URL before REGISTRY, e.g. docker.io=http://10.0.0.5:5000")
        sp.add_argument("--insecure-registry", action="append", default=[],
                        metavar="HOST:PORT", help="allow plain HTTP to this registry only")

    sp = sub.add_parser("run", help="keep this node's pods running",
                        description="Runs static pods (--pod-manifests), the pods a control "
                        "plane assigns (--join), or both.")
    sp.add_argument("--pod-manifests", metavar="DIR",
                    help="run the Pods described in DIR (static pods)")
    sp.add_argument("--join", metavar="HOST:PORT",
                    help="join the control plane at HOST:PORT and run the pods it assigns")
    sp.add_argument("--node-name", metavar="NAME",
                    help="this node's name (default: the hostname, lowercased)")
    sp.add_argument("--advertise-address", metavar="IP",
                    help="this node's InternalIP (default: the address of the default route)")
    sp.add_argument("--labels", metavar="K=V,...", help="labels for this node")
    sp.add_argument("--pod-network", choices=["overlay", "none"], default="overlay",
                    help="overlay (default): pods get an address from this node's subnet on the "
                    "cluster's VXLAN overlay; none: pods have only loopback (several agents "
                    "sharing one network namespace, as in tests)")
    sp.add_argument("--token-file", metavar="FILE",
                    help="a file holding the join token from `moor token create` (or set "
                    f"{TOKEN_ENV}); needed only the first time (the node's certificate is "
                    "kept under STATE_DIR/pki)")
    sp.add_argument("--token", metavar="TOKEN",
                    help="the join token itself (works, but every user of the host sees it "
                    "in `ps`: prefer --token-file)")
    sp.add_argument("--metrics-listen", default=metrics.DEFAULT_METRICS_LISTEN,
                    metavar="HOST:PORT", help="serve Prometheus /metrics here (default "
                    f"{metrics.DEFAULT_METRICS_LISTEN}, the kubelet's read-only port; '' "
                    "disables)")
    sp.add_argument("--allowed-host-paths", default="", metavar="DIR,...",
                    help="host directories pods may mount as hostPath volumes, "
                    "comma-separated (default: none; the state dir, /proc, /sys and / are "
                    "always refused)")
    registry_flags(sp)
    sp = sub.add_parser("pull", help="pull an image, showing progress")
    sp.add_argument("image")
    sp.add_argument("--progress", action="store_true", help="show progress even without a TTY")
    registry_flags(sp)
    sp = sub.add_parser("import", help="import a `docker save` tarball or an OCI layout")
    sp.add_argument("path")
    sub.add_parser("images", help="list images")
    sub.add_parser("ps", help="list containers")
    sp = sub.add_parser("logs", help="print a container's log")
    sp.add_argument("container")
    sp.add_argument("-f", "--follow", action="store_true")
    sp = sub.add_parser("exec", help="run a command in a running container")
    sp.add_argument("-i", "--stdin", action="store_true")
    sp.add_argument("container")
    sp.add_argument("argv", nargs="+", metavar="COMMAND")
    sub.add_parser("reset", help="remove every container, the cgroup parent and the pod "
                   "network namespaces of this agent (a node left as if it never ran)")
    sp = sub.add_parser("gc", help="remove images not kept and layers no container uses")
    sp.add_argument("--keep", action="append", default=[], metavar="IMAGE")
    return p.parse_args(_implicit_run(sys.argv[1:] if argv is None else list(argv)))


_RUN_OPTIONS = ("--join", "--pod-manifests")
_GLOBAL_OPTIONS = ("--state-dir", "--cgroup-root", "--netns-prefix", "--log-level")
_COMMANDS = ("run", "pull", "import", "images", "ps", "logs", "exec", "gc", "reset")


def _implicit_run(argv: list[str]) -> list[str]:
    """`moor-agent --join H:P --token T ...` means `moor-agent run --join ...`: the daemon
    form operators know from other agents. `run` goes before the first of its own options."""
    if any(a in _COMMANDS for a in argv) or not any(
            a.split("=", 1)[0] in _RUN_OPTIONS for a in argv):
        return argv
    front, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.split("=", 1)[0] in _GLOBAL_OPTIONS:
            take = 1 if "=" in a else 2
            front += argv[i:i + take]
            i += take
        else:
            rest.append(a)
            i += 1
    return [*front, "run", *rest]


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = Node(args.state_dir, cgroup_root=args.cgroup_root)
    try:
        if args.command == "run":
            if not args.pod_manifests and not args.join:
                raise AgentError("run: give --pod-manifests DIR, --join HOST:PORT, or both")
            stop, wake = threading.Event(), Wakeup()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: (stop.set(), wake.set()))
            registry = registry_config(args.registry_mirror, args.insecure_registry)
            if args.join:
                run_joined(node, args, registry, stop, wake)
            else:
                source = static_source(args.pod_manifests)
                if args.metrics_listen:
                    metrics.serve(args.metrics_listen, metrics.AgentCollector(
                        node.runtime, source, args.node_name or socket.gethostname().lower(),
                        node.state_dir))
                run(node, source, registry, stop, netns_prefix=args.netns_prefix, wake=wake,
                    host_paths=host_policy(node, args))
            sys.exit(0)
        if args.command == "import":
            for image in import_archive(node.images, args.path):
                print(f"{image.reference} {image.manifest_digest}")
            sys.exit(0)
        handlers = {"pull": cmd_pull, "images": cmd_images, "ps": cmd_ps, "logs": cmd_logs,
                    "exec": cmd_exec, "gc": cmd_gc, "reset": cmd_reset}
        sys.exit(handlers[args.command](node, args))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - one line for the operator, never a traceback
        if os.environ.get("MOOR_DEBUG"):
            raise
        print(f"moor-agent: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
