"""Small file-system helpers shared by the agent and the vault: private, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes | memoryview) -> int:
    """Writes all of `data` (one call unless the kernel takes less); the bytes written."""
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)
        while n < len(view):
            n += os.write(fd, view[n:])
    return n


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
