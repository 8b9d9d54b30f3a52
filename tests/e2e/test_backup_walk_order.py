"""The walk's folders waiting for their tree (agent/backup.py `_next_ready`): a folder whose
large file is still being read holds up none of the folders listed after it, and the point
made that way restores exactly, in a first backup and in the unoptimized one after a change.
A folder whose entries are the parent point's keeps that point's tree without encoding it
again (`_finalize`): a change of one entry's metadata or name still makes a new tree."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import Strongroom
from treeutil import assert_trees_equal, under

_FOLDERS = 40  # more than the 32 folders the walk keeps waiting


def _tree(src: Path) -> None:
    (src / "a-large").mkdir(parents=True)
    (src / "a-large" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 11))
    for i in range(_FOLDERS):
        folder = src / f"b{i:02d}" / "inner"
        folder.mkdir(parents=True)
        for j in range(3):
            (folder / f"f{j}.txt").write_bytes(f"folder {i} file {j}\n".encode() * (i + 1))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _backup_holding_the_large_read(sr: Strongroom, src: Path, tmp: Path) -> dict:
    """Holds the pool's read of the large file until the walk has listed every folder."""
    read, walked = tmp / "go-read", tmp / "go-walked"
    for p in (read, walked, Path(f"{read}.reached"), Path(f"{walked}.reached")):
        p.unlink(missing_ok=True)
    proc = subprocess.Popen(
        sr.cmd + ["backup", str(src), "--json"],
        env=sr.env({"STRONGROOM_TEST_HOOK": f"backup-pool-read=wait:{read},backup-walked=wait:{walked}"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(Path(f"{read}.reached"), proc, 60), proc.communicate()
        # Before, the walk waited here for a-large's tree at the head of its queue.
        assert _wait_for(Path(f"{walked}.reached"), proc, 60), "the walk waited for the large file's read"
    finally:
        read.touch()
        walked.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_a_large_file_being_read_holds_up_no_later_folder(registered: Strongroom, tmp_path) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = _backup_holding_the_large_read(registered, src, tmp_path)
    assert first["stats"]["files_new"] == 1 + 3 * _FOLDERS
    registered.restore(first["id"], target=tmp_path / "r1")
    assert_trees_equal(src, under(tmp_path / "r1", src))

    with open(src / "a-large" / "big.bin", "ab") as f:  # changed: read again on the pool
        f.write(os.urandom(300_000))
    (src / "b07" / "inner" / "f1.txt").write_bytes(b"changed\n")
    second = _backup_holding_the_large_read(registered, src, tmp_path)
    assert second["stats"]["files_changed"] == 2
    registered.restore(second["id"], target=tmp_path / "r2")
    assert_trees_equal(src, under(tmp_path / "r2", src))


def test_a_folder_keeps_its_parent_tree_only_while_every_entry_is_the_same(registered: Strongroom, tmp_path) -> None:
    src = tmp_path / "src"
    for rel in ("d1/sub/a.txt", "d1/b.txt", "d2/c.txt", "d3/e.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode() * 50)
    first = registered.backup(src)
    same = registered.backup(src)
    assert same["stats"]["files_unchanged"] == 4
    # Nothing under src changed. (The folders above it are in the point too, and another pytest
    # session starting on the machine changes their mtimes: their trees may be new.)
    changes = registered.json("diff", first["id"], same["id"])["changes"]
    assert [c for c in changes if c["path"].startswith(str(src))] == []
    if not changes:
        assert same["stats"]["blobs_added"] == 0
    os.chmod(src / "d2" / "c.txt", 0o600)  # metadata only: the same content, another mode
    (src / "d1" / "sub" / "a.txt").rename(src / "d1" / "sub" / "a2.txt")  # as many entries, another name
    os.utime(src / "d3", ns=(1_000_000_000, 1_000_000_000))  # a folder's own entry, in its parent's tree
    changed = registered.backup(src)
    assert changed["stats"]["blobs_added"] > 0
    registered.restore(changed["id"], target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))
