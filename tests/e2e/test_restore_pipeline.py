"""The restore pipeline (walk, small-file writers, large-file writers, the served read-ahead):
exact trees through the embedded and the served vault, and a restore killed with SIGKILL
half-way that a rerun with --conflict overwrite completes exactly."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from conftest import PASSPHRASE
from strongroom.agent.home import AgentHome
from strongroom.agent.pointbook import PointBook
from strongroom.agent.reader import RESTORE_SEALED_TREES_BYTES, BlobReader
from strongroom.model import DIR
from treeutil import assert_trees_equal

MTIME = 1_600_000_000_123_456_789


def _make_tree(root: Path) -> None:
    """More files in one folder than a fetch window (256) and a writer batch (64), more
    than 8 subfolders in one folder, large files (several blobs) beside small ones in
    the same folders, a hardlink pair, an empty file, a read-only folder, and set modes and
    times everywhere, folders included."""
    rng = random.Random(11)
    crowded = root / "crowded"
    crowded.mkdir(parents=True)
    for i in range(300):
        (crowded / f"f{i:03d}.txt").write_bytes(b"line %d\n" % i * rng.randint(1, 300))
    for i in range(12):
        sub = root / "many" / f"sub{i:02d}" / "deeper"
        sub.mkdir(parents=True)
        for j in range(5):
            (sub.parent / f"s{j}").write_bytes(rng.randbytes(rng.randint(0, 5000)))
        (sub / "leaf").write_bytes(b"leaf %d\n" % i)
    big = root / "mixed"
    big.mkdir()
    for i in range(3):
        (big / f"big{i}.bin").write_bytes(rng.randbytes(1_500_000 + i * 700_001))
        (big / f"small{i}.txt").write_bytes(b"small %d\n" % i)
    (big / "empty").write_bytes(b"")
    (big / "linked-a").write_bytes(b"one inode\n" * 100)
    os.link(big / "linked-a", root / "many" / "linked-b")
    for i, path in enumerate(sorted(root.rglob("*"), reverse=True)):  # children before parents
        os.chmod(path, (0o640, 0o600, 0o604)[i % 3] if path.is_file() else 0o750)
        os.utime(path, ns=(MTIME + i, MTIME + 7 * i))
    os.chmod(root / "many" / "sub03", 0o555)  # the restore must still fill it
    os.utime(root / "many" / "sub03", ns=(MTIME, MTIME))


def test_restore_is_exact_embedded(registered, tmp_path):
    src = tmp_path / "src"
    _make_tree(src)
    registered.backup(src)
    doc = registered.restore("latest", target=tmp_path / "out")
    assert doc["errors"] == []
    assert doc["files_restored"] == sum(1 for p in src.rglob("*") if not p.is_dir())
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))


def test_restore_is_exact_served(served_machine, tmp_path):
    agent = served_machine("web-01")
    src = tmp_path / "src"
    _make_tree(src)
    agent.backup(src)
    doc = agent.restore("latest", target=tmp_path / "out")
    assert doc["errors"] == []
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))


def test_killed_restore_is_completed_by_a_rerun_with_overwrite(registered, tmp_path):
    src = tmp_path / "src"
    _make_tree(src)
    registered.backup(src)
    target = tmp_path / "out"
    killed = registered.run("restore", "latest", "--target", target, "--conflict", "overwrite", "--json",
                            check=False, env_extra={"STRONGROOM_TEST_HOOK": "restore-batch-written=kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    restored = target / str(src).lstrip("/")
    assert restored.is_dir()  # it had begun
    with pytest.raises(AssertionError):  # and not finished
        assert_trees_equal(src, restored)
    doc = registered.restore("latest", target=target, conflict="overwrite")
    assert doc["errors"] == []
    assert_trees_equal(src, restored)
    leftovers = [p for p in target.rglob("*") if p.name.startswith(".strongroom-restore-")]
    assert leftovers == []


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are restored only as root")
def test_owners_are_exact_when_new_files_get_another_group_than_the_point_says(registered, tmp_path):
    """Files made in a folder the restore made skip the chown when they were made with the
    point's owner already (restore._write_batch): under a setgid target they are made with
    its group, not root's, so root's files there must still be given theirs."""
    src = tmp_path / "src"
    owners = {"a-root-target-group": (0, 4321), "b-root": (0, 0), "c-other": (1234, 5678), "d-root": (0, 0),
              "e-other-group": (0, 5678)}
    for folder in ("one", "two"):
        (src / folder).mkdir(parents=True)
        for name, (uid, gid) in owners.items():
            path = src / folder / name
            path.write_bytes(name.encode())
            os.chown(path, uid, gid)
    registered.backup(src)
    for target_group, setgid in ((4321, 0o2000), (0, 0)):
        target = tmp_path / f"out-{target_group}"
        target.mkdir()
        os.chown(target, 0, target_group)
        os.chmod(target, 0o775 | setgid)
        doc = registered.restore("latest", target=target)
        assert doc["errors"] == []
        restored = target / str(src).lstrip("/")
        assert os.stat(restored / "one").st_gid == 0  # the folders' own owners came from the point too
        for folder in ("one", "two"):
            got = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in (restored / folder).iterdir()}
            assert got == owners


def test_served_restore_reads_ahead_past_a_folder_it_cannot_make(served_machine, tmp_path):
    """The read-ahead (restore_ahead.py) walks the point's folders ahead of the restore's
    walk: more small files than it holds (8 MiB) in more folders than one batch (2 MiB), and
    a folder the walk cannot make (a file in its place, --conflict skip), whose fetched
    windows it drops when the walk passes over them: the rest is exact."""
    agent = served_machine("web-01")
    src = tmp_path / "src"
    rng = random.Random(5)
    for d in range(6):
        for f in range(5):
            folder = src / f"d{d}" / f"f{f}"
            folder.mkdir(parents=True)
            for i in range(20):
                (folder / f"x{i:02d}").write_bytes(rng.randbytes(rng.randint(10_000, 40_000)))
    agent.backup(src)
    restored = tmp_path / "out" / str(src).lstrip("/")
    restored.mkdir(parents=True)
    (restored / "d1").write_bytes(b"in the way")
    doc = agent.restore("latest", target=tmp_path / "out", conflict="skip", check=False)  # exit 3: a warning
    assert [e["path"] for e in doc["errors"]] == [str(src / "d1")], doc["errors"]
    for d in (0, 2, 3, 4, 5):
        assert_trees_equal(src / f"d{d}", restored / f"d{d}")
    assert (restored / "d1").read_bytes() == b"in the way"


class _CountedVault:
    """The machine's real vault, counting the blobs read from it by offset."""

    def __init__(self, vault) -> None:
        self.vault, self.reads = vault, []

    def __getattr__(self, name):
        return getattr(self.vault, name)

    def read_range(self, pack, offset, length):
        self.reads.append((pack, offset))
        return self.vault.read_range(pack, offset, length)

    def read_ranges(self, ranges):
        self.reads.extend((pack, offset) for pack, offset, _n in ranges)
        return self.vault.read_ranges(ranges)


@pytest.mark.parametrize("kept", [RESTORE_SEALED_TREES_BYTES, 0])
def test_a_restores_three_walks_read_each_tree_once(registered, tmp_path, kept):
    """A restore walks the trees three times (folders first, read-ahead, walk) with a small
    cache of decoded trees: their sealed envelopes are kept, so each is read from the vault
    once (without them, once per walk)."""
    src = tmp_path / "src"
    _make_tree(src)
    registered.backup(src)
    agent = AgentHome(registered.home)
    key = agent.master_key(PASSPHRASE)
    vault = _CountedVault(agent.vault())
    root = PointBook(agent, vault, key, None).find("latest").manifest["tree"]
    reader = BlobReader(vault, key, tree_cache_bytes=1)
    reader.sealed_bytes_max = kept
    vault.reads.clear()
    trees = 0
    for _walk in range(3):
        todo, trees = [root], 0
        while todo:
            trees += 1
            todo.extend(e["tree"] for e in reader.tree(todo.pop()) if e["t"] == DIR)
    assert trees > 20
    assert len(vault.reads) == (trees if kept else 3 * trees)
    assert len(set(vault.reads)) == trees
