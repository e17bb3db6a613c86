"""Namespaces and mounts for a sandbox worker: what the kernel allows is probed by trying it, once per worker.

The outer worker process unshares network, IPC and PID namespaces (`enter_outer`); the process it forks next (W) is
pid 1 of the new PID namespace and unshares its own mount namespace (`enter_mounts`): private propagation, the Python
installation made reachable for the unprivileged uid, everything read-only and nosuid, a tmpfs /tmp and /dev/shm, and
a /proc of its own. Every layer is tried separately and reported in `caps`. Stdlib only (imported by the worker,
which runs by path).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 1 << 18
MNT_DETACH = 2
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
TMPFS_OPTS = b"size=128m,nr_inodes=8192,mode=1777"
SCRATCH = ("/tmp", "/dev/shm")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(LIBC.unshare(flags), "unshare")


def _mount(src: bytes | str, target: bytes | str, fstype: bytes | None, flags: int, data: bytes | None = None) -> None:
    src, target = os.fsencode(src), os.fsencode(target)
    _check(LIBC.mount(src, target, fstype, flags, data), f"mount {target.decode()}")


def _readonly_tree() -> None:
    """Recursively mark every mount read-only and nosuid (mount_setattr, Linux >= 5.12), in our namespace only."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    LIBC.syscall.restype = ctypes.c_long
    rc = LIBC.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(AT_RECURSIVE),
                      attr, ctypes.c_size_t(len(attr)))
    _check(0 if rc == 0 else -1, "mount_setattr")


def _hidden_ancestor(path: str) -> str | None:
    """The first directory on the way to `path` that other users cannot enter (e.g. /root holding pyenv)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        d = os.sep + os.sep.join(parts[:i])
        try:
            if not os.stat(d).st_mode & 0o001:
                return d
        except OSError:
            return None
    return None


def python_paths() -> list[str]:
    """What the program's interpreter reads: its prefixes and every directory on sys.path."""
    paths = {sys.base_prefix, sys.prefix, *(p for p in sys.path if os.path.isdir(p))}
    return sorted(os.path.realpath(p) for p in paths)


def _expose_python() -> None:
    """The unprivileged uid must read the interpreter: over each hidden ancestor (only in our mount namespace) lay an
    empty tmpfs and bind back just the Python directories, which also hides the rest of e.g. /root."""
    hidden: dict[str, list[str]] = {}
    for path in python_paths():
        if (anc := _hidden_ancestor(path)) is not None:
            hidden.setdefault(anc, []).append(path)
    for anc, paths in hidden.items():
        fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths}
        _mount(b"tmpfs", anc, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755")
        try:
            for path, fd in fds.items():
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        except OSError:
            LIBC.umount2(os.fsencode(anc), MNT_DETACH)  # never leave the interpreter hidden under an empty tmpfs
            raise
        finally:
            for fd in fds.values():
                os.close(fd)


def new_caps() -> dict:
    return {"root": os.geteuid() == 0, "pid_namespace": False, "mount_namespace": False, "network_namespace": False,
            "ipc_namespace": False, "readonly_root": False, "private_tmp": False, "private_proc": False,
            "python_exposed": False}


def enter_outer(caps: dict) -> None:
    """In the outer process: the network and IPC namespaces it and W share, and a PID namespace for its children."""
    try:
        unshare(CLONE_NEWNET | CLONE_NEWIPC)  # no interface but a down loopback; IPC objects stay ours
        caps["network_namespace"] = caps["ipc_namespace"] = True
    except OSError:
        pass
    try:
        unshare(CLONE_NEWPID)  # for our children: W will be pid 1
        caps["pid_namespace"] = True
    except OSError:
        pass


def enter_mounts(caps: dict) -> None:
    """In W: a mount namespace of its own, each layer tried separately."""
    try:
        unshare(CLONE_NEWNS)
        caps["mount_namespace"] = True
        _mount(b"none", b"/", None, MS_REC | MS_PRIVATE)  # nothing we mount below may propagate to the host
    except OSError:
        return  # no private propagation: mount nothing at all (the PID namespace still contains programs)
    for layer, step in (("python_exposed", _expose_python), ("readonly_root", _readonly_tree),
                        ("private_tmp", _private_scratch), ("private_proc", _private_proc)):
        try:
            step()
            caps[layer] = True
        except OSError:
            pass


def _private_scratch() -> None:
    for target in SCRATCH:
        _mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTS)


def _private_proc() -> None:
    """A /proc of our own PID namespace: programs see only themselves."""
    _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def python_readable() -> bool:
    """Whether the unprivileged uid can reach every directory of the interpreter (else only warm modules import)."""
    return all(_hidden_ancestor(p) is None for p in python_paths())
