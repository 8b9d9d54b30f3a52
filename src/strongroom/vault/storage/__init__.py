"""Object storage behind one small interface, so that object stores can follow the folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol


class Storage(Protocol):
    """Named immutable objects: written once, read by range, listed, deleted."""

    def put(self, name: str, data: bytes | memoryview) -> None: ...
    def put_file(self, name: str, path: Path) -> None: ...  # takes a local file over (moved, or uploaded then removed)
    def get(self, name: str) -> bytes: ...
    def get_range(self, name: str, offset: int, length: int) -> bytes: ...
    def open(self, name: str) -> IO[bytes]: ...  # a stream of the whole object, for records too large to hold
    def size(self, name: str) -> int: ...
    def modified(self, name: str) -> float: ...  # Unix time of the write
    def delete(self, name: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]: ...
