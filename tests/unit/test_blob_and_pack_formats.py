"""The blob envelope and the pack layout: round trips, and every alteration is caught."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import blobs, packs
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError
from strongroom.vault.catalog import decode_refs, encode_refs

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
    import os
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


@given(st.sets(st.integers(1, 2**40)))
def test_point_refs_round_trip(ids: set[int]) -> None:
    assert decode_refs(encode_refs(ids)) == sorted(ids)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode), max_size=12))
def test_batch_compression_gives_the_same_blobs(items: list[bytes]) -> None:
    for data, (codec, payload) in zip(items, blobs.compress_many(items), strict=True):
        blob_id = KEY.blob_id(data)
        envelope = bytes(blobs.seal_into(KEY, blob_id, codec, payload, bytearray()))
        assert blobs.decode(KEY, blob_id, envelope) == data
        assert codec == blobs.compress(data)[0]
