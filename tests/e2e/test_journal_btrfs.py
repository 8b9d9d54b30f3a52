"""Optimized backups on btrfs without the daemon: the filesystem's generations say what changed."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from test_journal import _make_tree, _mode, _restored, mutate
from treeutil import assert_trees_equal, is_root

pytestmark = pytest.mark.skipif(not is_root() or not shutil.which("mkfs.btrfs"),
                                reason="needs root and btrfs-progs (loop devices, the tree search ioctl)")


@pytest.fixture
def btrfs(tmp_path):
    image, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(300 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", loop], check=True, capture_output=True)
        mnt.mkdir()
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_btrfs_generations_make_backups_optimized_without_the_daemon(registered, btrfs, tmp_path):
    sr = registered
    subprocess.run(["btrfs", "subvolume", "create", str(btrfs / "vol")], check=True, capture_output=True)
    src = btrfs / "vol" / "src"
    _make_tree(src)
    # A subvolume nested in the source: another tree, always listed whole.
    subprocess.run(["btrfs", "subvolume", "create", str(src / "a" / "nested")], check=True, capture_output=True)
    (src / "a" / "nested" / "inside").write_text("in the nested subvolume")
    assert _mode(sr.backup(src)) == ("unoptimized", "the first backup")
    rng = random.Random("btrfs")
    for round_ in range(3):
        mutate(src, rng, 12, links=True)
        if (src / "a" / "nested").is_dir():  # unless the random changes moved or removed it
            (src / "a" / "nested" / "inside").write_text(f"changed {round_}")
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        assert fast["mode_reason"].startswith("btrfs generations since ")
        full = sr.backup(src, "--unoptimized")
        r_fast = _restored(sr, fast["id"], src, tmp_path / f"fast{round_}")
        r_full = _restored(sr, full["id"], src, tmp_path / f"full{round_}")
        assert_trees_equal(src, r_fast)
        assert_trees_equal(r_full, r_fast)
    idle = sr.backup(src)
    assert idle["mode"] == "optimized" and idle["stats"]["bytes_read"] == 0
    assert_trees_equal(src, _restored(sr, idle["id"], src, tmp_path / "idle"))
