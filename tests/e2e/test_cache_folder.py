"""The cache folder (its place, moving it, deleting it, room on its file system) and files that
change while a live backup reads them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import assert_clean_failure, saying, setup_registered
from treeutil import assert_trees_equal, make_tricky_tree, under

MiB = 1024 * 1024


def _show(sr) -> dict:
    return sr.json("agent", "cache", "show")


def test_register_cache_puts_the_cache_elsewhere_and_a_backup_leaves_it_out(tmp_path):
    sr = setup_registered(tmp_path / "setup")  # a home with the default cache, for the credentials
    from conftest import Strongroom
    other = Strongroom(tmp_path / "home2")
    cred = sr.make_credentials(sr.vault, tmp_path / "cred2")
    src = tmp_path / "src"
    make_tricky_tree(src, deep=False)
    cache = src / "inside" / "cache"  # even inside a source: never backed up into itself
    other.run("register", "--credentials", cred, "--machine", "m2", "--cache", cache)
    info = _show(other)
    assert info["path"] == str(cache) and info["configured"] is True and info["exists"] is True
    assert not (other.home / "cache").exists()
    other.backup(src)
    assert (cache / "blobs.sqlite").exists()
    other.restore("latest", target=tmp_path / "r")
    restored = under(tmp_path / "r", src)
    assert not (restored / "inside" / "cache").exists()
    st = os.stat(src)
    shutil.rmtree(src / "inside")
    shutil.rmtree(restored / "inside")
    for d in (src, restored):  # as they were before the folder was taken out
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert_trees_equal(src, restored)


def test_a_deleted_cache_folder_costs_speed_never_correctness(registered, tmp_path):
    src = tmp_path / "src"
    make_tricky_tree(src, deep=False)
    first = registered.backup(src)
    shutil.rmtree(registered.home / "cache")
    (src / "new.txt").write_text("after the cache was deleted")
    os.truncate(src / "small.txt", 3)
    second = registered.backup(src)
    assert (registered.home / "cache" / "blobs.sqlite").exists()
    # The vault's blobs were fetched anew, not sent again.
    assert second["stats"]["bytes_added"] < first["stats"]["bytes_added"] / 10
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))
    shutil.rmtree(registered.home / "cache")  # and a restore needs none
    registered.restore("latest", target=tmp_path / "r2")
    assert_trees_equal(src, under(tmp_path / "r2", src))


def test_a_file_in_place_of_the_cache_folder_is_said_in_one_line_and_a_move_gets_past_it(registered, tmp_path):
    src = tmp_path / "src"
    make_tricky_tree(src, deep=False)
    shutil.rmtree(registered.home / "cache")
    (registered.home / "cache").write_text("not a folder")
    res = registered.run("backup", src, check=False)
    assert_clean_failure(res, 1, r"the cache folder \S+/cache is not a folder \(a file is in its place or above "
                         r"it\): move that away, or choose another place with `strongroom agent cache move DIR`")
    assert "not a folder: something else is in its place" in registered.run("agent", "cache", "show").stdout
    registered.run("agent", "cache", "move", tmp_path / "cache2")
    registered.backup(src)
    assert (registered.home / "cache").read_text() == "not a folder"  # not the agent's to delete
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))


def test_cache_move_moves_it_and_backups_use_the_new_place(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    registered.backup(src)
    old = registered.home / "cache"
    new = tmp_path / "elsewhere" / "cache"
    new.parent.mkdir()
    res = registered.run("agent", "cache", "move", new)
    assert str(new) in res.stdout
    assert not old.exists() and (new / "blobs.sqlite").exists()
    assert _show(registered)["path"] == str(new)
    (src / "b").write_text("b")
    out = registered.backup(src)
    assert out["stats"]["files_new"] == 1
    assert not old.exists()
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))


def test_cache_move_refusals_are_one_line(registered, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert_clean_failure(registered.run("agent", "cache", "move", existing, check=False), 2,
                         saying(str(existing), "already exists"))
    assert_clean_failure(registered.run("agent", "cache", "move", tmp_path / "no" / "such" / "c", check=False), 2,
                         saying("parent folder does not exist"))
    assert_clean_failure(registered.run("agent", "cache", "move", registered.home / "cache" / "x", check=False), 2,
                         saying("inside the cache folder"))
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(locked)], check=True)
    else:
        locked.chmod(0o500)
    try:
        assert_clean_failure(registered.run("agent", "cache", "move", locked / "cache", check=False), 2,
                             saying("cannot make", "not writable"))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=True)
    assert _show(registered)["path"] == str(registered.home / "cache")  # nothing changed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs for the cache")
def test_a_cache_folder_short_of_room_is_said_before_the_backup(registered, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(small)], check=True)
    try:
        registered.run("agent", "cache", "move", small / "cache")
        info = _show(registered)
        assert info["free_bytes"] < info["needed_bytes"]
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_text("a")
        res = registered.run("backup", src)
        warnings = [line for line in res.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1 and "cache folder" in warnings[0] and "MiB free" in warnings[0], res.stderr
        assert "agent cache move" in warnings[0]
        res = registered.run("agent", "cache", "show")
        assert str(small / "cache") in res.stdout and "free" in res.stdout
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)


def test_a_file_that_never_holds_still_is_stored_as_read_with_a_warning(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = 4 * MiB
    hot = src / "hot.bin"
    hot.write_bytes(os.urandom(size))
    (src / "calm.txt").write_text("calm")
    code = (f"import os\nfd=os.open({str(hot)!r}, os.O_WRONLY)\nk=0\nprint('go',flush=True)\n"
            f"while True:\n k=(k+1)%256\n os.pwrite(fd, bytes([k])*65536, (k*65536)%{size})\n")
    writer = subprocess.Popen(["python3", "-c", code], stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stdout.readline() == b"go\n"
    # The writer gets its turn between each read and the stat after it, however busy the machine
    # (it once did not, during a 32 MiB read under a load of 4 on 2 cores).
    pause = {"STRONGROOM_TEST_HOOK": "backup-file-read=sleep:0.2"}
    try:
        res = registered.run("backup", src, "--json", check=False, env_extra=pause)
        res_text = registered.run("backup", src, check=False, env_extra=pause)
    finally:
        writer.kill()
        writer.wait()
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["warnings"] == [{"path": str(hot), "error": "changed while being read; the last version read "
                                                          "was stored"}]
    assert res_text.returncode == 3 and f"{hot}: changed while being read" in res_text.stderr
    assert "Traceback" not in res_text.stderr
    registered.restore("latest", target=tmp_path / "r")
    restored = under(tmp_path / "r", src)
    assert (restored / "calm.txt").read_text() == "calm"
    assert len((restored / "hot.bin").read_bytes()) == size  # stored as read
    backups = [j for j in registered.json("jobs") if j["kind"] == "backup"]
    assert [j["status"] for j in backups] == ["completed_with_warnings"] * 2


def test_register_with_a_cache_folder_that_cannot_be_made_is_refused_before_registering(registered, tmp_path):
    from conftest import Strongroom
    other = Strongroom(tmp_path / "home2")
    cred = registered.make_credentials(registered.vault, tmp_path / "cred2")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    res = other.run("register", "--credentials", cred, "--machine", "m2", "--cache", a_file / "cache", check=False)
    assert_clean_failure(res, 2, saying("cannot make the cache folder", "Not a directory"))
    other.run("register", "--credentials", cred, "--machine", "m2")  # the name was not taken
    assert _show(other)["configured"] is False
