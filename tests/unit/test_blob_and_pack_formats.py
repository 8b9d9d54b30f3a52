"""The blob envelope, the pack layout and point refs: round trips, and every alteration is caught."""

import io
import mmap
import os
import struct
import time
import tracemalloc

import blake3
import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import blobs, model, packs
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, UsageError
from strongroom.vault import refs as reflist

KEY = MasterKey(bytes(range(64)))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300_000) | st.text(max_size=20_000).map(str.encode))
def test_blob_round_trip(data: bytes) -> None:
    blob_id = KEY.blob_id(data)
    assert blobs.decode(KEY, blob_id, blobs.encode(KEY, blob_id, data)) == data


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=4096), st.data())
def test_any_flipped_byte_is_detected(data: bytes, pick: st.DataObject) -> None:
    blob_id = KEY.blob_id(data)
    envelope = bytearray(blobs.encode(KEY, blob_id, data))
    i = pick.draw(st.integers(0, len(envelope) - 1))
    envelope[i] ^= pick.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        blobs.decode(KEY, blob_id, bytes(envelope))


def _decode_into(blob_id: bytes, envelope: bytes, size: int) -> bytes:
    out = bytearray(size)
    blobs.decode_into(KEY, blob_id, envelope, memoryview(out), bytearray())
    return bytes(out)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300_000) | st.text(max_size=20_000).map(str.encode))
def test_blob_round_trip_into_a_buffer(data: bytes) -> None:
    """decode_into: a raw blob decrypted straight into the buffer, a compressed one decompressed there."""
    blob_id = KEY.blob_id(data)
    assert _decode_into(blob_id, blobs.encode(KEY, blob_id, data), len(data)) == data


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([b"", b"text " * 3000]), st.binary(min_size=1, max_size=4096), st.data())
def test_any_flipped_byte_is_detected_into_a_buffer(head: bytes, tail: bytes, pick: st.DataObject) -> None:
    data = head + tail
    blob_id = KEY.blob_id(data)
    envelope = bytearray(blobs.encode(KEY, blob_id, data))
    i = pick.draw(st.integers(0, len(envelope) - 1))
    envelope[i] ^= pick.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        _decode_into(blob_id, bytes(envelope), len(data))


@pytest.mark.parametrize("data", [os.urandom(100_000), b"text " * 20_000], ids=["raw", "zstd"])
def test_a_blob_of_another_length_than_its_folder_lists_is_refused(data: bytes) -> None:
    blob_id = KEY.blob_id(data)
    envelope = blobs.encode(KEY, blob_id, data)
    for size in (len(data) - 1, len(data) + 1, 0):
        with pytest.raises(IntegrityError, match="lists"):
            _decode_into(blob_id, envelope, size)


@pytest.mark.parametrize("codec", [blobs.CODEC_RAW, blobs.CODEC_ZSTD])
def test_a_blob_sealed_under_another_id_is_refused_into_a_buffer(codec: int) -> None:
    """The tag holds (a key holder sealed it, under the ID as associated data), the content is
    not the ID's: the keyed hash refuses it."""
    data, other = b"a" * 100_000, b"b" * 100_000
    payload = zstandard.ZstdCompressor().compress(data) if codec == blobs.CODEC_ZSTD else data
    forged = bytes(blobs.seal_into(KEY, KEY.blob_id(other), codec, payload, bytearray()))
    with pytest.raises(IntegrityError, match="does not match its ID"):
        _decode_into(KEY.blob_id(other), forged, len(data))


@pytest.mark.parametrize("decode", [lambda i, e, n: blobs.decode(KEY, i, e), _decode_into], ids=["decode", "into"])
def test_an_unknown_codec_or_a_short_envelope_is_refused_by_name(decode) -> None:
    """A key holder's validly sealed blob under a codec this version does not know, and every
    envelope too short to hold a nonce and a tag: one clear refusal each, from both decoders."""
    data = b"a" * 1000
    blob_id = KEY.blob_id(data)
    unknown = bytes(blobs.seal_into(KEY, blob_id, 7, data, bytearray()))
    with pytest.raises(IntegrityError, match="unknown blob codec 7"):
        decode(blob_id, unknown, len(data))
    envelope = blobs.encode(KEY, blob_id, data)
    for size in range(blobs.max_envelope(0)):
        with pytest.raises(IntegrityError, match="too short"):
            decode(blob_id, envelope[:size], len(data))


def test_blob_cannot_be_moved_under_another_id() -> None:
    a, b = b"a" * 100, b"b" * 100
    envelope = blobs.encode(KEY, KEY.blob_id(a), a)
    with pytest.raises(IntegrityError):
        blobs.decode(KEY, KEY.blob_id(b), envelope)


def test_another_key_cannot_read() -> None:
    data = b"secret" * 100
    envelope = blobs.encode(KEY, KEY.blob_id(data), data)
    with pytest.raises(IntegrityError):
        blobs.decode(MasterKey(bytes(64)), KEY.blob_id(data), envelope)


def test_compressible_data_shrinks_and_random_data_is_stored_raw() -> None:
    text = b"the same log line again\n" * 40_000
    noise = os.urandom(len(text))
    assert len(blobs.encode(KEY, KEY.blob_id(text), text)) < len(text) // 10
    assert len(blobs.encode(KEY, KEY.blob_id(noise), noise)) <= len(noise) + 64


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=2000), st.sampled_from([packs.KIND_DATA, packs.KIND_TREE])),
                max_size=20))
def test_pack_round_trip(items: list[tuple[bytes, int]]) -> None:
    builder = packs.PackBuilder()
    expected = {}
    for data, kind in items:
        blob_id = KEY.blob_id(data)
        envelope = blobs.encode(KEY, blob_id, data)
        builder.add(blob_id, kind, envelope)
        expected[blob_id] = data
    name, raw, refs = builder.finish()
    assert name == packs.pack_name(raw)
    assert packs.read_header(raw) == refs
    for ref in refs:
        assert blobs.decode(KEY, ref.blob_id, raw[ref.offset:ref.offset + ref.length]) == expected[ref.blob_id]


@settings(max_examples=6, deadline=None)
@given(st.integers(packs.MIN_ENVELOPE, 400), st.integers(packs.MIN_ENVELOPE, 4 * 1024 * 1024 + 64))
def test_a_pack_stops_short_of_its_fixed_buffer(small: int, last: int) -> None:
    """The packer fills fixed-size anonymous buffers: a pack of the tiniest blobs (whose header
    is most of a megabyte per 20,000) closes before a blob of up to the largest chunk would take
    it, header included, past the buffer; an empty pack takes that blob."""
    builder = packs.PackBuilder(mmap.mmap(-1, packs.BUFFER_SIZE))  # type: ignore[arg-type]
    n = 0
    while builder.fits(small):
        builder.add(n.to_bytes(32, "big"), packs.KIND_DATA, bytes(small))
        n += 1
    if builder.fits(last):
        builder.add(n.to_bytes(32, "big"), packs.KIND_DATA, bytes(last))
        n += 1
    assert isinstance(builder.buffer, mmap.mmap), "the buffer had to grow: the next pack would not reuse it"
    _name, data, refs = builder.finish()
    assert len(data) <= packs.BUFFER_SIZE and len(refs) == n <= packs.BLOBS_PER_PACK
    assert packs.read_header(data) == refs
    assert packs.PackBuilder(mmap.mmap(-1, packs.BUFFER_SIZE)).fits(last)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_not_a_pack(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        packs.read_header(data)


def test_truncated_pack_is_refused() -> None:
    builder = packs.PackBuilder()
    builder.add(KEY.blob_id(b"x"), packs.KIND_DATA, blobs.encode(KEY, KEY.blob_id(b"x"), b"x"))
    _name, raw, _refs = builder.finish()
    with pytest.raises(IntegrityError):
        packs.read_header(raw[:-3])


@given(st.sets(st.binary(min_size=32, max_size=32), max_size=300), st.integers(1, 97))
def test_point_refs_round_trip(ids: set[bytes], piece: int) -> None:
    """Refs written from pieces cut anywhere read back as the same sorted IDs, checksum and all."""
    ordered = b"".join(sorted(ids))
    out = io.BytesIO()
    count, checksum = reflist.write_refs((ordered[i:i + piece] for i in range(0, len(ordered), piece)), out)
    out.seek(0)
    back = b"".join(reflist.verify_refs(reflist.read_refs(out, "refs"), count, checksum, "refs"))
    assert back == ordered and count == len(ids)


def test_refs_refuse_unsorted_or_repeated_ids() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    for bad in ([b, a], [a, a]):
        with pytest.raises(UsageError, match="ascending"):
            reflist.write_refs([b"".join(bad)], io.BytesIO())


def test_damaged_refs_are_detected() -> None:
    out = io.BytesIO()
    count, checksum = reflist.write_refs([bytes([i]) * 32 for i in range(1, 200)], out)
    damaged = io.BytesIO(out.getvalue()[:-9] + bytes(9))
    with pytest.raises(IntegrityError):
        b"".join(reflist.verify_refs(reflist.read_refs(damaged, "refs"), count, checksum, "refs"))
    out.seek(0)
    with pytest.raises(IntegrityError, match="checksum"):
        b"".join(reflist.verify_refs(reflist.read_refs(out, "refs"), count + 1, checksum, "refs"))


def _pack_with_header(body: bytes, rows: list) -> bytes:
    header = msgpack.packb(rows)
    return packs.MAGIC + body + header + struct.pack("<I", len(header)) + packs.END


def test_a_header_that_lies_about_the_pack_is_refused() -> None:
    """A hostile pack cannot make the vault index more than it holds (issue 9: 300 k rows
    in a 10.9 MiB pack held the catalog lock 6.6 s)."""
    envelope = blobs.encode(KEY, KEY.blob_id(b"x"), b"x")
    start = len(packs.MAGIC)
    ok = [[KEY.blob_id(b"x"), packs.KIND_DATA, start, len(envelope)]]
    assert len(packs.read_header(_pack_with_header(envelope, ok))) == 1
    overlapping = ok + [[bytes(32), packs.KIND_DATA, start, len(envelope)]]
    too_short = [[KEY.blob_id(b"x"), packs.KIND_DATA, start, 3]]
    bad_kind = [[KEY.blob_id(b"x"), 7, start, len(envelope)]]
    # rows of another shape or type: each checked column by column, none let through
    three_fields = [[KEY.blob_id(b"x"), packs.KIND_DATA, start]]
    int_id = [[32, packs.KIND_DATA, start, len(envelope)]]
    list_kind = [[KEY.blob_id(b"x"), [packs.KIND_DATA], start, len(envelope)]]
    map_kind = [[KEY.blob_id(b"x"), {}, start, len(envelope)]]
    float_offset = [[KEY.blob_id(b"x"), packs.KIND_DATA, float(start), len(envelope)]]
    for rows in (overlapping, too_short, bad_kind, three_fields, int_id, list_kind, map_kind, float_offset):
        with pytest.raises(IntegrityError):
            packs.read_header(_pack_with_header(envelope, rows))
    # 300,000 rows over a few KiB of envelopes: refused by count, before any row is checked
    many = [[bytes(32), 0, start, 29]] * 300_000
    with pytest.raises(IntegrityError, match="max_array_len|more blobs"):
        packs.read_header(_pack_with_header(bytes(4096), many))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode), max_size=12))
def test_batch_compression_gives_the_same_blobs(items: list[bytes]) -> None:
    for data, (codec, payload) in zip(items, blobs.compress_many(items), strict=True):
        blob_id = KEY.blob_id(data)
        envelope = bytes(blobs.seal_into(KEY, blob_id, codec, payload, bytearray()))
        assert blobs.decode(KEY, blob_id, envelope) == data
        assert codec == blobs.compress(data)[0]


# --- decompression bombs: a key holder seals a small blob that expands without bound -----------

_MiB = 1024 * 1024


def _sealed_bomb(size: int, declare_size: bool = True) -> tuple[bytes, bytes]:
    """(blob id, sealed envelope) of `size` zero bytes compressed with zstd: about 16 KiB
    for 512 MiB. Built a MiB at a time, so the test itself never holds the expanded data."""
    zeros = bytes(_MiB)
    frame = zstandard.ZstdCompressor(level=3, write_content_size=declare_size).compressobj(
        size=size if declare_size else -1)
    hasher = blake3.blake3(key=KEY.id_key)
    parts = []
    for _ in range(size // _MiB):
        parts.append(frame.compress(zeros))
        hasher.update(zeros)
    payload = b"".join(parts) + frame.flush()
    blob_id = hasher.digest()
    return blob_id, bytes(blobs.seal_into(KEY, blob_id, blobs.CODEC_ZSTD, payload, bytearray()))


def _decode_measured(blob_id: bytes, envelope: bytes, limit: int) -> tuple[str, int, float]:
    """The error decoding raised, the peak of Python allocations meanwhile, and the seconds."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(IntegrityError) as refused:
            blobs.decode(KEY, blob_id, envelope, limit)
        return str(refused.value), tracemalloc.get_traced_memory()[1], time.monotonic() - started
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("declare_size", [True, False], ids=["size-in-header", "no-size-in-header"])
def test_a_zstd_bomb_is_refused_without_expanding_it(declare_size: bool) -> None:
    blob_id, envelope = _sealed_bomb(512 * _MiB, declare_size)
    assert len(envelope) < 64 * 1024  # the bomb: ~16 KiB that expands to 512 MiB
    message, peak, seconds = _decode_measured(blob_id, envelope, blobs.MAX_DATA_BYTES)
    assert f"more than the {blobs.MAX_DATA_BYTES}" in message
    assert peak < blobs.MAX_DATA_BYTES + 2 * _MiB and seconds < 2
    message, peak, seconds = _decode_measured(blob_id, envelope, blobs.MAX_TREE_BYTES)
    assert f"more than the {blobs.MAX_TREE_BYTES}" in message
    assert peak < blobs.MAX_TREE_BYTES + 2 * _MiB


@pytest.mark.parametrize("declare_size", [True, False], ids=["size-in-header", "no-size-in-header"])
def test_a_zstd_bomb_is_refused_into_a_buffer_without_expanding_it(declare_size: bool) -> None:
    blob_id, envelope = _sealed_bomb(512 * _MiB, declare_size)
    out = memoryview(bytearray(blobs.MAX_DATA_BYTES))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(IntegrityError, match="lists"):
            blobs.decode_into(KEY, blob_id, envelope, out, bytearray())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _MiB and time.monotonic() - started < 2


def test_a_frame_that_understates_its_size_cannot_write_past_it() -> None:
    # The frame header claims 4 KiB; the frame holds 64 MiB. zstd stops at the claim.
    blob_id, envelope = _sealed_bomb(64 * _MiB)
    payload = bytearray(KEY.open(blob_id + bytes((blobs.CODEC_ZSTD,)), envelope[1:]))
    descriptor = payload[4]
    assert descriptor >> 6 == 2 and not descriptor & 0x20  # a 4-byte size after a window byte
    payload[6:10] = (4096).to_bytes(4, "little")
    forged = bytes(blobs.seal_into(KEY, blob_id, blobs.CODEC_ZSTD, bytes(payload), bytearray()))
    message, peak, _seconds = _decode_measured(blob_id, forged, blobs.MAX_DATA_BYTES)
    assert "does not decompress" in message and peak < _MiB


def test_a_tree_may_be_larger_than_a_chunk_but_not_a_data_blob() -> None:
    tree = model.encode_tree([{"n": b"%08d" % i, "t": "f", "m": 0o644, "mt": i} for i in range(300_000)])
    assert blobs.MAX_DATA_BYTES < len(tree) < blobs.MAX_TREE_BYTES
    blob_id = KEY.blob_id(tree)
    envelope = blobs.encode(KEY, blob_id, tree)
    assert blobs.decode(KEY, blob_id, envelope, blobs.MAX_TREE_BYTES) == tree
    with pytest.raises(IntegrityError, match="more than the"):
        blobs.decode(KEY, blob_id, envelope)
