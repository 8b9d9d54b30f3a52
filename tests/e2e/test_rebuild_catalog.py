"""The vault cannot lose what it holds: its storage alone rebuilds the catalog.

Tried as a user would: lose, truncate, damage or roll back `catalog.sqlite`; every command
refuses in one line naming `vault rebuild-catalog`, prune deletes nothing, and after the
rebuild every point (live and soft-deleted), policy and job is back, restores give the same
trees and `check --read-data` is clean.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import msgpack

from conftest import assert_clean_failure, packs_in, saying
from treeutil import assert_trees_equal

DAY_NS = 86400 * 10**9


def _age_point(vault: Path, point_id: str, days: int) -> None:
    """Moves a point back in time, in the catalog and in its storage record alike."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET created_ns = created_ns - ? WHERE id = ?", (days * DAY_NS, point_id))
    (record,) = (vault / "points").glob(f"*/{point_id}")
    doc = msgpack.unpackb(record.read_bytes())
    doc["created_ns"] -= days * DAY_NS
    record.write_bytes(msgpack.packb(doc))


def _catalog_files(vault: Path) -> list[Path]:
    return [p for p in vault.iterdir() if p.name.startswith("catalog.sqlite")]


def _snapshot(sr) -> dict:
    return {"points": sr.points(), "deleted": sr.json("points", "--deleted"),
            "policy": sr.json("policy", "show"), "jobs": sorted(j["id"] for j in sr.json("jobs"))}


def _three_points(sr, src: Path, copies: Path, catalog_after_two: Path | None = None) -> list[str]:
    """Three points of a changing tree, each one's tree copied aside to compare restores; with
    `catalog_after_two`, a copy of the catalog as it was between the second and the third."""
    (src / "sub").mkdir(parents=True)
    (src / "shared.bin").write_bytes(os.urandom(400_000))
    ids = []
    for i in range(3):
        (src / "sub" / f"f{i}.txt").write_text(f"version {i}\n" * 1000)
        (src / "changing.bin").write_bytes(os.urandom(200_000 + i))
        ids.append(sr.backup(src)["id"])
        shutil.copytree(src, copies / ids[-1], symlinks=True)
        if i == 1 and catalog_after_two is not None:
            with sqlite3.connect(sr.vault / "catalog.sqlite") as live, sqlite3.connect(catalog_after_two) as copy:
                live.backup(copy)
    return ids


def _assert_restores(sr, src: Path, copies: Path, ids: list[str], tmp: Path) -> None:
    for pid in ids:
        target = tmp / f"restore-{pid}"
        sr.restore(pid, target=target)
        assert_trees_equal(copies / pid, target / str(src).lstrip("/"))


def _refused(res, *words: str) -> None:
    assert_clean_failure(res, 1, saying(*words))


def test_a_lost_catalog_is_refused_then_rebuilt_from_storage(registered, tmp_path):
    sr, vault = registered, registered.vault
    src, copies = tmp_path / "src", tmp_path / "copies"
    ids = _three_points(sr, src, copies)
    sr.run("policy", "set", "--include", src, "--daily", "21:00", "--keep-daily", "7")
    sr.run("policy", "set", "--include", src, "--daily", "21:00", "--keep-daily", "9")
    # The oldest point expires (soft delete): it must come back soft-deleted.
    _age_point(vault, ids[0], 30)
    assert sr.json("vault", "prune", vault)["points_expired"] == [ids[0]]
    before = _snapshot(sr)
    assert before["deleted"][0]["id"] == ids[0] and len(before["points"]) == 2
    packs_before = packs_in(vault)

    for f in _catalog_files(vault):
        f.unlink()
    for args in (["points"], ["vault", "prune", vault], ["vault", "serve", vault, "--port", "1"],
                 ["restore", "latest", "--target", tmp_path / "x"]):
        _refused(sr.run(*args, check=False), "catalog", "vault rebuild-catalog")
    assert packs_in(vault) == packs_before, "nothing may be deleted on the word of a lost catalog"
    assert not (vault / "catalog.sqlite").exists(), "no empty catalog made in place of the lost one"

    report = sr.json("vault", "rebuild-catalog", vault)
    assert (report["machines"], report["points"], report["points_deleted"]) == (1, 3, 1)
    assert report["policies"] == 2 and report["problems"] == [] and report["packs"] == len(packs_before)
    after = _snapshot(sr)
    assert after["points"] == before["points"] and after["deleted"] == before["deleted"]
    assert after["policy"] == before["policy"]
    assert set(before["jobs"]) <= set(after["jobs"])
    assert sr.json("check", "--read-data")["ok"]
    sr.run("points", "undelete", ids[0])
    _assert_restores(sr, src, copies, ids, tmp_path)
    # The agent's cache of the vault's blobs is void after a rebuild: the next backup still
    # stores only what changed, and its point checks out.
    (src / "new.txt").write_text("after the rebuild\n")
    result = sr.backup(src)
    assert result["stats"]["files_unchanged"] >= 4 and result["stats"]["files_new"] == 1
    assert sr.json("check", "--read-data")["ok"]


def test_truncated_damaged_and_older_catalogs_are_refused(registered, tmp_path):
    sr, vault = registered, registered.vault
    src, copies = tmp_path / "src", tmp_path / "copies"
    older = tmp_path / "older.sqlite"
    ids = _three_points(sr, src, copies, older)
    catalog = vault / "catalog.sqlite"
    sr.run("vault", "prune", vault)  # checkpoints the WAL: the catalog is one file
    good = catalog.read_bytes()
    packs_before = packs_in(vault)

    catalog.write_bytes(b"")  # truncated
    _refused(sr.run("vault", "prune", vault, check=False), "empty", "vault rebuild-catalog")

    catalog.write_bytes(good[:4096] + os.urandom(len(good) - 4096))  # every page but the first corrupt
    res = sr.run("vault", "prune", vault, check=False)
    _refused(res, "vault rebuild-catalog")
    assert packs_in(vault) == packs_before

    # An older copy: made before the last point, put back after it. (A point whose record alone
    # the catalog lacks, its blobs all indexed, is one whose recording a kill interrupted: taken
    # in, test_prune.py. This one's new blobs are not in the older copy either.)
    catalog.write_bytes(older.read_bytes())
    for f in _catalog_files(vault):
        if f != catalog:
            f.unlink()
    old = time.time() - 3600  # older than a write in progress could be
    for f in (vault / "points").rglob("*"):
        os.utime(f, (old, old))
    _refused(sr.run("vault", "prune", vault, check=False), "older than its storage", "vault rebuild-catalog")
    assert packs_in(vault) == packs_before

    sr.json("vault", "rebuild-catalog", vault)
    assert [p["id"] for p in sr.points()] == ids[::-1]
    _assert_restores(sr, src, copies, ids, tmp_path)


def test_rebuild_names_a_damaged_index_record_and_goes_on(registered, tmp_path):
    sr, vault = registered, registered.vault
    src, copies = tmp_path / "src", tmp_path / "copies"
    ids = _three_points(sr, src, copies)
    records = sorted((vault / "index").rglob("*"))
    records = [r for r in records if r.is_file()]
    records[0].write_bytes(b"garbage")
    records[1].unlink()
    (vault / ".catalog.sqlite.rebuild").write_bytes(b"left by a rebuild that was killed")

    first = sr.json("vault", "rebuild-catalog", vault)
    assert [p["record"] for p in first["problems"]] == [str(records[0].relative_to(vault))]
    assert first["packs_from_headers"] == 2 and first["orphan_packs"] == 0
    second = sr.json("vault", "rebuild-catalog", vault)  # run again: the same result
    for key in ("machines", "points", "packs", "blobs", "policies"):
        assert first[key] == second[key]
    assert sr.json("check", "--read-data")["ok"]
    _assert_restores(sr, src, copies, ids, tmp_path)


def test_a_deleted_or_damaged_agent_cache_is_rebuilt_from_the_vault(registered, tmp_path):
    sr = registered
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(5000))
    sr.backup(src)
    cache = sr.home / "cache" / "blobs.sqlite"
    assert cache.exists()
    cache.write_bytes(os.urandom(8192))  # damaged
    (src / "f0").write_bytes(os.urandom(5000))
    result = sr.backup(src)["stats"]
    # only the changed file (5 kB of noise) and trees are sent, not the other 95 kB again
    assert result["files_changed"] == 1 and result["bytes_added"] < 30_000
    shutil.rmtree(sr.home / "cache")  # deleted
    (src / "f1").write_bytes(os.urandom(5000))
    assert sr.backup(src)["stats"]["bytes_added"] < 30_000
    assert sr.json("check", "--read-data")["ok"]
