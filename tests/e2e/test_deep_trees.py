"""Folders nested far deeper than Python's default recursion limit (~330 levels of a walk)
back up, list and restore whole; past what the stack allows, a clear refusal, not a crash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import COMMAND_TIMEOUT, Strongroom, assert_clean_failure, saying
from treeutil import under

LEVELS = 1500  # the walks stopped at ~330 before cli/main.py raised the limit


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path):
    """pytest's clean-up of old temporary folders (shutil.rmtree) recurses, and stops at ~1,000
    levels: rm does not. Last of the teardowns (after a served vault is stopped)."""
    yield
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=False)


def make_chain(root: Path, levels: int) -> None:
    """root/d/d/.../d, a file every 250 levels and at the bottom, some folders with their own
    mode and times."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(levels):
            if level % 250 == 0:
                f = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=fd)
                os.write(f, f"level {level}\n".encode())
                os.close(f)
            os.mkdir("d", 0o750 if level % 3 else 0o755, dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        f = os.open("bottom", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        os.write(f, b"the bottom\n")
        os.close(f)
    finally:
        os.close(fd)
    # times last (making a child moves its parent's mtime), bottom up, through descriptors
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    for _ in range(levels):
        fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    for level, d in reversed(list(enumerate(fds))):
        os.utime(d, ns=(1_600_000_000_000_000_000 + level, 1_500_000_000_000_000_000 + level * 1000))
        os.close(d)


def assert_chains_equal(want: Path, got: Path, levels: int) -> None:
    """Level by level (no recursion: the test's own limit is Python's default)."""
    a = os.open(want, os.O_RDONLY | os.O_DIRECTORY)
    b = os.open(got, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(levels + 1):
            assert sorted(os.listdir(a)) == sorted(os.listdir(b)), f"level {level}"
            for name in os.listdir(a):
                sa = os.stat(name, dir_fd=a, follow_symlinks=False)
                sb = os.stat(name, dir_fd=b, follow_symlinks=False)
                assert (sa.st_mode, sa.st_uid, sa.st_gid, sa.st_size) == (sb.st_mode, sb.st_uid, sb.st_gid, sb.st_size), \
                    f"level {level}: {name}"
                if name != "d":
                    with open(os.open(name, os.O_RDONLY, dir_fd=a), "rb") as fa, \
                            open(os.open(name, os.O_RDONLY, dir_fd=b), "rb") as fb:
                        assert fa.read() == fb.read(), f"level {level}: {name}"
            assert os.fstat(a).st_mtime_ns == os.fstat(b).st_mtime_ns, f"level {level}: the folder's mtime"
            if level < levels:
                na = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=a)
                nb = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=b)
                os.close(a)
                os.close(b)
                a, b = na, nb
    finally:
        os.close(a)
        os.close(b)


def roundtrip(sr: Strongroom, tmp_path: Path) -> None:
    src = tmp_path / "deep"
    make_chain(src, LEVELS)
    point = sr.backup(src)["id"]
    listed = sr.json("ls", point, src)
    assert sum(1 for e in listed if e["type"] == "dir") >= LEVELS
    assert any(e["path"].endswith("/d/bottom") for e in listed)
    target = tmp_path / "restored"
    sr.restore(point, target=target)
    assert_chains_equal(src, under(target, src), LEVELS)


def test_a_tree_1500_folders_deep_backs_up_lists_and_restores_whole(registered, tmp_path):
    roundtrip(registered, tmp_path)


def test_a_tree_1500_folders_deep_through_a_served_vault(served_machine, tmp_path):
    """The served restore's read-ahead walks the trees on a thread of its own."""
    roundtrip(served_machine("deep-01"), tmp_path)


def test_a_tree_deeper_than_the_stack_allows_is_refused_in_one_line(registered, tmp_path):
    """With a 1 MiB stack the limit is 4,096 frames (~1,365 levels): 2,000 levels are refused
    with the reason, and no point is made."""
    src = tmp_path / "deeper"
    make_chain(src, 2000)
    argv = ["sh", "-c", 'ulimit -s 1024 && exec "$@"', "sh", *registered.cmd, "backup", str(src)]
    raw = subprocess.run(argv, capture_output=True, env=registered.env(), timeout=COMMAND_TIMEOUT,
                         stdin=subprocess.DEVNULL)
    res = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    assert_clean_failure(res, 1, saying("nested deeper than this version can walk", "ulimit -s"))
    assert registered.points() == []
