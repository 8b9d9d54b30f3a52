"""File content for `strongroom mount`: a byte range of a file, from only the blobs it needs.

A file's tree entry lists its blobs (`c`) and their plaintext lengths (`cl`, tree format 2),
so a read maps its range to blobs by arithmetic and fetches those alone: 1 MiB from the
middle of a 5 GiB file costs one or two blobs. Sparse files (`sp`) read their holes as zeros
without any fetch. Every blob is verified (tag, keyed hash, and the length the tree lists)
before a byte of it is returned, so a damaged or swapped blob fails the read (EIO), never
returns wrong data.

Blobs come from a small memory cache (the kernel reads a file in 128 KiB pieces, and a blob
is ~1 MiB), then, for a served vault, from a bounded cache on disk in the agent's cache
folder (sealed envelopes, verified again on every use), then from the vault.
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from strongroom import blobs
from strongroom.agent.reader import BlobReader, content_lengths
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError
from strongroom.model import Entry
from strongroom.vault.interface import Vault
from strongroom.vault.shapes import BlobLocation

MEMORY_BYTES = 32 * 1024 * 1024  # decoded blobs kept in memory: a few files read at once
DISK_BYTES = 2 * 1024**3  # default bound of the cache of sealed blobs on disk
CACHE_FILE = "mount-blobs.sqlite"
_BATCH_BYTES = 2 * 1024 * 1024  # sealed bytes asked for in one request
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (id BLOB PRIMARY KEY, envelope BLOB NOT NULL, used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blobs_used ON blobs (used);
"""


class _NotHere(Exception):
    """A blob a read needs is not in memory (the read then goes to a thread)."""


class DiskCache:
    """Sealed blobs on disk, bounded by bytes, the least recently used dropped first. Shared by
    the mounts of one agent home (SQLite serialises them); a damaged file is started afresh."""

    def __init__(self, cache_dir: Path, limit: int) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path, self.limit = cache_dir / CACHE_FILE, limit
        self.lock = threading.Lock()
        try:
            self.db = self._open()
        except sqlite3.DatabaseError:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.db = self._open()
        self.size = self.db.execute("SELECT COALESCE(SUM(LENGTH(envelope)), 0) FROM blobs").fetchone()[0]

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # a cache: what a crash loses is fetched again
        db.executescript(_SCHEMA)
        return db

    def get(self, blob_id: bytes) -> bytes | None:
        with self.lock:
            try:
                row = self.db.execute("SELECT envelope FROM blobs WHERE id = ?", (blob_id,)).fetchone()
                if row is not None:
                    self.db.execute("UPDATE blobs SET used = ? WHERE id = ?", (time.time_ns(), blob_id))
            except sqlite3.Error:
                return None  # damaged or locked: the vault has it
        return row[0] if row else None

    def put(self, blob_id: bytes, envelope: bytes) -> None:
        """Keeps a blob if it can: a full disk or a busy file only means it is fetched again."""
        with self.lock:
            try:
                if self.db.execute("INSERT OR IGNORE INTO blobs (id, envelope, used) VALUES (?, ?, ?)",
                                   (blob_id, envelope, time.time_ns())).rowcount:
                    self.size += len(envelope)
                if self.size > self.limit:
                    self._shrink()
            except sqlite3.Error:
                pass

    def drop(self, blob_id: bytes) -> None:
        """Forgets a blob that did not verify: the next read fetches it from the vault."""
        with self.lock:
            try:
                self.db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
            except sqlite3.Error:
                pass

    def _shrink(self) -> None:
        # Down to 90 % of the bound, oldest first; other mounts' additions are counted anew.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            total = self.db.execute("SELECT COALESCE(SUM(LENGTH(envelope)), 0) FROM blobs").fetchone()[0]
            target = self.limit * 9 // 10
            rows = self.db.execute("SELECT id, LENGTH(envelope) FROM blobs ORDER BY used").fetchall()
            doomed = []
            for blob_id, length in rows:
                if total <= target:
                    break
                doomed.append((blob_id,))
                total -= length
            self.db.executemany("DELETE FROM blobs WHERE id = ?", doomed)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.size = total

    def close(self) -> None:
        self.db.close()


class CachingReader(BlobReader):
    """A BlobReader that keeps what it fetches (trees and data) in a DiskCache, if given, and
    counts the sealed bytes it fetched from the vault."""

    def __init__(self, vault: Vault, key: MasterKey, machine: str | None, disk: DiskCache | None) -> None:
        super().__init__(vault, key, machine)
        self.disk = disk
        self.fetched_bytes = 0
        self.count_lock = threading.Lock()

    def read(self, blob_id: bytes, limit: int = blobs.MAX_DATA_BYTES) -> bytes:
        loc = self.location(blob_id)
        envelope = self._take(blob_id)  # prefetched (from the disk cache or the vault)
        if envelope is None:
            envelope = self._envelopes([(blob_id, loc)])[0]
        try:
            return self._decode(blob_id, loc, envelope, limit)
        except IntegrityError:
            if self.disk is None:
                raise
            # Perhaps the copy on this disk was damaged: the vault's copy decides.
            self.disk.drop(blob_id)
            return self._decode(blob_id, loc, self._fetch([(blob_id, loc)])[0], limit)

    def decode(self, blob_id: bytes, loc: BlobLocation, envelope: bytes | memoryview) -> bytes:
        return self._decode(blob_id, loc, envelope)

    def _envelopes(self, batch: list[tuple[bytes, BlobLocation]]) -> list[bytes | memoryview]:  # type: ignore[override]
        """The sealed blobs of `batch`: from the disk cache where it has them, the rest in one
        request (a damaged cached copy fails its decode and is then read from the vault)."""
        found: dict[bytes, bytes] = {}
        if self.disk is not None:
            for blob_id, _loc in batch:
                envelope = self.disk.get(blob_id)
                if envelope is not None:
                    found[blob_id] = envelope
        missing = [(i, loc) for i, loc in batch if i not in found]
        fetched = dict(zip((i for i, _loc in missing), self._fetch(missing))) if missing else {}
        return [found.get(i) or fetched[i] for i, _loc in batch]

    sealed_many = _envelopes

    def _fetch(self, batch: list[tuple[bytes, BlobLocation]]) -> list[bytes] | list[memoryview]:
        envelopes = super()._envelopes(batch)
        with self.count_lock:
            self.fetched_bytes += sum(len(e) for e in envelopes)
        if self.disk is not None:
            for (blob_id, _loc), envelope in zip(batch, envelopes):
                self.disk.put(blob_id, bytes(envelope))
        return envelopes


class BlobSource:
    """Verified plaintext blobs for reads: memory, then the reader (disk cache, vault)."""

    def __init__(self, reader: CachingReader) -> None:
        self.reader = reader
        self.memory: OrderedDict[bytes, bytes] = OrderedDict()
        self.held = 0
        self.lock = threading.Lock()
        self.fetching: dict[bytes, threading.Lock] = {}  # one fetch per blob, however many readers

    def get(self, blob_id: bytes, length: int) -> bytes:
        with self.lock:
            data = self.memory.get(blob_id)
            if data is not None:
                self.memory.move_to_end(blob_id)
                return data
            gate = self.fetching.setdefault(blob_id, threading.Lock())
        with gate:
            with self.lock:
                data = self.memory.get(blob_id)
            if data is None:
                data = self.reader.read(blob_id)
                if len(data) != length:
                    raise IntegrityError(f"blob {blob_id.hex()[:16]} holds {len(data)} bytes; its tree lists {length}")
                self._keep(blob_id, data)
        with self.lock:
            self.fetching.pop(blob_id, None)
        return data

    def cached(self, blob_id: bytes, length: int) -> bytes:
        """A blob already in memory, or _NotHere: what a read can answer without a thread."""
        with self.lock:
            data = self.memory.get(blob_id)
            if data is None:
                raise _NotHere
            self.memory.move_to_end(blob_id)
        return data

    def fetch_many(self, wanted: list[tuple[bytes, int]]) -> None:
        """Brings these blobs into memory, a few MiB per request (a folder's small files in one
        round trip to a served vault). Blobs that fail are left for the read that needs them."""
        with self.lock:
            wanted = [(i, n) for i, n in wanted if i not in self.memory]
        self.reader.locate([i for i, _n in wanted])
        batch: list[tuple[bytes, BlobLocation]] = []
        lengths: dict[bytes, int] = {}
        size = 0
        for blob_id, length in wanted:
            loc = self.reader.locations.get(blob_id)
            if loc is None:
                continue
            if batch and size + loc.length > _BATCH_BYTES:
                self._fetch_batch(batch, lengths)
                batch, size = [], 0
            batch.append((blob_id, loc))
            lengths[blob_id] = length
            size += loc.length
        if batch:
            self._fetch_batch(batch, lengths)

    def _fetch_batch(self, batch: list[tuple[bytes, BlobLocation]], lengths: dict[bytes, int]) -> None:
        for (blob_id, loc), envelope in zip(batch, self.reader.sealed_many(batch)):
            try:
                data = self.reader.decode(blob_id, loc, envelope)
            except IntegrityError:
                continue  # the read of its file reports it
            if len(data) == lengths[blob_id]:
                self._keep(blob_id, data)

    def _keep(self, blob_id: bytes, data: bytes) -> None:
        with self.lock:
            if blob_id not in self.memory:
                self.memory[blob_id] = data
                self.held += len(data)
            while self.held > MEMORY_BYTES and len(self.memory) > 1:
                self.held -= len(self.memory.popitem(last=False)[1])


class FileContent:
    """Where each byte of one file lies: holes, and offsets into its blobs back to back."""

    def __init__(self, entry: Entry) -> None:
        self.size = entry.get("s", 0)
        self.ids: list[bytes] = entry.get("c", [])
        lengths = content_lengths(entry)
        self.starts = [0]  # the offset of each blob in the data, and the data's end
        for n in lengths:
            self.starts.append(self.starts[-1] + n)
        data = self.starts[-1]
        # (file offset, length, data offset) of each extent holding data; the rest reads as zeros
        self.extents: list[tuple[int, int, int]] = []
        if "sp" in entry:
            at = 0
            for offset, length in entry["sp"]:
                self.extents.append((offset, length, at))
                at += length
            if at != data:
                raise IntegrityError("the sparse extents of this file do not add up to its blobs")
        elif data:
            self.extents.append((0, data, 0))

    @property
    def data_bytes(self) -> int:
        return self.starts[-1]

    def read_cached(self, source: BlobSource, offset: int, size: int) -> bytes | None:
        """The range if every blob it needs is in memory, else None."""
        try:
            return self._read(source.cached, offset, size)
        except _NotHere:
            return None

    def read(self, source: BlobSource, offset: int, size: int) -> bytes:
        return self._read(source.get, offset, size)

    def _read(self, get: Callable[[bytes, int], bytes], offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        if self.extents and self.extents[0][0] == 0 and self.extents[0][1] >= end and not self.extents[0][2]:
            # All data here (no hole): the pieces of the blobs, copied once.
            return self._data(get, offset, end - offset)
        out = bytearray(end - offset)  # zeros: holes and anything past the data
        for ext_off, ext_len, data_off in self.extents:
            lo, hi = max(offset, ext_off), min(end, ext_off + ext_len)
            if lo < hi:
                out[lo - offset:hi - offset] = self._data(get, data_off + lo - ext_off, hi - lo)
        return bytes(out)

    def _data(self, get: Callable[[bytes, int], bytes], at: int, size: int) -> bytes:
        """`size` bytes of the blobs back to back, from `at` (one copy of the bytes asked for)."""
        pieces = []
        i = bisect.bisect_right(self.starts, at) - 1
        while size > 0 and i < len(self.ids):
            blob = memoryview(get(self.ids[i], self.starts[i + 1] - self.starts[i]))
            piece = blob[at - self.starts[i]:at - self.starts[i] + size]  # a view: joined below
            pieces.append(piece)
            at, size, i = at + len(piece), size - len(piece), i + 1
        return b"".join(pieces)
