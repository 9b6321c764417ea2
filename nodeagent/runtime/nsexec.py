"""Runs a command inside a running container: joins its cgroup and namespaces, then forks so the
command is inside its pid namespace, hardened like the init. Exits with the command's status.

Usage: python -m nodeagent.runtime.nsexec <state-dir>/<id>/config.json -- argv...
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios

from moorage.fsutil import read_text_or_empty
from nodeagent.runtime.cgroups import Cgroup
from nodeagent.runtime.container_init import environment, last_cap, read_env_file
from nodeagent.runtime.container_init import harden as harden_process
from nodeagent.runtime.runtime import read_status
from nodeagent.runtime.security import resolve_user
from nodeagent.runtime.spec import RUNNING, ContainerSpec, alive, exit_code_of, read_json
from nodeagent.runtime.syscalls import LibcSyscalls

# mnt last: after it, the host's /proc (and the other ns files) is out of sight.
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")


def main(argv: list[str]) -> int:
    config_path, sep, args = argv[0], argv[1], argv[2:]
    if sep != "--" or not args:
        print("usage: nsexec <config.json> -- argv...", file=sys.stderr)
        return 2
    config = read_json(config_path)
    spec = ContainerSpec.from_json(config["spec"])
    st = read_status(os.path.dirname(config_path))
    if st.state != RUNNING:
        print(f"container {spec.id} is not running", file=sys.stderr)
        return 126
    cg = Cgroup.for_container(config["cgroup_root"], spec.id)
    procs = [os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY) for d in cg.dirs()]
    fds = [os.open(f"/proc/{st.pid}/ns/{ns}", os.O_RDONLY) for ns in NAMESPACES]
    if not alive(st.pid, st.pid_start):  # the pid could have been recycled while we opened
        print(f"container {spec.id} exited", file=sys.stderr)
        return 126
    extra = read_env_file(spec.env_file)   # before setns: it is a path of the host
    sysc = LibcSyscalls()
    for fd in fds:
        sysc.setns(fd, 0)
        os.close(fd)
    os.chdir("/")
    ident = resolve_user(spec.user, read_text_or_empty("/etc/passwd"),
                         read_text_or_empty("/etc/group"))
    cap_last = last_cap()
    env = environment(spec, extra)
    tty = os.environ.get("MOORAGE_EXEC_TTY") == "1"
    pid = os.fork()
    if pid == 0:
        try:
            # Joined from the child, so this helper's own memory is not charged to the box.
            for fd in procs:
                os.write(fd, b"0")
                os.close(fd)
            if tty:
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            harden_process(sysc, ident, cap_last)
            os.chdir(spec.cwd or "/")
            os.execvpe(args[0], args, env)
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"exec {args[0]}: {e}\n".encode())
            os._exit(127)
    for fd in procs:
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    _, status = os.waitpid(pid, 0)
    return exit_code_of(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
