"""A full disk: one clear line, a non-zero exit, and a vault that stays consistent."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASE, Strongroom, assert_clean_failure
from treeutil import assert_trees_equal

from strongroom.agent.blobcache import KnownBlobs
from strongroom.agent.home import AgentHome
from strongroom.agent.packer import Packer
from strongroom.packs import KIND_DATA


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


@pytest.fixture
def served_on_tiny(tiny_fs, tmp_path):
    """A vault on the tmpfs, served; a machine registered with it; an empty source folder."""
    from served import VaultServer

    admin = Strongroom(tmp_path / "admin")
    server = VaultServer(admin, admin.create_vault(tiny_fs / "vault")).start()
    sr = Strongroom(tmp_path / "home").register(server.credentials(tmp_path / "cred"), "tiny")
    src = tmp_path / "src"
    src.mkdir()
    yield server, sr, src
    server.stop()


@pytest.fixture
def one_file_on_tiny(tiny_fs, tmp_path):
    """A vault on the tmpfs, a machine registered with it, a source folder of one file."""
    sr = Strongroom(tmp_path / "home")
    vault = sr.create_vault(tiny_fs / "vault")
    sr.register(sr.make_credentials(vault, tmp_path / "cred"), "tiny", vault)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a file\n")
    return sr, vault, src


def _fill(folder) -> None:
    """Takes every last block of the file system `folder` is on."""
    with open(folder / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
        while True:
            filler.write(b"\0" * 4096)


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


def test_a_served_vault_on_a_full_disk_says_so_and_the_next_backup_resumes(served_on_tiny, tiny_fs):
    """Served, the full disk once reached the machine as "the vault answered HTTP 500" and left
    a traceback in the server's log."""
    server, sr, src = served_on_tiny
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


def test_an_embedded_vault_whose_disk_is_full_still_lists_checks_and_restores(one_file_on_tiny, tiny_fs, tmp_path):
    """With no room for the catalog's shared-memory file, every command said "the vault's catalog
    is unreadable (disk I/O error); run `strongroom vault rebuild-catalog`" (a restore too: a
    full backup disk kept the user from their files), and that rebuild said "internal error"
    and left its half-built catalog beside the real one."""
    sr, vault, src = one_file_on_tiny
    os.chmod(src / "a.txt", 0o640)
    point = sr.backup(src)["id"]
    _fill(tiny_fs)

    assert [p["id"] for p in sr.points()] == [point]
    assert sr.json("check", "--read-data")["ok"]
    res = sr.run("restore", "latest", "--target", tmp_path / "out", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        "strongroom: warning: the vault could not record this restore as a job: the vault's disk is full: the "
        "vault can be read, not written, until room is made"]
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))
    assert_clean_failure(sr.run("backup", src, check=False), 1, r"^strongroom: error: the vault's disk is full: "
                         r"the vault can be read, not written, until room is made$")
    before = sorted(p.name for p in vault.iterdir())
    assert_clean_failure(sr.run("vault", "rebuild-catalog", vault, check=False), 1,
                         r"^strongroom: error: the vault's disk is full \(its catalog cannot grow\)$")
    assert sorted(p.name for p in vault.iterdir()) == before

    (tiny_fs / "filler").unlink()
    assert sr.backup(src)["stats"]["files_unchanged"] == 1
    assert sr.json("check", "--read-data")["ok"]


def test_a_vault_on_a_read_only_file_system_lists_checks_and_restores(one_file_on_tiny, tiny_fs, tmp_path):
    """A vault disk mounted read-only (to restore from it, on this machine or another): every
    command stopped at once ("Read-only file system (VAULT/jobs)": opening a vault tightened its
    folders' modes)."""
    sr, vault, src = one_file_on_tiny
    point = sr.backup(src)["id"]
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    refusal = "the vault's file system is read-only: the vault can be read, not written"

    assert [p["id"] for p in sr.points()] == [point]
    assert sr.json("check", "--read-data")["ok"]
    res = sr.run("restore", "latest", "--target", tmp_path / "out", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [f"strongroom: warning: the vault could not record this restore as a job: "
                                       f"{refusal}"]
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))
    assert_clean_failure(sr.run("backup", src, check=False), 1, f"^strongroom: error: {refusal}$")
    assert_clean_failure(sr.run("forget", point, check=False), 1, f"^strongroom: error: {refusal}$")

    subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert sr.backup(src)["stats"]["files_unchanged"] == 1


def test_a_vault_whose_catalog_log_was_not_folded_in_reads_on_a_read_only_file_system(one_file_on_tiny, tiny_fs,
                                                                                         tmp_path):
    """The newest changes of a vault whose last writer was killed (or that `vault create` had just
    made) are in the catalog's write-ahead log: mounted read-only, the vault refused every command
    ("its catalog's write-ahead log holds changes, which must be written into it before it can be
    read"), though SQLite reads the log of a read-only database when its files are there."""
    sr, vault, src = one_file_on_tiny
    fresh = sr.create_vault(tmp_path / "fresh")
    assert not (fresh / "catalog.sqlite-wal").exists()  # `vault create` folds its log in
    killed = sr.run("backup", src, check=False, env_extra={"STRONGROOM_TEST_HOOK": "backup-point-recorded=kill"})
    assert killed.returncode == -9, killed.stderr
    assert (vault / "catalog.sqlite-wal").stat().st_size > 0
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)

    [point] = sr.points()
    res = sr.run("restore", point["id"], "--target", tmp_path / "out", check=False)
    assert res.returncode == 0, res.stderr
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))
    assert sr.json("check", "--read-data")["ok"]
    assert_clean_failure(sr.run("backup", src, check=False), 1,
                         "^strongroom: error: the vault's file system is read-only: the vault can be read, "
                         "not written$")


def test_a_vault_never_served_cannot_be_served_from_a_read_only_disk_and_says_why(sr, tiny_fs):
    """`vault serve` makes the vault's certificate in its folder: on read-only media that was
    "Read-only file system (VAULT/tls)"."""
    vault = sr.create_vault(tiny_fs / "vault")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    res = sr.run("vault", "serve", vault, "--port", "1", check=False)
    assert_clean_failure(res, 1, "^strongroom: error: the vault's file system is read-only: the vault can be read, "
                         "not written; and it was never served, so it has no certificate of its own")


def test_a_served_vault_started_on_a_full_disk_serves_restores(served_on_tiny, tiny_fs, tmp_path):
    """`vault serve` on a full disk stopped at once ("No space left on device": its serve.json),
    and with its catalog unopenable would have refused every machine's restore."""
    server, sr, src = served_on_tiny
    (src / "a.txt").write_text("a file\n")
    point = sr.backup(src)["id"]
    server.stop()
    _fill(tiny_fs)
    server.start()
    assert "the vault's disk is full (No space left on device): serve.json not updated" in server.log.read_text()

    assert [p["id"] for p in sr.points()] == [point]
    res = sr.run("restore", "latest", "--target", tmp_path / "out", check=False)
    assert res.returncode == 0 and "could not record this restore as a job" in res.stderr, res.stderr
    assert_trees_equal(src, tmp_path / "out" / str(src).lstrip("/"))
    assert_clean_failure(sr.run("backup", src, check=False), 1, r"^strongroom: error: the vault's disk is "
                         r"full: the vault can be read, not written, until room is made$")


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
    answer = storage_failure(raised.value)
    assert isinstance(answer, VaultFull)
    assert str(answer) == "the vault's disk is full (its catalog cannot grow)"
    assert storage_failure(ValueError("a bug")) is None


def _home_on(tiny_fs, tmp_path, files: int) -> tuple[Strongroom, object]:
    """An agent home on the tmpfs, shrunk to 1 MiB, its vault elsewhere; `files` small files."""
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_fs)], check=True)
    sr = Strongroom(tiny_fs / "home")
    vault = sr.create_vault(tmp_path / "vault")
    sr.register(sr.make_credentials(vault, tmp_path / "cred"), "tiny", vault)
    src = tmp_path / "src"
    for d in range(files // 1000):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (src / f"d{d}" / f"f{i}.txt").write_text(f"file {d} {i}\n")
    return sr, src


def _stderr_after_the_space_warning(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.splitlines()
    assert lines[0].startswith("strongroom: warning: the cache folder") and "MiB free" in lines[0], res.stderr
    return "\n".join(lines[1:])


def test_a_full_cache_folder_is_one_line_and_the_next_backup_resumes(tiny_fs, tmp_path):
    """The agent's cache (its SQLite blob index and reference counts) filling its disk during a
    backup: once "internal error: OperationalError", and once a backup that never ended (the
    packer's uploaders stopped twice, below)."""
    sr, src = _home_on(tiny_fs, tmp_path, 30_000)
    res = sr.run("backup", src, check=False)
    res.stderr = _stderr_after_the_space_warning(res)
    assert_clean_failure(res, 1, rf"the cache folder {tiny_fs}/home/cache is full \(database or disk is full\): "
                                 r"free some room there or move the folder with `strongroom agent cache move DIR`$")
    assert sr.points() == []
    assert sr.json("check")["ok"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], check=True)
    assert sr.backup(src)["stats"]["files_new"] == 30_000
    assert sr.json("check", "--read-data")["ok"]


def test_a_home_and_cache_full_once_the_point_is_recorded_are_warnings(tiny_fs, tmp_path):
    """The point is in the vault when the home's and the cache's disk fills as they note it:
    the backup said "error" about a point that existed. Now warnings, and the next backup does
    without the cache's note."""
    sr, src = _home_on(tiny_fs, tmp_path, 2000)
    go = tmp_path / "go"
    proc = subprocess.Popen(sr.cmd + ["backup", str(src), "--json"], env=sr.env(
        {"STRONGROOM_TEST_HOOK": f"backup-point-recorded=wait:{go}"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reached = Path(f"{go}.reached")
    deadline = time.monotonic() + 60
    while not reached.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reached.exists(), proc.communicate()[1].decode()
    _fill(tiny_fs)  # the home's and the cache's disk
    go.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    point = json.loads(out)["id"]
    assert err.decode().splitlines()[-2:] == [
        f"strongroom: warning: point {point} is in the vault, but this machine could not note it as its newest (No "
        "space left on device): until its next backup it would not notice the vault hiding that point",
        f"strongroom: warning: the cache folder {tiny_fs}/home/cache could not note point {point} (database or disk "
        "is full): the next backup does without it (slower); free some room there or move the folder with "
        "`strongroom agent cache move DIR`"]
    assert [p["id"] for p in sr.points()] == [point]

    (tiny_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_fs)], check=True)
    again = sr.backup(src)
    assert again["stats"]["files_unchanged"] == 2000
    assert (again["mode"], again["mode_reason"]) == ("unoptimized", "the previous backup failed, was cancelled, was killed or could not note its point in the cache folder")
    assert sr.json("check", "--read-data")["ok"]


def test_a_packer_stopped_twice_returns(registered):
    """A backup whose packer closed (its uploaders stopped) and then failed (the cache's disk
    full as it recorded what the vault holds) aborts the packer too: that waited for ever to
    hand a stop to uploaders that had gone."""
    agent = AgentHome(registered.home)
    packer = Packer(agent.vault(), agent.master_key(PASSPHRASE), KnownBlobs(agent.cache))
    packer.add(b"\x01" * 32, KIND_DATA, b"one blob")
    packer.close()
    aborting = threading.Thread(target=packer.abort, daemon=True)
    aborting.start()
    aborting.join(30)
    assert not aborting.is_alive(), "Packer.abort after Packer.close never returned"


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


def test_a_restore_into_a_read_only_file_system_names_the_folder_as_text(registered, tiny_fs, tmp_path):
    """The error named the target as Python shows bytes: "Read-only file system (b'/mnt/out')"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a file\n")
    registered.backup(src)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    res = registered.run("restore", "latest", "--target", tiny_fs / "out", check=False)
    assert_clean_failure(res, 1, rf"^strongroom: error: Read-only file system \({tiny_fs}/out\)$")
