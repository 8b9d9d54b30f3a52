"""Backup selection through the real CLI: --exclude, --exclude-from, --include-from,
--exclude-caches, --exclude-if-present, --exclude-larger-than, --one-file-system,
--files-from (and -0). Each restored tree is compared with the source minus what the
options leave out (treeutil.assert_trees_equal)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import assert_clean_failure, saying
from selectutil import expected_tree, make_files, stamp
from treeutil import assert_trees_equal, is_root, under

from strongroom.agent.selection import CACHEDIR_SIGNATURE

TREE = {
    "keep.txt": b"kept\n",
    "notes.log": b"a log\n" * 10,
    "a/b/deep.txt": b"deep\n",
    "a/b/deep.log": b"deep log\n",
    "a/c.tmp": b"temp\n",
    "build/out.bin": bytes(range(256)) * 20,
    "build/sub/more.bin": b"x" * 5000,
    "empty-dir": None,
}


def restore_and_compare(sr, point: str, src: Path, tmp_path: Path, leave_out: list[str]) -> None:
    target = tmp_path / f"restored-{point}"
    sr.restore(point, src, target=target)
    assert_trees_equal(expected_tree(src, tmp_path / f"expected-{point}", leave_out), under(target, src))


@pytest.fixture
def src(tmp_path) -> Path:
    return make_files(tmp_path / "src", TREE)


def test_exclude_leaves_out_names_and_anchored_paths(registered, src, tmp_path):
    # a pattern without / matches names at any depth; one with / the path from the root
    point = registered.backup(src, "--exclude", "*.log", "--exclude", f"{src}/build/**")["id"]
    restore_and_compare(registered, point, src, tmp_path,
                        ["notes.log", "a/b/deep.log", "build/out.bin", "build/sub"])


def test_exclude_from_reads_patterns_comments_and_blank_lines(registered, src, tmp_path):
    patterns = tmp_path / "excludes.txt"
    patterns.write_bytes(b"# build products\r\n\r\n*.tmp\r\nbuild\n   \n#*.txt\n")
    point = registered.backup(src, "--exclude-from", patterns, "--exclude", "deep.log")["id"]
    restore_and_compare(registered, point, src, tmp_path, ["a/c.tmp", "build", "a/b/deep.log"])
    doc = registered.json("points")[0]
    assert doc["id"] == point


def test_include_from_keeps_matches_and_the_folders_leading_to_them(registered, src, tmp_path):
    patterns = tmp_path / "includes.txt"
    patterns.write_text("# only text, and all of build/sub\n*.txt\n**/build/sub\n")
    point = registered.backup(src, "--include-from", patterns, "--exclude", "more.bin")["id"]
    # empty-dir and a/c.tmp lead to no match; an exclude still wins inside an included folder
    restore_and_compare(registered, point, src, tmp_path,
                        ["notes.log", "a/b/deep.log", "a/c.tmp", "build/out.bin", "build/sub/more.bin",
                         "empty-dir"])


def test_include_from_without_patterns_is_refused(registered, src, tmp_path):
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n\n")
    assert_clean_failure(registered.run("backup", src, "--include-from", empty, check=False), 2,
                         saying("hold no pattern"))


def test_exclude_caches_checks_the_signature_and_keeps_the_tag(registered, src, tmp_path):
    (src / "build" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# made by a build tool\n")
    fake = src / "a" / "b"
    (fake / "CACHEDIR.TAG").write_bytes(b"Signature: not the right one\n")  # not a cache: kept whole
    os.mkfifo(src / "empty-dir" / "CACHEDIR.TAG")  # a FIFO is no tag, and must not block the walk
    stamp(src)
    point = registered.backup(src, "--exclude-caches")["id"]
    restore_and_compare(registered, point, src, tmp_path, ["build/out.bin", "build/sub"])


def test_exclude_if_present_keeps_the_marker(registered, src, tmp_path):
    (src / "a" / ".nobackup").write_bytes(b"")
    stamp(src)
    point = registered.backup(src, "--exclude-if-present", ".nobackup")["id"]
    restore_and_compare(registered, point, src, tmp_path, ["a/b", "a/c.tmp"])
    assert_clean_failure(registered.run("backup", src, "--exclude-if-present", "a/b", check=False), 2,
                         saying("--exclude-if-present takes a file name"))


def test_exclude_larger_than_binary_units(registered, src, tmp_path):
    (src / "exactly-4k").write_bytes(b"k" * 4096)
    (src / "over-4k").write_bytes(b"k" * 4097)
    stamp(src)
    point = registered.backup(src, "--exclude-larger-than", "4K")["id"]
    # 5120 (build/out.bin) and 5000 bytes are over 4096: 4K is binary
    restore_and_compare(registered, point, src, tmp_path, ["over-4k", "build/out.bin", "build/sub/more.bin"])
    assert_clean_failure(registered.run("backup", src, "--exclude-larger-than", "4 parsecs", check=False), 2,
                         saying("is not a size"))


@pytest.fixture
def mounted(src):
    """A tmpfs mounted at src/mnt holding one file (root only), unmounted afterwards."""
    if not is_root():
        pytest.skip("mounting a file system needs root")
    mnt = src / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    (mnt / "on-another-fs.txt").write_bytes(b"elsewhere\n")
    os.utime(mnt, ns=(10**18, 10**18))
    stamp(src)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_one_file_system_keeps_the_mount_point_empty(registered, src, mounted, tmp_path):
    point = registered.backup(src, "--one-file-system")["id"]
    restore_and_compare(registered, point, src, tmp_path, ["mnt/on-another-fs.txt"])
    whole = registered.backup(src)["id"]  # without the flag, the walk crosses into it
    restore_and_compare(registered, whole, src, tmp_path, [])


def test_one_file_system_on_a_mounted_source_backs_it_up(registered, mounted, tmp_path):
    # the source itself is the other file system's root: its own contents are not "another" one
    point = registered.backup(mounted, "-x")["id"]
    target = tmp_path / "r"
    registered.restore(point, mounted, target=target)
    assert (under(target, mounted) / "on-another-fs.txt").read_bytes() == b"elsewhere\n"


def test_files_from_with_missing_paths_warns_and_exits_3(registered, src, tmp_path):
    listing = tmp_path / "list.txt"
    gone = src / "deleted-since.txt"
    listing.write_bytes(b"# what the nightly job found\n" + bytes(src / "keep.txt") + b"\n\n"
                        + bytes(src / "a") + b"\n" + bytes(gone) + b"\n")
    res = registered.run("backup", "--files-from", listing, "--json", check=False)
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["warnings"] == [{"path": str(gone), "error": "listed in --files-from but does not exist; "
                                "not backed up"}]
    assert sorted(doc["sources"]) == sorted([str(src / "keep.txt"), str(src / "a")])
    target = tmp_path / "r"
    registered.restore(doc["id"], target=target)
    assert_trees_equal(src / "a", under(target, src / "a"))
    assert_trees_equal(src / "keep.txt", under(target, src / "keep.txt"))
    assert not under(target, src / "build").exists()
    # the human form names the missing path on stderr
    res = registered.run("backup", "--files-from", listing, check=False)
    assert res.returncode == 3 and str(gone) in res.stderr


def test_files_from_nul_separated_is_verbatim(registered, src, tmp_path):
    odd = src / "line\nbreak # not a comment"
    odd.write_bytes(b"odd name\n")
    stamp(src)
    listing = tmp_path / "list0"
    listing.write_bytes(bytes(odd) + b"\0" + bytes(src / "notes.log") + b"\0")
    point = registered.backup("--files-from", listing, "-0")["id"]
    # `-` reads the list from standard input, as from `find -print0 |`
    piped = json.loads(registered.run("backup", "--files-from", "-", "-0", "--json", input=listing.read_bytes()).stdout)
    for pid in (point, piped["id"]):
        target = tmp_path / f"r-{pid}"
        registered.restore(pid, target=target)
        assert_trees_equal(odd, under(target, odd))
        assert_trees_equal(src / "notes.log", under(target, src / "notes.log"))
        assert sorted(os.listdir(under(target, src))) == sorted([odd.name, "notes.log"])


def test_files_from_bad_input(registered, src, tmp_path):
    listing = tmp_path / "all-gone"
    listing.write_text(f"{src}/nope\n{src}/nope2\n")
    assert_clean_failure(registered.run("backup", "--files-from", listing, check=False), 2,
                         saying("none of the 2 path(s)", "--files-from"))
    assert_clean_failure(registered.run("backup", "--files-from", tmp_path / "no-such-list", check=False), 2,
                         saying("no-such-list"))
    assert_clean_failure(registered.run("backup", src, "-0", check=False), 2, saying("-0", "--files-from"))
    assert_clean_failure(registered.run("backup", check=False), 2, saying("give PATHS"))
    assert registered.points() == []


def test_one_file_system_on_a_btrfs_snapshot(registered, tmp_path):
    # the source is read from a snapshot (another device number than the live path): the walk
    # stays in it, and a mount below the source is still left out
    from test_snapshots import Btrfs, _why_no_btrfs
    if _why_no_btrfs():
        pytest.skip(_why_no_btrfs())
    fs = Btrfs(tmp_path)
    try:
        src = make_files(fs.sub / "data", TREE)
        (src / "mp").mkdir()
        fs.mount("-t", "tmpfs", "-o", "size=1m", "none", src / "mp")
        (src / "mp" / "elsewhere.txt").write_bytes(b"on tmpfs\n")
        stamp(src)
        out = registered.backup(src, "-x")
        assert out["snapshot"] == "btrfs", out
        restore_and_compare(registered, out["id"], src, tmp_path, ["mp/elsewhere.txt"])
    finally:
        fs.close()
