"""A second backup only reads what changed, and adds little to the vault."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from treeutil import assert_trees_equal, under

FILES = {
    "a.txt": b"alpha\n" * 100,
    "b.bin": bytes(range(256)) * 400,
    "empty": b"",
    "docs/readme.md": b"# readme\n" + b"text\n" * 500,
    "docs/deeper/c.txt": b"gamma\n" * 2000,
}
N = len(FILES)
SMALL_ADD = 64 * 1024


@pytest.fixture
def src(tmp_path) -> Path:
    """A small tree of regular files and directories, with mtimes an hour in the past."""
    s = tmp_path / "src"
    past = time.time_ns() - 3600 * 10**9
    for rel, data in FILES.items():
        p = s / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for dirpath, dirnames, filenames in os.walk(s, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), ns=(past, past))
    os.utime(s, ns=(past, past))
    return s


def stats(result: dict) -> dict:
    return result["stats"]


def test_first_backup_counts_everything_new(registered, src):
    s = stats(registered.backup(src))
    assert s["files_new"] == N
    assert s["files_changed"] == 0 and s["files_unchanged"] == 0
    assert s["bytes_read"] == sum(len(d) for d in FILES.values())
    assert s["dirs"] >= 3
    assert s["warnings"] == 0


def test_no_change_reads_nothing(registered, src):
    first = registered.backup(src)
    second = registered.backup(src)
    s = stats(second)
    assert s["files_unchanged"] == N
    assert s["files_new"] == 0 and s["files_changed"] == 0
    assert s["bytes_read"] == 0
    assert s["bytes_added"] < SMALL_ADD, f"no-change backup added {s['bytes_added']} bytes"
    assert second["id"] != first["id"]


def test_touch_one_file(registered, src):
    registered.backup(src)
    os.utime(src / "docs" / "readme.md")  # new mtime, same content
    s = stats(registered.backup(src))
    assert s["files_changed"] == 1
    assert s["files_unchanged"] == N - 1
    assert s["files_new"] == 0
    assert s["bytes_read"] == len(FILES["docs/readme.md"])
    assert s["bytes_added"] < SMALL_ADD, "unchanged content was stored again"


def test_modify_one_file(registered, src):
    registered.backup(src)
    p = src / "docs" / "deeper" / "c.txt"
    p.write_bytes(b"new content\n" * 3000)
    s = stats(registered.backup(src))
    assert s["files_changed"] == 1
    assert s["files_unchanged"] == N - 1
    assert s["files_new"] == 0
    assert s["bytes_read"] == p.stat().st_size


def test_add_one_file(registered, src):
    registered.backup(src)
    (src / "docs" / "new.txt").write_bytes(b"brand new\n")
    s = stats(registered.backup(src))
    assert s["files_new"] == 1
    assert s["files_changed"] == 0
    assert s["files_unchanged"] == N
    assert s["bytes_read"] == len(b"brand new\n")


def test_incremental_points_restore_fully(registered, src, tmp_path):
    """The second (incremental) point is a full picture, not a delta."""
    registered.backup(src)
    (src / "a.txt").write_bytes(b"changed\n")
    (src / "b.bin").unlink()
    second = registered.backup(src)["id"]
    target = tmp_path / "target"
    registered.restore(second, target=target, conflict="overwrite")
    assert_trees_equal(src, under(target, src))


def test_same_content_in_new_file_is_deduplicated(registered, src):
    registered.backup(src)
    big = os.urandom(2 * 1024 * 1024)
    (src / "big1.bin").write_bytes(big)
    first = stats(registered.backup(src))
    assert first["bytes_added"] >= len(big) // 2  # compressed random data stays large
    (src / "big2.bin").write_bytes(big)
    second = stats(registered.backup(src))
    assert second["files_new"] == 1
    assert second["bytes_read"] == len(big)
    assert second["bytes_added"] < SMALL_ADD, f"duplicate content added {second['bytes_added']} bytes"
