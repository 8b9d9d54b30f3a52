"""File metadata: from a stat result to a tree entry, and from a tree entry back to disk.

Everything is done relative to open directory descriptors, never by full path, so that
paths deeper than PATH_MAX work and no symlink on the way is ever followed. Metadata is
written only through a descriptor of the node itself, never by name: whoever can write the
target folder could swap a name for a symlink or a hardlink to another file between the
moment the restore makes it and the moment its owner and mode are set.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from strongroom.errors import StrongroomError
from strongroom.model import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK, Entry

_TYPES = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK, stat.S_IFIFO: FIFO,
          stat.S_IFCHR: CHAR, stat.S_IFBLK: BLOCK, stat.S_IFSOCK: SOCKET}
_MODES = {v: k for k, v in _TYPES.items()}
# Opening a directory to work inside it: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A descriptor of a node itself (FIFO, device, socket, symlink: nothing that opening could
# trigger), to check it and set its metadata through /proc/self/fd.
NODE_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class NodeReplaced(StrongroomError):
    """What is at the name is not the node the restore just made there."""

    def __init__(self) -> None:
        super().__init__("replaced while restoring by something the restore did not make (left alone)")


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


def fd_path(fd: int) -> bytes:
    """A path to an open descriptor's own inode: calls by path go through the /proc link to that
    inode and no further (an O_PATH descriptor of a symlink gives the link, not its target).
    For O_PATH descriptors, on which fchmod, fchown, fsetxattr and futimens fail."""
    return b"/proc/self/fd/%d" % fd


def open_made(dir_fd: int, name: bytes, entry: Entry) -> int:
    """An O_PATH descriptor of the node that the restore has just made as `name` for `entry`.

    Checked before anything is changed through it: the entry's type (and device numbers), our
    own owner, a single link. Anything else was put there by someone who can write the folder
    (a symlink, a hardlink to another file, a node of theirs): NodeReplaced."""
    fd = os.open(name, NODE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        kind = entry["t"]
        if (stat.S_IFMT(st.st_mode) != type_mode(kind) or st.st_uid != os.geteuid() or st.st_nlink != 1
                or (kind in (CHAR, BLOCK) and st.st_rdev != entry.get("r", 0))):
            raise NodeReplaced()
    except BaseException:
        os.close(fd)
        raise
    return fd


def made_dir(fd: int) -> bool:
    """Whether an open folder is the empty one the restore just made: ours and empty. A folder
    of another user, or one moved in with contents, gets no owner, mode or times from the point."""
    if os.fstat(fd).st_uid != os.geteuid():
        return False
    with os.scandir(fd) as it:
        return next(it, None) is None


def apply_xattrs(node: int | bytes, xattrs: dict[bytes, bytes]) -> list[str]:
    """Sets each attribute on an open fd or fd_path(); returns the ones the filesystem refused."""
    refused: list[str] = []
    for name, value in xattrs.items():
        try:
            os.setxattr(node, name, value)
        except OSError as exc:
            refused.append(f"{name.decode('utf-8', 'backslashreplace')}: {exc.strerror}")
    return refused


def apply_metadata(entry: Entry, node: int | bytes, owner: tuple[int, int] | None = None) -> list[str]:
    """Owner (only as root), mode, attributes (POSIX ACLs among them), times, on an open fd or
    on fd_path() of an O_PATH one: never by name. Returns the attributes the filesystem refused.
    `owner`: the (uid, gid) the node is known to have (one the restore just made): no chown
    when it is the entry's already.

    Owner first: chown clears setuid, setgid and file capabilities, which mode and attributes
    then set back."""
    if os.geteuid() == 0 and owner != (entry.get("u", -1), entry.get("g", -1)):
        os.chown(node, entry.get("u", -1), entry.get("g", -1))
    if entry["t"] != SYMLINK:  # Linux has no symlink modes
        os.chmod(node, entry["m"])
    refused = apply_xattrs(node, entry.get("x", {}))
    os.utime(node, ns=(entry.get("at", entry["mt"]), entry["mt"]))
    return refused
