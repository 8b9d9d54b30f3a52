"""The blob codec: compress (zstd, skipped when it does not pay) and seal one piece of data.

Envelope: 1 byte codec, then nonce ‖ AES-256-GCM ciphertext ‖ tag. The associated data is
blob ID ‖ codec byte, so a blob cannot be moved under another ID or re-flagged unnoticed,
and every read checks both the tag and the keyed hash of the plaintext.

Decompression is bounded: a data blob holds at most one chunk (`chunker.MAX_SIZE`), a tree
blob at most `MAX_TREE_BYTES`. Whoever holds a machine's key (its owner, when another machine
restores from it) could otherwise seal a 16 KiB blob that expands to gigabytes.
"""

from __future__ import annotations

import threading
from typing import Any

import zstandard

from strongroom import chunker
from strongroom.crypto import MasterKey, sealed_size
from strongroom.errors import IntegrityError

CODEC_RAW = 0
CODEC_ZSTD = 1
# Levels per class of blob, measured on the bench corpus (zstd 1.5.7, this 2-core machine):
# - small files and trees (at most chunker.MIN_SIZE): level 3. Level 4 packs 8 KiB of text
#   1.3 % smaller but at half the speed (122 against 227 MB/s), level 6 4 % smaller at a
#   quarter; level 1 and 2 are no faster on such inputs and pack worse.
# - chunks of large files (~2 MiB): level 4, 3 % smaller than level 3 on the bench's logs
#   (ratio 0.184 against 0.190, 120 MiB of chunks) for 11 % more time (best of five: 267
#   against 300 MB/s): on the full corpus ~4.5 MiB for ~0.3 CPU-s, which keeps the vault
#   below Borg's size (1214.0 against 1215.7-1221.1 MiB). Level 5 gains 2 % more at 60 % of
#   the speed; level 1 loses 40 % of the gain for 10 % of speed.
ZSTD_LEVEL = 3
ZSTD_LEVEL_LARGE = 4
# Random data costs zstd time for nothing: a 64 KiB sample at level 1 decides for large blobs.
_PROBE_BYTES = 64 * 1024
_PROBE_RATIO = 0.97
_MIN_GAIN = 0.98

# The largest plaintext of each kind of blob. Data blobs are chunks (a small file is one
# chunk of at most chunker.MIN_SIZE + 1 bytes). A tree lists one directory: 256 MiB is about
# a million entries, and a backup refuses a directory whose tree would be larger.
MAX_DATA_BYTES = chunker.MAX_SIZE
MAX_TREE_BYTES = 256 * 1024 * 1024

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "cctx"):
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.large = zstandard.ZstdCompressor(level=ZSTD_LEVEL_LARGE)
        _local.probe = zstandard.ZstdCompressor(level=1)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.cctx


def compress(data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
    cctx = _compressor()
    if len(data) > 4 * _PROBE_BYTES:
        sample = data[: _PROBE_BYTES]
        if len(_local.probe.compress(sample)) > _PROBE_RATIO * len(sample):
            return CODEC_RAW, data
        if len(data) > chunker.MIN_SIZE:
            cctx = _local.large
    return _choose(data, cctx.compress(data))


def _choose(data: bytes | memoryview, packed: Any) -> tuple[int, Any]:
    if len(packed) < _MIN_GAIN * len(data):
        return CODEC_ZSTD, packed
    return CODEC_RAW, data


def compress_many(items: list[bytes]) -> list[tuple[int, Any]]:
    """(codec, payload) for many small blobs, compressed in one call that releases the GIL.

    Per-blob calls each hand the GIL back and forth with the thread walking the tree,
    which cost that thread more than the compression itself (measured on 50,000 files).
    """
    if not items or not all(items):
        return [compress(d) for d in items]
    packed = _compressor().multi_compress_to_buffer(items, threads=1)
    return [_choose(d, packed[i]) for i, d in enumerate(items)]


def max_envelope(data_len: int) -> int:
    return 1 + sealed_size(data_len)


def encode_into(key: MasterKey, blob_id: bytes, data: bytes | memoryview, out: bytearray) -> memoryview:
    """The sealed envelope of one blob (ID from `key.blob_id`), written into `out`.

    Sealing into a buffer the caller reuses spares a fresh MiB-sized allocation per chunk,
    which otherwise shows as page faults and as memory held by each thread's malloc arena.
    """
    return seal_into(key, blob_id, *compress(data), out)


def seal_into(key: MasterKey, blob_id: bytes, codec: int, payload: Any, out: bytearray) -> memoryview:
    """The envelope of an already compressed (or raw) payload, written into `out`."""
    size = max_envelope(len(payload))
    if len(out) < size:
        out.extend(bytes(size - len(out)))
    view = memoryview(out)[:size]
    seal_to(key, blob_id, codec, payload, view)
    return view


def seal_to(key: MasterKey, blob_id: bytes, codec: int, payload: Any, view: memoryview) -> None:
    """Writes the envelope of a payload into `view`, which is `max_envelope(len(payload))` long
    (the packer seals straight into its pack buffer: no copy, no buffer per thread)."""
    view[0] = codec
    key.seal_into(blob_id + bytes((codec,)), payload, view[1:])


def encode(key: MasterKey, blob_id: bytes, data: bytes | memoryview) -> bytes:
    """The sealed envelope of one blob, as a new bytes object."""
    return bytes(encode_into(key, blob_id, data, bytearray()))


def decode(key: MasterKey, blob_id: bytes, envelope: bytes | bytearray | memoryview,
           limit: int = MAX_DATA_BYTES) -> bytes:
    """The verified plaintext of a blob of at most `limit` bytes (MAX_DATA_BYTES or
    MAX_TREE_BYTES); raises IntegrityError on any mismatch."""
    codec, aad, sealed = _split(blob_id, envelope)
    payload = key.open(aad, sealed)
    data = _decompress(payload, limit) if codec == CODEC_ZSTD else payload
    if len(data) > limit:
        raise IntegrityError(f"blob holds {len(data)} bytes, more than the {limit} a blob of its kind may hold")
    _check_id(key, blob_id, data)
    return data


def decode_into(key: MasterKey, blob_id: bytes, envelope: bytes | memoryview, out: memoryview,
                scratch: bytearray) -> None:
    """`decode` of a data blob whose plaintext is `len(out)` bytes (as its tree lists) straight
    into `out`: a raw blob is decrypted there, a compressed one decrypted into `scratch` (a
    buffer the caller reuses, grown as needed) and decompressed there. The tag is checked
    before anything is decompressed and the keyed hash after; on an IntegrityError `out` holds
    unverified bytes, which the caller drops."""
    codec, aad, sealed = _split(blob_id, envelope)
    opened = len(envelope) - max_envelope(0)  # the payload's length
    if codec == CODEC_RAW:
        if opened != len(out):
            raise IntegrityError(f"blob holds {opened} bytes, its folder lists {len(out)}")
        key.open_into(aad, sealed, out)
    else:
        if opened > MAX_DATA_BYTES:  # never stored so: zstd must save 2 % (_MIN_GAIN)
            raise IntegrityError(f"compressed blob of {opened} bytes, more than a chunk")
        if len(scratch) < opened:
            scratch.extend(bytes(opened - len(scratch)))
        payload = memoryview(scratch)[:opened]
        key.open_into(aad, sealed, payload)
        _decompress_into(payload, out)
    _check_id(key, blob_id, out)


def _split(blob_id: bytes, envelope: bytes | bytearray | memoryview) -> tuple[int, bytes, memoryview]:
    """An envelope's codec (one this version knows), the associated data its seal was made
    with, and the sealed rest as a view (slicing bytes would copy up to a whole chunk just to
    skip a byte)."""
    if len(envelope) < max_envelope(0):
        raise IntegrityError("blob envelope too short")
    codec = envelope[0]
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise IntegrityError(f"unknown blob codec {codec}")
    return codec, blob_id + bytes((codec,)), memoryview(envelope)[1:]


def _check_id(key: MasterKey, blob_id: bytes, data: bytes | memoryview) -> None:
    if key.blob_id(data) != blob_id:
        raise IntegrityError("blob content does not match its ID")


def _decompress_into(payload: memoryview, out: memoryview) -> None:
    """Decompresses one frame of exactly `len(out)` bytes into `out` (zstd's single pass: the
    whole frame is in `payload` and its declared size fits `out`); more or less is refused."""
    _compressor()
    try:
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, len(out)):
            raise IntegrityError(f"blob would decompress to {declared} bytes, its folder lists {len(out)}")
        with _local.dctx.stream_reader(payload) as reader:
            if reader.readinto(out) != len(out) or reader.read(1):
                raise IntegrityError(f"blob does not decompress to the {len(out)} bytes its folder lists")
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"blob does not decompress: {exc}") from None


def _decompress(payload: bytes, limit: int) -> bytes:
    _compressor()
    try:
        declared = zstandard.frame_content_size(payload)
        if declared > limit:
            raise IntegrityError(f"blob would decompress to {declared} bytes, more than the {limit} "
                                 "a blob of its kind may hold")
        if declared >= 0:
            # zstd writes into a buffer of the declared size and fails if the frame holds more.
            return _local.dctx.decompress(payload)
        # The frame header need not carry a size (a streaming compressor leaves it out): read
        # one byte past the limit at most, so a bomb costs no more than an honest blob.
        with _local.dctx.stream_reader(payload) as reader:
            data = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"blob does not decompress: {exc}") from None
    if len(data) > limit:
        raise IntegrityError(f"blob decompresses to more than the {limit} bytes a blob of its kind may hold")
    return data
