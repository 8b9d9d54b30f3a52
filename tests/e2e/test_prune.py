"""Retention enforced by the vault without the key: expiry by policy, soft delete, undelete,
purge after the grace period, and space reclaimed while every remaining point restores."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time

import pytest

from conftest import assert_clean_failure
from treeutil import assert_trees_equal

DAY_NS = 86400 * 10**9


def _age(vault, column: str, days: int, point_ids: list[str]) -> None:
    """Moves points back in time (the catalog is the vault's clock for them)."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.executemany(f"UPDATE points SET {column} = {column} - ? WHERE id = ?",
                       [(days * DAY_NS, pid) for pid in point_ids])


def _vault_bytes(vault) -> int:
    return sum(p.stat().st_size for p in (vault / "packs").rglob("*") if p.is_file())


def _two_days_on(vault) -> None:
    """The next day's prune: every file of the vault's storage is that old by then."""
    day_ago = time.time() - 2 * 86400
    for path in vault.rglob("*"):
        if path.is_file() and path.name != "catalog.sqlite":
            os.utime(path, (day_ago, day_ago))


def _backup_killed_at(sr, tmp_path, step: str):
    """A first backup of a folder of one file, killed (-9) at test hook `step`: no point listed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(2_000_000))
    killed = sr.run("backup", src, check=False, env_extra={"STRONGROOM_TEST_HOOK": f"{step}=kill"})
    assert killed.returncode == -9, killed.stderr
    assert sr.points() == []
    return src


def test_prune_expires_soft_deletes_purges_and_reclaims(registered, tmp_path):
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "shared.bin").write_bytes(os.urandom(1_000_000))
    ids = []
    for i in range(3):
        (src / "changing.bin").write_bytes(os.urandom(3_000_000 + i))
        ids.append(sr.backup(src)["id"])
    sr.run("policy", "set", "--include", src, "--daily", "21:00", "--keep-daily", "7")
    _age(vault, "created_ns", 10, ids[:2])

    report = sr.json("vault", "prune", vault, "--dry-run")
    assert sorted(report["points_expired"]) == sorted(ids[:2]) and report["packs_deleted"] == 0
    assert [p["id"] for p in sr.points()] == ids[::-1]  # a dry run changes nothing

    before = _vault_bytes(vault)
    report = sr.json("vault", "prune", vault)
    assert sorted(report["points_expired"]) == sorted(ids[:2])
    assert [p["id"] for p in sr.points()] == [ids[2]]
    assert sorted(p["id"] for p in sr.json("points", "--deleted")) == sorted(ids[:2])
    assert _vault_bytes(vault) == before, "soft-deleted points keep their data"
    assert [j["kind"] for j in sr.json("jobs")][0] == "prune"

    # Undeleted, a point restores; the next prune expires it again (it is still too old).
    sr.run("points", "undelete", ids[0])
    target = tmp_path / "r0"
    sr.restore(ids[0], target=target)
    assert (target / str(src).lstrip("/") / "shared.bin").read_bytes() == (src / "shared.bin").read_bytes()
    assert sr.json("vault", "prune", vault)["points_expired"] == [ids[0]]
    assert_clean_failure(sr.run("points", "undelete", ids[2], check=False), 2, "no deleted point")

    # After the grace period the deleted points are purged and their space reclaimed.
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET deleted_ns = deleted_ns - ? WHERE deleted_ns IS NOT NULL", (15 * DAY_NS,))
    report = sr.json("vault", "prune", vault)
    assert sorted(report["points_purged"]) == sorted(ids[:2])
    assert report["packs_deleted"] + report["packs_repacked"] > 0
    after = _vault_bytes(vault)
    assert after < before - 5_000_000, (before, after)
    assert report["bytes_before"] == before and report["bytes_after"] == after
    assert sr.json("points", "--deleted") == []

    assert sr.json("check", "--read-data")["ok"]
    target = tmp_path / "r2"
    sr.restore("latest", target=target)
    assert_trees_equal(src, target / str(src).lstrip("/"))
    # A prune with nothing to do changes nothing.
    again = sr.json("vault", "prune", vault)
    assert again["points_purged"] == [] and again["packs_deleted"] == 0 and again["bytes_after"] == after


def test_policy_is_versioned_in_the_vault_and_checked(registered, tmp_path):
    sr = registered
    assert sr.json("policy", "show") is None
    doc = sr.json("policy", "set", "--include", "/srv", "--weekly", "mon,thu", "--at", "21:00",
                  "--every-weeks", "2", "--keep-weekly", "12", "--keep-yearly", "5", "--throttle-work", "4MiB/s",
                  "--timezone", "Europe/Berlin")
    assert doc["version"] == 1 and doc["policy"]["schedule"]["days"] == ["mon", "thu"]
    assert doc["policy"]["throttle_work"] == 4 * 1024 * 1024
    # Dropping the weekly and yearly tiers shortens retention: that needs a PIN, used once.
    refused = sr.run("policy", "set", "--include", "/srv", "--daily", "09:00", check=False)
    assert_clean_failure(refused, 1, "shortening retention needs a PIN")
    assert "needs a PIN" in refused.stderr
    pin = sr.run("vault", "pin", sr.vault, "--machine", sr.machine, "--act", "shorten-retention").stdout.strip()
    assert len(pin) == 8 and pin.isdigit()
    assert sr.json("policy", "set", "--include", "/srv", "--daily", "09:00", "--pin", pin)["version"] == 2
    reused = sr.run("policy", "set", "--include", "/srv", "--daily", "09:00", "--keep-daily", "7", "--pin", pin,
                    check=False)
    assert_clean_failure(reused, 1, "that PIN is wrong, used already, older than 5 minutes")
    assert "used already" in reused.stderr
    assert sr.json("policy", "show")["version"] == 2
    for bad, message in ((["--keep-daily", "3"], "daily retention must be 7 to 9999, not 3"),
                         (["--daily", "09:00,10:00,11:00,12:00"], "a schedule has 1 to 3 times a day"),
                         (["--throttle-work", "10KiB/s"], "a bandwidth limit is 512 Kbit/s or more"),
                         (["--weekly", "someday", "--at", "09:00"], "'someday' is not a day"),
                         (["--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'")):
        assert_clean_failure(sr.run("policy", "set", "--include", "/srv", *bad, check=False), 2, message)
    assert sr.json("policy", "show")["version"] == 2


def test_bandwidth_limit_holds_the_upload_rate(registered, tmp_path):
    """6 MiB at 512 KiB/s: the bucket lets at most a second's worth through at once, so the
    backup cannot take under 11 s however fast the machine, while the same backup without a
    limit takes a second or two: a limit that does nothing fails, whatever the load."""
    import time

    sr = registered
    limit = 512 * 1024
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    sr.run("policy", "set", "--include", src, "--throttle-work", "512KiB/s", "--throttle-off", "512KiB/s")
    started = time.monotonic()
    stats = sr.backup(src)["stats"]
    took = time.monotonic() - started
    assert took >= (stats["bytes_added"] - limit) / limit, f"{stats['bytes_added']} bytes in {took:.1f} s"
    assert stats["bytes_added"] / took > 0.3 * limit, f"{stats['bytes_added'] / took / 1024:.0f} KiB/s"
    sr.run("policy", "set", "--include", src)  # unlimited again
    (src / "r2.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    started = time.monotonic()
    sr.backup(src)
    assert time.monotonic() - started < took / 2


def test_immutable_vault_refuses_deletion_and_shortening_and_retain_until_outlives_the_policy(registered, tmp_path):
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("kept")
    kept = sr.backup(src, "--retain-until", "2099-12-31")["id"]
    plain = sr.backup(src)["id"]
    sr.backup(src)
    sr.run("policy", "set", "--include", src, "--keep-daily", "7")
    _age(vault, "created_ns", 30, [kept, plain])
    assert sr.json("vault", "prune", vault)["points_expired"] == [plain]
    assert kept in [p["id"] for p in sr.points()]

    assert sr.json("vault", "settings", vault, "--soft-delete-days", "30", "--immutable") == {
        "soft_delete_days": 30, "immutable": True}
    for args in (["vault", "settings", vault, "--soft-delete-days", "14"],):
        assert_clean_failure(sr.run(*args, check=False), 1, "the soft-delete period cannot be shortened")
    pin = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "shorten-retention").stdout.strip()
    res = sr.run("policy", "set", "--include", src, "--keep-daily", "7", "--keep-weekly", "4", check=False)
    assert res.returncode == 0  # lengthening is always allowed
    res = sr.run("policy", "set", "--include", src, "--keep-daily", "7", "--pin", pin, check=False)
    assert_clean_failure(res, 1, "this vault is immutable: retention cannot be shortened")
    pin = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data").stdout.strip()
    res = sr.run("protection", "stop", "--delete-data", "--pin", pin, check=False)
    assert_clean_failure(res, 1, "this vault is immutable: no point may be deleted before it expires")
    sr.run("protection", "stop", "--keep-data")
    assert "protection stopped" in sr.run("policy", "show").stdout
    _age(vault, "created_ns", 400, [p["id"] for p in sr.points()])
    assert sr.json("vault", "prune", vault)["points_expired"] == []  # stopped with the data kept


def test_protection_stop_with_delete_needs_a_pin_and_soft_deletes(registered, tmp_path):
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    sr.backup(src)
    assert_clean_failure(sr.run("protection", "stop", "--delete-data", check=False), 1,
                         "deleting backup data needs a PIN")
    pin = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data").stdout.strip()
    sr.run("protection", "stop", "--delete-data", "--pin", pin)
    assert sr.points() == [] and len(sr.json("points", "--deleted")) == 1


@pytest.mark.parametrize("step", ["prune-drop-indexed", "prune-repack-stored", "prune-repack-indexed"])
def test_a_prune_killed_at_each_step_loses_nothing_and_the_next_day_s_one_cleans_up(registered, tmp_path, step):
    """kill -9 between a prune's durable steps: after the catalog dropped a pack, after a repack
    stored its new pack, after the catalog moved the blobs to it (the old pack not yet deleted).
    Each once left an index record the catalog did not know: 15 minutes on, every prune refused
    ("the vault's catalog is older than its storage"), until `vault rebuild-catalog`."""
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(1_000_000))
    (src / "gone.bin").write_bytes(os.urandom(3_000_000))
    first = sr.backup(src)["id"]  # a pack of kept.bin and gone.bin: repacked once gone.bin is not needed
    (src / "gone.bin").unlink()
    (src / "alone.bin").write_bytes(os.urandom(2_000_000))
    second = sr.backup(src)["id"]  # a pack of alone.bin only: dropped
    (src / "alone.bin").unlink()
    sr.backup(src)
    code = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data").stdout.strip()
    sr.run("forget", first, second, "--pin", code)
    _age(vault, "deleted_ns", 15, [first, second])

    killed = sr.run("vault", "prune", vault, check=False, env_extra={"STRONGROOM_TEST_HOOK": f"{step}=kill"})
    assert killed.returncode == -9, killed.stderr
    assert sr.json("check", "--read-data")["ok"]
    sr.restore("latest", target=tmp_path / "r1")
    assert_trees_equal(src, tmp_path / "r1" / str(src).lstrip("/"))
    # Not refused for the dead prune's lease ("another prune of this machine is running") for 90 s
    assert sr.backup(src)["stats"]["files_unchanged"] == 1
    assert [j["status"] for j in sr.json("jobs") if j["kind"] == "prune"] == ["failed"]

    _two_days_on(vault)
    report = sr.json("vault", "prune", vault)
    assert report["busy_machines"] == []
    if step != "prune-repack-stored":  # (else the repack made again may be the same pack, by name)
        assert report["orphans_deleted"] == 1, report  # the dropped pack, or the one repacked
    assert sr.json("check", "--read-data")["ok"]
    sr.restore("latest", target=tmp_path / "r2")
    assert_trees_equal(src, tmp_path / "r2" / str(src).lstrip("/"))
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        indexed = {name for (name,) in db.execute("SELECT name FROM packs")}
    stored = {p.name for p in (vault / "packs").rglob("*") if p.is_file()}
    assert stored == indexed, f"packs left behind: {sorted(stored - indexed)}"
    records = {p.name for p in (vault / "index").rglob("*") if p.is_file()}
    assert records == indexed, f"index records apart from the catalog's packs: {sorted(records ^ indexed)}"


def test_a_damaged_pack_is_not_repacked_into_one_whose_name_vouches_for_it(registered, tmp_path):
    """A repack copied a damaged pack's envelopes into a new pack named by their BLAKE3: the
    vault's check by the packs' names no longer saw the damage."""
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(1_000_000))
    (src / "gone.bin").write_bytes(os.urandom(3_000_000))
    first = sr.backup(src)["id"]
    (src / "gone.bin").unlink()
    sr.backup(src)
    code = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data").stdout.strip()
    sr.run("forget", first, "--pin", code)
    _age(vault, "deleted_ns", 15, [first])
    packs = sorted((vault / "packs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    damaged = packs[-1]  # the 4 MB pack of kept.bin and gone.bin
    with open(damaged, "r+b") as f:
        f.seek(2_000_000)
        byte = f.read(1)
        f.seek(2_000_000)
        f.write(bytes([byte[0] ^ 0x01]))

    res = sr.run("vault", "prune", vault, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"strongroom: warning: pack {damaged.name} is damaged (its content does not "
                                       "match its name): not repacked; `strongroom check --read-data` reports what "
                                       "it holds"]
    report = sr.json("vault", "prune", vault)
    assert report["damaged_packs"] == [damaged.name] and report["packs_repacked"] == 0
    assert damaged.exists()
    check = sr.json("check", "--read-data", check=False)
    assert not check["ok"] and damaged.name in json.dumps(check["errors"])


def test_a_store_killed_between_its_index_record_and_the_catalog_does_not_stop_later_prunes(registered, tmp_path):
    """A backup (its embedded vault in the same process) or a vault server killed after a pack's
    index record was stored and before the catalog took its rows: 15 minutes on, every prune
    refused ("the vault's catalog is older than its storage"), until `vault rebuild-catalog`."""
    sr, vault = registered, registered.vault
    src = _backup_killed_at(sr, tmp_path, "pack-index-stored")
    (src / "a.bin").unlink()
    (src / "b.bin").write_bytes(os.urandom(1_000_000))
    sr.backup(src)

    _two_days_on(vault)
    report = sr.json("vault", "prune", vault)
    assert report["packs_deleted"] == 1, report  # the killed store's pack: no point needs it
    assert sr.json("check", "--read-data")["ok"]
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        indexed = {name for (name,) in db.execute("SELECT name FROM packs")}
    assert {p.name for p in (vault / "packs").rglob("*") if p.is_file()} == indexed
    assert {p.name for p in (vault / "index").rglob("*") if p.is_file()} == indexed


def test_a_point_whose_recording_a_kill_interrupted_is_taken_in_not_held_against_the_catalog(registered,
                                                                                            tmp_path):
    """A backup on an embedded vault (or a vault server) killed after the point's record was
    stored and before the catalog's row: 15 minutes on, every prune refused ("the vault's catalog
    is older than its storage"). The point is whole: its record, refs and blobs are all stored."""
    sr, vault = registered, registered.vault
    src = _backup_killed_at(sr, tmp_path, "point-record-stored")

    _two_days_on(vault)
    sr.json("vault", "prune", vault)
    [point] = sr.points()
    sr.restore(point["id"], target=tmp_path / "out")
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))
    assert sr.backup(src)["stats"]["files_unchanged"] == 1
    assert sr.json("check", "--read-data")["ok"]


def test_a_deleted_point_without_its_catalog_row_is_purged_once_long_deleted_and_never_taken_in(registered,
                                                                                               tmp_path):
    """A purge killed after the catalog dropped a point's row and before its records went: once
    the point was deleted longer ago than the soft-delete period, the next prune finishes the
    purge; before that, the catalog lacking the row is older than storage, and a point marked
    deleted is never taken back in as a live one (as an interrupted recording is)."""
    sr, vault = registered, registered.vault
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    first = sr.backup(src)["id"]
    (src / "a.txt").write_text("two\n")
    second = sr.backup(src)["id"]
    code = sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data").stdout.strip()
    sr.run("forget", first, "--pin", code)
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("DELETE FROM points WHERE id = ?", (first,))
    _two_days_on(vault)
    assert_clean_failure(sr.run("vault", "prune", vault, check=False), 1, "older than its storage")
    assert [p["id"] for p in sr.points()] == [second]

    [mark] = (vault / "deleted").rglob(first)
    doc = json.loads(mark.read_text())
    doc["deleted_ns"] -= 15 * DAY_NS  # the soft-delete period (14 days) is over
    mark.write_text(json.dumps(doc))
    _two_days_on(vault)
    sr.json("vault", "prune", vault)
    assert not list((vault / "points").rglob(first)) and not list((vault / "deleted").rglob(first))
    assert [p["id"] for p in sr.points()] == [second]



def _registered_after_a_killed_registration(sr, tmp_path):
    """`register` killed after the machine's record was stored and before the catalog's row,
    then run again under the same name; a backup of a small folder."""
    vault = sr.create_vault(tmp_path / "vault")
    cred = sr.make_credentials(vault, tmp_path / "cred")
    killed = sr.run("register", "--credentials", cred, "--machine", "test-01", check=False,
                    env_extra={"STRONGROOM_TEST_HOOK": "machine-record-stored=kill"})
    assert killed.returncode == -9, killed.stderr
    time.sleep(1.1)  # records say when in seconds
    sr.register(cred, "test-01", vault)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    sr.backup(src)
    assert len(list((vault / "machines").rglob("*.json"))) == 2
    return vault, src


def _restores_and_backs_up(sr, src, out) -> None:
    sr.restore("latest", target=out)
    assert_trees_equal(src, out / str(src).lstrip("/"))
    assert sr.backup(src)["stats"]["files_unchanged"] == 1


def test_a_registration_killed_before_its_catalog_row_does_not_stop_later_prunes(sr, tmp_path):
    """15 minutes on, the orphan record (a machine that never held data) made every prune and
    `vault serve` refuse ("the vault's catalog is older than its storage"). It is deleted."""
    vault, src = _registered_after_a_killed_registration(sr, tmp_path)
    _two_days_on(vault)
    sr.json("vault", "prune", vault)
    assert len(list((vault / "machines").rglob("*.json"))) == 1
    report = sr.json("vault", "rebuild-catalog", vault)
    assert (report["machines"], report["problems"]) == (1, []), report
    _restores_and_backs_up(sr, src, tmp_path / "out")


def test_a_rebuild_leaves_out_a_registration_that_never_finished(sr, tmp_path):
    """The catalog lost before any prune: the rebuild met two machine records of one name, and
    stopped on the catalog's rule that names are unique."""
    vault, src = _registered_after_a_killed_registration(sr, tmp_path)
    (vault / "catalog.sqlite").unlink()
    report = sr.json("vault", "rebuild-catalog", vault)
    assert report["machines"] == 1 and report["points"] == 1, report
    assert [p["error"] for p in report["problems"]] == [
        "a registration of 'test-01' that never finished (another record holds the name); left out"]
    _restores_and_backs_up(sr, src, tmp_path / "out")


def test_a_rebuild_keeps_both_machines_of_records_that_share_a_name(registered, second_machine, tmp_path):
    """A storage written by hand (or by a bug) with two machines of one name that both hold
    points: neither machine's points are lost; the later one is renamed."""
    sr, vault = registered, registered.vault
    other = second_machine("test-02")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    sr.backup(src)
    other.backup(src)
    [record] = [p for p in (vault / "machines").rglob("*.json") if json.loads(p.read_text())["name"] == "test-02"]
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "name": "test-01"}))
    (vault / "catalog.sqlite").unlink()
    report = sr.json("vault", "rebuild-catalog", vault)
    assert report["machines"] == 2 and report["points"] == 2, report
    [problem] = report["problems"]
    assert re.fullmatch("another record holds the name 'test-01'; renamed test-01-[0-9a-f]{16}", problem["error"])
