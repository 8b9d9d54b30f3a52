"""`backup --dry-run [--verbose]`, `backup --verbose`, `backup --tag` and `points --tag/--host`,
through the real CLI: a dry run writes nothing to the vault or the agent's cache and tells
what the real backup then does; tags stay sealed."""

from __future__ import annotations

import json
import os
import socket

import pytest
from conftest import assert_clean_failure, saying
from selectutil import make_files
from treeutil import describe_snapshot_diff, snapshot

FILES = {"a.txt": b"alpha\n" * 100, "b.bin": bytes(range(256)) * 40, "d/c.txt": b"gamma\n" * 300,
         "d/skip.log": b"log\n" * 1000}


@pytest.fixture
def src(tmp_path):
    return make_files(tmp_path / "src", FILES)


def state(sr) -> dict:
    """Everything a dry run must leave as it was: the vault folder and the agent's cache."""
    return {"vault": snapshot(sr.vault), "cache": snapshot(sr.home / "cache")}


def assert_unchanged(before: dict, after: dict) -> None:
    for part in before:
        assert before[part] == after[part], f"the dry run wrote to the {part}:\n" + \
            describe_snapshot_diff(before[part], after[part])


def test_first_dry_run_writes_nothing_and_predicts_the_backup(registered, src):
    before = state(registered)
    doc = registered.json("backup", src, "--dry-run", "--verbose", "--exclude", "*.log")
    assert_unchanged(before, state(registered))
    assert registered.points() == [] and registered.json("jobs") == []
    expected = {k: v for k, v in FILES.items() if not k.endswith(".log")}
    s = doc["stats"]
    assert doc["dry_run"] is True
    assert (s["files_new"], s["files_changed"], s["files_unchanged"]) == (len(expected), 0, 0)
    assert s["bytes_to_read"] == sum(len(v) for v in expected.values())
    assert sorted((f["status"], f["path"], f["size"]) for f in doc["files"]) == \
        sorted(("new", str(src / k), len(v)) for k, v in expected.items())
    real = registered.backup(src, "--exclude", "*.log")["stats"]
    assert real["bytes_read"] == s["bytes_to_read"] and real["files_new"] == s["files_new"]


def test_dry_run_after_changes_lists_new_and_changed(registered, src):
    registered.backup(src)
    (src / "d" / "c.txt").write_bytes(b"changed\n" * 50)
    (src / "new.txt").write_bytes(b"brand new\n")
    before = state(registered)
    res = registered.run("backup", src, "-n", "-v")
    assert_unchanged(before, state(registered))
    lines = res.stdout.splitlines()
    assert any(line.startswith("changed") and line.split()[1] == str(src / "d" / "c.txt") for line in lines), lines
    assert any(line.startswith("new") and line.split()[1] == str(src / "new.txt") for line in lines), lines
    assert not any(str(src / "a.txt") in line for line in lines), "an unchanged file was listed"
    assert "would read 410 B" in res.stdout, res.stdout
    doc = registered.json("backup", src, "--dry-run")
    assert "files" not in doc  # the list only with --verbose
    assert (doc["stats"]["files_new"], doc["stats"]["files_changed"]) == (1, 1)
    assert doc["stats"]["bytes_to_read"] == 400 + 10
    assert len(registered.points()) == 1


def test_dry_run_bad_input(registered, src, tmp_path):
    assert_clean_failure(registered.run("backup", src, "--dry-run", "--offline-seed", tmp_path / "seed",
                                        check=False), 2, saying("--dry-run", "--offline-seed"))
    assert not (tmp_path / "seed").exists()


def test_verbose_backup_lists_on_stderr_and_keeps_json_whole(registered, src):
    registered.backup(src)
    (src / "a.txt").write_bytes(b"other\n")
    res = registered.run("backup", src, "--verbose", "--json")
    doc = json.loads(res.stdout)  # stdout is the JSON document alone
    assert doc["stats"]["files_changed"] == 1
    listed = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(listed) == 1 and listed[0].startswith("changed") and str(src / "a.txt") in listed[0], res.stderr


def test_tags_are_sealed_and_filter_points(registered, src):
    first = registered.backup(src, "--tag", "nightly", "--tag", "db,Prod-7")
    assert first["tags"] == ["Prod-7", "db", "nightly"]
    second = registered.backup(src, "--tag", "nightly")
    third = registered.backup(src)
    assert third["tags"] == []
    ids = lambda *args: [p["id"] for p in registered.json("points", *args)]  # noqa: E731
    assert ids("--tag", "nightly") == [second["id"], first["id"]]
    assert ids("--tag", "db,nightly") == [first["id"]]
    assert ids("--tag", "db", "--tag", "nosuch") == [first["id"]]  # repeated: either
    assert ids("--tag", "nosuch") == []
    assert ids("--host", socket.gethostname()) == [third["id"], second["id"], first["id"]]
    assert ids("--host", "elsewhere") == []
    rows = registered.json("points")
    assert rows[2]["tags"] == ["Prod-7", "db", "nightly"] and rows[2]["host"] == socket.gethostname()
    assert "Prod-7" in registered.run("points").stdout
    # the vault keeps the manifest sealed: no tag is anywhere in its files
    for dirpath, _dirs, files in os.walk(registered.vault):
        for name in files:
            data = open(os.path.join(dirpath, name), "rb").read()
            assert b"Prod-7" not in data, f"the tag reached the vault in the clear: {dirpath}/{name}"


def test_bad_tags_are_refused(registered, src):
    for bad, says in (("", "is not a tag"), ("a\x1bb", "is not a tag"), ("x" * 65, "is not a tag")):
        assert_clean_failure(registered.run("backup", src, "--tag", bad, check=False), 2, saying(says))
    many = [a for i in range(33) for a in ("--tag", f"t{i}")]
    assert_clean_failure(registered.run("backup", src, *many, check=False), 2, saying("at most 32 tags"))
    assert registered.points() == []
