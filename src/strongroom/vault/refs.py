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

MAGIC = b"SRREFS01"
ID_SIZE = 32
CHUNK_IDS = 32768  # IDs handled at a time: 1 MiB


def write_refs(chunks: Iterable[bytes], out: IO[bytes]) -> tuple[int, str]:
    """Writes IDs (given as byte strings of whole IDs, in ascending order) to `out`; returns
    their count and the BLAKE3 of their concatenation. Refuses unsorted or repeated IDs."""
    out.write(MAGIC)
    digest = blake3.blake3()
    count = 0
    last = b""
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z:
        for chunk in rechunk(chunks):
            for i in range(0, len(chunk), ID_SIZE):
                blob_id = chunk[i:i + ID_SIZE]
                if blob_id <= last:
                    raise UsageError("a point's refs must be distinct blob IDs in ascending order")
                last = blob_id
            z.write(chunk)
            digest.update(chunk)
            count += len(chunk) // ID_SIZE
    return count, digest.hexdigest()


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
    digest = blake3.blake3()
    seen = 0
    for chunk in chunks:
        digest.update(chunk)
        seen += len(chunk) // ID_SIZE
        yield chunk
    if seen != count or digest.hexdigest() != checksum:
        raise IntegrityError(f"{what} does not match its checksum")


def chunked(blob_ids: Iterable[bytes], ids_per_chunk: int = CHUNK_IDS) -> Iterator[bytes]:
    """IDs one by one, back into chunks of whole IDs."""
    pending: list[bytes] = []
    for blob_id in blob_ids:
        pending.append(blob_id)
        if len(pending) == ids_per_chunk:
            yield b"".join(pending)
            pending = []
    if pending:
        yield b"".join(pending)


def apply_delta(base: Iterator[bytes], removed: Iterator[bytes], added: Iterator[bytes]) -> Iterator[bytes]:
    """The ascending IDs of `base` without `removed`, with `added` (all three ascending): a
    point's refs made from its parent's, with work bounded by the change but for one pass."""
    def kept() -> Iterator[bytes]:
        gone = next(removed, None)
        for blob_id in base:
            while gone is not None and gone < blob_id:
                gone = next(removed, None)
            if blob_id != gone:
                yield blob_id
    return merged([kept(), added])


def merged(streams: list[Iterator[bytes]]) -> Iterator[bytes]:
    """The distinct IDs of several ascending ID streams, ascending."""
    last = None
    for blob_id in heapq.merge(*streams):
        if blob_id != last:
            yield blob_id
            last = blob_id
