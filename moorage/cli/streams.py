"""`moor logs`, `moor exec` and `moor top`: a pod's output, commands inside it, and live usage,
served by the agent that runs the pod (through the control plane's Pods API)."""

from __future__ import annotations

import os
import queue
import sys
import threading

from moorage.cli.errors import CliError

# Exit status after Ctrl-C, as a shell reports a SIGINT death.
INTERRUPTED = 130
STDIN_CHUNK = 32 * 1024


# ---- formatting (pure) ----

def format_cpu(cores: float) -> str:
    """Cores as kubectl's millicores: 0.125 -> "125m"."""
    return f"{round(cores * 1000)}m"


def format_memory(nbytes: int) -> str:
    """Bytes in whole MiB like kubectl top: 432013312 -> "412Mi"."""
    return f"{nbytes // (1024 * 1024)}Mi"


def format_percent(used: float, capacity: float) -> str:
    return f"{int(used * 100 / capacity)}%" if capacity > 0 else "<unknown>"


def node_rows(nodes) -> list[list[str]]:
    rows = [["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]]
    for n in nodes:
        rows.append([n.name, format_cpu(n.cpu_cores),
                     format_percent(n.cpu_cores, n.cpu_capacity_cores),
                     format_memory(n.memory_working_set_bytes),
                     format_percent(n.memory_working_set_bytes, n.memory_capacity_bytes)])
    return rows


def pod_rows(pods, all_namespaces: bool = False, containers: bool = False) -> list[list[str]]:
    head = ["NAMESPACE"] if all_namespaces else []
    if containers:
        rows = [[*head, "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]]
        for p in pods:
            for c in p.containers:
                ns = [p.namespace] if all_namespaces else []
                rows.append([*ns, p.name, c.name, format_cpu(c.cpu_cores),
                             format_memory(c.memory_working_set_bytes)])
        return rows
    rows = [[*head, "NAME", "CPU(cores)", "MEMORY(bytes)"]]
    for p in pods:
        ns = [p.namespace] if all_namespaces else []
        cpu = sum(c.cpu_cores for c in p.containers)
        mem = sum(c.memory_working_set_bytes for c in p.containers)
        rows.append([*ns, p.name, format_cpu(cpu), format_memory(mem)])
    return rows


# ---- parser ----

def add_commands(command) -> None:
    """Adds `logs`, `exec` and `top` to `moor`; `command(name, help, examples)` makes a
    subcommand's parser with the global options (moorage/cli/main.py)."""
    def namespace(cmd):
        cmd.add_argument("-n", "--namespace", metavar="NS",
                         help='the pod\'s namespace (default: "default")')

    cmd = command("logs", "print the logs of a container in a pod", """\
  moor logs web-7c9f8d-x2k4q
  moor logs web -c sidecar --tail 20
  moor logs -f web                       follow until the container stops (Ctrl-C to stop)
  moor logs web --previous               the instance before the last restart""")
    cmd.add_argument("pod", metavar="POD")
    namespace(cmd)
    cmd.add_argument("-c", "--container", default="", metavar="C",
                     help="the container (default: the pod's only one)")
    cmd.add_argument("-f", "--follow", action="store_true",
                     help="keep printing new lines until the container stops")
    cmd.add_argument("-p", "--previous", action="store_true",
                     help="the previous, terminated instance of the container")
    cmd.add_argument("--tail", type=int, default=-1, metavar="N",
                     help="only the last N lines (default: all)")
    cmd.add_argument("--timestamps", action="store_true",
                     help="prefix each line with its RFC 3339 timestamp")

    cmd = command("exec", "run a command in a container of a pod", """\
  moor exec web -- ls /
  moor exec -it web -c app -- sh
  echo hello | moor exec -i web -- cat""",
                  "Run a command in a running container; exits with the command's status.")
    cmd.add_argument("pod", metavar="POD")
    cmd.add_argument("argv", metavar="COMMAND", nargs="*",
                     help="the command and its arguments, after --")
    namespace(cmd)
    cmd.add_argument("-c", "--container", default="", metavar="C",
                     help="the container (default: the pod's only one)")
    cmd.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    cmd.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    cmd.__class__ = _command_after_dashes(type(cmd))

    cmd = command("top", "show CPU and memory use of nodes or pods", """\
  moor top nodes
  moor top pods -n shop
  moor top pods -A --containers""",
                  "Show CPU (cores, averaged over half a second) and memory working set of "
                  "nodes or pods, measured by the agents now.")
    cmd.add_argument("what", metavar="nodes|pods", choices=("nodes", "node", "no",
                                                            "pods", "pod", "po"))
    namespace(cmd)
    cmd.add_argument("-A", "--all-namespaces", action="store_true",
                     help="pods of every namespace")
    cmd.add_argument("--containers", action="store_true", help="one row per container")


def _command_after_dashes(base: type) -> type:
    """A parser class that takes everything after the first `--` as the command, verbatim.

    argparse would otherwise give `COMMAND...` an empty list at the first positional and
    leave `-- sh` over when options sit between the pod and the `--` (`exec -it web -c a -- sh`).
    """
    class ExecParser(base):
        def parse_known_args(self, args=None, namespace=None):
            args = list(sys.argv[1:] if args is None else args)
            command: list[str] = []
            if "--" in args:
                cut = args.index("--")
                args, command = args[:cut], args[cut + 1:]
            parsed, extras = super().parse_known_args(args, namespace)
            parsed.argv = list(getattr(parsed, "argv", None) or []) + command
            return parsed, extras
    return ExecParser


# ---- commands ----

def _stub(client):
    from moorage.v1 import api_pb2_grpc

    channel = getattr(client, "channel", None) or client._channel
    return api_pb2_grpc.PodsStub(channel)


def _metadata(client):
    return getattr(client, "_metadata", None)


def _error(client, exc) -> CliError:
    from moorage.cli.client import rpc_error

    return rpc_error(exc, client.server, client.timeout)


def logs(ctx) -> int:
    import grpc

    from moorage.v1 import api_pb2

    args, client = ctx.args, ctx.client()
    request = api_pb2.LogsRequest(
        namespace=args.namespace or "default", pod=args.pod, container=args.container,
        follow=args.follow, previous=args.previous, tail_lines=max(0, args.tail),
        timestamps=args.timestamps)
    # A follow runs until the container stops: no deadline then.
    stream = _stub(client).Logs(request, metadata=_metadata(client),
                                timeout=None if args.follow else client.timeout)
    out = sys.stdout.buffer
    try:
        for frame in stream:
            if frame.data:
                out.write(frame.data)
                out.flush()
    except KeyboardInterrupt:
        stream.cancel()
        return INTERRUPTED
    except grpc.RpcError as exc:
        raise _error(client, exc) from None
    finally:
        stream.cancel()
    return 0


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 0, 0
    return size.lines, size.columns


class _Requests:
    """The request stream of Exec: the first frame, then stdin and resizes until closed."""

    def __init__(self, first):
        self._queue: queue.Queue = queue.Queue()
        self._queue.put(first)

    def put(self, frame) -> None:
        self._queue.put(frame)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            yield frame


def _pump_stdin(requests: _Requests, fd: int) -> None:
    from moorage.v1 import api_pb2

    while True:
        try:
            data = os.read(fd, STDIN_CHUNK)
        except OSError:
            data = b""
        if not data:
            requests.put(api_pb2.StreamFrame(fd=0, eof=True))
            return
        requests.put(api_pb2.StreamFrame(fd=0, data=data))


def exec_(ctx) -> int:
    import grpc

    from moorage.v1 import api_pb2

    args, client = ctx.args, ctx.client()
    if not args.argv:
        raise CliError("error: you must specify at least one command for the container "
                       '(moor exec POD -- COMMAND [args...])')
    stdin_fd = sys.stdin.fileno() if args.stdin else None
    tty = args.tty
    if tty and args.stdin and not os.isatty(stdin_fd):
        sys.stderr.write("Unable to use a TTY - input is not a terminal or the right kind "
                         "of file\n")
        tty = False
    rows, cols = _terminal_size() if tty else (0, 0)
    start = api_pb2.ExecStart(namespace=args.namespace or "default", pod=args.pod,
                              container=args.container, command=args.argv,
                              stdin=args.stdin, tty=tty, rows=rows, cols=cols)
    requests = _Requests(api_pb2.StreamFrame(exec=start))
    restore = _raw_mode(stdin_fd) if tty and stdin_fd is not None else None
    old_winch = _watch_resizes(requests) if tty else None
    if stdin_fd is not None:
        threading.Thread(target=_pump_stdin, args=(requests, stdin_fd), daemon=True,
                         name="stdin").start()
    stream = _stub(client).Exec(iter(requests), metadata=_metadata(client))
    code = 0
    try:
        for frame in stream:
            if frame.data:
                target = sys.stderr.buffer if frame.fd == 2 else sys.stdout.buffer
                target.write(frame.data)
                target.flush()
            if frame.exited:
                code = frame.exit_code
                break
    except KeyboardInterrupt:
        return INTERRUPTED
    except grpc.RpcError as exc:
        raise _error(client, exc) from None
    finally:
        stream.cancel()
        requests.close()
        if restore is not None:
            restore()
        if old_winch is not None:
            import signal

            signal.signal(signal.SIGWINCH, old_winch)
    return code


def _raw_mode(fd: int):
    """Puts the terminal in raw mode; returns what restores it."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _watch_resizes(requests: _Requests):
    import signal

    from moorage.v1 import api_pb2

    def resized(_sig, _frame):
        rows, cols = _terminal_size()
        if rows and cols:
            requests.put(api_pb2.StreamFrame(rows=rows, cols=cols))

    return signal.signal(signal.SIGWINCH, resized)


def top(ctx) -> int:
    import grpc

    from moorage.cli.printers import render_table
    from moorage.v1 import api_pb2

    args, client = ctx.args, ctx.client()
    nodes = args.what in ("nodes", "node", "no")
    request = api_pb2.TopRequest(kind="nodes" if nodes else "pods",
                                 namespace=args.namespace or "default",
                                 all_namespaces=args.all_namespaces)
    try:
        response = _stub(client).Top(request, metadata=_metadata(client),
                                     timeout=client.timeout)
    except grpc.RpcError as exc:
        raise _error(client, exc) from None
    if nodes:
        rows = node_rows(response.nodes)
    else:
        rows = pod_rows(response.pods, args.all_namespaces, args.containers)
    if len(rows) > 1:
        for line in render_table(rows):
            print(line)
    elif nodes:
        sys.stderr.write("error: metrics not available yet\n")
    else:
        where = "any namespace" if args.all_namespaces \
            else f"{args.namespace or 'default'} namespace"
        sys.stderr.write(f"No resources found in {where}.\n")
    sys.stdout.flush()
    for line in response.unavailable:
        sys.stderr.write(f"warning: {line}\n")
    return 0 if len(rows) > 1 or not nodes else 1


def node_usage(client, name: str):
    """The node's live usage (NodeUsage) from its agent, or None when it does not answer: a
    describe must still work with the node down."""
    import grpc

    from moorage.v1 import api_pb2

    try:
        response = _stub(client).Top(api_pb2.TopRequest(kind="nodes"),
                                     metadata=_metadata(client),
                                     timeout=min(client.timeout or 10.0, 10.0))
    except grpc.RpcError:
        return None
    return next((n for n in response.nodes if n.name == name), None)


HANDLERS = {"logs": logs, "exec": exec_, "top": top}
