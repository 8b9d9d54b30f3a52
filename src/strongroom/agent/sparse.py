"""Sparse files: find the data extents (SEEK_DATA/SEEK_HOLE) and read only those."""

from __future__ import annotations

import errno
import os


def data_extents(fd: int, size: int) -> list[list[int]]:
    """[[offset, length], ...] of the regions holding data; holes are everything else."""
    extents: list[list[int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole remains
            if exc.errno == errno.EINVAL:
                return [[0, size]]  # the filesystem cannot tell: treat as dense
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append([start, end - start])
        offset = end
    os.lseek(fd, 0, os.SEEK_SET)
    return extents


class ExtentReader:
    """A stream of the data extents of a file, back to back (what the chunker sees)."""

    def __init__(self, fd: int, extents: list[list[int]]) -> None:
        self.fd = fd
        self.extents = [list(e) for e in extents]

    def readinto(self, buffer: memoryview) -> int:
        while self.extents:
            offset, length = self.extents[0]
            if length == 0:
                self.extents.pop(0)
                continue
            n = os.preadv(self.fd, [buffer[:length]], offset)
            if n == 0:
                self.extents.pop(0)  # the file shrank while being read; caught by the re-stat
                continue
            self.extents[0] = [offset + n, length - n]
            return n
        return 0
