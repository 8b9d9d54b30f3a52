"""btrfs primitives for consistent snapshots: is a path on btrfs, which subvolume holds it,
and taking and deleting read-only snapshots, through the kernel's ioctls (no btrfs-progs).

The structures are those of linux/btrfs.h (stable kernel ABI): `btrfs_ioctl_vol_args_v2` for
BTRFS_IOC_SNAP_CREATE_V2 and `btrfs_ioctl_vol_args` for BTRFS_IOC_SNAP_DESTROY, 4096 bytes each.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

BTRFS_SUPER_MAGIC = 0x9123683E
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
EMPTY_SUBVOL_DIR_OBJECTID = 2  # what a nested subvolume looks like inside a snapshot of its parent
_SUBVOL_RDONLY = 1 << 1
_NAME_MAX = 4039  # BTRFS_SUBVOL_NAME_MAX
_PATH_NAME_MAX = 4087


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (0x94 << 8) | nr  # _IOW(BTRFS_IOCTL_MAGIC, nr, size)


_VOL_ARGS_V2 = struct.Struct(f"=qQQ32s{_NAME_MAX + 1}s")  # fd, transid, flags, union, name
_VOL_ARGS = struct.Struct(f"=q{_PATH_NAME_MAX + 1}s")  # fd, name
IOC_SNAP_CREATE_V2 = _iow(23, _VOL_ARGS_V2.size)
IOC_SNAP_DESTROY = _iow(15, _VOL_ARGS.size)

# The process's own symbols, libc's among them: find_library("c") ran `ldconfig -p` in a
# subprocess when the module loaded, and every backup loads this module.
_libc = ctypes.CDLL(None, use_errno=True)
# Never through a symbolic link: a user who can write the subvolume's root could plant one.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fs_type(path: bytes) -> int:
    """The file system's magic number (statfs f_type) of `path`; Python's statvfs lacks it."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(path, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return struct.unpack_from("=l" if ctypes.sizeof(ctypes.c_long) == 4 else "=q", buf.raw)[0] & 0xFFFFFFFF


def is_btrfs(path: bytes) -> bool:
    try:
        return fs_type(path) == BTRFS_SUPER_MAGIC
    except OSError:
        return False


def subvolume_root(path: bytes) -> bytes | None:
    """The root directory of the subvolume holding `path` (a directory or file), as reachable
    from here: the highest ancestor on the same device (each subvolume has its own st_dev).
    None when that ancestor is not a subvolume root (a bind mount of a subdirectory)."""
    path = os.path.realpath(path)
    st = os.stat(path)
    if not os.path.isdir(path):
        path = os.path.dirname(path)
        st = os.stat(path)
    while path != b"/":
        up = os.path.dirname(path)
        if os.stat(up).st_dev != st.st_dev:
            break
        path = up
    return path if os.stat(path).st_ino == FIRST_FREE_OBJECTID else None


def create_snapshot(subvolume: bytes, dest_dir: bytes, name: bytes) -> None:
    """A read-only snapshot of `subvolume` at dest_dir/name (both on the same btrfs)."""
    if len(name) > _NAME_MAX or b"/" in name:
        raise ValueError("bad snapshot name")
    src = os.open(subvolume, _DIR_FLAGS)
    try:
        dst = os.open(dest_dir, _DIR_FLAGS)
        try:
            args = bytearray(_VOL_ARGS_V2.pack(src, 0, _SUBVOL_RDONLY, b"", name))
            fcntl.ioctl(dst, IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def delete_snapshot(dest_dir: bytes, name: bytes) -> None:
    """Deletes the subvolume dest_dir/name; a missing one is already gone."""
    dst = os.open(dest_dir, _DIR_FLAGS)
    try:
        args = bytearray(_VOL_ARGS.pack(0, name))
        try:
            fcntl.ioctl(dst, IOC_SNAP_DESTROY, args)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    finally:
        os.close(dst)
