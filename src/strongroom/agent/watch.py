"""The kernel's change notifications, as the change journal uses them: fanotify or inotify.

Both report the directory an event happened in and, mostly, the name of the entry it
concerns. The journal keeps, per changed directory, the names of its changed entries (so that
a backup stats only those), or "whole" when it cannot be sure which entries changed: an event
without a name (a directory's own metadata, its move, an inode event with no directory), or
more changed names than a directory may hold in memory (`MAX_NAMES`). A directory created or
moved in is also kept as a *tree*: no directory under it is listed by names or carried over
unread (inotify names directories by paths, which a move shifts; a new tree is looked at
whole anyway).

- fanotify (root, Linux 5.9+): one mark per filesystem (`FAN_MARK_FILESYSTEM`) with
  `FAN_REPORT_DFID_NAME`, so every event names its directory by a file handle. Handles are
  kept as they come and turned into paths only when a backup asks (a directory renamed in
  between is found under its new name; one deleted no longer resolves, and its parent's
  event names the deletion). No watch count, no scan at start; the queue holds 16,384
  events (the kernel's default), and an overflow is reported as such.
- inotify (anyone): one watch per directory under the sources, added at start by a walk
  and for every directory that appears later. It needs as many watches as there are
  directories (`fs.inotify.max_user_watches`, 8,192 to 1,048,576 by kernel and memory);
  at the limit the watcher says so and reports itself incomplete, so that backups run
  unoptimized, naming the limit, until it is raised and the agent restarted.

Python has no bindings for fanotify, so it is reached through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

# fanotify (linux/fanotify.h)
FAN_CLASS_NOTIF, FAN_CLOEXEC, FAN_NONBLOCK = 0x0, 0x1, 0x2
FAN_REPORT_DFID_NAME = 0x400 | 0x800
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_MOVED_FROM, FAN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
FAN_CREATE, FAN_DELETE, FAN_DELETE_SELF, FAN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
FAN_EVENTS = (FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE
              | FAN_DELETE_SELF | FAN_MOVE_SELF | FAN_ONDIR)
_FAN_INFO_FID, _FAN_INFO_DFID_NAME, _FAN_INFO_DFID = 1, 2, 3
_META = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata

# inotify (linux/inotify.h)
IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x4000, 0x8000, 0x1000000, 0x2000000, 0x40000000
IN_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
             | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
_IN_EVENT = struct.Struct("=iIII")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The process's own symbols, libc's among them: find_library("c") ran `ldconfig -p` in a
# subprocess when the module loaded, and every backup loads this module.
_libc = ctypes.CDLL(None, use_errno=True)


class WatchError(OSError):
    """The kernel refused to watch (not root, old kernel, a filesystem without file handles)."""


MAX_NAMES = 2000  # changed names kept per directory; more: the directory is listed whole
MAX_ALL_NAMES = 100_000  # changed names kept in all; more: every directory is listed whole


@dataclass
class Drained:
    """What reads of the queue found since the last cut."""

    # directory key (fanotify handle or inotify path) -> names of its changed entries, or None:
    # every entry is to be looked at (bounded by MAX_NAMES, and all by MAX_ALL_NAMES)
    dirs: dict = field(default_factory=dict)
    trees: set = field(default_factory=set)  # (directory key, name): a directory created or moved in there
    overflow: bool = False
    names: int = 0  # how many names `dirs` holds

    def note(self, key: object, name: bytes) -> None:
        """Entry `name` of directory `key` changed."""
        names = self.dirs.get(key, ())
        if names is None or name in names:
            return
        if not names:
            self.dirs[key] = names = set()
        if len(names) >= MAX_NAMES:
            self.names -= len(names)
            self.dirs[key] = None
            return
        names.add(name)
        self.names += 1
        if self.names > MAX_ALL_NAMES:  # memory stays bounded: every directory listed whole
            self.dirs = dict.fromkeys(self.dirs)
            self.names = 0

    def whole(self, key: object) -> None:
        """Something in directory `key` changed that no name says: look at every entry."""
        names = self.dirs.get(key)
        if names:
            self.names -= len(names)
        self.dirs[key] = None


def under(path: bytes, roots: list[bytes]) -> bool:
    return any(path == r or r == b"/" or path.startswith(r + b"/") for r in roots)


class Fanotify:
    """One fanotify group marking the whole filesystem of every source."""

    backend = "fanotify"

    def __init__(self, sources: list[bytes]) -> None:
        init = _libc.fanotify_init
        init.argtypes, init.restype = [ctypes.c_uint, ctypes.c_uint], ctypes.c_int
        fd = init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        if fd < 0:
            raise _error("fanotify_init")
        self.fd = fd
        self.mounts: dict[bytes, int] = {}  # fsid -> an open directory on that filesystem
        mark = _libc.fanotify_mark
        mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        mark.restype = ctypes.c_int
        try:
            for src in sources:
                fsid = fsid_of(src)
                if fsid in self.mounts:
                    continue
                if mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_EVENTS, -100, src) < 0:
                    raise _error("fanotify_mark", src)
                self.mounts[fsid] = os.open(src, _DIR_FLAGS)
        except BaseException:
            self.close()
            raise
        self.watches = len(self.mounts)

    def fileno(self) -> int:
        return self.fd

    def drain(self, out: Drained) -> None:
        """Reads every queued event (non-blocking) into `out`."""
        for buf in _queued(self.fd):
            pos = 0
            while pos + _META.size <= len(buf):
                event_len, _vers, _res, meta_len, mask, _fd, _pid = _META.unpack_from(buf, pos)
                if event_len < _META.size:  # never from a sane kernel: trust nothing read
                    out.overflow = True
                    break
                if mask & FAN_Q_OVERFLOW:
                    out.overflow = True
                info = pos + meta_len
                while info + 4 <= pos + event_len:
                    kind, _pad, length = struct.unpack_from("=BBH", buf, info)
                    if length < 4:
                        break
                    if kind in (_FAN_INFO_DFID_NAME, _FAN_INFO_DFID, _FAN_INFO_FID):
                        fsid = bytes(buf[info + 4:info + 12])
                        nbytes, htype = struct.unpack_from("=Ii", buf, info + 12)
                        end = info + 20 + nbytes
                        key = (fsid, htype, bytes(buf[info + 20:end]), kind == _FAN_INFO_FID)
                        name = b""
                        if kind == _FAN_INFO_DFID_NAME and end < info + length:
                            name = bytes(buf[end:info + length]).split(b"\0", 1)[0]
                        if name and name != b"." and b"/" not in name:
                            out.note(key, name)
                            if mask & FAN_ONDIR and mask & (FAN_CREATE | FAN_MOVED_TO):
                                out.trees.add((key, name))
                        else:
                            # No name: the directory's own metadata or move ("."), or an inode
                            # event with no directory (a plain FID, resolved to its directory at
                            # the cut): every entry of that directory is looked at.
                            out.whole(key)
                    info += length
                pos += event_len

    def resolve(self, key: tuple) -> bytes | None:
        """The current directory path of a key (None: gone, or on no marked filesystem)."""
        fsid, htype, handle, is_file = key
        mount = self.mounts.get(fsid)
        if mount is None:
            return None
        fh = struct.pack("=Ii", len(handle), htype) + handle
        fn = _libc.open_by_handle_at
        fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        fd = fn(mount, fh, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        if fd < 0:
            return None
        try:
            path = _path_of(fd)
        finally:
            os.close(fd)
        if path is None or not path.startswith(b"/") or path.endswith(b" (deleted)"):
            return None
        return os.path.dirname(path) if is_file else path

    def close(self) -> None:
        for fd in self.mounts.values():
            os.close(fd)
        self.mounts = {}
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Inotify:
    """One inotify watch per directory under the sources."""

    backend = "inotify"

    def __init__(self, sources: list[bytes], skip: set[tuple[int, int]]) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd
        self.skip = skip
        self.paths: dict[int, bytes] = {}  # watch descriptor -> directory path
        self.incomplete: str | None = None  # why some directory has no watch
        self.moved: dict[int, bytes] = {}  # cookie -> path of a directory moved away
        add = _libc.inotify_add_watch
        add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
        self._add = add
        for src in sources:
            self.add_tree(src)

    @property
    def watches(self) -> int:
        return len(self.paths)

    def fileno(self) -> int:
        return self.fd

    def add_tree(self, top: bytes) -> None:
        """Watches `top` and every directory under it (the watch first, then the listing, so
        that nothing made meanwhile goes unseen)."""
        stack = [top]
        while stack:
            path = stack.pop()
            wd = self._add(self.fd, path, IN_EVENTS)
            if wd < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC:
                    self.incomplete = (f"the inotify watch limit was reached after {len(self.paths)} directories "
                                       "(raise fs.inotify.max_user_watches and restart the agent)")
                    return
                continue  # gone already, or not a directory: its parent's event covers it
            self.paths[wd] = path
            try:
                with os.scandir(path) as it:
                    for de in it:
                        if de.is_dir(follow_symlinks=False):
                            st = de.stat(follow_symlinks=False)
                            if (st.st_dev, st.st_ino) not in self.skip:
                                stack.append(os.fsencode(de.path))
            except OSError:
                pass

    def drain(self, out: Drained) -> None:
        for buf in _queued(self.fd):
            pos = 0
            while pos + _IN_EVENT.size <= len(buf):
                wd, mask, cookie, nlen = _IN_EVENT.unpack_from(buf, pos)
                name = bytes(buf[pos + 16:pos + 16 + nlen]).rstrip(b"\0")
                pos += 16 + nlen
                if mask & IN_Q_OVERFLOW:
                    out.overflow = True
                    continue
                if mask & IN_IGNORED:
                    self.paths.pop(wd, None)
                    continue
                parent = self.paths.get(wd)
                if parent is None:
                    continue
                if not name:  # the watched directory's own metadata, or its move or deletion
                    out.whole(parent)
                    continue
                out.note(parent, name)
                if not mask & IN_ISDIR:
                    continue
                path = parent.rstrip(b"/") + b"/" + name
                if mask & IN_MOVED_FROM:
                    self.moved[cookie] = path
                elif mask & (IN_CREATE | IN_MOVED_TO):
                    old = self.moved.pop(cookie, None) if mask & IN_MOVED_TO else None
                    if old is not None:
                        self._rename(old, path)
                    else:
                        self.add_tree(path)  # new, or moved in from outside: watched from now on
                    out.whole(path)  # and looked at whole by the next backup (a new subtree)
                    out.trees.add((parent, name))

    def settle(self) -> None:
        """Directories moved away and never moved back in are no longer ours to watch."""
        for old in self.moved.values():
            for wd, path in list(self.paths.items()):
                if path == old or path.startswith(old + b"/"):
                    _libc.inotify_rm_watch(self.fd, wd)
                    del self.paths[wd]
        self.moved.clear()

    def _rename(self, old: bytes, new: bytes) -> None:
        for wd, path in self.paths.items():
            if path == old or path.startswith(old + b"/"):
                self.paths[wd] = new + path[len(old):]

    def resolve(self, key: bytes) -> bytes | None:
        return key

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _queued(fd: int) -> Iterator[bytes]:
    """What a non-blocking notification descriptor holds now, a read at a time."""
    while True:
        try:
            yield os.read(fd, 65536)
        except BlockingIOError:
            return


def _path_of(fd: int) -> bytes | None:
    """The path of an open directory, also past PATH_MAX (where the kernel will not say it:
    then its names are found upwards, one directory listing a level, until it will)."""
    names: list[bytes] = []
    cur = os.dup(fd)
    try:
        for _level in range(4096):
            try:
                top = os.readlink(f"/proc/self/fd/{cur}".encode())
                return b"/".join([top.rstrip(b"/") or b""] + names[::-1]) if names else top
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    return None
            st = os.fstat(cur)
            parent = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = parent
            with os.scandir(cur) as it:
                name = next((os.fsencode(de.name) for de in it
                             if de.inode() == st.st_ino and de.is_dir(follow_symlinks=False)), None)
            if name is None:
                return None  # moved meanwhile: its new parent's event names it
            names.append(name)
        return None
    finally:
        os.close(cur)


def folder_watch(folder: bytes) -> int:
    """An inotify descriptor that turns readable when a file is renamed into `folder` (not below
    it), or -1 if the kernel refuses: how the keeper hears a cut request at once rather than at
    its next poll."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return -1
    add = _libc.inotify_add_watch
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    if add(fd, folder, IN_MOVED_TO | IN_ONLYDIR) < 0:
        os.close(fd)
        return -1
    return fd


def fsid_of(path: bytes) -> bytes:
    """The filesystem's id as fanotify reports it (statfs f_fsid, 8 bytes)."""
    return struct.pack("=Q", os.statvfs(path).f_fsid & 0xFFFFFFFFFFFFFFFF)


def _error(call: str, path: bytes | None = None) -> WatchError:
    err = ctypes.get_errno()
    where = f" on {path.decode('utf-8', 'backslashreplace')}" if path else ""
    return WatchError(err, f"{call}{where}: {os.strerror(err)}")
