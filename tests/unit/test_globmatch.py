"""The one glob meaning shared by backup, restore and find."""

from __future__ import annotations

import fnmatch

from hypothesis import given
from hypothesis import strategies as st

from strongroom.globmatch import compile_glob, compile_globs


def m(pattern, path, **kw):
    return compile_glob(pattern, **kw)(path, path.rsplit(b"/", 1)[-1])


def test_a_name_pattern_matches_at_any_depth():
    assert m("*.tmp", b"/a/b/x.tmp") and m("*.tmp", b"/x.tmp")
    assert not m("*.tmp", b"/a/x.tmp/y")


def test_a_path_pattern_is_anchored_and_star_stays_in_one_directory():
    assert m("/srv/*/cache", b"/srv/web/cache")
    assert not m("/srv/*/cache", b"/srv/web/deep/cache")
    assert m("srv/**/cache", b"/srv/web/deep/cache") and m("/srv/**/cache", b"/srv/cache")
    assert not m("/srv/*/cache", b"/other/srv/web/cache")


def test_classes_question_marks_and_case():
    assert m("file[0-9].txt", b"/d/file7.txt") and not m("file[!0-9].txt", b"/d/file7.txt")
    assert m("?.c", b"/a.c") and not m("?.c", b"/ab.c")
    assert m("*.JPG", b"/p/a.jpg", ignore_case=True) and not m("*.JPG", b"/p/a.jpg")


def test_names_that_are_not_utf8_match_as_bytes():
    assert m(b"caf\xe9*", b"/d/caf\xe9-menu")


def test_no_pattern_matches_nothing():
    assert not compile_globs([])(b"/a", b"a")


names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b)
simple = st.text(alphabet="ab*?.", min_size=1, max_size=6)


@given(simple, names)
def test_name_patterns_agree_with_fnmatch_on_names(pattern, name):
    """On a single name (no '/'), the meaning is fnmatch's."""
    ours = compile_glob(pattern)(b"/x/" + name, name)
    assert ours == fnmatch.fnmatchcase(name, pattern.encode())
