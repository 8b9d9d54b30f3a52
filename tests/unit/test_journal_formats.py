"""The change journal's records and the refs delta: properties over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent import journal as jr
from strongroom.vault import refs as reflist

ids = st.lists(st.binary(min_size=32, max_size=32), max_size=60, unique=True).map(sorted)


@given(base=ids, removed=ids, added=ids)
def test_a_delta_applied_to_a_point_s_refs_is_the_set_difference_and_union(base, removed, added):
    made = list(reflist.apply_delta(iter(base), iter(removed), iter(added)))
    assert made == sorted((set(base) - set(removed)) | set(added))
    assert [b"".join(made[i:i + 7]) for i in range(0, len(made), 7)] == list(reflist.chunked(made, 7))


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
