"""`strongroom stats` (sizes checked against files the test writes and against the vault's own
catalog and packs) and `strongroom forget` (PIN, soft delete and undelete, the last point,
immutable vaults), embedded and served."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from conftest import Strongroom, assert_clean_failure, packs_in, saying

A = os.urandom(100_000)
C = bytes(200_000)  # compresses to almost nothing
D = os.urandom(50_000)
E = os.urandom(9 * 1024 * 1024)  # at least three chunks: chunker.MAX_SIZE is 4 MiB (3 MiB could be one)


def pin(sr: Strongroom, vault: Path | str, *extra: str) -> str:
    return sr.run("vault", "pin", vault, "--machine", sr.machine, "--act", "delete-data", *extra).stdout.strip()


def two_points(sr: Strongroom, src: Path) -> tuple[str, str]:
    src.mkdir()
    (src / "a.bin").write_bytes(A)
    (src / "b.bin").write_bytes(A)  # a copy: deduplicated
    (src / "zeros").write_bytes(C)
    (src / "e.bin").write_bytes(E)
    first = sr.backup(src)["id"]
    (src / "d.bin").write_bytes(D)
    second = sr.backup(src)["id"]
    return first, second


def catalog(vault: Path, sql: str) -> list:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return db.execute(sql).fetchall()


def test_stats_of_a_point_and_of_the_machine(registered, tmp_path):
    sr, src = registered, tmp_path / "src"
    first, second = two_points(sr, src)
    one = sr.json("stats", first)
    e_blobs = one["data_blobs"] - 2
    assert e_blobs > 1
    assert (one["point"], one["files"], one["logical_bytes"]) == (first, 4, 400_000 + len(E))
    assert one["unique_bytes"] == 300_000 + len(E) and one["unique_bytes_estimated"] is False
    assert one["dedup_ratio"] == round((400_000 + len(E)) / (300_000 + len(E)), 3)
    assert one["data_stored_bytes"] < 110_000 + len(E) + 29 * e_blobs  # the zeros compressed
    assert one["compression_ratio"] >= round((300_000 + len(E)) / (110_000 + len(E) + 29 * e_blobs), 3)
    # Only its trees (the root and each folder down to src) are its own: the data is in the second point too.
    assert one["freed_if_forgotten_blobs"] == len(src.parts)
    assert 0 < one["freed_if_forgotten_bytes"] < one["stored_bytes"] - one["data_stored_bytes"] + 1
    two = sr.json("stats", "latest")
    assert two["point"] == second and two["freed_if_forgotten_blobs"] == len(src.parts) + 1  # + d.bin
    assert two["freed_if_forgotten_bytes"] > len(D)
    machine = sr.json("stats")
    assert (machine["machine"], machine["points"], machine["files"]) == (sr.machine, 2, 9)
    assert machine["logical_bytes"] == 400_000 + 450_000 + 2 * len(E)
    assert machine["unique_bytes"] == 350_000 + len(E)
    (blobs, stored), = catalog(sr.vault, "SELECT count(*), sum(length) FROM blobs")
    assert (machine["blobs"], machine["stored_bytes"]) == (blobs, stored)
    assert machine["packs_bytes"] == sum(p.stat().st_size for p in packs_in(sr.vault))
    assert machine["missing_blobs"] == 0
    text = sr.run("stats", first).stdout
    assert f"Point {first}:" in text and "unique size:       9.3 MiB" in text and "freed if forgotten" in text


def test_forget_needs_a_pin_and_is_undone_by_undelete(registered, tmp_path):
    sr, src = registered, tmp_path / "src"
    first, second = two_points(sr, src)
    assert_clean_failure(sr.run("forget", "latest", check=False), 1, saying("needs a PIN", "--act delete-data"))
    assert_clean_failure(sr.run("forget", "latest", "--pin", "00000000", check=False), 1, saying("PIN is wrong"))
    done = sr.json("forget", "latest", "--pin", pin(sr, sr.vault))
    assert done == {"forgotten": [second], "soft_delete_days": 14}
    assert [p["id"] for p in sr.points()] == [first]  # no rollback alarm: this home forgot it itself
    assert [p["id"] for p in sr.json("points", "--deleted")] == [second]
    assert sr.json("stats", first)["freed_if_forgotten_blobs"] > len(src.parts)  # now it alone keeps the data
    sr.run("points", "undelete", second)
    assert [p["id"] for p in sr.points()] == [second, first]
    assert sr.backup(src)["id"]  # and backups go on


def test_a_forget_killed_before_or_after_the_vault_acts_leaves_listings_working(registered, tmp_path):
    sr, src = registered, tmp_path / "src"
    first, second = two_points(sr, src)
    code = pin(sr, sr.vault)
    before = sr.run("forget", "latest", "--pin", code, check=False, env_extra={"STRONGROOM_TEST_HOOK": "forget.noted=kill"})
    assert before.returncode == -9
    assert [p["id"] for p in sr.points()] == [second, first]  # nothing deleted; the newest is noted again
    after = sr.run("forget", "latest", "--pin", code, check=False, env_extra={"STRONGROOM_TEST_HOOK": "forget.done=kill"})
    assert after.returncode == -9
    assert [p["id"] for p in sr.points()] == [first]  # deleted by this home: not taken for a rollback
    assert [p["id"] for p in sr.json("points", "--deleted")] == [second]


def test_forget_refusals_are_one_line(registered, tmp_path):
    sr, src = registered, tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    only = sr.backup(src)["id"]
    code = pin(sr, sr.vault)
    assert_clean_failure(sr.run("forget", only, "--pin", code, check=False), 2,
                         saying("only recovery point", "retention never removes", "protection stop --delete-data"))
    assert_clean_failure(sr.run("forget", "beef0", "--pin", code, check=False), 2, saying("no recovery point 'beef0'"))
    second = sr.backup(src)["id"]
    assert_clean_failure(sr.run("forget", only, second, "--pin", code, check=False), 2,
                         saying("all 2 of this machine's recovery points"))
    assert sr.json("forget", only, only[:4], "--pin", code)["forgotten"] == [only]  # the PIN was not spent before


def test_an_immutable_vault_refuses_before_expiry_and_allows_after(registered, tmp_path):
    sr, src = registered, tmp_path / "src"
    first, second = two_points(sr, src)
    sr.run("policy", "set", "--include", src, "--keep-daily", "7")
    sr.run("vault", "settings", sr.vault, "--immutable")
    assert_clean_failure(sr.run("forget", first, "--pin", pin(sr, sr.vault), check=False), 1,
                         saying("immutable", f"point {first} is kept until", "before it expires"))
    month_ago = time.time_ns() - 30 * 86400 * 10**9  # as if made 30 days ago (the vault's clock)
    with sqlite3.connect(sr.vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET created_ns = ? WHERE id = ?", (month_ago, first))
    assert sr.json("forget", first, "--pin", pin(sr, sr.vault))["forgotten"] == [first]


def test_stats_and_forget_on_a_served_vault(served, served_machine, tmp_path):
    web = served_machine("web-01")
    first, second = two_points(web, tmp_path / "src")
    assert web.json("stats", first)["unique_bytes"] == 300_000 + len(E)
    assert web.json("stats")["points"] == 2
    code = pin(web, served.url, "--admin-token-file", served.folder / "admin.token", "--fingerprint",
               served.fingerprint)
    assert_clean_failure(web.run("forget", first, check=False), 1, saying("needs a PIN"))
    assert web.json("forget", first[:8], "--pin", code)["forgotten"] == [first]
    assert [p["id"] for p in web.json("points", "--deleted")] == [first]
