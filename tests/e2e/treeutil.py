"""Build a file tree with every entry kind a backup tool must round-trip, and compare trees.

Everything here works on trees whose paths exceed PATH_MAX (4096 bytes): walking is done with
directory file descriptors and single-component names, never with full paths.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import sqlite3
import stat
import struct
from pathlib import Path

MiB = 1024 * 1024

# Entry names used by make_tricky_tree (tests refer to some of them).
SMALL = "small.txt"
SMALL_CONTENT = b"hello, strongroom\n"
RANDOM = "random-3MiB.bin"
EMPTY = "empty"
SPARSE = "sparse.img"
SPARSE_SIZE = 64 * MiB
SPARSE_REGIONS = ((1 * MiB + 17, b"first data region"), (40 * MiB + 4093, b"second data region, across a block edge"))
NON_UTF8_FILE = b"caf\xe9"
NON_UTF8_DIR = b"dir-\xff\xfe"
LONG_NAME = "L" * 255
LONG_NAME_MB = "\u00e9" * 127 + "x"  # 255 bytes in UTF-8
DEEP_TOP = "deep"
DEEP_SEGMENT_COUNT = 18
DEEP_LEAF = b"bottom.txt"
PREHISTORIC = "prehistoric.txt"
PREHISTORIC_MTIME_NS = -315_359_999_012_345_679  # 1960-01-03, odd ns
HARDLINK_PATHS = ("hardlinks/a/original", "hardlinks/b/second-link", "hardlink-third")

OTHER_UID, OTHER_GID = 1234, 5678

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# POSIX ACL xattr encoding (linux/posix_acl_xattr.h)
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_UNDEFINED = 0xFFFFFFFF


def is_root() -> bool:
    return os.geteuid() == 0


def deep_segment(i: int) -> bytes:
    return b"seg%02d-" % i + b"d" * 244  # 250 bytes


# --------------------------------------------------------------------------------------------
# building


def _write(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def _acl_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    entries = sorted(entries, key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def _set_acl(path: Path, raw: bytes, default: bool = False) -> bool:
    """Sets a POSIX ACL as the kernel stores it, the system.posix_acl_* xattr (what the agent
    reads and writes too): no setfacl, so the tests need no system package."""
    name = "system.posix_acl_default" if default else "system.posix_acl_access"
    try:
        os.setxattr(path, name, raw)
        return True
    except OSError:
        return False


def _try_setxattr(path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            return False
        raise


def make_tricky_tree(root: Path, *, deep: bool = True, seed: int = 20240601) -> None:
    """Create at ``root`` (must not exist) a tree containing every kind of entry.

    Deterministic: two calls with the same seed produce equal trees (apart from inode numbers).
    ``deep=False`` leaves out the directory chain deeper than PATH_MAX (cp -a cannot copy it).
    """
    root = Path(root)
    root.mkdir(parents=True)
    rng = random.Random(seed)
    root_user = is_root()

    # regular files
    _write(root / SMALL, SMALL_CONTENT)
    _write(root / RANDOM, rng.randbytes(3 * MiB))
    _write(root / EMPTY, b"")
    _write(root / PREHISTORIC, b"written before the epoch\n")
    _write(root / "no-permissions", b"mode 000\n", 0o000)
    os.chmod(root / "no-permissions", 0o000)
    _write(root / "private", b"mode 600\n", 0o600)

    # sparse file: 64 MiB with two small data regions
    fd = os.open(root / SPARSE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for off, data in SPARSE_REGIONS:
            os.pwrite(fd, data, off)
        os.ftruncate(fd, SPARSE_SIZE)
    finally:
        os.close(fd)

    # directories
    (root / "empty-dir").mkdir()
    (root / "dir_a" / "sub" / "empty-leaf-dir").mkdir(parents=True)
    _write(root / "dir_a" / "notes.md", b"# notes\n\nsome text\n")
    _write(root / "dir_a" / "sub" / "file.txt", b"nested file\n" * 100)
    (root / "private-dir").mkdir(mode=0o700)
    os.chmod(root / "private-dir", 0o700)

    # symlinks
    links = root / "links"
    links.mkdir()
    os.symlink("does/not/exist", links / "dangling")
    os.symlink("/usr/share/strongroom-test/absolute-target", links / "absolute")
    os.symlink("../small.txt", links / "relative")
    os.symlink("../dir_a", links / "to-dir")
    os.symlink("loop", links / "loop")  # points at itself

    # hardlinks: one inode with three names in different directories
    (root / "hardlinks" / "a").mkdir(parents=True)
    (root / "hardlinks" / "b").mkdir()
    _write(root / HARDLINK_PATHS[0], b"one inode, three names\n" * 50)
    for other in HARDLINK_PATHS[1:]:
        os.link(root / HARDLINK_PATHS[0], root / other)

    # special files
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo", 0o640)
    if root_user:
        os.mknod(special / "char-dev", stat.S_IFCHR | 0o620, os.makedev(250, 17))
        os.mknod(special / "block-dev", stat.S_IFBLK | 0o660, os.makedev(7, 203))

    # special mode bits (chown before chmod: chown clears setuid/setgid)
    modes = root / "modes"
    modes.mkdir()
    _write(modes / "setuid", b"#!/bin/sh\necho setuid\n")
    _write(modes / "setgid-file", b"#!/bin/sh\necho setgid\n")
    (modes / "setgid-dir").mkdir()
    (modes / "sticky-dir").mkdir()
    if root_user:
        os.chown(modes / "setuid", OTHER_UID, OTHER_GID)
        os.chown(modes / "setgid-dir", 0, OTHER_GID)
    os.chmod(modes / "setuid", 0o4755)
    os.chmod(modes / "setgid-file", 0o2755)
    os.chmod(modes / "setgid-dir", 0o2775)
    os.chmod(modes / "sticky-dir", 0o1777)
    # a child of a setgid dir inherits the bit and the group; this one explicitly has neither
    (modes / "setgid-dir" / "plain-child").mkdir()
    os.chmod(modes / "setgid-dir" / "plain-child", 0o755)
    _write(modes / "setgid-dir" / "inherits-group", b"x\n")

    # ownership
    if root_user:
        owned = root / "owned"
        owned.mkdir()
        _write(owned / "by-1234-5678", b"owned by someone else\n")
        os.chown(owned / "by-1234-5678", OTHER_UID, OTHER_GID)
        _write(owned / "uid-only", b"uid 4242, gid 0\n")
        os.chown(owned / "uid-only", 4242, 0)
        _write(owned / "unmapped-ids", b"ids with no passwd entry\n")
        os.chown(owned / "unmapped-ids", 2_000_000_001, 2_000_000_002)
        os.symlink("by-1234-5678", owned / "symlink-owned")
        os.chown(owned / "symlink-owned", 2222, 3333, follow_symlinks=False)
        os.chown(owned, 4321, 8765)

    # extended attributes
    xattr_ok = _try_setxattr(root / SMALL, "user.comment", b"a comment")
    if xattr_ok:
        _try_setxattr(root / SMALL, "user.binary", bytes(range(256)))
        _try_setxattr(root / SMALL, "user.empty", b"")
        _try_setxattr(root / "dir_a", "user.dir-attr", b"on a directory")
        _try_setxattr(root / RANDOM, "user.big", rng.randbytes(3000))

    # POSIX ACLs
    acl = root / "acl"
    acl.mkdir()
    _write(acl / "file-acl", b"has an access ACL\n", 0o640)
    (acl / "dir-acl").mkdir()
    access = _acl_bytes([(_ACL_USER_OBJ, 6, _ACL_UNDEFINED), (_ACL_USER, 6, OTHER_UID),
                         (_ACL_GROUP_OBJ, 4, _ACL_UNDEFINED), (_ACL_GROUP, 4, OTHER_GID),
                         (_ACL_MASK, 6, _ACL_UNDEFINED), (_ACL_OTHER, 0, _ACL_UNDEFINED)])
    default = _acl_bytes([(_ACL_USER_OBJ, 7, _ACL_UNDEFINED), (_ACL_USER, 5, OTHER_UID),
                          (_ACL_GROUP_OBJ, 5, _ACL_UNDEFINED), (_ACL_MASK, 5, _ACL_UNDEFINED),
                          (_ACL_OTHER, 0, _ACL_UNDEFINED)])
    _set_acl(acl / "file-acl", access)
    _set_acl(acl / "dir-acl", access)
    _set_acl(acl / "dir-acl", default, default=True)

    # names
    rootb = os.fsencode(root)
    _write(rootb + b"/" + NON_UTF8_FILE, b"latin-1 name\n")
    os.mkdir(rootb + b"/" + NON_UTF8_DIR)
    _write(rootb + b"/" + NON_UTF8_DIR + b"/inner-\x80\x81", b"inside a non-UTF-8 directory\n")
    _write(root / LONG_NAME, b"255-byte name\n")
    _write(root / LONG_NAME_MB, b"255-byte multibyte name\n")
    _write(root / "spaces and\ttabs\nnewline", b"odd characters\n")
    _write(root / "-starts-with-dash", b"dash\n")

    # a directory chain whose full path is longer than PATH_MAX
    if deep:
        (root / DEEP_TOP).mkdir()
        fd = os.open(root / DEEP_TOP, _DIR_FLAGS)
        try:
            for i in range(DEEP_SEGMENT_COUNT):
                seg = deep_segment(i)
                os.mkdir(seg, 0o755, dir_fd=fd)
                nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            leaf = os.open(DEEP_LEAF, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            os.write(leaf, b"at the bottom of a very deep tree\n")
            os.close(leaf)
            os.symlink(DEEP_LEAF, b"bottom-link", dir_fd=fd)
        finally:
            os.close(fd)

    _stamp_times(root)


def _times_for(rel: bytes) -> tuple[int, int]:
    """Deterministic (atime_ns, mtime_ns) for a relative path: odd nanoseconds, 2001..2023."""
    h = int.from_bytes(hashlib.sha256(rel).digest()[:8], "big")
    mtime = 1_000_000_000_000_000_000 + (h % 700_000_000_000_000_000) | 1
    return (mtime + 1_000_000_002, mtime)


def _stamp_times(root: Path) -> None:
    """Give every entry a distinct odd-nanosecond mtime, directories last (bottom-up)."""

    def visit(dfd: int, rel: bytes) -> None:
        for name in sorted(os.listdir(dfd)):
            nb = os.fsencode(name)
            crel = rel + b"/" + nb if rel else nb
            st = os.stat(nb, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(nb, _DIR_FLAGS, dir_fd=dfd)
                try:
                    visit(cfd, crel)
                finally:
                    os.close(cfd)
            times = _times_for(crel)
            if name == PREHISTORIC:
                times = (times[0], PREHISTORIC_MTIME_NS)
            os.utime(nb, ns=times, dir_fd=dfd, follow_symlinks=False)

    fd = os.open(root, _DIR_FLAGS)
    try:
        visit(fd, b"")
    finally:
        os.close(fd)
    os.utime(root, ns=_times_for(b"."), follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# copying (cp -a cannot copy paths deeper than PATH_MAX)


def _proc_path(dfd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (dfd, name)


def _xattrs(dfd: int, name: bytes) -> dict[str, bytes]:
    p = _proc_path(dfd, name)
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(p, n, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out


def copy_tree(src: Path, dst: Path) -> None:
    """Copy src to dst (must not exist) like ``cp -a``, but works past PATH_MAX.

    Preserves types, modes, ownership, ns timestamps, xattrs/ACLs, hardlinks, holes, devices.
    """
    src_st = os.lstat(src)
    if not stat.S_ISDIR(src_st.st_mode):
        raise ValueError("copy_tree copies directories")
    os.mkdir(dst, 0o700)
    links: dict[tuple[int, int], tuple[int, bytes]] = {}
    sfd = os.open(src, _DIR_FLAGS)
    dfd = os.open(dst, _DIR_FLAGS)
    try:
        _copy_dir(sfd, dfd, links)
        os.close(sfd)
        sfd = -1
        # apply root metadata through the parent of dst
        parent = os.open(os.path.dirname(os.path.abspath(dst)) or "/", _DIR_FLAGS)
        try:
            sparent = os.open(os.path.dirname(os.path.abspath(src)) or "/", _DIR_FLAGS)
            try:
                xa = _xattrs(sparent, os.fsencode(os.path.basename(os.path.abspath(src))))
            finally:
                os.close(sparent)
            _apply_meta(parent, os.fsencode(os.path.basename(os.path.abspath(dst))), src_st, xa)
        finally:
            os.close(parent)
    finally:
        if sfd >= 0:
            os.close(sfd)
        os.close(dfd)
        for fd, _ in links.values():
            os.close(fd)


def _apply_meta(dfd: int, name: bytes, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    p = _proc_path(dfd, name)
    for k, v in xattrs.items():
        os.setxattr(p, k, v, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _copy_file(sfd: int, name: bytes, dfd: int, size: int) -> None:
    i = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    o = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(i, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            hole = os.lseek(i, data_start, os.SEEK_HOLE)
            off = data_start
            while off < hole:
                chunk = os.pread(i, min(MiB, hole - off), off)
                if not chunk:
                    break
                os.pwrite(o, chunk, off)
                off += len(chunk)
            pos = hole
        os.ftruncate(o, size)
    finally:
        os.close(i)
        os.close(o)


def _copy_dir(sfd: int, dfd: int, links: dict) -> None:
    for name in sorted(os.listdir(sfd)):
        nb = os.fsencode(name)
        st = os.stat(nb, dir_fd=sfd, follow_symlinks=False)
        xa = _xattrs(sfd, nb)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            os.mkdir(nb, 0o700, dir_fd=dfd)
            cs = os.open(nb, _DIR_FLAGS, dir_fd=sfd)
            cd = os.open(nb, _DIR_FLAGS, dir_fd=dfd)
            try:
                _copy_dir(cs, cd, links)
            finally:
                os.close(cs)
                os.close(cd)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                first_fd, first_name = links[key]
                os.link(first_name, nb, src_dir_fd=first_fd, dst_dir_fd=dfd, follow_symlinks=False)
                continue
            _copy_file(sfd, nb, dfd, st.st_size)
            if st.st_nlink > 1:
                links[key] = (os.dup(dfd), nb)
        elif fmt == stat.S_IFLNK:
            os.symlink(os.readlink(nb, dir_fd=sfd), nb, dir_fd=dfd)
        elif fmt == stat.S_IFIFO:
            os.mkfifo(nb, 0o600, dir_fd=dfd)
        else:
            os.mknod(nb, fmt | 0o600, st.st_rdev, dir_fd=dfd)
        _apply_meta(dfd, nb, st, xa)


# --------------------------------------------------------------------------------------------
# comparing


def _show(rel: bytes) -> str:
    """Readable form of a relative path; long components are abbreviated."""
    if not rel:
        return "."
    parts = []
    for comp in rel.split(b"/"):
        text = comp.decode("utf-8", "backslashreplace")
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
        if len(comp) > 40:
            text = f"{text[:12]}…[{len(comp)}B]"
        parts.append(text)
    return "/".join(parts)


_TYPE_NAMES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
               stat.S_IFCHR: "char-device", stat.S_IFBLK: "block-device", stat.S_IFSOCK: "socket"}


class _Comparer:
    def __init__(self, check_atime: bool, sparse_factor: float, max_errors: int = 60):
        self.check_atime = check_atime
        self.sparse_factor = sparse_factor
        self.max_errors = max_errors
        self.errors: list[str] = []
        self.inode_pairs: list[tuple[tuple[int, int], tuple[int, int], bytes]] = []
        self.entries = 0

    def err(self, rel: bytes, what: str) -> None:
        self.errors.append(f"{_show(rel)}: {what}")

    def compare_entry(self, sdir: int, ddir: int, name: bytes, rel: bytes, dname: bytes | None = None) -> None:
        """Compare entry ``name`` of directory sdir with entry ``dname`` (default: same name) of ddir."""
        self.entries += 1
        dname = name if dname is None else dname
        s = os.stat(name, dir_fd=sdir, follow_symlinks=False)
        d = os.stat(dname, dir_fd=ddir, follow_symlinks=False)
        sfmt, dfmt = stat.S_IFMT(s.st_mode), stat.S_IFMT(d.st_mode)
        if sfmt != dfmt:
            self.err(rel, f"type {_TYPE_NAMES.get(sfmt, sfmt)} != {_TYPE_NAMES.get(dfmt, dfmt)}")
            return
        if s.st_mode != d.st_mode:
            self.err(rel, f"st_mode {oct(s.st_mode)} != {oct(d.st_mode)}")
        if s.st_uid != d.st_uid:
            self.err(rel, f"uid {s.st_uid} != {d.st_uid}")
        if s.st_gid != d.st_gid:
            self.err(rel, f"gid {s.st_gid} != {d.st_gid}")
        if sfmt != stat.S_IFDIR and s.st_size != d.st_size:
            self.err(rel, f"size {s.st_size} != {d.st_size}")
        if sfmt in (stat.S_IFCHR, stat.S_IFBLK) and s.st_rdev != d.st_rdev:
            self.err(rel, f"st_rdev {os.major(s.st_rdev)},{os.minor(s.st_rdev)} != "
                          f"{os.major(d.st_rdev)},{os.minor(d.st_rdev)}")
        sx, dx = _xattrs(sdir, name), _xattrs(ddir, dname)
        if sx != dx:
            for k in sorted(set(sx) | set(dx)):
                if k not in dx:
                    self.err(rel, f"xattr {k} missing")
                elif k not in sx:
                    self.err(rel, f"xattr {k} unexpected (value {dx[k][:40]!r})")
                elif sx[k] != dx[k]:
                    self.err(rel, f"xattr {k} value {sx[k][:40]!r} != {dx[k][:40]!r}")

        if sfmt == stat.S_IFLNK:
            st, dt = os.readlink(name, dir_fd=sdir), os.readlink(dname, dir_fd=ddir)
            if st != dt:
                self.err(rel, f"symlink target {st!r} != {dt!r}")
        elif sfmt == stat.S_IFREG:
            self.inode_pairs.append(((s.st_dev, s.st_ino), (d.st_dev, d.st_ino), rel))
            if s.st_size == d.st_size:
                self.compare_contents(sdir, ddir, name, dname, rel)
            if s.st_blocks * 512 < s.st_size:  # sparse source
                allowed = max(int(s.st_blocks * self.sparse_factor), 8)
                if d.st_blocks > allowed:
                    self.err(rel, f"not sparse: st_blocks {d.st_blocks} > {allowed} "
                                  f"(source allocates {s.st_blocks} blocks for {s.st_size} bytes)")
        elif sfmt == stat.S_IFDIR:
            sfd = os.open(name, _DIR_FLAGS, dir_fd=sdir)
            try:
                dfd = os.open(dname, _DIR_FLAGS, dir_fd=ddir)
                try:
                    self.compare_dir(sfd, dfd, rel)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)

        # times last: for directories after the children have been looked at
        if s.st_mtime_ns != d.st_mtime_ns:
            self.err(rel, f"mtime_ns {s.st_mtime_ns} != {d.st_mtime_ns}")
        if self.check_atime and s.st_atime_ns != d.st_atime_ns:
            self.err(rel, f"atime_ns {s.st_atime_ns} != {d.st_atime_ns}")

    def compare_contents(self, sdir: int, ddir: int, name: bytes, dname: bytes, rel: bytes) -> None:
        def open_ro(dfd: int, n: bytes) -> int:
            try:
                return os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC, dir_fd=dfd)
            except PermissionError:
                return os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)

        a, b = open_ro(sdir, name), open_ro(ddir, dname)
        try:
            off = 0
            while True:
                x, y = os.read(a, MiB), os.read(b, MiB)
                if x != y:
                    for i, (cx, cy) in enumerate(zip(x, y)):
                        if cx != cy:
                            self.err(rel, f"contents differ at byte {off + i}")
                            return
                    self.err(rel, f"contents differ in length near byte {off + min(len(x), len(y))}")
                    return
                if not x:
                    return
                off += len(x)
        finally:
            os.close(a)
            os.close(b)

    def compare_dir(self, sfd: int, dfd: int, rel: bytes) -> None:
        snames = {os.fsencode(n) for n in os.listdir(sfd)}
        dnames = {os.fsencode(n) for n in os.listdir(dfd)}
        for n in sorted(snames - dnames):
            self.err(_join(rel, n), "missing in restored tree")
        for n in sorted(dnames - snames):
            self.err(_join(rel, n), "unexpected entry in restored tree")
        for n in sorted(snames & dnames):
            if len(self.errors) >= self.max_errors:
                return
            self.compare_entry(sfd, dfd, n, _join(rel, n))

    def check_hardlinks(self) -> None:
        by_src: dict[tuple[int, int], list[tuple[tuple[int, int], bytes]]] = {}
        by_dst: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for skey, dkey, rel in self.inode_pairs:
            by_src.setdefault(skey, []).append((dkey, rel))
            by_dst.setdefault(dkey, set()).add(skey)
        for group in by_src.values():
            if len({dk for dk, _ in group}) > 1:
                names = ", ".join(_show(r) for _, r in group)
                self.errors.append(f"hardlinks: [{names}] are one inode in the source but not in the restored tree")
        for dkey, skeys in by_dst.items():
            if len(skeys) > 1:
                names = ", ".join(_show(r) for sk in skeys for _, r in by_src[sk])
                self.errors.append(f"hardlinks: [{names}] are separate files in the source but one inode in the "
                                   "restored tree")


def _join(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


def assert_trees_equal(src: Path, dst: Path, *, check_atime: bool = False, sparse_factor: float = 2.0) -> None:
    """Assert that dst is an exact copy of src (which may be a directory or any other entry).

    Compares names, type, full st_mode, uid, gid, size, mtime_ns (also of directories and
    symlinks), contents, symlink targets, st_rdev, all xattrs (incl. POSIX ACLs), sparseness
    (dst may allocate at most ``sparse_factor`` times the blocks of a sparse source file) and
    hardlink structure. Raises AssertionError listing the differing paths and attributes.
    """
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if not os.path.lexists(dst):
        raise AssertionError(f"{dst} does not exist (expected a copy of {src})")
    c = _Comparer(check_atime, sparse_factor)
    sparent = os.open(os.path.dirname(src), _DIR_FLAGS)
    dparent = os.open(os.path.dirname(dst), _DIR_FLAGS)
    try:
        # the root is compared under the source's name; both parents are opened by fd
        sname, dname = os.fsencode(os.path.basename(src)), os.fsencode(os.path.basename(dst))
        c.compare_entry(sparent, dparent, sname, b"", dname=dname)
    finally:
        os.close(sparent)
        os.close(dparent)
    c.check_hardlinks()
    if c.errors:
        shown = c.errors[: c.max_errors]
        more = "" if len(c.errors) <= c.max_errors else f"\n  ... and {len(c.errors) - c.max_errors} more"
        raise AssertionError(
            f"trees differ ({len(c.errors)} difference(s))\n  source:   {src}\n  restored: {dst}\n  "
            + "\n  ".join(shown) + more
        )


# --------------------------------------------------------------------------------------------
# snapshots of ordinary directories (vault, agent home), to show that nothing was written


def snapshot(path: Path) -> dict[str, tuple]:
    """Map of relative path -> (kind, size, sha256 / link target) for everything under path.

    Empty if path does not exist. SQLite's transient -wal/-shm/-journal files are left out.
    """
    out: dict[str, tuple] = {}
    path = Path(path)
    if not path.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(path):
        for d in dirnames:
            p = Path(dirpath, d)
            if p.is_symlink():
                out[str(p.relative_to(path))] = ("symlink", os.readlink(p))
            else:
                out[str(p.relative_to(path)) + "/"] = ("dir",)
        for f in filenames:
            if f.endswith(("-wal", "-shm", "-journal")):
                continue
            p = Path(dirpath, f)
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out[rel] = ("symlink", os.readlink(p))
            elif f.endswith(".sqlite"):
                # Its rows, not its bytes: a reader closing the database may fold the WAL
                # into the file (a checkpoint), which changes bytes and no row.
                out[rel] = ("sqlite", _rows_digest(p))
            elif p.is_file():
                out[rel] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("other",)
    return out


def _rows_digest(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()


def describe_snapshot_diff(before: dict, after: dict) -> str:
    lines = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            lines.append(f"removed {k}")
        elif k not in before:
            lines.append(f"added   {k}")
        elif before[k] != after[k]:
            lines.append(f"changed {k}")
    return "\n".join(lines)


def regular_files(path: Path) -> list[str]:
    """Relative paths of all non-directories under path ([] if it does not exist)."""
    return sorted(k for k, v in snapshot(path).items() if v[0] != "dir")


def deep_dir_fd(root: Path) -> int:
    """An open fd of the innermost directory of the deep chain (caller closes it)."""
    fd = os.open(Path(root) / DEEP_TOP, _DIR_FLAGS)
    for i in range(DEEP_SEGMENT_COUNT):
        nfd = os.open(deep_segment(i), _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def under(target: Path, original: Path) -> Path:
    """Where `restore --target TARGET` puts `original` (its absolute path below TARGET)."""
    return Path(target, *Path(original).absolute().parts[1:])
