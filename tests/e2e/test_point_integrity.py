"""A hostile vault operator cannot swap, reorder, relabel or roll back recovery points
unnoticed: each trick is refused with one line before anything is restored, while points
that left lawfully (deleted by this machine, expired by retention, undeleted) are accepted."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import msgpack
import pytest
from conftest import PASSPHRASE, assert_clean_failure, saying

from strongroom.agent.home import AgentHome
from strongroom.agent.points import manifest_aad, seal_manifest
from strongroom.model import decode_manifest, encode_tree

# -- the hostile vault operator -------------------------------------------------------------
# Everything below edits the embedded vault's catalog directly. The catalog's layout is the
# vault's business and changes: these two helpers are the only places that know it.

_POINT_FIELDS = ("manifest", "created_ns", "kind", "mode", "machine_id", "deleted_ns")


def point_fields(vault: Path, point_id: str) -> dict:
    """What the vault keeps of one point: its sealed manifest and its plaintext columns."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        row = db.execute(f"SELECT {', '.join(_POINT_FIELDS)} FROM points WHERE id = ?", (point_id,)).fetchone()
    assert row is not None, f"no point {point_id} in the catalog"
    return dict(zip(_POINT_FIELDS, row, strict=True))


def set_point_fields(vault: Path, point_id: str, **fields) -> None:
    """Overwrites a point's manifest or plaintext columns; `drop=True` removes the point."""
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        if fields.pop("drop", False):
            db.execute("DELETE FROM points WHERE id = ?", (point_id,))
        if fields:
            db.execute(f"UPDATE points SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*fields.values(), point_id))


def machine_row_id(vault: Path, name: str) -> int:
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        return db.execute("SELECT id FROM machines WHERE name = ?", (name,)).fetchone()[0]


# -- helpers --------------------------------------------------------------------------------


def _points(sr, tmp_path, count: int = 3) -> tuple[Path, list[str]]:
    """Backs up a file `count` times with different content ("v0", "v1"...); ids oldest first."""
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for i in range(count):
        (src / "f.txt").write_text(f"v{i}\n")
        ids.append(sr.backup(src)["id"])
    return src, ids


def _refused(sr, *args) -> str:
    """Runs a command that must be refused with exit 1 and one line about a point; its message
    (each caller checks what it says)."""
    res = sr.run(*args, check=False)
    assert_clean_failure(res, 1, saying("point"))
    return res.stderr.strip()


def _restore_refused(sr, tmp_path, point: str = "latest") -> str:
    target = tmp_path / "target"
    message = _refused(sr, "restore", point, "--target", target)
    assert not target.exists(), "nothing may be written when a restore is refused"
    return message


def _swap(vault: Path, a: str, b: str, *columns: str) -> None:
    fa, fb = point_fields(vault, a), point_fields(vault, b)
    set_point_fields(vault, a, **{c: fb[c] for c in columns})
    set_point_fields(vault, b, **{c: fa[c] for c in columns})


def _restored_text(sr, tmp_path, src: Path, point: str = "latest", name: str = "out") -> str:
    target = tmp_path / name
    sr.restore(point, target=target)
    return (target / str(src).lstrip("/") / "f.txt").read_text()


# -- normal runs ----------------------------------------------------------------------------


def test_normal_runs_pass_the_checks_and_record_the_newest_point(registered, tmp_path):
    src, ids = _points(registered, tmp_path)
    listed = registered.points()
    assert [p["id"] for p in listed] == ids[::-1]
    assert all(p["kind"] == "files" and p["mode"] == "unoptimized" for p in listed)
    assert _restored_text(registered, tmp_path, src) == "v2\n"
    assert _restored_text(registered, tmp_path, src, ids[0], "old") == "v0\n"
    assert [e["path"] for e in registered.json("ls", "latest", src / "f.txt")] == [str(src / "f.txt")]
    assert registered.json("check")["ok"]

    record = registered.home / "newest-points.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["test-01"][0] == ids[2]


# -- swaps, reorders, relabels --------------------------------------------------------------


def test_swapped_manifests_are_refused(registered, tmp_path):
    src, ids = _points(registered, tmp_path)
    _swap(registered.vault, ids[0], ids[2], "manifest")  # "latest" would now hold v0's tree
    message = _restore_refused(registered, tmp_path)
    assert message == (f"strongroom: error: the vault presents point {ids[2]} as machine test-01's, but its "
                       "sealed manifest does not open as that point: it was sealed for another point or "
                       "machine, or altered; refusing to use it")
    for args in (["points"], ["ls", "latest"], ["check"], ["backup", src]):
        assert "does not open as that point" in _refused(registered, *args), args


def test_swapped_manifests_with_their_plaintext_columns_are_refused(registered, tmp_path):
    _src, ids = _points(registered, tmp_path)
    _swap(registered.vault, ids[0], ids[2], "manifest", "created_ns", "kind", "mode")
    message = _restore_refused(registered, tmp_path)
    assert f"the vault presents point {ids[0]} as machine test-01's, but its sealed manifest does not open " \
           "as that point" in message  # now listed first, under the times it was given


def test_a_reordered_list_is_refused(registered, tmp_path):
    """Only the vault's times swapped: its "latest" is the oldest point, which opens fine."""
    _src, ids = _points(registered, tmp_path)
    _swap(registered.vault, ids[0], ids[2], "created_ns")
    message = _restore_refused(registered, tmp_path)
    assert f"the vault lists point {ids[0]}" in message and "reordered or redated" in message


def test_a_relabelled_point_is_refused(registered, tmp_path):
    _src, ids = _points(registered, tmp_path)
    set_point_fields(registered.vault, ids[1], kind="volume")
    message = _restore_refused(registered, tmp_path)
    assert message == (f"strongroom: error: the vault lists point {ids[1]} as volume/unoptimized, but it was "
                       "made as files/unoptimized: the vault altered its record; refusing to use it")


def test_a_point_of_another_machine_presented_as_this_machines_is_refused(registered, second_machine, tmp_path):
    """The other machine shares this one's key (as a cloned agent home would), so only the
    machine named in the seal tells its points apart."""
    other = second_machine("test-02")
    (other.home / "key.json").write_bytes((registered.home / "key.json").read_bytes())
    src, ids = _points(registered, tmp_path)
    (src / "f.txt").write_text("the other machine's\n")
    foreign = other.backup(src)["id"]
    set_point_fields(registered.vault, foreign, machine_id=machine_row_id(registered.vault, "test-01"))
    message = _restore_refused(registered, tmp_path)
    assert f"the vault presents point {foreign} as machine test-01's, but its sealed manifest does not open" \
           in message


def test_a_broken_chain_of_parents_is_refused(registered, tmp_path):
    """Only a holder of the key can seal such manifests (the test plays one, as a bug would):
    a parent present with another time than its child recorded, or dated after its child."""
    _src, ids = _points(registered, tmp_path)
    key = AgentHome(registered.home).master_key(PASSPHRASE)
    sealed = point_fields(registered.vault, ids[2])["manifest"]
    manifest = decode_manifest(key.open(manifest_aad("test-01", ids[2]), sealed))
    assert manifest["parent"] == ids[1]

    def reseal(**changes) -> None:
        set_point_fields(registered.vault, ids[2], manifest=seal_manifest(key, "test-01", ids[2],
                                                                           {**manifest, **changes}))
    reseal(parent_created=manifest["parent_created"] - 10**9)
    message = _restore_refused(registered, tmp_path)
    assert f"point {ids[2]} names as its parent point {ids[1]} made " in message
    assert f"but the vault presents point {ids[1]} made " in message and "chain of points is broken" in message
    reseal(parent_created=manifest["created"] + 1)
    assert f"point {ids[2]} names as its parent point {ids[1]}, made after it" in _restore_refused(registered,
                                                                                                   tmp_path)
    reseal()
    assert registered.json("ls", "latest")


# -- rollback and hidden points --------------------------------------------------------------


def test_hiding_the_newest_point_is_refused(registered, tmp_path):
    src, ids = _points(registered, tmp_path)
    set_point_fields(registered.vault, ids[2], drop=True)
    message = _restore_refused(registered, tmp_path)
    assert message.startswith(f"strongroom: error: the vault presents point {ids[1]} (made ")
    assert f"as the newest of test-01, but this machine made point {ids[2]} on " in message
    assert "the vault may have been rolled back" in message
    # A backup would hide the rollback under a new point: refused too.
    assert "rolled back" in _refused(registered, "backup", src)
    assert "rolled back" in _refused(registered, "points")


def test_a_vault_emptied_or_soft_deleting_the_newest_point_itself_is_refused(registered, tmp_path):
    _src, ids = _points(registered, tmp_path)
    set_point_fields(registered.vault, ids[2], deleted_ns=point_fields(registered.vault, ids[2])["created_ns"])
    assert f"this machine made point {ids[2]}" in _restore_refused(registered, tmp_path)
    for pid in ids:
        set_point_fields(registered.vault, pid, drop=True)
    message = _restore_refused(registered, tmp_path)
    assert "the vault presents no points of test-01, but this machine made point" in message


def test_a_rolled_back_vault_is_caught_when_restoring_from_another_machine(registered, second_machine, tmp_path):
    other = second_machine("test-02")
    _src, ids = _points(other, tmp_path, 2)
    from_other = ["--from-machine", "test-02"]
    assert [p["id"] for p in registered.json("points", *from_other)] == ids[::-1]  # seen here now
    record = json.loads((registered.home / "newest-points.json").read_text())
    assert record["test-02"][0] == ids[1] and "test-01" not in record

    set_point_fields(registered.vault, ids[1], drop=True)
    target = tmp_path / "target"
    message = _refused(registered, "restore", "latest", "--target", target, *from_other)
    assert not target.exists()
    assert f"as the newest of test-02, but machine test-02 made point {ids[1]} on " in message


def test_a_swapped_manifest_is_caught_when_restoring_from_another_machine(registered, second_machine, tmp_path):
    other = second_machine("test-02")
    _src, ids = _points(other, tmp_path)
    _swap(registered.vault, ids[0], ids[2], "manifest")
    res = registered.run("restore", "latest", "--target", tmp_path / "t", "--from-machine", "test-02", check=False)
    assert_clean_failure(res, 1, saying("sealed manifest does not open as that point"))
    assert "as machine test-02's, but its sealed manifest does not open as that point" in res.stderr


# -- points that leave lawfully ---------------------------------------------------------------


def test_deleting_the_data_then_undeleting_is_not_taken_for_a_rollback(registered, tmp_path):
    src, ids = _points(registered, tmp_path)
    pin = registered.run("vault", "pin", registered.vault, "--machine", registered.machine, "--act", "delete-data").stdout.strip()
    registered.run("protection", "stop", "--delete-data", "--pin", pin)
    assert registered.points() == []
    registered.run("points", "undelete", ids[0])
    assert _restored_text(registered, tmp_path, src) == "v0\n"  # the oldest is "latest" now, lawfully
    registered.run("points", "undelete", ids[2])
    assert _restored_text(registered, tmp_path, src, name="again") == "v2\n"
    # Seen again, the undeleted newest point is expected again.
    set_point_fields(registered.vault, ids[2], drop=True)
    assert f"this machine made point {ids[2]}" in _restore_refused(registered, tmp_path)


def test_a_newest_point_expired_by_retention_is_not_taken_for_a_rollback(registered, tmp_path):
    """Weekly retention keeps each week's first point; a second one that week is kept no time,
    so pruning expires the newest point: the agent works that out from its policy."""
    src, ids = _points(registered, tmp_path, 2)
    registered.run("policy", "set", "--include", src, "--keep-weekly", "4", "--timezone", "UTC")
    expired = registered.json("vault", "prune", registered.vault)["points_expired"]
    if expired != [ids[1]]:
        pytest.skip("the two backups fell into two weeks (a week began between them)")
    assert _restored_text(registered, tmp_path, src) == "v0\n"
    # Under the default retention (every point kept 30 days) the same disappearance is a rollback.
    registered.run("policy", "set", "--include", src, "--keep-weekly", "4", "--keep-daily", "30",
                   "--timezone", "UTC")
    (src / "f.txt").write_text("v2\n")
    newest = registered.backup(src)["id"]
    set_point_fields(registered.vault, newest, drop=True)
    assert f"this machine made point {newest}" in _restore_refused(registered, tmp_path)


def test_an_older_manifest_format_is_refused_with_one_line(registered, tmp_path):
    _src, ids = _points(registered, tmp_path)
    key = AgentHome(registered.home).master_key(PASSPHRASE)
    old = key.seal(b"strongroom point manifest v1", msgpack.packb(
        {"v": 1, "tree": key.blob_id(encode_tree([])), "sources": [b"/"], "excludes": [], "host": "h",
         "parent": None, "warnings": []}, use_bin_type=True))
    set_point_fields(registered.vault, ids[0], manifest=old)
    message = _refused(registered, "points")
    assert message == (f"strongroom: error: point {ids[0]} has a manifest of format 1 (an older Strongroom); "
                       "this version reads format 2 only: back up into a new vault")
