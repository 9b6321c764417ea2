"""The one door to the kernel for the runtime: a real libc implementation and a recording fake."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

# typing costs every shim ~0.5 MiB of heap, and Protocol matters only to type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

# Mount flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
MS_SHARED = 1 << 20

# prctl options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

# openat2 resolve flags (linux/openat2.h).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

SYS_PIVOT_ROOT = 155  # x86_64; the only arch we run on today
SYS_OPENAT2 = 437
SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class Syscalls(Protocol):
    """Every kernel call the runtime makes. Each raises OSError naming the call on failure."""

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None: ...
    def umount2(self, target: str, flags: int = 0) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int = 0) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def mknod(self, path: str, mode: int, device: int) -> None: ...
    def mkdir(self, path: str, mode: int = 0o755) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def touch(self, path: str) -> None: ...
    def chdir(self, path: str) -> None: ...
    def chroot(self, path: str) -> None: ...
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...
    def setgroups(self, groups: list[int]) -> None: ...
    def setgid(self, gid: int) -> None: ...
    def setuid(self, uid: int) -> None: ...
    def openat2(self, dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int: ...


def _errcheck(name: str):
    def check(result, func, args):
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")
        return result
    return check


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class LibcSyscalls:
    """The real calls, through libc; errno becomes OSError with the call's name and arguments."""

    def __init__(self) -> None:
        # Named directly: ctypes.util.find_library runs ldconfig, which costs a shim start ~10ms.
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._libc = libc
        for name in ("mount", "umount2", "unshare", "setns", "sethostname", "prctl", "syscall"):
            getattr(libc, name).errcheck = _errcheck(name)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]

    @staticmethod
    def _b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    @staticmethod
    def _named(call: str, exc: OSError, *args) -> OSError:
        return OSError(exc.errno, f"{call}{args!r}: {os.strerror(exc.errno or 0)}")

    def mount(self, source, target, fstype, flags=0, data=None):
        try:
            self._libc.mount(self._b(source), self._b(target), self._b(fstype), flags,
                             self._b(data))
        except OSError as e:
            raise self._named("mount", e, source, target, fstype, hex(flags), data) from None

    def umount2(self, target, flags=0):
        try:
            self._libc.umount2(self._b(target), flags)
        except OSError as e:
            raise self._named("umount2", e, target, flags) from None

    def pivot_root(self, new_root, put_old):
        # glibc has no wrapper for pivot_root, so it goes through syscall(2).
        try:
            self._libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), self._b(new_root),
                               self._b(put_old))
        except OSError as e:
            raise self._named("pivot_root", e, new_root, put_old) from None

    def unshare(self, flags):
        try:
            self._libc.unshare(flags)
        except OSError as e:
            raise self._named("unshare", e, hex(flags)) from None

    def setns(self, fd, nstype=0):
        try:
            self._libc.setns(fd, nstype)
        except OSError as e:
            raise self._named("setns", e, fd, hex(nstype)) from None

    def sethostname(self, name):
        raw = name.encode()
        try:
            self._libc.sethostname(raw, len(raw))
        except OSError as e:
            raise self._named("sethostname", e, name) from None

    def mknod(self, path, mode, device):
        os.mknod(path, mode, device)

    def mkdir(self, path, mode=0o755):
        os.makedirs(path, mode, exist_ok=True)

    def symlink(self, target, path):
        os.symlink(target, path)

    def touch(self, path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))

    def chdir(self, path):
        os.chdir(path)

    def chroot(self, path):
        os.chroot(path)

    def prctl(self, option, arg2=0, arg3=0):
        try:
            return self._libc.prctl(option, arg2, arg3, 0, 0)
        except OSError as e:
            raise self._named("prctl", e, option, arg2, arg3) from None

    def capset(self, effective, permitted, inheritable):
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):  # version 3 splits each 64-bit set into two 32-bit words
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        try:
            self._libc.syscall(ctypes.c_long(SYS_CAPSET), ctypes.byref(header), data)
        except OSError as e:
            raise self._named("capset", e, hex(effective), hex(permitted)) from None

    def setgroups(self, groups):
        os.setgroups(groups)

    def setgid(self, gid):
        os.setgid(gid)

    def setuid(self, uid):
        os.setuid(uid)

    def openat2(self, dirfd, path, flags, resolve, mode=0):
        """openat2(2): `path` resolved from `dirfd` under the RESOLVE_* rules; the new fd."""
        how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
        try:
            return self._libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
                                      self._b(path), ctypes.byref(how),
                                      ctypes.c_size_t(ctypes.sizeof(how)))
        except OSError as e:
            raise OSError(e.errno, f"openat2({path!r}): {os.strerror(e.errno or 0)}") from None


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple


@dataclass
class RecordingSyscalls:
    """A fake that records every call in order; `fail` maps a call name to the errno it raises."""

    calls: list[Call] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    capbset_last: int = 40

    def _rec(self, name: str, *args) -> None:
        self.calls.append(Call(name, args))
        if name in self.fail:
            raise OSError(self.fail[name], f"{name}{args!r}: injected")

    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def mount(self, source, target, fstype, flags=0, data=None):
        self._rec("mount", source, target, fstype, flags, data)

    def umount2(self, target, flags=0):
        self._rec("umount2", target, flags)

    def pivot_root(self, new_root, put_old):
        self._rec("pivot_root", new_root, put_old)

    def unshare(self, flags):
        self._rec("unshare", flags)

    def setns(self, fd, nstype=0):
        self._rec("setns", fd, nstype)

    def sethostname(self, name):
        self._rec("sethostname", name)

    def mknod(self, path, mode, device):
        self._rec("mknod", path, mode, device)

    def mkdir(self, path, mode=0o755):
        self._rec("mkdir", path, mode)

    def symlink(self, target, path):
        self._rec("symlink", target, path)

    def touch(self, path):
        self._rec("touch", path)

    def chdir(self, path):
        self._rec("chdir", path)

    def chroot(self, path):
        self._rec("chroot", path)

    def prctl(self, option, arg2=0, arg3=0):
        self._rec("prctl", option, arg2, arg3)
        return 0

    def capset(self, effective, permitted, inheritable):
        self._rec("capset", effective, permitted, inheritable)

    def setgroups(self, groups):
        self._rec("setgroups", tuple(groups))

    def setgid(self, gid):
        self._rec("setgid", gid)

    def setuid(self, uid):
        self._rec("setuid", uid)

    def openat2(self, dirfd, path, flags, resolve, mode=0):
        self._rec("openat2", dirfd, path, flags, resolve, mode)
        return -1
