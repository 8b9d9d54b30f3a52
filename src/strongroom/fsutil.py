"""Small file-system helpers shared by the agent and the vault: private, atomic writes, and
writes past the page cache (O_DIRECT)."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

DIRECT_ALIGN = 4096  # the block size O_DIRECT wants on ext4/XFS/btrfs; 512 would do on some
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# How a write with O_DIRECT is refused before anything is written: an unaligned buffer (EINVAL),
# a filesystem that takes the flag but not such writes (some FUSE filesystems).
_DIRECT_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def write_all(fd: int, data: bytes | memoryview) -> int:
    """Writes all of `data` (one call unless the kernel takes less); the bytes written."""
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)
        while n < len(view):
            n += os.write(fd, view[n:])
    return n


def write_direct(fd: int, view: memoryview) -> memoryview:
    """Writes the block-aligned head of `view` at the file offset with O_DIRECT where the
    filesystem and the buffer allow it (a page-aligned buffer: anonymous memory from mmap);
    what is left to write the ordinary way (the tail, or all of it). Durability is the
    caller's: an fsync also flushes the file's metadata."""
    head = len(view) - len(view) % DIRECT_ALIGN
    if not _O_DIRECT or not head:
        return view
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return view  # a filesystem without O_DIRECT (tmpfs before Linux 6.6)
    start = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        done = 0
        while done < head:
            done += os.write(fd, view[done:head])
    except OSError as exc:
        if exc.errno not in _DIRECT_REFUSED:
            raise
        # An unaligned buffer, or a write after a short one left the offset unaligned, is
        # refused before anything is written: the offset is where the last full write left it.
        done = os.lseek(fd, 0, os.SEEK_CUR) - start
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return view[done:]


class Stage:
    """A file written from page-aligned memory past the page cache (O_DIRECT, write_direct),
    from its descriptor's offset on: the caller asks for `room` for its next piece, fills it
    there (a decoder writes straight into it: no piece of its own to copy from), and `keep`s it
    once it is verified; `finish` writes out what is kept. Why: a buffered write copies into
    page-cache pages the kernel must first allocate, and on a VM whose host backs freed memory
    lazily that copy ran at ~0.5 GB/s (2 ms of system time per MiB); from the stage the kernel
    reads the pages straight to the disk.

    Only kept bytes are ever written: what a failed decode left in the room stays in memory
    (overwritten by the next file's, unmapped when the stage and the views of it go)."""

    def __init__(self, size: int) -> None:
        """`size` (a multiple of DIRECT_ALIGN) bounds a piece: DIRECT_ALIGN - 1 bytes less."""
        self.view = memoryview(mmap.mmap(-1, size))  # anonymous: page-aligned, pages touched as filled
        self.fd = -1
        self.filled = self.written = 0

    def start(self, fd: int) -> None:
        """Stages the file open as `fd` from its offset on, forgetting what was in the room."""
        self.fd = fd
        self.filled = self.written = 0

    def room(self, n: int) -> memoryview:
        """Where the next `n` bytes go; the aligned head of what is kept is written out first
        if they would not fit behind it (its unaligned end, under DIRECT_ALIGN, moves to the
        front: the file's offset stays aligned for O_DIRECT)."""
        if self.filled + n > len(self.view):
            head = self.filled - self.filled % DIRECT_ALIGN
            self._write_out(self.view[:head])
            self.view[:self.filled - head] = self.view[head:self.filled]
            self.filled -= head
            if self.filled + n > len(self.view):
                raise ValueError(f"a piece of {n} bytes does not fit a stage of {len(self.view)}")
        return self.view[self.filled:self.filled + n]

    def keep(self, n: int) -> None:
        """The `n` bytes just put into `room(n)` are to be written."""
        self.filled += n

    def finish(self) -> int:
        """Writes out what is kept (its unaligned end the ordinary way); the bytes written in all."""
        self._write_out(self.view[:self.filled])
        self.filled = 0
        return self.written

    def _write_out(self, view: memoryview) -> None:
        write_all(self.fd, write_direct(self.fd, view))
        self.written += len(view)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Writes a file atomically (temp, fsync, rename) readable only by its owner."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
