"""The selection options in `policy set`: stored sealed, shown by `policy show` with the
passphrase, and applied by the daemon's scheduled backups (real `agent run`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from conftest import assert_clean_failure, saying
from selectutil import expected_tree, make_files
from treeutil import assert_trees_equal, under

from strongroom.agent.daemon import STATE_FILE

ZONE = "Pacific/Chatham"  # neither UTC nor the machine's zone, as in test_daemon.py
TREE = {"keep.txt": b"kept\n", "app.log": b"log\n" * 10, "big.bin": b"b" * 5000,
        "cache/data": b"cached\n", "private/secret": b"s\n"}


def set_policy(sr, tmp_path, src, *extra, check=True):
    excludes = tmp_path / "excludes"
    excludes.write_text("# logs are rebuilt\n*.log\n")
    listing = tmp_path / "paths"
    make_files(tmp_path / "other", {"x.txt": b"x\n"})
    listing.write_text(f"{tmp_path / 'other'}\n{tmp_path / 'gone'}\n")
    return sr.run("policy", "set", "--include", src, "--files-from", listing, "--exclude-from", excludes, "--exclude-if-present", ".nobackup",
                  "--exclude-larger-than", "4K", "--one-file-system", "--timezone", ZONE, *extra,
                  "--json", check=check)


def test_policy_keeps_the_selection_sealed(registered, tmp_path):
    src = make_files(tmp_path / "src", TREE)
    res = set_policy(registered, tmp_path, src, check=False)
    assert res.returncode == 3, res.stderr  # one listed path is missing: a warning, the rest stored
    assert json.loads(res.stdout)["warnings"] == [
        {"path": str(tmp_path / "gone"), "error": "listed in --files-from but does not exist; not backed up"}]
    shown = registered.json("policy", "show")["policy"]
    assert shown["selection"] == {"include_patterns": [], "exclude_caches": False,
                                  "exclude_if_present": [".nobackup"], "exclude_larger_than": 4096,
                                  "one_file_system": True}
    assert shown["excludes"] == ["*.log"] and shown["includes"] == [str(src), str(tmp_path / "other")]
    assert "no directories holding .nobackup" in registered.run("policy", "show").stdout
    hidden = registered.json("policy", "show", env_extra={"STRONGROOM_PASSPHRASE": None})["policy"]
    assert hidden["selection"] is None and hidden["includes"] is None
    for dirpath, _dirs, files in os.walk(registered.vault):
        for name in files:
            data = open(os.path.join(dirpath, name), "rb").read()
            assert b".nobackup" not in data and b"*.log" not in data, f"{dirpath}/{name} holds the selection"


def test_policy_selection_bad_input(registered, tmp_path):
    src = make_files(tmp_path / "src", TREE)
    assert_clean_failure(registered.run("policy", "set", "--include", src, "--exclude-larger-than", "big",
                                        check=False), 2, saying("is not a size"))
    assert_clean_failure(registered.run("policy", "set", "--exclude-caches", check=False), 2,
                         saying("at least one --include"))
    assert registered.json("policy", "show") is None


def test_scheduled_backup_applies_the_selection(registered, tmp_path):
    sr = registered
    src = make_files(tmp_path / "src", TREE)
    (src / "private" / ".nobackup").write_bytes(b"")
    os.utime(src / "private", ns=(10**18, 10**18))
    now = datetime.now(ZoneInfo(ZONE)).replace(microsecond=0)
    at = now + timedelta(seconds=10)
    if at.date() != now.date():
        at = now + timedelta(seconds=100)
    (sr.home / STATE_FILE).write_text(json.dumps({"last_run": now.timestamp()}))
    set_policy(sr, tmp_path, src, "--daily", at.strftime("%H:%M:%S"), "--keep-daily", "7", check=False)
    daemon = subprocess.Popen(sr.cmd + ["agent", "run"], env=sr.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not sr.points() and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=60)
    assert len(sr.points()) == 1, err.decode()
    target = tmp_path / "r"
    sr.restore("latest", target=target)
    expected = expected_tree(src, tmp_path / "expected", ["app.log", "big.bin", "private/secret"])
    assert_trees_equal(expected, under(target, src))
    assert_trees_equal(tmp_path / "other", under(target, tmp_path / "other"))
