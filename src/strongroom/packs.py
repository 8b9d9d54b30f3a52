"""Packs: the files in which blobs travel and rest, several MiB each.

Layout: MAGIC, the blob envelopes back to back, a plaintext header (msgpack list of
[blob id, kind, offset, length]), the header's length (u32 LE) and END. The header holds
nothing secret (IDs are keyed hashes), so the vault can index, check and repack packs
without the key. A pack's name is the BLAKE3 hash of its bytes, checked by the vault.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from itertools import starmap
from typing import NamedTuple

import blake3
import msgpack

from strongroom.errors import IntegrityError

MAGIC = b"SRPACK01"
END = b"SRPKEND1"
KIND_DATA = 0
KIND_TREE = 1
# 9.5 MiB: "several MiB" for object stores, while the buffers in flight (see agent/packer.py)
# stay within the agent's memory budget. A pack is at most this, its header included (see
# `PackBuilder.fits`), unless one blob alone is larger (a tree of a huge directory). Measured
# (bench/README.md, branch servedpipe): packs that stop short at 8 MiB were 23-27 % more packs
# than the ~9 MB average of packs that closed past 8 MiB, ~0.3 CPU-s more per 800 MiB
# (agent and server: a request, an index record, new files each); at 9.5 MiB as many packs as
# before and that CPU back, for more of the agent's peak (three buffers' pages: +3 MiB on 800
# MiB, 124 -> 131 MiB in a first backup of the full bench corpus, restic's 135-138).
TARGET_SIZE = 9728 * 1024
# The packer's fixed data-pack buffer. Packs used to close only once past the target, so a
# buffer had room for one more blob of the largest chunk (12.5 MiB) and over a backup its pages
# filled to ~12 MiB; packs that stop short of the target keep each buffer's pages within 9.5
# MiB (a third buffer for little more than the price of two).
BUFFER_SIZE = TARGET_SIZE
_TRAILER = struct.Struct("<I")
# The most a header row takes: fixarray(4) of bin8 ID (2 + 32), kind, offset and length
# (uint32 each at most 5 bytes); plus the array's own header and the trailer, once.
_ROW_MAX = 1 + 34 + 1 + 5 + 5
_HEADER_FIXED = 5 + _TRAILER.size + len(END)
# A pack closes at this many blobs, whatever its size: its map is held whole in memory by
# the packer, the vault's indexing and every reader of the header, so a pack of ~60,000
# tiny files' blobs made a first backup of 100,000 such files peak at 175 MiB (141 with this
# cap, 139 with 4,096, 147 with 16,384). Packs of files of a few KiB are not affected
# (~1,000 blobs fill 9.5 MiB).
BLOBS_PER_PACK = 8192
# The smallest envelope (codec byte, nonce, tag) and the most blobs a pack may list: a
# full buffer of the smallest blobs, and never more than its bytes allow. A hostile header
# of millions of rows would otherwise cost the vault minutes of indexing under its lock.
MIN_ENVELOPE = 1 + 12 + 16
MAX_BLOBS = BUFFER_SIZE // MIN_ENVELOPE + 1


class BlobRef(NamedTuple):
    """Where one blob lies inside a pack: a tuple, made once per blob by the packer and again
    by the vault from the header (a frozen dataclass cost ~1 µs more each, 20,000 a backup
    of the bench's small files), and a row of the vault's index as it is."""

    blob_id: bytes
    kind: int
    offset: int
    length: int


class PackBuilder:
    """Accumulates envelopes until the pack is big enough to upload.

    It writes into a buffer it is given, sized for a full pack (`BUFFER_SIZE`), so that
    buffers can be recycled from pack to pack: no allocation, no page faults, and memory
    that stays flat however long the backup runs.
    """

    def __init__(self, buffer: bytearray | None = None) -> None:
        self.buffer = buffer if buffer is not None else bytearray(BUFFER_SIZE)
        self.buffer[: len(MAGIC)] = MAGIC
        self.size = len(MAGIC)
        self.refs: list[BlobRef] = []

    def _write(self, data: bytes | memoryview) -> None:
        end = self.size + len(data)
        self._room(end)
        self.buffer[self.size:end] = data
        self.size = end

    def _room(self, end: int) -> None:
        """A tree blob larger than any chunk: the buffer grows, once (a fixed-size buffer, the
        packer's anonymous memory, is copied into a bytearray that can)."""
        if end <= len(self.buffer):
            return
        if isinstance(self.buffer, bytearray):
            self.buffer.extend(bytes(end - len(self.buffer)))
            return
        grown = bytearray(end)
        grown[: self.size] = self.buffer[: self.size]
        self.buffer = grown

    def add(self, blob_id: bytes, kind: int, envelope: bytes | memoryview) -> None:
        self.refs.append(BlobRef(blob_id, kind, self.size, len(envelope)))
        self._write(envelope)

    def add_written(self, blob_id: bytes, kind: int, length: int, write: Callable[[memoryview], None]) -> None:
        """Like `add` for an envelope of `length` bytes that `write` puts straight into the
        buffer (the packer seals there: one copy of each blob less)."""
        end = self.size + length
        self._room(end)
        with memoryview(self.buffer) as view:  # released before any later extend
            write(view[self.size:end])
        self.refs.append(BlobRef(blob_id, kind, self.size, length))
        self.size = end

    def __len__(self) -> int:
        return len(self.refs)

    def fits(self, length: int) -> bool:
        """Whether one more blob of `length` bytes keeps the pack within BLOBS_PER_PACK blobs and
        TARGET_SIZE bytes, its header included; an empty pack takes any blob."""
        count = len(self.refs) + 1
        return count == 1 or (count <= BLOBS_PER_PACK
                              and self.size + length + _HEADER_FIXED + _ROW_MAX * count <= TARGET_SIZE)

    def finish(self) -> tuple[str, memoryview, list[BlobRef]]:
        """The pack's name, bytes (a view of the buffer) and map; no more adds afterwards."""
        header = msgpack.packb(self.refs)  # each ref a tuple: an array of its four fields
        self._write(header + _TRAILER.pack(len(header)) + END)
        data = memoryview(self.buffer)[: self.size]
        return pack_name(data), data, self.refs


def pack_name(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def read_header(data: bytes | memoryview) -> list[BlobRef]:
    """The map of a whole pack, checked for a sane structure (not for content)."""
    tail = len(END) + _TRAILER.size
    if len(data) < len(MAGIC) + tail or bytes(data[: len(MAGIC)]) != MAGIC or bytes(data[-len(END):]) != END:
        raise IntegrityError("not a Strongroom pack (bad magic)")
    (hlen,) = _TRAILER.unpack(data[-tail : -len(END)])
    start = len(data) - tail - hlen
    if start < len(MAGIC):
        raise IntegrityError("pack header length out of range")
    most = min(MAX_BLOBS, (start - len(MAGIC)) // MIN_ENVELOPE)
    try:
        rows = msgpack.unpackb(bytes(data[start : start + hlen]), max_array_len=max(most, 4), max_bin_len=32,
                               max_map_len=0, max_str_len=0, max_ext_len=0, use_list=False)
        if not isinstance(rows, tuple) or len(rows) > most:
            raise ValueError(f"lists more blobs than {most}")
        refs = list(starmap(BlobRef, rows))  # a row of other than four fields: TypeError
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"pack header does not decode: {exc}") from None
    if refs:
        _check_rows(refs, start)
    return refs


def _check_rows(refs: list[BlobRef], start: int) -> None:
    """In order, apart, inside the pack, each a possible envelope of a known kind: a map that
    lies about the pack cannot make the vault index more than the pack holds. Column by column
    in C-level passes (map, set, all), not a Python loop per row: with the decoding and the
    refs, 1.9 -> 0.7-1.1 µs a blob."""
    ids, kinds, offsets, lengths = zip(*refs)
    ends = list(map(operator.add, offsets, lengths)) if {*map(type, offsets), *map(type, lengths)} == {int} else []
    if (not ends or set(map(type, ids)) != {bytes} or set(map(len, ids)) != {32} or min(lengths) < MIN_ENVELOPE
            or ends[-1] > start or not all(map(operator.le, [len(MAGIC), *ends[:-1]], offsets))):
        raise IntegrityError("pack header points outside the pack or overlaps itself")
    if {*map(type, kinds)} != {int} or not set(kinds) <= {KIND_DATA, KIND_TREE}:
        raise IntegrityError("pack header names an unknown kind of blob")
