"""The joined-ID walk (vault/idsql.py) against a real SQLite: every ID once, in order, and none for none."""

import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from strongroom.vault.idsql import EACH_ID, ID_AT, id_params

_IDS = st.lists(st.binary(min_size=32, max_size=32), max_size=40)


@given(_IDS)
def test_the_walk_yields_each_id_in_order_and_nothing_for_no_ids(ids: list[bytes]) -> None:
    db = sqlite3.connect(":memory:")
    assert [row[0] for row in db.execute(EACH_ID + f"SELECT {ID_AT} FROM pos", id_params(ids))] == ids
    assert [row[0] for row in db.execute(EACH_ID + f"SELECT {ID_AT} FROM pos", id_params(b"".join(ids)))] == ids
