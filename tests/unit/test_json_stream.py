"""`ls --json` streams its array row by row: the text must be what printing the whole list gives."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.cli.common import emit_json_list

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                     max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.lists(_json, max_size=5))
def test_streamed_array_prints_as_the_whole_list(rows: list) -> None:
    @click.command()
    def emit() -> None:
        emit_json_list(iter(rows))

    out = CliRunner().invoke(emit).output
    assert out == json.dumps(rows, indent=2) + "\n"
    assert json.loads(out) == rows
