"""Credentials that have expired (by the file's word or the vault's), a second job on one
agent home, and sources named by paths that are not UTF-8."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time

from conftest import Strongroom, assert_clean_failure


def _new_home(tmp_path, name="home"):
    sr = Strongroom(tmp_path / name)
    vault = sr.create_vault(tmp_path / "vault")
    return sr, vault


def test_expired_credentials_file_is_refused(tmp_path):
    sr, vault = _new_home(tmp_path)
    cred = sr.make_credentials(vault, tmp_path / "cred")
    doc = json.loads(cred.read_text())
    doc["expires"] = int(time.time()) - 60
    cred.write_text(json.dumps(doc))
    res = sr.run("register", "--credentials", cred, "--machine", "m1", check=False)
    assert_clean_failure(res, 1, "these vault credentials expired on")
    assert not (tmp_path / "home" / "config.json").exists()


def test_credentials_the_vault_considers_expired_are_refused(tmp_path):
    """The vault keeps its own expiry: editing the file does not extend it."""
    sr, vault = _new_home(tmp_path)
    cred = sr.make_credentials(vault, tmp_path / "cred")
    with sqlite3.connect(vault / "catalog.sqlite") as db:  # ten days pass
        db.execute("UPDATE credentials SET expires = ?", (int(time.time()) - 60,))
    res = sr.run("register", "--credentials", cred, "--machine", "m1", check=False)
    assert_clean_failure(res, 1, "these vault credentials have expired")
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        assert db.execute("SELECT count(*) FROM machines").fetchone()[0] == 0


def test_second_backup_on_the_same_home_is_refused_while_one_runs(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    with open(registered.home / "lock", "wb") as held:  # what a running backup holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = registered.run("backup", src, check=False)
    # exit 1, as when the vault's lease refuses a second home of the machine (test_served)
    assert_clean_failure(res, 1, "another backup or restore of this machine is running")
    assert registered.points() == []


def test_source_path_that_is_not_utf8(registered, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9-src"
    os.mkdir(raw)
    with open(raw + b"/data\xff.bin", "wb") as f:
        f.write(b"bytes\n")
    out = registered.backup(raw)
    assert out["stats"]["files_new"] == 1
    assert out["sources"] == [raw.decode("utf-8", "backslashreplace")]
    target = tmp_path / "target"
    registered.restore("latest", raw, target=target)
    with open(os.fsencode(target) + raw + b"/data\xff.bin", "rb") as f:
        assert f.read() == b"bytes\n"
