"""Chunking: chunks cover the input exactly, are bounded, and resist shifts."""

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import chunker


def cut(data: bytes, seed: int = 7) -> list[bytes]:
    return [bytes(c) for c in chunker.chunks(chunker.Chunker(seed), io.BytesIO(data))]


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


class _ShortReads(io.RawIOBase):
    """A stream that hands out at most `step` bytes per read, as a pipe or a sparse file's
    extents may."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.step, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([0, 1, chunker.CUT_MIN_SIZE, chunker.BUFFER_SIZE + 1, 23 * 1024 * 1024 + 7]),
       st.sampled_from([4096, 100_000, 1 << 30]))
def test_cuts_are_pyfastcdcs_own(size: int, step: int) -> None:
    """The buffer kept from stream to stream cuts where pyfastcdc's stream reader does (the
    vault's blobs of earlier backups keep deduplicating), whatever the reads return."""
    data = os.urandom(size)
    own = chunker.Chunker(11)
    reference = [c.length for c in own.fastcdc.cut_stream(io.BytesIO(data))]
    for _again in range(2):  # the second stream reuses the first one's buffer
        assert [len(c) for c in chunker.chunks(own, _ShortReads(data, step))] == reference


def test_buffer_given_back_after_a_long_stream_serves_the_next() -> None:
    """After a stream of RELEASE_AFTER bytes the buffer's pages are dropped (they read back as
    zeros): the next stream's cuts are still the whole stream's."""
    long = os.urandom(chunker.RELEASE_AFTER + 3 * 1024 * 1024)
    short = os.urandom(9 * 1024 * 1024)
    own = chunker.Chunker(5)
    for data in (long, short, long):
        expected = [c.length for c in own.fastcdc.cut_stream(io.BytesIO(data))]
        pieces = [bytes(c) for c in chunker.chunks(own, io.BytesIO(data))]
        assert [len(p) for p in pieces] == expected and b"".join(pieces) == data


def test_a_non_blocking_stream_with_nothing_yet_is_not_its_end() -> None:
    """A raw read that would block answers None: cutting there would store a truncated stream."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"x" * 1000)
    try:
        with io.FileIO(r, closefd=True) as stream, pytest.raises(BlockingIOError):
            list(chunker.chunks(chunker.Chunker(3), stream))
    finally:
        os.close(w)
