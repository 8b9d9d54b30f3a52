"""Real loop devices and mounts for the volume and image tests (root only; skipped otherwise).

Every device and mount made here is undone at the end of the test that made it, by the
device or mount point it made (never by a broad name: other tests may hold loop devices).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def run(*argv: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, check=check, timeout=300)


def need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/system-packages.sh installs it)")


class Devices:
    """Loop devices and mounts made by one test, undone in reverse order."""

    def __init__(self) -> None:
        self.undo: list[list[str]] = []

    def image(self, path: Path, size_mib: int, fs: str | None = None, label: str = "srtest") -> Path:
        """A sparse image file of `size_mib`, with a filesystem of type `fs` in it if given."""
        with open(path, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        if fs == "ext4":
            run("mkfs.ext4", "-q", "-F", "-L", label, path)
        elif fs == "btrfs":
            run("mkfs.btrfs", "-q", "-f", "-L", label, path)
        return path

    def loop(self, image: Path, read_only: bool = False) -> str:
        dev = run("losetup", "-f", "--show", *(["-r"] if read_only else []), image).stdout.strip()
        self.undo.append(["losetup", "-d", dev])
        return dev

    def mount(self, what: str | Path, where: Path, *options: str, fstype: str | None = None) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        argv = ["mount", *(["-t", fstype] if fstype else []), *(["-o", ",".join(options)] if options else []),
                os.fspath(what), os.fspath(where)]
        res = run(*argv, check=False)
        if res.returncode != 0:
            pytest.skip(f"cannot mount here: {res.stderr.strip()}")
        self.undo.append(["umount", os.fspath(where)])
        return where

    def unmount(self, where: Path) -> None:
        run("umount", where)
        self.undo.remove(["umount", os.fspath(where)])

    def close(self) -> None:
        for argv in reversed(self.undo):
            run(*argv, check=False)
        self.undo = []


@pytest.fixture
def devices():
    d = Devices()
    yield d
    d.close()


def fill(root: Path, seed: int = 0, files: int = 40) -> None:
    """Some files, folders, a symlink and a larger file of data that does not compress."""
    import random

    rnd = random.Random(seed)
    for i in range(files):
        sub = root / f"dir{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"file{i}.txt").write_bytes(f"file {i} seed {seed}\n".encode() * rnd.randint(1, 400))
    (root / "big.bin").write_bytes(rnd.randbytes(3 * 1024 * 1024))
    (root / "link").symlink_to("dir0/file0.txt")
