"""The change journal's records and the refs delta: properties over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent import journal as jr
from strongroom.errors import UsageError
from strongroom.vault import refs as reflist

ids = st.lists(st.binary(min_size=32, max_size=32), max_size=60, unique=True).map(sorted)


@given(base=ids, others=ids, added=ids, data=st.data())
def test_a_delta_applied_to_a_point_s_refs_is_the_set_difference_and_union(base, others, added, data):
    # Removed IDs mostly from the base (as an agent sends them), added ones partly already in it,
    # the base in chunks of any size: whole chunks pass untouched, the others ID by ID.
    removed = sorted(set(data.draw(st.lists(st.sampled_from(base), unique=True)) if base else []) | set(others[:3]))
    added = sorted(set(added) | set(data.draw(st.lists(st.sampled_from(base), max_size=3)) if base else []))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(base)), max_size=6)))
    chunks = [b"".join(base[i:j]) for i, j in zip([0, *cuts], [*cuts, len(base)])]
    made = b"".join(reflist.apply_delta(chunks, iter(removed), iter(added)))
    assert made == b"".join(sorted((set(base) - set(removed)) | set(added)))


@given(base=ids, added=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=9, unique=True))
def test_a_delta_out_of_order_is_refused(base, added):
    added.sort(reverse=True)
    with pytest.raises(UsageError, match="ascending order"):
        b"".join(reflist.apply_delta([b"".join(base)], iter([]), iter(added)))


docs = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=40), st.none(),
                                                       st.lists(st.binary(max_size=20), max_size=5)), max_size=6)


@given(doc=docs)
def test_a_record_reads_back_as_written(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("rec") / "journal"
    jr.write_record(path, doc)
    assert jr.read_record(path) == doc


@given(doc=docs, cut=st.integers(min_value=0), flip=st.integers(min_value=0))
def test_a_truncated_or_altered_record_is_damaged_never_misread(tmp_path_factory, doc, cut, flip):
    path = tmp_path_factory.mktemp("rec") / "journal"
    jr.write_record(path, doc)
    data = path.read_bytes()
    path.write_bytes(data[:cut % len(data)])
    with pytest.raises(jr.Damaged):
        jr.read_record(path)
    at = flip % len(data)
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:])
    with pytest.raises(jr.Damaged):
        jr.read_record(path)


def test_no_record_is_none(tmp_path):
    assert jr.read_record(tmp_path / "absent") is None
