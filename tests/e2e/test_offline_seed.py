"""Offline seeding: the first backup written to a folder (`backup --offline-seed DIR`), carried
to the vault and imported there (`vault import-seed VAULT DIR`), then backups go on online."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from conftest import assert_clean_failure, killed_once_packs_land, packs_in, saying, setup_registered
from treeutil import assert_trees_equal, make_tricky_tree, under

MiB = 1024 * 1024


def seed_packs(seed: Path) -> list[Path]:
    return packs_in(seed)


def small_tree(src: Path, megabytes: int = 3) -> Path:
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.bin").write_bytes(os.urandom(megabytes * MiB))
    (src / "note.txt").write_text("seeded\n")
    return src


def seeded(base: Path, megabytes: int = 3, machine: str = "test-01"):
    """A registered machine whose first backup of a small tree was written to base/seed."""
    sr = setup_registered(base, machine)
    src = small_tree(base / "src", megabytes)
    result = sr.backup(src, "--offline-seed", base / "seed")
    return sr, src, base / "seed", result


def import_seed(sr, seed: Path, check: bool = True):
    return sr.run("vault", "import-seed", sr.vault, seed, check=check)


def test_seed_import_restore_and_incremental(registered, tmp_path):
    src = tmp_path / "src"
    make_tricky_tree(src)
    seed = tmp_path / "seed"
    first = registered.backup(src, "--offline-seed", seed)
    assert first["status"] == "waiting_for_seed" and first["offline_seed"] == str(seed)
    assert first["stats"]["bytes_added"] > 3 * MiB
    # Nothing was sent: the vault holds no pack and no point, and says it waits for the seed.
    assert packs_in(registered.vault) == []
    assert registered.points() == []
    assert "Waiting for seed: point " + first["id"] in registered.run("points").stdout
    job = registered.json("jobs")[0]
    assert (job["kind"], job["status"], job["point_id"]) == ("backup", "waiting_for_seed", first["id"])
    index = json.loads((seed / "seed.json").read_text())
    assert index["point"] == first["id"] and index["machine"] == "test-01"
    assert sorted(name for name, _size in index["packs"]) == sorted(p.name for p in seed_packs(seed))

    report = json.loads(registered.run("vault", "import-seed", registered.vault, seed, "--json").stdout)
    assert report["point"] == first["id"] and not report["already_imported"]
    assert report["packs_imported"] == len(index["packs"]) and report["packs_skipped"] == 0

    points = registered.points()
    assert [p["id"] for p in points] == [first["id"]]
    assert points[0]["created"] == first["created"]  # the machine's time, not the import's
    assert "Waiting for seed" not in registered.run("points").stdout
    statuses = {j["id"]: (j["kind"], j["status"]) for j in registered.json("jobs")}
    assert statuses[job["id"]] == ("backup", "completed")
    assert ("import", "completed") in statuses.values()
    assert registered.json("check", "--read-data")["ok"]

    target = tmp_path / "restored"
    registered.restore(first["id"], target=target)
    assert_trees_equal(src, under(target, src))

    # The next backup is incremental against the imported point: nothing new, little sent.
    again = registered.backup(src)["stats"]
    assert again["files_new"] == 0 and again["files_changed"] == 0 and again["files_unchanged"] > 0
    assert again["bytes_read"] == 0 and again["bytes_added"] < 64 * 1024
    (src / "added-after-seed.txt").write_bytes(b"x" * 1000)
    after = registered.backup(src)["stats"]
    assert after["files_new"] == 1 and after["bytes_added"] < 64 * 1024


def test_killed_seed_backup_runs_again_and_reuses_what_landed(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"part-{i}.bin").write_bytes(os.urandom(12 * MiB))
    seed = tmp_path / "seed"
    killed_once_packs_land(registered, ["backup", src, "--offline-seed", seed], seed, 2)
    landed = {p.name for p in seed_packs(seed)}
    assert not (seed / "seed.json").exists()

    second = registered.backup(src, "--offline-seed", seed)
    assert second["stats"]["bytes_added"] < 72 * MiB * 0.9, "packs that landed before the kill were written again"
    index = json.loads((seed / "seed.json").read_text())
    assert landed <= {name for name, _size in index["packs"]}
    assert [j["status"] for j in registered.json("jobs")] == ["waiting_for_seed", "failed"]

    import_seed(registered, seed)
    target = tmp_path / "restored"
    registered.restore("latest", target=target)
    assert_trees_equal(src, under(target, src))


def test_online_backup_before_the_import_runs_in_full_and_the_seed_becomes_the_older_point(tmp_path):
    sr, src, seed, first = seeded(tmp_path)
    (src / "note.txt").write_text("changed online before the seed arrived\n")
    online = sr.backup(src)
    assert online["stats"]["files_new"] == 2, "the online backup must not count on the seed's data"
    assert online["stats"]["bytes_added"] > 3 * MiB
    assert "Waiting for seed" in sr.run("points").stdout

    import_seed(sr, seed)
    assert [p["id"] for p in sr.points()] == [online["id"], first["id"]]
    assert sr.json("check", "--read-data")["ok"]
    target = tmp_path / "restored"
    sr.restore(first["id"], target=target)
    assert (under(target, src) / "note.txt").read_text() == "seeded\n"
    assert (under(target, src) / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()
    later = sr.backup(src)["stats"]
    assert later["files_unchanged"] == 2 and later["bytes_added"] < 64 * 1024


def test_seed_refused_for_a_machine_that_has_points(registered, tmp_path):
    src = small_tree(tmp_path / "src", 1)
    registered.backup(src)
    res = registered.run("backup", src, "--offline-seed", tmp_path / "seed", check=False)
    assert_clean_failure(res, 2, saying("has 1 recovery point", "first backup only"))


def test_seed_folder_that_is_not_empty_or_holds_a_finished_seed_is_refused(tmp_path):
    sr, src, seed, first = seeded(tmp_path)
    res = sr.run("backup", src, "--offline-seed", seed, check=False)
    assert_clean_failure(res, 2, saying("holds a finished seed already", first["id"]))
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    res = sr.run("backup", src, "--offline-seed", other, check=False)
    assert_clean_failure(res, 2, saying("not empty and not a seed folder", "holiday.jpg"))
    assert (other / "holiday.jpg").read_bytes() == b"x"


def test_seed_missing_a_pack_is_refused_and_no_point_appears(tmp_path):
    sr, _src, seed, _first = seeded(tmp_path)
    seed_packs(seed)[0].unlink()
    assert_clean_failure(import_seed(sr, seed, check=False), 1, saying("missing 1 of its", "packs"))
    assert sr.points() == []
    assert "Waiting for seed" in sr.run("points").stdout


def test_pack_with_a_flipped_byte_is_refused_then_the_repaired_seed_imports(tmp_path):
    sr, src, seed, first = seeded(tmp_path)
    pack = max(seed_packs(seed), key=lambda p: p.stat().st_size)
    original = pack.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    pack.write_bytes(damaged)
    assert_clean_failure(import_seed(sr, seed, check=False), 1, saying(f"pack {pack.name} of the seed is damaged",
                                                                       "point was not recorded"))
    assert sr.points() == []
    pack.write_bytes(original)  # copied again from the machine's disk
    import_seed(sr, seed)
    assert [p["id"] for p in sr.points()] == [first["id"]]
    assert sr.json("check", "--read-data")["ok"]


def test_seed_for_another_vault_is_refused(tmp_path):
    sr, _src, seed, _first = seeded(tmp_path / "a")
    other = setup_registered(tmp_path / "b")
    assert_clean_failure(import_seed(other, seed, check=False), 1, saying("this seed was made for vault", "not this one"))
    assert other.points() == []


def _edit_index(seed: Path, **fields) -> None:
    index = json.loads((seed / "seed.json").read_text())
    index.update(fields)
    (seed / "seed.json").write_text(json.dumps(index))


def test_seed_of_an_unregistered_or_other_machine_is_refused(tmp_path, second_machine, registered):
    sr = registered
    src = small_tree(tmp_path / "src", 1)
    seed = tmp_path / "seed"
    sr.backup(src, "--offline-seed", seed)
    other = second_machine("test-02")
    _edit_index(seed, machine="nobody-here")
    assert_clean_failure(import_seed(sr, seed, check=False), 1, saying("'nobody-here'", "not registered"))
    _edit_index(seed, machine="test-02")  # a seed that claims to be another machine's
    assert_clean_failure(import_seed(sr, seed, check=False), 1, saying("another machine named 'test-02'"))
    assert sr.points() == [] and other.points() == []


def test_seed_imported_twice_says_so_and_exits_0(tmp_path):
    sr, _src, seed, first = seeded(tmp_path)
    import_seed(sr, seed)
    res = import_seed(sr, seed)
    assert res.returncode == 0 and "imported already" in res.stdout
    assert [p["id"] for p in sr.points()] == [first["id"]]


def test_seed_imports_after_the_credentials_expired(tmp_path):
    """The operator imports with the vault's folder: credentials only register machines."""
    sr, _src, seed, first = seeded(tmp_path)
    with sqlite3.connect(sr.vault / "catalog.sqlite") as db:
        db.execute("UPDATE credentials SET expires = 0")
    late = type(sr)(tmp_path / "late-home")
    assert_clean_failure(late.run("register", "--credentials", sr.cred, "--machine", "late", check=False), 1,
                         saying("expired"))
    import_seed(sr, seed)
    assert [p["id"] for p in sr.points()] == [first["id"]]


def test_killed_import_shows_no_point_and_running_it_again_completes(tmp_path):
    sr, src, seed, first = seeded(tmp_path, megabytes=96)
    killed_once_packs_land(sr, ["vault", "import-seed", sr.vault, seed], sr.vault, 2)
    assert sr.points() == []
    assert "Waiting for seed" in sr.run("points").stdout
    report = json.loads(sr.run("vault", "import-seed", sr.vault, seed, "--json").stdout)
    assert report["packs_skipped"] >= 1 and report["packs_skipped"] + report["packs_imported"] == report["packs"]
    assert [p["id"] for p in sr.points()] == [first["id"]]
    assert sr.json("check", "--read-data")["ok"]
    target = tmp_path / "restored"
    sr.restore("latest", target=target)
    assert_trees_equal(src, under(target, src))


def test_seed_through_a_served_vault(served, served_machine, tmp_path):
    sr = served_machine("web-01")
    src = small_tree(tmp_path / "src", 2)
    seed = tmp_path / "seed"
    first = sr.backup(src, "--offline-seed", seed)
    assert [j["status"] for j in sr.json("jobs")] == ["waiting_for_seed"]
    sr.run("vault", "import-seed", served.folder, seed)  # on the vault's host, while it serves
    assert [p["id"] for p in sr.points()] == [first["id"]]
    target = tmp_path / "restored"
    sr.restore("latest", target=target)
    assert_trees_equal(src, under(target, src))
    assert sr.backup(src)["stats"]["bytes_added"] < 64 * 1024


def test_unfinished_or_damaged_seed_index_is_refused(tmp_path):
    sr, _src, seed, _first = seeded(tmp_path)
    index = (seed / "seed.json").read_bytes()
    (seed / "seed.json").write_bytes(index[: len(index) // 2])
    assert_clean_failure(import_seed(sr, seed, check=False), 1, saying("seed.json is damaged"))
    (seed / "seed.json").unlink()  # as a seed backup killed before its end leaves it
    assert_clean_failure(import_seed(sr, seed, check=False), 2, saying("holds no finished seed", "again"))
    assert sr.points() == []


def test_blobs_of_the_import_reach_a_cache_filled_before_it(tmp_path):
    """The agent's blob cache, brought up to date by an online backup before the import,
    learns the imported packs (they are indexed after it) and does not send their data again."""
    sr, src, seed, _first = seeded(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.txt").write_text("backed up online while the disk travels\n")
    sr.backup(elsewhere)
    import_seed(sr, seed)
    later = sr.backup(src, elsewhere)["stats"]
    assert later["bytes_read"] > 3 * MiB  # the newest point is the online one: the seed's files are read
    assert later["bytes_added"] < 64 * 1024, "the imported blobs were sent again"
