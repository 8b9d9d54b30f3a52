"""Chunking: chunks cover the input exactly, are bounded, and resist shifts."""

import io
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import chunker


def cut(data: bytes, seed: int = 7) -> list[bytes]:
    return [bytes(c) for c in chunker.chunks(chunker.make_chunker(seed), io.BytesIO(data))]


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=64 * 1024), st.integers(1, 2**62))
def test_chunks_concatenate_to_the_input(data: bytes, seed: int) -> None:
    assert b"".join(cut(data, seed)) == data


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_chunk_sizes_stay_within_bounds(salt: int) -> None:
    data = os.urandom(12 * 1024 * 1024)
    pieces = cut(data, salt + 1)
    assert all(len(p) <= chunker.MAX_SIZE for p in pieces)
    assert all(len(p) >= chunker.CUT_MIN_SIZE for p in pieces[:-1])


def test_insertion_changes_only_nearby_chunks() -> None:
    data = os.urandom(16 * 1024 * 1024)
    before = set(cut(data))
    edited = data[:5_000_000] + b"inserted bytes" + data[5_000_000:]
    after = cut(edited)
    new = [c for c in after if c not in before]
    assert sum(map(len, new)) <= 3 * chunker.MAX_SIZE
    assert len(new) <= 3


def test_seed_changes_boundaries() -> None:
    data = os.urandom(8 * 1024 * 1024)
    assert [len(c) for c in cut(data, 1)] != [len(c) for c in cut(data, 2)]
