"""The list formats of the selection options (agent/selection.py), as properties: pattern
files and path lists give back exactly what was written around comments and blank lines;
sizes use binary units; tags are checked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.agent.selection import SelectionRules, parse_size, read_paths, read_patterns
from strongroom.cli.backup_more import parse_tags
from strongroom.errors import UsageError

# a pattern line: not empty, no newline, no NUL, not starting with '#', no trailing blank or CR
_pattern = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\n" not in b and b"\0" not in b and not b.startswith(b"#") and b.rstrip(b" \t\r") == b
    and b.strip(b" \t") != b"")


@given(st.lists(st.tuples(_pattern, st.sampled_from([b"\n", b"\r\n", b"  \n"]),
                          st.sampled_from([b"", b"# a comment\n", b"\n", b"   \n"])), max_size=20))
def test_pattern_files_give_back_their_patterns(tmp_path_factory, rows) -> None:
    path = tmp_path_factory.mktemp("p") / "patterns"
    path.write_bytes(b"".join(extra + pattern + end for pattern, end, extra in rows))
    assert [p.encode("utf-8", "surrogateescape") for p in read_patterns(path)] == [p for p, _e, _x in rows]


@given(st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b), max_size=20))
def test_nul_lists_are_verbatim(tmp_path_factory, paths) -> None:
    path = tmp_path_factory.mktemp("l") / "list0"
    path.write_bytes(b"".join(p + b"\0" for p in paths))
    assert read_paths(path, nul=True) == paths


@given(st.integers(0, 10**6), st.sampled_from([("", 1), ("K", 1024), ("m", 1024**2), ("G", 1024**3),
                                               ("TiB", 1024**4), ("KB", 1024)]))
def test_sizes_are_binary(n, unit) -> None:
    suffix, factor = unit
    assert parse_size(f"{n}{suffix}") == n * factor


@pytest.mark.parametrize("bad", ["", "K", "-1", "1.2.3K", "4 parsecs", "1P"])
def test_bad_sizes_are_refused(bad) -> None:
    with pytest.raises(UsageError, match="is not a size"):
        parse_size(bad)


def test_rules_round_trip_and_refuse_paths_as_marker_names() -> None:
    rules = SelectionRules(("*.txt",), True, (".nobackup",), 4096, True)
    assert SelectionRules.from_doc(rules.to_doc()) == rules
    assert SelectionRules.from_doc(None) == SelectionRules() and not SelectionRules()
    for bad in ("a/b", "..", ""):
        with pytest.raises(UsageError, match="takes a file name"):
            SelectionRules(exclude_if_present=(bad,))


def test_tags() -> None:
    assert parse_tags(["b,a", "a"]) == ["a", "b"]
    for bad in ["", "x" * 65, "a\nb", "a\x9bb"]:
        with pytest.raises(UsageError, match="is not a tag"):
            parse_tags([bad])
