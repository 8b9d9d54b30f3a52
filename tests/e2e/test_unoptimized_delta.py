"""An unoptimized backup with a parent point sends its refs as a change to the parent's when
the cache folder's counts are that parent's: the vault must record exactly the refs the full
list would give (those its walk counted), and a chain of such points must survive purges,
prune and check. (Two backups of the same tree are not compared: the folders on the way to
the source, /tmp among them, change between them.)"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from test_journal import _restored, mutate
from treeutil import assert_trees_equal

from strongroom.vault import refs as reflist


def _refs(vault: Path, point_id: str) -> list[bytes]:
    """The IDs of the point's refs object as the vault stored it."""
    (path,) = [p for p in (vault / "refs").rglob(point_id)]
    with open(path, "rb") as f:
        return [i for chunk in reflist.read_refs(f, point_id) for i in reflist.ids([chunk])]


def _tree(src: Path) -> None:
    rng = random.Random("tree")
    for d in range(6):
        (src / f"d{d}" / "sub").mkdir(parents=True)
        for i in range(8):
            (src / f"d{d}" / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 4000)))
        (src / f"d{d}" / "sub" / "inner").write_bytes(rng.randbytes(100))


def _counted(sr) -> list[bytes]:
    """The refs the last backup's walk counted (refcounts.sqlite, built whole by an unoptimized
    backup): what it would have sent as the full list."""
    with sqlite3.connect(sr.home / "cache" / "journal" / "refcounts.sqlite") as db:
        return [bytes(r[0]) for r in db.execute("SELECT id FROM refs WHERE n > 0 ORDER BY id")]


@pytest.mark.parametrize("where", ["embedded", "served"])
def test_the_refs_sent_as_a_change_are_those_the_walk_counted(where, request, tmp_path):
    if where == "served":  # the change and its checksum through the HTTP API
        sr, vault = request.getfixturevalue("served_machine")("test-01"), request.getfixturevalue("served").folder
    else:
        sr = request.getfixturevalue("registered")
        vault = sr.vault
    src = tmp_path / "src"
    _tree(src)
    first = sr.backup(src, "--unoptimized")  # no parent: the full list
    assert _refs(vault, first["id"]) == _counted(sr)
    rng = random.Random("delta")
    for _ in range(3):
        mutate(src, rng, 10)
        point = sr.backup(src, "--unoptimized")  # the counts are the parent's: sent as a change
        assert len(_counted(sr)) > 10
        assert _refs(vault, point["id"]) == _counted(sr)
    # No counts of the parent (a new cache folder): the full list again, the same refs.
    (sr.home / "cache" / "journal" / "refcounts.sqlite").unlink()
    again = sr.backup(src, "--unoptimized")
    assert _refs(vault, again["id"]) == _counted(sr)
    assert sr.json("check")["ok"]


def test_a_chain_of_unoptimized_points_sent_as_changes_survives_prune(registered, tmp_path):
    sr = registered
    src = tmp_path / "src"
    _tree(src)
    sr.backup(src, "--unoptimized")
    rng = random.Random("chain")
    ids = []
    for _ in range(4):
        mutate(src, rng, 12)
        ids.append(sr.backup(src, "--unoptimized")["id"])
    with sqlite3.connect(sr.vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET deleted_ns = 1 WHERE id != ?", (ids[-1],))
    report = sr.json("vault", "prune", sr.vault, "--repack-below", "1.0")
    assert len(report["points_purged"]) == 4
    assert report["packs_deleted"] + report["packs_repacked"] > 0
    assert sr.json("check", "--read-data")["ok"]
    assert_trees_equal(src, _restored(sr, ids[-1], src, tmp_path / "last"))


def test_refs_counted_on_the_writer_thread_in_batches_and_a_backup_killed_after_its_walk(registered, tmp_path):
    """More refs than one batch of the fresh file's writer thread (optimized.py `_FRESH_BATCH`),
    and the count, checksum and change worked out there while the packer closes: the refs the
    vault records are still those counted; a backup killed once its walk is over (batches
    written, nothing recorded) leaves a vault and cache that the next backup and check accept."""
    sr = registered
    src = tmp_path / "src"
    for d in range(60):
        (src / f"d{d:02d}").mkdir(parents=True)
        for i in range(300):
            (src / f"d{d:02d}" / f"f{i}").write_bytes(b"%d/%d\n" % (d, i))
    first = sr.backup(src, "--unoptimized")
    assert len(_counted(sr)) > 18_000
    assert _refs(sr.vault, first["id"]) == _counted(sr)
    mutate(src, random.Random("batches"), 40)
    killed = sr.run("backup", src, "--unoptimized", check=False, env_extra={"STRONGROOM_TEST_HOOK": "backup-walked=kill"})
    assert killed.returncode == -9
    assert len(sr.points()) == 1
    point = sr.backup(src, "--unoptimized")
    assert _refs(sr.vault, point["id"]) == _counted(sr)
    assert sr.json("check")["ok"]
    assert_trees_equal(src, _restored(sr, point["id"], src, tmp_path / "r"))
