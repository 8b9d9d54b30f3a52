"""A FUSE filesystem holding one empty folder: `python tinyfuse.py MOUNTPOINT` mounts it until
killed. For the refusal of FUSE mounts as volumes (a real FUSE mount, not a faked mount table)."""

from __future__ import annotations

import stat
import sys

import pyfuse3
import trio


class Empty(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_mode = stat.S_IFDIR | 0o755
        attrs.st_nlink = 2
        return attrs

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        return

    async def statfs(self, ctx):
        return pyfuse3.StatvfsData()


def main() -> None:
    pyfuse3.init(Empty(), sys.argv[1], {"fsname=tinyfuse"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
