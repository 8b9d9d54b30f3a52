"""`strongroom diff` and `strongroom find`, checked against trees the test builds and changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import Strongroom, assert_clean_failure, saying

PAST = time.time_ns() - 3600 * 10**9


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(PAST, PAST))


def settle(src: Path) -> None:
    """Every folder's mtime back to PAST: only the changes a test makes to entries show."""
    for d, _dirs, _files in os.walk(src):
        os.utime(d, ns=(PAST, PAST))


@pytest.fixture
def two_points(registered, tmp_path) -> tuple[Strongroom, Path, str, str]:
    """Point A of a tree, then point B after known changes."""
    src = tmp_path / "src"
    write(src / "keep.txt", b"unchanged\n")
    write(src / "edit.txt", b"old content\n")
    write(src / "chmod.sh", b"#!/bin/sh\n")
    write(src / "touch.txt", b"same bytes\n")
    write(src / "gone.txt", b"to be removed" * 10)
    write(src / "becomes-dir", b"a file first\n")
    write(src / "old-dir/inner.txt", b"inner\n")
    write(src / "stable/deep/x.conf", b"x\n")
    settle(src)
    a = registered.backup(src)["id"]
    write(src / "edit.txt", b"new and longer content\n")
    os.chmod(src / "chmod.sh", 0o755)
    os.utime(src / "touch.txt", ns=(PAST + 10**9, PAST + 10**9))
    (src / "gone.txt").unlink()
    (src / "becomes-dir").unlink()
    write(src / "becomes-dir/child.conf", b"c\n")
    (src / "old-dir/inner.txt").unlink()
    (src / "old-dir").rmdir()
    write(src / os.fsdecode(b"new-\xff.conf"), b"12345")
    write(src / "new-dir/a.conf", b"aaa")
    write(src / "new-dir/B.CONF", b"bb")
    settle(src)
    b = registered.backup(src)["id"]
    return registered, src, a, b


def test_diff_reports_each_change_with_its_kind_and_sizes(two_points):
    sr, src, a, b = two_points
    doc = sr.json("diff", a, b)
    assert doc["point_a"] == a and doc["point_b"] == b
    s = str(src)
    # (the folders above the source are in the point too; other tests change their mtimes)
    got = {c["path"]: (c["change"], c["content"], c["metadata"]) for c in doc["changes"] if c["path"].startswith(s)}
    assert got == {
        f"{s}/edit.txt": ("modified", True, []),
        f"{s}/chmod.sh": ("modified", False, ["mode"]),
        f"{s}/touch.txt": ("modified", False, ["mtime"]),
        f"{s}/gone.txt": ("removed", False, []),
        f"{s}/becomes-dir": ("modified", True, ["type"]),
        f"{s}/becomes-dir/child.conf": ("added", False, []),
        f"{s}/old-dir": ("removed", False, []),
        f"{s}/old-dir/inner.txt": ("removed", False, []),
        f"{s}/new-\\xff.conf": ("added", False, []),
        f"{s}/new-dir": ("added", False, []),
        f"{s}/new-dir/a.conf": ("added", False, []),
        f"{s}/new-dir/B.CONF": ("added", False, []),
    }
    by_path = {c["path"]: c for c in doc["changes"]}
    assert (by_path[f"{s}/edit.txt"]["size_before"], by_path[f"{s}/edit.txt"]["size_after"]) == (12, 23)
    assert by_path[f"{s}/gone.txt"]["size_before"] == 130 and by_path[f"{s}/gone.txt"]["size_after"] is None
    assert by_path[f"{s}/becomes-dir"]["type_before"] == "file"
    assert by_path[f"{s}/becomes-dir"]["type_after"] == "dir"
    doc = sr.json("diff", a, b, src)
    assert doc["summary"] == {"added": 5, "removed": 3, "modified": 4, "modified_content": 2,
                              "modified_metadata_only": 2, "added_bytes": 2 + 5 + 3 + 2, "removed_bytes": 130 + 6}


def test_diff_under_a_path_and_the_other_way(two_points):
    sr, src, a, b = two_points
    doc = sr.json("diff", a, b, src / "new-dir")
    assert [c["path"] for c in doc["changes"]] == [f"{src}/new-dir", f"{src}/new-dir/B.CONF", f"{src}/new-dir/a.conf"]
    back = sr.json("diff", b, a, src / "new-dir")
    assert {c["change"] for c in back["changes"]} == {"removed"}
    assert sr.json("diff", a, b, src / "stable")["changes"] == []  # same tree: nothing below read
    assert sr.json("diff", a, a)["changes"] == []
    assert sr.json("diff", b[:5], "latest", src / "keep.txt")["changes"] == []
    text = sr.run("diff", a, "latest", src).stdout
    assert f"M  {src}/edit.txt  (content, 12 B -> 23 B)" in text
    assert f"U  {src}/chmod.sh  (mode)" in text
    assert f"+  {src}/new-dir/a.conf  (3 B)" in text
    assert f"T  {src}/becomes-dir  (type, file -> dir)" in text
    assert "5 added (12 B), 3 removed (136 B), 4 modified (2 in content, 2 in metadata only)" in text


def test_diff_refusals(two_points):
    sr, src, a, b = two_points
    assert_clean_failure(sr.run("diff", a, "0123456789abcdef0", check=False), 2,
                         saying("no recovery point", "0123456789abcdef0"))
    assert_clean_failure(sr.run("diff", a, b, src / "nowhere", check=False), 2,
                         saying("nowhere", "is in neither recovery point"))


def test_find_lists_points_paths_sizes_and_times(two_points):
    sr, src, a, b = two_points
    doc = sr.json("find", "*.conf")
    assert doc["points_searched"] == [b, a]
    got = sorted((m["point"], m["path"], m["size"]) for m in doc["matches"])
    assert got == sorted([
        (a, f"{src}/stable/deep/x.conf", 2),
        (b, f"{src}/stable/deep/x.conf", 2),
        (b, f"{src}/becomes-dir/child.conf", 2),
        (b, f"{src}/new-\\xff.conf", 5),
        (b, f"{src}/new-dir/a.conf", 3),
    ])
    assert all(m["type"] == "file" and m["mtime"] and m["created"] for m in doc["matches"])
    upper = sr.json("find", "*.conf", "--ignore-case", "--point", b)["matches"]
    assert f"{src}/new-dir/B.CONF" in [m["path"] for m in upper]
    assert {m["point"] for m in sr.json("find", "*.conf", "--newest", "1")["matches"]} == {b}
    assert {m["point"] for m in sr.json("find", "*.conf", "--point", a[:6], "--point", a)["matches"]} == {a}
    anchored = sr.json("find", f"{src}/**/x.conf")["matches"]
    assert [m["path"] for m in anchored] == [f"{src}/stable/deep/x.conf"] * 2
    dirs = sr.json("find", "new-dir")["matches"]
    assert [(m["point"], m["type"], m["size"]) for m in dirs] == [(b, "dir", None)]
    assert f"point {b} (" in sr.run("find", "a.conf").stdout


def test_find_that_matches_nothing_is_an_empty_list_and_exit_0(two_points):
    sr, _src, a, b = two_points
    res = sr.run("find", "*.nothing", "--json")
    assert res.returncode == 0
    assert __import__("json").loads(res.stdout)["matches"] == []
    assert sr.run("find", "*.nothing").stdout.strip() == "Nothing matches *.nothing in 2 point(s)."
    assert_clean_failure(sr.run("find", "", check=False), 2, saying("the pattern is empty"))
    assert_clean_failure(sr.run("find", "x", "--point", "zz", check=False), 2, saying("no recovery point 'zz'"))
    assert sr.run("find", "x", "--newest", "0", check=False).returncode == 2


def test_diff_and_find_on_a_served_vault(served_machine, tmp_path):
    web = served_machine("web-01")
    src = tmp_path / "s"
    write(src / "a.txt", b"a")
    settle(src)
    first = web.backup(src)["id"]
    write(src / "b.txt", b"bb")
    settle(src)
    web.backup(src)
    assert [(c["path"], c["change"]) for c in web.json("diff", first, "latest", src)["changes"]] == [
        (f"{src}/b.txt", "added")]
    assert len(web.json("find", "*.txt")["matches"]) == 3
