"""The change journal's changed names (format 2): an optimized backup stats, in a changed
folder, only the entries the journal names (and new ones, and folders on the way); every kind
of change must still reach the point, as a full scan of the same state records it. Also the
bounds on the names kept, and an old journal file (format 1) refused with a clear reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_journal import _mode, _restored, watched
from treeutil import assert_trees_equal, is_root

from strongroom.agent import journal as jr
from strongroom.agent import watch

needs_root = pytest.mark.skipif(not is_root(), reason="fanotify, chown and the daemon's journal need root")
LINKS = "a file with hard links changed: its other names are found only by a full scan"
KEEP = 6  # unchanged files in every case's folder: what a listing by names takes unread


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _case_folder(src: Path, name: str) -> Path:
    d = src / f"c-{name}"
    (d / "sub").mkdir(parents=True)
    for i in range(KEEP):
        _write(d / f"keep{i}", f"{name} {i}\n".encode() * (i + 1))
    _write(d / "f", b"the file the case changes\n" * 3)
    _write(d / "sub" / "inner", b"inside the subfolder\n")
    return d


def _same_size_same_mtime(d: Path) -> None:
    f = d / "f"
    before = f.stat()
    data = f.read_bytes()
    with open(f, "r+b") as out:
        out.write(bytes(reversed(data)))
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))


def _replace_by_rename(d: Path) -> None:
    _write(d / "f.tmp", b"the file the case changes\n" * 3, (d / "f").stat().st_mtime_ns)
    (d / "f.tmp").rename(d / "f")


def _replace_by_dir(d: Path) -> None:
    (d / "f").unlink()
    (d / "f").mkdir()
    _write(d / "f" / "now-a-folder", b"x")


def _folder_moved_in(d: Path) -> None:
    """The subfolder replaced by another one, moved in, holding the same names, sizes and mtimes."""
    other = d.parent / "c-folder_moved_in-other"
    other.mkdir()
    inner = d / "sub" / "inner"
    _write(other / "inner", bytes(reversed(inner.read_bytes())), inner.stat().st_mtime_ns)
    shutil.rmtree(d / "sub")
    other.rename(d / "sub")


# Each case changes its own folder: name -> the change.
CASES = {
    "modify_in_place": lambda d: open(d / "f", "r+b").write(b"CHANGED"),
    "append": lambda d: open(d / "f", "ab").write(b"more"),
    "same_size_same_mtime": _same_size_same_mtime,
    "truncate": lambda d: os.truncate(d / "f", 5),
    "chmod": lambda d: (d / "f").chmod(0o600),
    "chown": lambda d: os.chown(d / "f", 1234, 5678),
    "touch": lambda d: os.utime(d / "f", ns=(10**18, 10**18)),
    "xattr": lambda d: os.setxattr(d / "f", "user.note", b"set after the first backup"),
    "delete": lambda d: (d / "f").unlink(),
    "new_file": lambda d: _write(d / "new", b"new"),
    "rename_within": lambda d: (d / "f").rename(d / "g"),
    "rename_across": lambda d: (d / "f").rename(d.parent / "c-rename_within" / "from-across"),
    "replaced_by_rename": _replace_by_rename,
    "replaced_by_symlink": lambda d: ((d / "f").unlink(), (d / "f").symlink_to("keep0")),
    "replaced_by_dir": _replace_by_dir,
    "fifo": lambda d: os.mkfifo(d / "pipe"),
    "chmod_subfolder": lambda d: (d / "sub").chmod(0o700),
    "touch_subfolder": lambda d: os.utime(d / "sub", ns=(10**18, 10**18)),
    "xattr_subfolder": lambda d: os.setxattr(d / "sub", "user.note", b"on the folder"),
    "chmod_folder_itself": lambda d: d.chmod(0o750),
    "new_file_in_new_subfolder": lambda d: ((d / "new" / "deeper").mkdir(parents=True),
                                            _write(d / "new" / "deeper" / "x", b"in a new subtree")),
    "subfolder_renamed": lambda d: (d / "sub").rename(d / "sub-renamed"),
    "folder_moved_in": _folder_moved_in,
    "file_in_subfolder": lambda d: _write(d / "sub" / "inner", b"changed inside\n"),
}


def _both_restore_as_source(sr, src: Path, tmp_path: Path, tag: str, fast: dict) -> None:
    full = sr.backup(src, "--unoptimized")
    r_fast = _restored(sr, fast["id"], src, tmp_path / f"fast-{tag}")
    r_full = _restored(sr, full["id"], src, tmp_path / f"full-{tag}")
    assert_trees_equal(src, r_full)
    assert_trees_equal(r_full, r_fast)


@needs_root
@pytest.mark.parametrize("backend", ["fanotify", "inotify"])
def test_every_kind_of_change_reaches_a_point_listed_by_names(registered, tmp_path, backend):
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        folders = {name: _case_folder(src, name) for name in CASES}
        start(backend)
        sr.backup(src)
        for name, change in CASES.items():
            change(folders[name])
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        assert fast["mode_reason"].startswith(f"{backend} journal: ")
        _both_restore_as_source(sr, src, tmp_path, backend, fast)
        # In the folders listed by names, the unchanged files were taken unread: fewer than
        # all the KEEP files of every case count as looked at and unchanged.
        assert fast["stats"]["files_unchanged"] < KEEP * len(CASES) // 2, fast["stats"]


@needs_root
@pytest.mark.parametrize("backend", ["fanotify", "inotify"])
def test_a_changed_folder_stats_only_its_changed_names(registered, tmp_path, backend):
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        d = _case_folder(src, "one")
        start(backend)
        sr.backup(src)
        with open(d / "keep3", "ab") as f:
            f.write(b"one change")
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        assert fast["mode_reason"] == f"{backend} journal: 1 changed directory"
        s = fast["stats"]
        assert (s["files_changed"], s["files_new"], s["files_unchanged"], s["dirs"]) == (1, 0, 0, 1), s
        _both_restore_as_source(sr, src, tmp_path, "one", fast)


@needs_root
@pytest.mark.parametrize("backend", ["fanotify", "inotify"])
def test_names_kept_by_path_do_not_follow_a_folder_moved_away_and_back(registered, tmp_path, backend):
    """inotify keeps names by path: while folder P is away, another folder's change is kept as
    P/S's; P's own change as Q/S's. Back at P, P/S (the same inode as in the last point) must
    not be listed by the other folder's names: a tree moved in is never listed by names."""
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        for top, name in (("P", "x"), ("R", "y")):
            (src / top / "S").mkdir(parents=True)
            for i in range(KEEP):
                _write(src / top / "S" / f"keep{i}", f"{top}{i}".encode())
            _write(src / top / "S" / name, f"{top} {name}\n".encode())
        start(backend)
        sr.backup(src)
        (src / "P").rename(src / "Q")
        with open(src / "Q" / "S" / "x", "ab") as f:
            f.write(b"changed while away")
        (src / "R").rename(src / "P")
        with open(src / "P" / "S" / "y", "ab") as f:
            f.write(b"the other folder's change, kept as P/S's")
        (src / "P").rename(src / "R")
        (src / "Q").rename(src / "P")
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        _both_restore_as_source(sr, src, tmp_path, "away", fast)


@needs_root
def test_hard_links_still_send_the_backup_to_a_full_scan(registered, tmp_path):
    """A changed file with other names changes their ctime and link count where no event is:
    written through one name, one name removed, a name replaced, a name added."""
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        hl = src / "hl"
        for d in ("a", "b", "c"):
            (hl / d).mkdir(parents=True)
            for i in range(KEEP):
                _write(hl / d / f"keep{i}", f"{d}{i}".encode())
        _write(hl / "a" / "one", b"linked once")
        os.link(hl / "a" / "one", hl / "b" / "one-too")
        _write(hl / "a" / "two", b"linked twice")
        os.link(hl / "a" / "two", hl / "b" / "two-too")
        _write(hl / "a" / "three", b"linked thrice")
        os.link(hl / "a" / "three", hl / "b" / "three-too")
        start()
        sr.backup(src)
        steps = [
            ("written through one name", lambda: open(hl / "b" / "one-too", "ab").write(b"through b")),
            ("one name removed", lambda: (hl / "b" / "two-too").unlink()),
            ("a name replaced by rename", lambda: (_write(hl / "c" / "tmp", b"another file"),
                                                   (hl / "c" / "tmp").rename(hl / "b" / "three-too"))),
            ("a name added", lambda: os.link(hl / "c" / "keep0", hl / "a" / "new-link")),
        ]
        for i, (what, change) in enumerate(steps):
            change()
            b = sr.backup(src)
            assert _mode(b) == ("unoptimized", LINKS), what
            _both_restore_as_source(sr, src, tmp_path, str(i), b)
            _write(hl / "c" / f"plain{i}", b"no link")  # and the next backup is optimized again
            again = sr.backup(src)
            assert again["mode"] == "optimized", (what, again["mode_reason"])


@needs_root
def test_names_are_bounded_and_stored_per_folder(registered, tmp_path):
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        many, few = src / "many", _case_folder(src, "few")
        many.mkdir()
        start()
        sr.backup(src)
        for i in range(watch.MAX_NAMES + 100):
            (many / f"n{i}").touch()
        open(few / "keep1", "ab").write(b"x")
        os.chmod(few / "keep2", 0o600)
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        doc = jr.read_record(sr.home / "cache" / "journal" / "journal")
        assert doc["format"] == 2
        dirs = {bytes(d): n for d, n in doc["segments"][-1]["dirs"]}
        assert dirs[os.fsencode(many)] is None  # more names than a folder may keep: all looked at
        assert sorted(dirs[os.fsencode(few)]) == [b"keep1", b"keep2"]
        assert fast["stats"]["files_new"] == watch.MAX_NAMES + 100
        _both_restore_as_source(sr, src, tmp_path, "many", fast)


@needs_root
def test_an_old_journal_file_runs_unoptimized_and_says_why(registered, tmp_path):
    with watched(registered, tmp_path) as (src, start):
        sr = registered
        start()
        sr.backup(src)
        path = sr.home / "cache" / "journal" / "journal"
        doc = jr.read_record(path)
        # What a daemon of the previous version writes: format 1, directories without names.
        doc["format"] = 1
        for seg in doc["segments"]:
            seg["dirs"] = [d for d, _n in seg["dirs"]]
            del seg["trees"]
        jr.write_record(path, doc)
        (src / "e" / "after").write_text("x")
        b = sr.backup(src)
        assert _mode(b) == ("unoptimized", "the change journal is of format 1, not 2 (written by another version "
                            "of `strongroom agent run`: restart it)")
        assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))


# -- the bounds, without a daemon ---------------------------------------------------------------


ops = st.lists(st.tuples(st.sampled_from(["note", "whole"]), st.integers(0, 5), st.integers(0, 30)), max_size=300)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_drained_keeps_every_change_within_its_bounds(monkeypatch_ops):
    """Whatever the events: a noted name is kept or its folder is whole; no folder keeps more
    than MAX_NAMES, all of them no more than MAX_ALL_NAMES; the count is true."""
    saved = watch.MAX_NAMES, watch.MAX_ALL_NAMES
    watch.MAX_NAMES, watch.MAX_ALL_NAMES = 8, 20
    try:
        out = watch.Drained()
        noted = []
        for op, key, name in monkeypatch_ops:
            if op == "note":
                out.note(key, b"%d" % name)
                noted.append((key, b"%d" % name))
            else:
                out.whole(key)
            sets = [n for n in out.dirs.values() if n is not None]
            assert all(0 < len(n) <= watch.MAX_NAMES for n in sets)
            assert out.names == sum(map(len, sets)) <= watch.MAX_ALL_NAMES
        for key, name in noted:
            assert out.dirs[key] is None or name in out.dirs[key]
    finally:
        watch.MAX_NAMES, watch.MAX_ALL_NAMES = saved


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from([b"/a", b"/b", b"/c"]),
                                st.none() | st.sets(st.binary(min_size=1, max_size=3), min_size=1, max_size=5)),
                max_size=6))
def test_merged_segments_lose_no_name(segments):
    merged: dict = {}
    for seg in segments:
        jr.merge_dirs(merged, {d: set(n) if n is not None else None for d, n in seg.items()})
    for seg in segments:
        for d, names in seg.items():
            assert merged[d] is None or (names is not None and names <= merged[d])
    assert set(merged) == {d for seg in segments for d in seg}
