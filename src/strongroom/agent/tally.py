"""Counting what recovery points hold (`strongroom stats`): files, logical bytes, and the
bytes of distinct content after deduplication.

Memory stays bounded on a machine of any size: the distinct chunk IDs and the totals of
each directory already counted live in a scratch SQLite file, not in Python sets. A
directory's totals are remembered by its tree ID, so the unchanged part of the next point
is not read again (equal tree IDs, equal content).

Trees of format 2 list each content blob's plaintext length (`cl`), so the distinct total
is exact. Should an entry lack `cl`, its chunks are counted at equal shares of the file's
size and the total is flagged as an estimate (`unique_bytes_estimated`).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from types import TracebackType

from strongroom.agent.reader import BlobReader
from strongroom.errors import StrongroomError
from strongroom.model import DIR, FILE

_PREFIX = "stats-"
_STALE_S = 86400  # a scratch folder this old was left by a stats that was killed


def _remove_stale(scratch: Path) -> None:
    now = time.time()
    for old in scratch.glob(_PREFIX + "*"):
        try:
            if now - old.stat().st_mtime > _STALE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


class Tally:
    def __init__(self, reader: BlobReader, scratch: Path) -> None:
        self.reader = reader
        _remove_stale(scratch)
        self.dir = tempfile.TemporaryDirectory(prefix=_PREFIX, dir=scratch)
        self.db = sqlite3.connect(Path(self.dir.name) / "tally.sqlite")
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                              "CREATE TABLE chunks (id BLOB PRIMARY KEY, size INTEGER) WITHOUT ROWID;"
                              "CREATE TABLE trees (id BLOB PRIMARY KEY, files INTEGER, bytes INTEGER) WITHOUT ROWID;")
        self.estimated = False

    def __enter__(self) -> "Tally":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.db.close()
        self.dir.cleanup()

    def point(self, root_tree: bytes) -> tuple[int, int]:
        """(files, logical bytes) of a point; its chunks join the distinct set."""
        try:
            return self._tree(root_tree)
        except sqlite3.OperationalError as exc:  # a full disk, most likely: one line, not a crash
            raise StrongroomError(f"stats needs scratch space in {self.dir.name}: {exc}") from None

    def unique_bytes(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(size), 0) FROM chunks").fetchone()[0])

    def _tree(self, tree_id: bytes) -> tuple[int, int]:
        known = self.db.execute("SELECT files, bytes FROM trees WHERE id = ?", (tree_id,)).fetchone()
        if known:
            return known[0], known[1]
        files = size = 0
        chunks: list[tuple[bytes, int]] = []
        for entry in self.reader.tree(tree_id):
            if entry["t"] == FILE:
                files += 1
                size += entry.get("s", 0)
                chunks += self._shares(entry)
            elif entry["t"] == DIR and entry.get("tree"):
                f, s = self._tree(entry["tree"])
                files, size = files + f, size + s
        self.db.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?)", chunks)
        self.db.execute("INSERT OR IGNORE INTO trees VALUES (?, ?, ?)", (tree_id, files, size))
        return files, size

    def _shares(self, entry: dict) -> list[tuple[bytes, int]]:
        ids = entry.get("c") or []
        if not ids:
            return []
        lengths = entry.get("cl")
        if isinstance(lengths, list) and len(lengths) == len(ids):
            return list(zip(ids, lengths))
        data = sum(n for _o, n in entry["sp"]) if entry.get("sp") is not None else entry.get("s", 0)
        if len(ids) == 1:
            return [(ids[0], data)]
        self.estimated = True
        share, rest = divmod(data, len(ids))
        return [(blob_id, share + (rest if i == len(ids) - 1 else 0)) for i, blob_id in enumerate(ids)]
