"""File metadata: from a stat result to a tree entry, and from a tree entry back to disk.

Everything is done relative to open directory descriptors, never by full path, so that
paths deeper than PATH_MAX work and no symlink on the way is ever followed.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from strongroom.model import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK, Entry

_TYPES = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO,
          stat.S_IFCHR: CHAR, stat.S_IFBLK: BLOCK, stat.S_IFSOCK: SOCKET}
_MODES = {v: k for k, v in _TYPES.items()}
# Opening a directory to work inside it: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def entry_type(st: os.stat_result) -> str:
    return _TYPES[stat.S_IFMT(st.st_mode)]


def type_mode(kind: str) -> int:
    return _MODES[kind]


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def entry_from_stat(name: bytes, st: os.stat_result) -> Entry:
    kind = entry_type(st)
    entry: Entry = {"n": name, "t": kind, "m": stat.S_IMODE(st.st_mode), "u": st.st_uid, "g": st.st_gid,
                    "mt": st.st_mtime_ns, "at": st.st_atime_ns, "ct": st.st_ctime_ns, "i": st.st_ino}
    user, group = user_name(st.st_uid), group_name(st.st_gid)
    if user is not None:
        entry["U"] = user
    if group is not None:
        entry["G"] = group
    if kind == FILE:
        entry["s"] = st.st_size
    if kind in (CHAR, BLOCK):
        entry["r"] = st.st_rdev
    if kind != DIR and st.st_nlink > 1:
        entry["h"] = [st.st_dev, st.st_ino]
    return entry


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """A short path to `name` in an open directory, for calls that take no dir_fd."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def read_xattrs(target: int | bytes) -> dict[bytes, bytes]:
    """Extended attributes (POSIX ACLs among them) of an open fd or a proc path (not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow) if not follow else os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.ENOENT):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for attr in sorted(names):
        try:
            out[attr.encode("utf-8", "surrogateescape")] = (
                os.getxattr(target, attr) if follow else os.getxattr(target, attr, follow_symlinks=False))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return out


def apply_xattrs(target: int | bytes, xattrs: dict[bytes, bytes]) -> list[str]:
    """Sets each attribute; returns the ones the target filesystem refused."""
    follow = isinstance(target, int)
    refused: list[str] = []
    for name, value in xattrs.items():
        try:
            if follow:
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            refused.append(f"{name.decode('utf-8', 'backslashreplace')}: {exc.strerror}")
    return refused


def apply_ownership_and_mode(entry: Entry, dir_fd: int, name: bytes, fd: int | None) -> None:
    """Owner first (chown clears setuid/setgid), then mode; owner only when root."""
    uid, gid = entry.get("u", -1), entry.get("g", -1)
    if os.geteuid() == 0:
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    if entry["t"] == SYMLINK:
        return  # Linux has no symlink modes
    if fd is not None:
        os.fchmod(fd, entry["m"])
    else:
        # Linux has no lchmod; only FIFOs and device nodes just made by the restore get here.
        os.chmod(name, entry["m"], dir_fd=dir_fd)


def apply_times(entry: Entry, dir_fd: int, name: bytes, fd: int | None) -> None:
    times = (entry.get("at", entry["mt"]), entry["mt"])
    if fd is not None:
        os.utime(fd, ns=times)
    else:
        os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
