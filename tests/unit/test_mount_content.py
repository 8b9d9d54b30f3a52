"""Tree format 2's per-blob lengths (`cl`): any byte range of a file, sparse or not, maps to
the right bytes of the right blobs, and reads only those blobs; old trees are refused."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import model
from strongroom.agent.mount_content import FileContent
from strongroom.errors import IntegrityError


class Blobs:
    """Blobs by ID, counting which were asked for (the mount's BlobSource does the fetching)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.by_id = {i.to_bytes(32, "big"): p for i, p in enumerate(pieces)}
        self.asked: set[bytes] = set()

    def get(self, blob_id: bytes, length: int) -> bytes:
        self.asked.add(blob_id)
        assert len(self.by_id[blob_id]) == length
        return self.by_id[blob_id]

    cached = get


@st.composite
def files(draw):
    """(entry, the file's bytes, the blobs): data cut into blobs, with holes if sparse."""
    sparse = draw(st.booleans())
    extents, content, at = [], bytearray(), 0
    for _ in range(draw(st.integers(0 if sparse else 1, 4))):
        hole = draw(st.integers(0, 3000)) if sparse else 0
        data = draw(st.binary(min_size=1, max_size=3000))
        at += hole
        content += bytes(hole) + data
        extents.append([at, len(data)])
        at += len(data)
    tail = draw(st.integers(0, 2000)) if sparse else 0
    content += bytes(tail)
    stream = b"".join(bytes(content[o:o + n]) for o, n in extents)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=6))) if len(stream) > 1 else []
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)]) if stream[a:b]]
    entry = {"n": b"f", "t": "f", "s": len(content), "c": [i.to_bytes(32, "big") for i in range(len(pieces))],
             "cl": [len(p) for p in pieces]}
    if sparse:
        entry["sp"] = extents
    return entry, bytes(content), pieces


@settings(max_examples=300, deadline=None)
@given(files(), st.integers(0, 20000), st.integers(0, 20000))
def test_any_range_reads_the_files_bytes(file, offset, size):
    entry, content, pieces = file
    blobs = Blobs(pieces)
    got = FileContent(entry).read(blobs, offset, size)  # type: ignore[arg-type]
    assert got == content[offset:offset + size]
    # Only the blobs that hold bytes of the range were asked for.
    needed = set()
    starts = [0]
    for p in pieces:
        starts.append(starts[-1] + len(p))
    for (ext_off, ext_len), data_off in zip(entry.get("sp", [[0, len(content)]]),
                                            _data_offsets(entry.get("sp", [[0, len(content)]]))):
        lo, hi = max(offset, ext_off), min(offset + size, ext_off + ext_len, len(content))
        for i in range(len(pieces)):
            if lo < hi and starts[i] < data_off + hi - ext_off and starts[i + 1] > data_off + lo - ext_off:
                needed.add(i.to_bytes(32, "big"))
    assert blobs.asked == needed


def _data_offsets(extents):
    out, at = [], 0
    for _o, n in extents:
        out.append(at)
        at += n
    return out


def test_lengths_that_do_not_fit_the_blobs_are_refused():
    with pytest.raises(IntegrityError, match="no valid length"):
        FileContent({"t": "f", "s": 3, "c": [b"\0" * 32], "cl": []})
    with pytest.raises(IntegrityError, match="no valid length"):
        FileContent({"t": "f", "s": 3, "c": [b"\0" * 32], "cl": [-1]})
    with pytest.raises(IntegrityError, match="do not add up"):
        FileContent({"t": "f", "s": 10, "c": [b"\0" * 32], "cl": [3], "sp": [[0, 2]]})


def test_trees_of_format_1_are_refused_with_one_line():
    old = msgpack.packb({"v": 1, "e": []}, use_bin_type=True)
    with pytest.raises(IntegrityError, match="a tree has format 1; this version of Strongroom reads format 2 only"):
        model.decode_tree(old)
    assert model.decode_tree(model.encode_tree([])) == []
