"""A full disk: one clear line, a non-zero exit, and a vault that stays consistent."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import Strongroom, assert_clean_failure


@pytest.fixture
def tiny_fs(tmp_path):
    """A 4 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("files", [(3, 3 * 1024 * 1024), (4000, 10 * 1024)], ids=["large", "small"])
def test_backup_to_a_full_vault_disk_fails_cleanly_and_resumes(tiny_fs, tmp_path, files):
    # Small files: five packs' worth, all sealed on the encoder thread, which once waited
    # forever for a pack buffer that a failed upload never gave back.
    count, size = files
    sr = Strongroom(tmp_path / "home")
    vault = sr.create_vault(tiny_fs / "vault")
    sr.register(sr.make_credentials(vault, tmp_path / "cred"), "tiny", vault)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        (src / f"r{i}.bin").write_bytes(os.urandom(size))

    res = sr.run("backup", src, check=False)
    assert_clean_failure(res, 1, "the vault's disk is full")
    assert "space" in res.stderr.lower() or "full" in res.stderr.lower()
    assert sr.points() == []
    assert sr.json("check")["ok"]

    # room again: the same machine's next backup completes
    subprocess.run(["mount", "-o", "remount,size=128m", str(tiny_fs)], check=True)
    assert sr.backup(src)["stats"]["files_new"] == count
    assert sr.json("check", "--read-data")["ok"]


def test_a_served_vault_on_a_full_disk_says_so_and_the_next_backup_resumes(tiny_fs, tmp_path):
    """Served, the full disk once reached the machine as "the vault answered HTTP 500" and left
    a traceback in the server's log."""
    from served import VaultServer

    admin = Strongroom(tmp_path / "admin")
    server = VaultServer(admin, admin.create_vault(tiny_fs / "vault")).start()
    try:
        sr = Strongroom(tmp_path / "home").register(server.credentials(tmp_path / "cred"), "tiny")
        src = tmp_path / "src"
        src.mkdir()
        for i in range(3):
            (src / f"r{i}.bin").write_bytes(os.urandom(3 * 1024 * 1024))

        res = sr.run("backup", src, check=False)
        assert_clean_failure(res, 1, r"^strongroom: error: the vault's disk is full \(No space left on device\)$")
        assert sr.points() == []
        assert sr.json("check")["ok"]
        log = server.log.read_text()
        assert "Traceback" not in log
        assert "PUT /api/v1/packs/" in log and "the vault's disk is full" in log

        subprocess.run(["mount", "-o", "remount,size=128m", str(tiny_fs)], check=True)
        assert sr.backup(src)["stats"]["files_new"] == 3
        assert sr.json("check", "--read-data")["ok"]
    finally:
        server.stop()


def test_a_catalog_that_cannot_grow_is_a_full_disk_not_a_bug(tiny_fs):
    """The served vault's answer when its catalog (SQLite) meets the full disk: the same
    VaultFull as a pack's, not a crash."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DatabaseError

    from strongroom.errors import VaultFull
    from strongroom.vault.storage_errors import storage_failure

    engine = create_engine(f"sqlite:///{tiny_fs / 'catalog.db'}")
    with pytest.raises(DatabaseError) as raised:
        with engine.begin() as db:
            db.execute(text("CREATE TABLE t (b BLOB)"))
            for _ in range(100):
                db.execute(text("INSERT INTO t VALUES (:b)"), {"b": os.urandom(256 * 1024)})
    engine.dispose()
    answer = storage_failure(raised.value, "POST /api/v1/points")
    assert isinstance(answer, VaultFull)
    assert str(answer) == "the vault's disk is full (its catalog cannot grow)"
    assert storage_failure(ValueError("a bug"), "GET /") is None


@pytest.mark.parametrize("big", [6 * 1024 * 1024, 17 * 1024 * 1024], ids=["buffered", "past-page-cache"])
def test_restore_to_a_full_disk_reports_the_files_it_could_not_write(registered, tiny_fs, tmp_path, big):
    """A file past restore._STAGED_MIN meets the full disk in an O_DIRECT write (a tmpfs takes
    them from Linux 6.6 on) or in a buffered one: either way reported and removed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("fits\n")
    (src / "big.bin").write_bytes(os.urandom(big))
    registered.backup(src)
    res = registered.run("restore", "latest", "--target", tiny_fs / "out", "--json", check=False)
    assert res.returncode == 3
    import json
    errors = json.loads(res.stdout)["errors"]
    assert any(e["path"].endswith("/big.bin") for e in errors)
    restored = tiny_fs / "out" / str(src).lstrip("/")
    assert (restored / "small.txt").read_text() == "fits\n"
    assert not (restored / "big.bin").exists(), "a partial file was left behind"
