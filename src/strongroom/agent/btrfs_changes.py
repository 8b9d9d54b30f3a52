"""btrfs's own change record: which directories changed since a generation, without a daemon.

btrfs stamps every inode item with the transaction (generation) that last changed it, and
its B-tree search ioctl (`BTRFS_IOC_TREE_SEARCH`) skips whole leaves older than a given
generation. So, as `btrfs subvolume find-new` does, a backup can ask a subvolume which
inodes changed since the generation recorded at the start of the last good backup: a
changed directory is dirty itself (entries added, removed or renamed, or its own
attributes), a changed file makes every directory that links it dirty (each INODE_REF or
INODE_EXTREF names one; so hard links are followed, unlike with the daemon's journal).
Directory inode numbers become paths with `BTRFS_IOC_INO_LOOKUP`.

Both ioctls need CAP_SYS_ADMIN (root); elsewhere `generations` finds nothing and the
daemon's journal is used. A subvolume nested in a source is another tree with its own
device number: optimized.py never carries such a directory over, so it is always listed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from strongroom.agent.watch import fsid_of

BTRFS_SUPER_MAGIC = 0x9123683E
_IOC_TREE_SEARCH = 0xD0009411  # _IOWR(0x94, 17, 4096 bytes)
_IOC_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, 4096 bytes)
_ROOT_TREE, _FIRST_FREE = 1, 256
_INODE_ITEM, _INODE_REF, _INODE_EXTREF, _ROOT_ITEM = 1, 12, 13, 132
_KEY = struct.Struct("=7Q4I4Q")  # struct btrfs_ioctl_search_key, 104 bytes
_HEADER = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header, 32 bytes
_U64_MAX = 2**64 - 1
_S_IFDIR = 0o040000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Unavailable(Exception):
    """btrfs cannot answer (not root, not btrfs, an ioctl refused): the backup says why."""


def _is_btrfs(path: bytes) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if libc.statfs(path, buf) != 0:
        return False
    return struct.unpack_from("=q", buf.raw)[0] & 0xFFFFFFFF == BTRFS_SUPER_MAGIC


def _ino_lookup(fd: int, tree: int, ino: int) -> tuple[int, bytes]:
    """The tree a directory is in (tree 0: the fd's own) and its path from that subvolume's root."""
    buf = bytearray(struct.pack("=QQ", tree, ino) + bytes(4080))
    fcntl.ioctl(fd, _IOC_INO_LOOKUP, buf)
    treeid = struct.unpack_from("=Q", buf)[0]
    return treeid, bytes(buf[16:]).split(b"\0", 1)[0]


def _search(fd: int, tree: int, min_key: tuple[int, int, int], max_key: tuple[int, int, int],
            min_transid: int = 0):
    """Every item (objectid, type, offset, transid, data) between two keys, in key order."""
    objectid, kind, offset = min_key
    while True:
        key = _KEY.pack(tree, objectid, max_key[0], offset, max_key[2], min_transid, _U64_MAX,
                        kind, max_key[1], 4096, 0, 0, 0, 0, 0)
        buf = bytearray(key + bytes(4096 - _KEY.size))
        fcntl.ioctl(fd, _IOC_TREE_SEARCH, buf)
        count = struct.unpack_from("=I", buf, 7 * 8 + 8)[0]
        if count == 0:
            return
        pos = _KEY.size
        last = None
        for _ in range(count):
            transid, oid, off, typ, length = _HEADER.unpack_from(buf, pos)
            pos += _HEADER.size
            yield oid, typ, off, transid, bytes(buf[pos:pos + length])
            pos += length
            last = (oid, typ, off)
        # The next search starts just after the last key found.
        objectid, kind, offset = last
        if offset < _U64_MAX:
            offset += 1
        elif kind < 255:
            kind, offset = kind + 1, 0
        elif objectid < _U64_MAX:
            objectid, kind, offset = objectid + 1, 0, 0
        else:
            return
        if (objectid, kind, offset) > max_key:
            return


def _subvolume(path: bytes) -> tuple[int, int, bytes]:
    """The subvolume of `path`: its tree id, its current generation and its root's path here."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        # btrfs keeps inode updates in memory ("delayed inodes") until a transaction commits:
        # commit first, so that the search sees every change made before this generation.
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
        tree, _root = _ino_lookup(fd, 0, _FIRST_FREE)
        _t, rel = _ino_lookup(fd, tree, os.fstat(fd).st_ino) if os.fstat(fd).st_ino != _FIRST_FREE else (tree, b"")
        gen = None
        for oid, typ, _off, _tr, data in _search(fd, _ROOT_TREE, (tree, _ROOT_ITEM, 0), (tree, _ROOT_ITEM, _U64_MAX)):
            if oid == tree and typ == _ROOT_ITEM and len(data) >= 168:
                gen = struct.unpack_from("=Q", data, 160)[0]  # btrfs_root_item.generation, after its inode item
                break
        if gen is None:
            raise Unavailable("btrfs has no root item for the subvolume")
    finally:
        os.close(fd)
    rel = rel.rstrip(b"/")
    top = path[:len(path) - len(rel)].rstrip(b"/") if rel else path
    return tree, gen, top or b"/"


def generations(sources: list[bytes]) -> dict[bytes, list]:
    """Per source on btrfs: [filesystem id, subvolume, generation now, subvolume root path].
    Empty unless every source is on btrfs and answers (else the daemon's journal is used)."""
    out: dict[bytes, list] = {}
    for src in sources:
        if not _is_btrfs(src):
            return {}
        try:
            tree, gen, top = _subvolume(src)
        except (OSError, Unavailable):
            return {}
        out[src] = [fsid_of(src), tree, gen, top]
    return out


def _parents(typ: int, offset: int, data: bytes, out: set[int]) -> None:
    """The directories an INODE_REF (its key's offset) or INODE_EXTREF (its items) names."""
    if typ == _INODE_REF:
        out.add(offset)
        return
    pos = 0
    while pos + 18 <= len(data):
        parent, _index, name_len = struct.unpack_from("=QQH", data, pos)
        out.add(parent)
        pos += 18 + name_len


def changed_dirs(top: bytes, tree: int, since: int) -> set[bytes]:
    """The directories of subvolume `tree` (whose root is at `top`) with an inode changed
    after generation `since`, or linking a file changed after it."""
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError as exc:
        raise Unavailable(f"btrfs: cannot open the subvolume ({exc.strerror})") from None
    try:
        dir_inos: set[int] = set()
        files: set[int] = set()  # changed files whose linking directories are not known yet
        changed: int | None = None  # the inode whose refs come next, if it changed
        is_dir = False
        for oid, typ, off, _tr, data in _search(fd, tree, (_FIRST_FREE, 0, 0), (_U64_MAX, 255, _U64_MAX), since + 1):
            if typ == _INODE_ITEM:
                transid = struct.unpack_from("=Q", data, 8)[0]
                mode = struct.unpack_from("=I", data, 52)[0]
                changed = oid if transid > since else None
                is_dir = mode & 0o170000 == _S_IFDIR
                if changed is not None:
                    (dir_inos if is_dir else files).add(oid)
            elif typ in (_INODE_REF, _INODE_EXTREF) and changed == oid and not is_dir:
                _parents(typ, off, data, dir_inos)
                files.discard(oid)
        # A changed file whose refs lie in an older leaf (skipped by the generation filter).
        for ino in files:
            for _oid, typ, off, _tr, data in _search(fd, tree, (ino, _INODE_REF, 0), (ino, _INODE_EXTREF, _U64_MAX)):
                _parents(typ, off, data, dir_inos)
        out: set[bytes] = set()
        for ino in dir_inos:
            try:
                _t, rel = _ino_lookup(fd, tree, ino) if ino != _FIRST_FREE else (tree, b"")
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # deleted since: its parent changed too
                raise
            out.add(os.path.join(top, rel.rstrip(b"/")) if rel else top)
        return out
    except OSError as exc:
        raise Unavailable(f"btrfs: the tree search failed ({exc.strerror})") from None
    finally:
        os.close(fd)
