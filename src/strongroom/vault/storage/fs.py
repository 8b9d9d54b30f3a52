"""Storage in a local folder: objects are files, written atomically (temp, fsync, rename)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from strongroom.errors import MissingObject, VaultError, VaultReadOnly
from strongroom.fsutil import write_all, write_direct

_OPEN_FDS = 64
# Objects this large (packs) are written with O_DIRECT when the buffer allows it: the kernel
# then reads them straight from the caller's memory instead of copying them into page-cache
# pages it must first allocate (that copy and allocation were ~10 % of a first backup's CPU,
# perf, 20,000 files). Nothing reads a pack back soon after a backup stores it.
_DIRECT_MIN = 1024 * 1024


class FolderStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.open_fds: dict[str, int] = {}
        self.readers: dict[int, int] = {}  # descriptors being read: how many reads each
        self.retired: set[int] = set()  # gone from open_fds while read: the last reader closes them

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise VaultError(f"invalid object name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        with _room():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data).cast("B")
                if len(view) >= _DIRECT_MIN:
                    view = write_direct(fd, view)
                write_all(fd, view)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            self._commit(tmp, path)

    def put_file(self, name: str, source: Path) -> None:
        """Moves a file in: it must be on the same filesystem (the vault's spool folder)."""
        path = self._path(name)
        with _room():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._commit(source, path)

    @staticmethod
    def _commit(tmp: Path, path: Path) -> None:
        """The durable rename: the content is synced already, then the name, then the folder."""
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise _missing(name) from None

    def open(self, name: str) -> IO[bytes]:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise _missing(name) from None

    def _acquire(self, name: str) -> int:
        """A read descriptor, kept open (restores read thousands of blobs from each pack), and
        counted as in use until `_release`: the read itself runs outside the lock, so that
        readers wait on the disk side by side, not one after another (packs are written with
        O_DIRECT, so a restore's reads go to the disk)."""
        with self.lock:
            fd = self.open_fds.pop(name, None)
            if fd is None:
                try:
                    fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise _missing(name) from None
                while len(self.open_fds) >= _OPEN_FDS:
                    self._retire(self.open_fds.pop(next(iter(self.open_fds))))
            self.open_fds[name] = fd  # most recently used last
            self.readers[fd] = self.readers.get(fd, 0) + 1
            return fd

    def _release(self, fd: int) -> None:
        with self.lock:
            left = self.readers.pop(fd) - 1
            if left:
                self.readers[fd] = left
            elif fd in self.retired:
                self.retired.discard(fd)
                os.close(fd)

    def _retire(self, fd: int) -> None:
        """Closes a descriptor that left `open_fds`, or marks it for its last reader to close:
        closing it under a reader would let the number name another file mid-read. Under the lock."""
        if fd in self.readers:
            self.retired.add(fd)
        else:
            os.close(fd)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        fd = self._acquire(name)
        try:
            data = os.pread(fd, length, offset)
        finally:
            self._release(fd)
        if len(data) != length:
            raise VaultError(f"object {name} is shorter than the catalog says")
        return data

    def size(self, name: str) -> int:
        return self._stat(name).st_size

    def modified(self, name: str) -> float:
        return self._stat(name).st_mtime

    def _stat(self, name: str) -> os.stat_result:
        try:
            return self._path(name).stat()
        except FileNotFoundError:
            raise _missing(name) from None

    def delete(self, name: str) -> None:
        with self.lock:
            fd = self.open_fds.pop(name, None)
            if fd is not None:
                self._retire(fd)
        self._path(name).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        base = self._path(prefix) if prefix else self.root
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.startswith("."):
                    continue  # temp files of writes in progress or killed
                full = Path(dirpath) / f
                yield str(full.relative_to(self.root)), full.stat().st_size


@contextmanager
def _room() -> Iterator[None]:
    """A write that finds the disk full or read-only says so by name: the same VaultFull or
    VaultReadOnly whether the vault is embedded or served (vault/storage_errors.py)."""
    try:
        yield
    except OSError as exc:
        if (read_only := VaultReadOnly.of(exc)) is not None:
            raise read_only from None
        raise


def _missing(name: str) -> MissingObject:
    return MissingObject(f"object {name} is missing from the vault")
