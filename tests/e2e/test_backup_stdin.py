"""`backup --stdin NAME` through the real CLI: a stream stored as the file /NAME, restored like
any file; an empty stream; a producer that fails or is killed; the agent killed mid-stream."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import pytest
from conftest import assert_clean_failure, packs_in, saying
from selectutil import make_files

DUMP = os.urandom(3 * 1024 * 1024 + 123) + b"-- end of dump\n"


def restored(sr, point: str, tmp_path, name: str = "db.sql") -> bytes:
    target = tmp_path / f"restored-{point}"
    sr.restore(point, target=target)
    assert os.listdir(target) == [name]
    st = os.lstat(target / name)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    return (target / name).read_bytes()


def test_stdin_is_stored_as_one_file(registered, tmp_path):
    res = registered.run("backup", "--stdin", "db.sql", "--json", "--tag", "pg", input=DUMP)
    doc = json.loads(res.stdout)
    assert doc["sources"] == ["/db.sql"] and doc["tags"] == ["pg"]
    assert doc["stats"]["files_new"] == 1 and doc["stats"]["bytes_read"] == len(DUMP)
    assert restored(registered, doc["id"], tmp_path) == DUMP
    listing = registered.json("ls", doc["id"])
    assert [(e["path"], e["type"], e["size"]) for e in listing] == [("/db.sql", "file", len(DUMP))]
    # the same dump again adds (almost) nothing: its chunks are in the vault already
    second = json.loads(registered.run("backup", "--stdin", "db.sql", "--json", input=DUMP).stdout)
    assert second["stats"]["bytes_added"] < 64 * 1024


def test_a_stdin_point_is_not_the_parent_of_a_files_backup(registered, tmp_path):
    src = make_files(tmp_path / "src", {"a": b"a" * 1000, "d/b": b"b" * 2000})
    registered.backup(src)
    registered.run("backup", "--stdin", "dump.sql", input=b"select 1;\n")
    s = registered.backup(src)["stats"]
    assert (s["files_unchanged"], s["bytes_read"]) == (2, 0), "the files backup compared with the stream's point"


def test_empty_stdin_is_stored_with_a_warning(registered, tmp_path):
    res = registered.run("backup", "--stdin", "empty.sql", "--json", check=False, input=b"")
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["warnings"] == [{"path": "/empty.sql", "error": "the input was empty: an empty file was stored"}]
    assert restored(registered, doc["id"], tmp_path, "empty.sql") == b""


@pytest.mark.parametrize("script, says", [
    ("head -c 600000 /dev/urandom; exit 4", "exited 4"),
    ("head -c 600000 /dev/urandom; kill -9 $$", "killed by signal 9"),
])
def test_a_failing_producer_records_no_point(registered, script, says):
    res = registered.run("backup", "--stdin", "db.sql", "--stdin-from-command", "--", "sh", "-c", script,
                         check=False)
    assert_clean_failure(res, 1, saying("the command sh", says, "not recorded"))
    assert registered.points() == []
    job = registered.json("jobs")[0]
    assert job["status"] == "failed" and says in job["message"]


def test_a_producer_that_succeeds(registered, tmp_path):
    data = b"line\n" * 70000
    src = tmp_path / "data"
    src.write_bytes(data)
    # everything after `--` is the command's: --json goes before it
    doc = json.loads(registered.run("backup", "--stdin", "copy.txt", "--json", "--stdin-from-command", "--",
                                    "cat", src).stdout)
    assert restored(registered, doc["id"], tmp_path, "copy.txt") == data
    assert_clean_failure(registered.run("backup", "--stdin", "x", "--stdin-from-command", "--",
                                        str(tmp_path / "no-such-program"), check=False), 2,
                         saying("cannot run", "no-such-program"))


def test_the_agent_killed_mid_stream_records_no_point(registered, tmp_path):
    proc = subprocess.Popen(registered.cmd + ["backup", "--stdin", "big.sql"], env=registered.env(),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not packs_in(registered.vault) and proc.poll() is None:
            proc.stdin.write(os.urandom(1024 * 1024))  # until a pack has landed
    except BrokenPipeError:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert packs_in(registered.vault), "the backup ended before any pack landed"
    assert registered.points() == []
    doc = json.loads(registered.run("backup", "--stdin", "big.sql", "--json", input=b"after\n").stdout)
    assert restored(registered, doc["id"], tmp_path, "big.sql") == b"after\n"
    failed = [j for j in registered.json("jobs") if j["status"] == "failed"]
    assert len(failed) == 1


def test_stdin_bad_input(registered, tmp_path):
    cases = [
        (("--stdin", "a/b"), "takes a file name"),
        (("--stdin", ".."), "takes a file name"),
        (("--stdin", "x", str(tmp_path)), "takes no PATHS"),
        (("--stdin-from-command", "--", "true"), "needs --stdin"),
        (("--stdin", "x", "--stdin-from-command"), "needs the command"),
        (("--stdin", "x", "--exclude", "*.log"), "no --dry-run"),
        (("--stdin", "x", "--dry-run"), "no --dry-run"),
    ]
    for args, says in cases:
        assert_clean_failure(registered.run("backup", *args, check=False, input=b"data"), 2, saying(says))
    assert registered.points() == []
