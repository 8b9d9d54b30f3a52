"""restore --conflict skip|overwrite|copy when the restored path already exists."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from treeutil import assert_trees_equal, under

ORIGINAL = {
    "a.txt": b"original a\n",
    "report.final.txt": b"original report\n",
    "noext": b"original, no extension\n",
    "sub/b.txt": b"original b\n",
}
OLD_MTIME_NS = 1_700_000_000_123_456_789


def copy_prefix(created: str, tz: str | None = None) -> str:
    """`YYYY-MM-DD HH-MM Copy of ` for the point's creation time in local time."""
    dt = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if dt.tzinfo is None:  # an ISO timestamp without offset is taken as UTC
        dt = dt.replace(tzinfo=timezone.utc)
    if tz is None:
        local = dt.astimezone()
    else:
        from zoneinfo import ZoneInfo

        local = dt.astimezone(ZoneInfo(tz))
    return local.strftime("%Y-%m-%d %H-%M") + " Copy of "


@pytest.fixture
def setup(registered, tmp_path):
    src = tmp_path / "src"
    for rel, data in ORIGINAL.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    point = registered.backup(src)
    return SimpleNamespace(sr=registered, src=src, point=point, id=point["id"])


def local_edit(path: Path, data: bytes = b"local edit, not in the backup\n") -> None:
    path.write_bytes(data)


def listing(d: Path) -> set[str]:
    return set(os.listdir(d))


def test_skip_leaves_existing_file_alone(setup):
    a = setup.src / "a.txt"
    local_edit(a)
    before = listing(setup.src)
    res = setup.sr.restore(setup.id, a, target="original", conflict="skip")
    assert a.read_bytes() == b"local edit, not in the backup\n"
    assert res["files_skipped"] == 1
    assert res["files_restored"] == 0 and res["files_copied"] == 0
    assert res["errors"] == []
    assert listing(setup.src) == before


def test_skip_still_restores_missing_files(setup):
    a, b = setup.src / "a.txt", setup.src / "sub" / "b.txt"
    local_edit(a)
    b.unlink()
    res = setup.sr.restore(setup.id, target="original", conflict="skip")
    assert a.read_bytes() == b"local edit, not in the backup\n"
    assert b.read_bytes() == ORIGINAL["sub/b.txt"]
    assert os.stat(b).st_mtime_ns == OLD_MTIME_NS
    assert res["files_restored"] >= 1
    assert res["files_skipped"] >= 1
    assert res["files_copied"] == 0


def test_overwrite_replaces_existing_file(setup):
    a = setup.src / "a.txt"
    local_edit(a)
    before = listing(setup.src)
    res = setup.sr.restore(setup.id, a, target="original", conflict="overwrite")
    assert a.read_bytes() == ORIGINAL["a.txt"]
    assert os.stat(a).st_mtime_ns == OLD_MTIME_NS
    assert res["files_restored"] == 1
    assert res["files_skipped"] == 0 and res["files_copied"] == 0
    assert listing(setup.src) == before


def test_overwrite_with_a_directory_in_the_way(setup):
    """Either the directory is replaced, or it is kept and the restore says so (exit 3)."""
    a = setup.src / "a.txt"
    a.unlink()
    a.mkdir()
    (a / "junk").write_text("junk")
    res = setup.sr.run("restore", setup.id, a, "--target", "original", "--conflict", "overwrite", "--json",
                       check=False)
    if res.returncode == 0:
        assert a.is_file() and a.read_bytes() == ORIGINAL["a.txt"]
        return
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert [e["path"].lstrip("/") for e in out["errors"]] == [str(a).lstrip("/")], out["errors"]
    assert (a / "junk").read_text() == "junk"


def test_default_conflict_is_copy(setup):
    """README: --conflict may be left out and defaults to copy."""
    f = setup.src / "a.txt"
    local_edit(f)
    before = listing(setup.src)
    setup.sr.run("restore", setup.id, f, "--target", "original")
    assert f.read_bytes() == b"local edit, not in the backup\n"
    assert listing(setup.src) - before == {copy_prefix(setup.point["created"]) + "a.txt"}


@pytest.mark.parametrize("name", ["a.txt", "report.final.txt", "noext"])
def test_copy_keeps_existing_and_writes_dated_copy(setup, name):
    f = setup.src / name
    local_edit(f)
    before = listing(setup.src)
    res = setup.sr.restore(setup.id, f, target="original", conflict="copy")
    assert f.read_bytes() == b"local edit, not in the backup\n", "copy mode changed the existing file"
    new = listing(setup.src) - before
    expected = copy_prefix(setup.point["created"]) + name
    assert new == {expected}, f"expected one new file {expected!r}, got {sorted(new)}"
    assert (setup.src / expected).read_bytes() == ORIGINAL[name]
    assert res["files_copied"] == 1
    assert res["files_restored"] == 0 and res["files_skipped"] == 0


def test_copy_name_uses_local_time_of_point(setup):
    """The stamp is the point's creation time in the local zone (TZ), not UTC."""
    pytest.importorskip("zoneinfo")
    tz = "Asia/Kolkata"  # UTC+05:30 moves both hour and minute
    f = setup.src / "a.txt"
    local_edit(f)
    before = listing(setup.src)
    setup.sr.run("restore", setup.id, f, "--target", "original", "--conflict", "copy", env_extra={"TZ": tz})
    new = listing(setup.src) - before
    assert new == {copy_prefix(setup.point["created"], tz) + "a.txt"}, sorted(new)


@pytest.mark.parametrize("name,second", [("a.txt", "a (2).txt"), ("report.final.txt", "report.final (2).txt"),
                                         ("noext", "noext (2)")])
def test_second_copy_does_not_overwrite_first(setup, name, second):
    f = setup.src / name
    local_edit(f)
    before = listing(setup.src)
    setup.sr.restore(setup.id, f, target="original", conflict="copy")
    first = listing(setup.src) - before
    prefix = copy_prefix(setup.point["created"])
    assert first == {prefix + name}
    (first_name,) = first
    (setup.src / first_name).write_bytes(b"first copy, edited\n")

    res = setup.sr.restore(setup.id, f, target="original", conflict="copy")
    assert res["files_copied"] == 1
    # " (2)" goes before the extension (the last dot), as Windows names copies
    assert listing(setup.src) - before - first == {prefix + second}
    assert (setup.src / (prefix + second)).read_bytes() == ORIGINAL[name]
    assert (setup.src / first_name).read_bytes() == b"first copy, edited\n", "first copy was overwritten"
    assert f.read_bytes() == b"local edit, not in the backup\n"


def test_copy_does_not_copy_missing_files(setup):
    """A file that does not exist at the target is simply restored, under its own name."""
    b = setup.src / "sub" / "b.txt"
    b.unlink()
    res = setup.sr.restore(setup.id, b, target="original", conflict="copy")
    assert listing(setup.src / "sub") == {"b.txt"}
    assert b.read_bytes() == ORIGINAL["sub/b.txt"]
    assert res["files_restored"] == 1 and res["files_copied"] == 0


def test_conflicts_in_target_directory(setup, tmp_path):
    target = tmp_path / "target"
    setup.sr.restore(setup.id, target=target, conflict="overwrite")
    restored = under(target, setup.src)
    assert_trees_equal(setup.src, restored)

    a = restored / "a.txt"
    local_edit(a)
    res = setup.sr.restore(setup.id, target=target, conflict="skip")
    assert a.read_bytes() == b"local edit, not in the backup\n"
    assert res["files_skipped"] >= 1
    assert res["files_restored"] + res["files_skipped"] == len(ORIGINAL)

    res = setup.sr.restore(setup.id, target=target, conflict="overwrite")
    assert a.read_bytes() == ORIGINAL["a.txt"]
    assert_trees_equal(setup.src, restored)
