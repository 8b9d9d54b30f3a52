"""The blob codec: compress (zstd, skipped when it does not pay) and seal one piece of data.

Envelope: 1 byte codec, then nonce ‖ AES-256-GCM ciphertext ‖ tag. The associated data is
blob ID ‖ codec byte, so a blob cannot be moved under another ID or re-flagged unnoticed,
and every read checks both the tag and the keyed hash of the plaintext.
"""

from __future__ import annotations

import threading

import zstandard

from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError

CODEC_RAW = 0
CODEC_ZSTD = 1
ZSTD_LEVEL = 3
# Random data costs zstd time for nothing: a 64 KiB sample at level 1 decides for large blobs.
_PROBE_BYTES = 64 * 1024
_PROBE_RATIO = 0.97
_MIN_GAIN = 0.98

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "cctx"):
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.probe = zstandard.ZstdCompressor(level=1)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.cctx


def _compress(data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
    cctx = _compressor()
    if len(data) > 4 * _PROBE_BYTES:
        sample = data[: _PROBE_BYTES]
        if len(_local.probe.compress(sample)) > _PROBE_RATIO * len(sample):
            return CODEC_RAW, data
    packed = cctx.compress(data)
    if len(packed) < _MIN_GAIN * len(data):
        return CODEC_ZSTD, packed
    return CODEC_RAW, data


def encode(key: MasterKey, blob_id: bytes, data: bytes | memoryview) -> bytes:
    """The sealed envelope of one blob whose ID the caller computed with `key.blob_id`."""
    codec, payload = _compress(data)
    header = bytes((codec,))
    return header + key.seal(blob_id + header, payload)


def decode(key: MasterKey, blob_id: bytes, envelope: bytes | memoryview) -> bytes:
    """The verified plaintext of a blob; raises IntegrityError on any mismatch."""
    if len(envelope) < 1:
        raise IntegrityError("empty blob envelope")
    codec = envelope[0]
    payload = key.open(blob_id + bytes((codec,)), envelope[1:])
    if codec == CODEC_ZSTD:
        _compressor()
        try:
            data = _local.dctx.decompress(payload)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from None
    elif codec == CODEC_RAW:
        data = payload
    else:
        raise IntegrityError(f"unknown blob codec {codec}")
    if key.blob_id(data) != blob_id:
        raise IntegrityError("blob content does not match its ID")
    return data
