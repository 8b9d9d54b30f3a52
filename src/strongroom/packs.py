"""Packs: the files in which blobs travel and rest, several MiB each.

Layout: MAGIC, the blob envelopes back to back, a plaintext header (msgpack list of
[blob id, kind, offset, length]), the header's length (u32 LE) and END. The header holds
nothing secret (IDs are keyed hashes), so the vault can index, check and repack packs
without the key. A pack's name is the BLAKE3 hash of its bytes, checked by the vault.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3
import msgpack

from strongroom.errors import IntegrityError

MAGIC = b"SRPACK01"
END = b"SRPKEND1"
KIND_DATA = 0
KIND_TREE = 1
TARGET_SIZE = 16 * 1024 * 1024
_TRAILER = struct.Struct("<I")


@dataclass(frozen=True)
class BlobRef:
    """Where one blob lies inside a pack."""

    blob_id: bytes
    kind: int
    offset: int
    length: int


class PackBuilder:
    """Accumulates envelopes until the pack is big enough to upload."""

    def __init__(self) -> None:
        self.buffer = bytearray(MAGIC)
        self.refs: list[BlobRef] = []

    def add(self, blob_id: bytes, kind: int, envelope: bytes) -> None:
        self.refs.append(BlobRef(blob_id, kind, len(self.buffer), len(envelope)))
        self.buffer += envelope

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def full(self) -> bool:
        return len(self.buffer) >= TARGET_SIZE

    def finish(self) -> tuple[str, memoryview, list[BlobRef]]:
        """The pack's name, bytes and map; the builder must not be used afterwards."""
        header = msgpack.packb([[r.blob_id, r.kind, r.offset, r.length] for r in self.refs])
        self.buffer += header + _TRAILER.pack(len(header)) + END
        data = memoryview(self.buffer)  # no copy: 16 MiB less to hold per pack in flight
        return pack_name(data), data, self.refs


def pack_name(data: bytes | memoryview) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def read_header(data: bytes | memoryview) -> list[BlobRef]:
    """The map of a whole pack, checked for a sane structure (not for content)."""
    tail = len(END) + _TRAILER.size
    if len(data) < len(MAGIC) + tail or bytes(data[: len(MAGIC)]) != MAGIC or bytes(data[-len(END):]) != END:
        raise IntegrityError("not a Strongroom pack (bad magic)")
    (hlen,) = _TRAILER.unpack(data[-tail : -len(END)])
    start = len(data) - tail - hlen
    if start < len(MAGIC):
        raise IntegrityError("pack header length out of range")
    try:
        rows = msgpack.unpackb(bytes(data[start : start + hlen]))
        refs = [BlobRef(bytes(i), int(k), int(o), int(n)) for i, k, o, n in rows]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"pack header does not decode: {exc}") from None
    for r in refs:
        if r.offset < len(MAGIC) or r.offset + r.length > start or len(r.blob_id) != 32:
            raise IntegrityError("pack header points outside the pack")
    return refs
