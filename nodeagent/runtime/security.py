"""Capabilities, no_new_privs and the container user, through Syscalls; user lookup is pure."""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.runtime.syscalls import PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, Syscalls

CAP = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
}
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                "AUDIT_WRITE")


def cap_mask(names=DEFAULT_CAPS) -> int:
    mask = 0
    for n in names:
        mask |= 1 << CAP[n]
    return mask


DEFAULT_CAP_MASK = cap_mask()  # 0xa80425fb, as /proc/self/status shows it in Docker


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _table(text: str) -> list[list[str]]:
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


def resolve_user(spec: str, passwd: str = "", group: str = "") -> Identity:
    """"uid[:gid]" with numbers or names, looked up in the container's /etc/passwd and /etc/group.

    A bare uid takes its primary gid from passwd when listed (else 0); supplementary groups are
    those naming the user in /etc/group, as runc does.
    """
    user, _, grp = spec.partition(":")
    users = _table(passwd)
    name = None
    if user.isdigit():
        uid = int(user)
        row = next((r for r in users if len(r) > 3 and r[2] == user), None)
    else:
        row = next((r for r in users if len(r) > 3 and r[0] == user), None)
        if row is None:
            raise LookupError(f"user {user!r} not found in the container's /etc/passwd")
        uid = int(row[2])
    if row is not None:
        name = row[0]
    gid = int(row[3]) if row is not None and row[3].isdigit() else 0
    groups_tab = _table(group)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((r for r in groups_tab if len(r) > 2 and r[0] == grp), None)
            if g is None:
                raise LookupError(f"group {grp!r} not found in the container's /etc/group")
            gid = int(g[2])
    extra = []
    if name is not None:
        for r in groups_tab:
            if len(r) > 3 and name in r[3].split(",") and r[2].isdigit():
                extra.append(int(r[2]))
    groups = tuple(dict.fromkeys([gid, *extra]))
    return Identity(uid, gid, groups)


def drop_capabilities(sys: Syscalls, keep: int = DEFAULT_CAP_MASK, last_cap: int = 40) -> None:
    """Drop every other capability from the bounding set, then set eff=perm=keep.

    Inheritable stays empty (runc's fix for CVE-2022-24769), so nothing leaks through exec of
    a file with inheritable file caps.
    """
    for cap in range(last_cap + 1):
        if not keep & (1 << cap):
            sys.prctl(PR_CAPBSET_DROP, cap)
    sys.capset(keep, keep, 0)


def become(sys: Syscalls, ident: Identity) -> None:
    """Groups, then gid, then uid: each step needs the privilege the next one removes.

    Moving from uid 0 to another uid clears permitted and effective caps, as Docker users expect.
    """
    sys.setgroups(list(ident.groups))
    sys.setgid(ident.gid)
    sys.setuid(ident.uid)


def no_new_privs(sys: Syscalls) -> None:
    sys.prctl(PR_SET_NO_NEW_PRIVS, 1)
