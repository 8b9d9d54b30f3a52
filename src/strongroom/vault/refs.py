"""A recovery point's refs: the sorted blob IDs it keeps alive, streamed, never held whole.

Stored as `"SRREFS01"` followed by one zstd frame of the IDs (32 bytes each), strictly
ascending. Sorted IDs let the vault check a point against the blob index, merge the refs of
every point for garbage collection and compare a pack's blobs with them, all in one pass
with bounded memory, whatever the size of a point.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import IO

import blake3
import zstandard

from strongroom.errors import IntegrityError, UsageError
from strongroom.vault.wire import ID_SIZE

MAGIC = b"SRREFS01"
# IDs handled at a time: 64 KiB. A point's record at the end of every backup holds a few such
# pieces at once (the parent's refs read, the merged ones, the ones written, their check):
# at 1 MiB a piece they were the peak RSS of a backup without change, and 256 KiB pieces still
# cost it 1.5 MiB (50,000 files) against these.
CHUNK_IDS = 2048
# The IDs are keyed hashes: zstd stores them raw at any level, so the frame's window and the
# compressor's tables are the smallest (a level 3 stream took 2 MiB of window to write and to
# read back, for 45 bytes of 1.6 MB).
_WRITE_PARAMS = zstandard.ZstdCompressionParameters.from_level(1, window_log=17)


class Tally:
    """A point's refs as its record states them: how many IDs, and the BLAKE3 of them all
    back to back, ascending (the agent computes the same to check a delta, agent/optimized.py)."""

    def __init__(self) -> None:
        self.count = 0
        self._digest = blake3.blake3()

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Passes chunks of whole IDs on, counting and hashing each."""
        for chunk in chunks:
            self._digest.update(chunk)
            self.count += len(chunk) // ID_SIZE
            yield chunk

    @property
    def checksum(self) -> str:
        return self._digest.hexdigest()


def tally(chunks: Iterable[bytes]) -> tuple[int, str]:
    """The count and checksum of sorted refs, read to their end."""
    counted = Tally()
    for _chunk in counted.passing(chunks):
        pass
    return counted.count, counted.checksum


def write_refs(chunks: Iterable[bytes], out: IO[bytes], ordered: bool = False) -> tuple[int, str]:
    """Writes IDs (given as byte strings of whole IDs, in ascending order) to `out`; returns
    their count and the BLAKE3 of their concatenation. Refuses unsorted or repeated IDs; with
    `ordered` (IDs the vault merged itself, `apply_delta`) it checks only where pieces meet."""
    out.write(MAGIC)
    counted = Tally()
    last = b""
    with zstandard.ZstdCompressor(compression_params=_WRITE_PARAMS).stream_writer(out, closefd=False) as z:
        for chunk in counted.passing(rechunk(chunks)):
            if chunk and ordered:
                if chunk[:ID_SIZE] <= last:
                    raise UsageError("a point's refs must be distinct blob IDs in ascending order")
                last = chunk[-ID_SIZE:]
            elif chunk:
                # Ascending and distinct, checked by C loops (sorted() of a sorted list is one pass).
                listed = [chunk[i:i + ID_SIZE] for i in range(0, len(chunk), ID_SIZE)]
                if listed[0] <= last or listed != sorted(listed) or len(set(listed)) != len(listed):
                    raise UsageError("a point's refs must be distinct blob IDs in ascending order")
                last = listed[-1]
            z.write(chunk)
    return counted.count, counted.checksum


def rechunk(chunks: Iterable[bytes], ids_per_chunk: int = CHUNK_IDS) -> Iterator[bytes]:
    """Byte strings of up to `ids_per_chunk` whole IDs, from pieces cut anywhere."""
    pending = bytearray()
    limit = ids_per_chunk * ID_SIZE
    for piece in chunks:
        pending += piece
        while len(pending) >= limit:
            yield bytes(pending[:limit])
            del pending[:limit]
    if len(pending) % ID_SIZE:
        raise UsageError("refs are a whole number of 32-byte blob IDs")
    if pending:
        yield bytes(pending)


def read_refs(stream: IO[bytes], what: str) -> Iterator[bytes]:
    """The chunks of IDs in a refs object, checked for shape (not for the checksum: see
    `verify_refs`)."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise IntegrityError(f"{what} is not a refs object")
    reader = zstandard.ZstdDecompressor().stream_reader(stream, closefd=False)
    try:
        while chunk := reader.read(CHUNK_IDS * ID_SIZE):
            while len(chunk) % ID_SIZE:
                more = reader.read(ID_SIZE - len(chunk) % ID_SIZE)
                if not more:
                    raise IntegrityError(f"{what} is truncated")
                chunk += more
            yield chunk
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} does not decompress: {exc}") from None


def ids(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        for i in range(0, len(chunk), ID_SIZE):
            yield chunk[i:i + ID_SIZE]


def verify_refs(chunks: Iterable[bytes], count: int, checksum: str, what: str) -> Iterator[bytes]:
    """Passes the chunks on, then fails if their count or checksum differ from the record's."""
    counted = Tally()
    yield from counted.passing(chunks)
    if counted.count != count or counted.checksum != checksum:
        raise IntegrityError(f"{what} does not match its checksum")


def apply_delta(base: Iterable[bytes], removed: Iterator[bytes], added: Iterator[bytes]) -> Iterator[bytes]:
    """The ascending IDs of `base` (chunks of whole IDs, ascending) without `removed`, with
    `added` (single IDs, each ascending), as pieces of whole IDs: a point's refs made from its
    parent's. The base is passed on in slices between the changes, found by bisection, so a
    change of ten files to a point of a million costs a pass over its chunks, not a Python
    step per ID."""
    gone, new = _ascending(removed), _ascending(added)
    next_gone, next_new = next(gone, None), next(new, None)
    for chunk in base:
        pos, count = 0, len(chunk) // ID_SIZE
        final = chunk[-ID_SIZE:]
        while pos < count:
            event = min((x for x in (next_gone, next_new) if x is not None), default=None)
            if event is None or event > final:
                yield chunk[pos * ID_SIZE:]  # the rest of the chunk (all of it, uncopied, if untouched)
                break
            at = _first_not_below(chunk, event, pos, count)  # < count: event <= final
            if at > pos:
                yield chunk[pos * ID_SIZE:at * ID_SIZE]
                pos = at
            here = chunk[pos * ID_SIZE:(pos + 1) * ID_SIZE]
            if event == next_new:  # added (and kept, if also named as removed)
                if next_new != here:
                    yield next_new
                if next_gone == next_new:
                    next_gone = next(gone, None)
                next_new = next(new, None)
            else:
                if next_gone == here:
                    pos += 1
                next_gone = next(gone, None)
    while next_new is not None:  # above every ID of the base
        yield next_new
        next_new = next(new, None)


def _first_not_below(chunk: bytes, blob_id: bytes, lo: int, hi: int) -> int:
    """The index of the first ID of `chunk` (ascending) from `lo` on that is not below `blob_id`."""
    while lo < hi:
        mid = (lo + hi) // 2
        if chunk[mid * ID_SIZE:(mid + 1) * ID_SIZE] < blob_id:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _ascending(blob_ids: Iterator[bytes]) -> Iterator[bytes]:
    """Passes IDs on, refusing any that is not above the one before (a delta from the agent
    is merged by order, so disorder would go unnoticed until the refs are written)."""
    last = b""
    for blob_id in blob_ids:
        if len(blob_id) != ID_SIZE or blob_id <= last:
            raise UsageError("a delta's blob IDs must be distinct, 32 bytes each, in ascending order")
        last = blob_id
        yield blob_id


def merged(streams: list[Iterator[bytes]]) -> Iterator[bytes]:
    """The distinct IDs of several ascending ID streams, ascending."""
    last = None
    for blob_id in heapq.merge(*streams):
        if blob_id != last:
            yield blob_id
            last = blob_id
