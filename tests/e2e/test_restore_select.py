"""restore --include/--exclude (one glob meaning, globmatch), --dry-run and --verify, through
the real CLI, embedded and served; restored trees compared byte for byte and attribute for
attribute with what the selection should give."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import assert_clean_failure, saying
from treeutil import assert_trees_equal, copy_tree, snapshot, under

ODD = b"caf\xe9-\xff.txt"  # not UTF-8


def build_tree(src: Path) -> None:
    """docs/{a.txt,b.log,notes/c.txt,notes/cache/d.txt}, keep/{x.bin,deep/y.log}, top.txt,
    an odd non-UTF-8 name, a symlink; folders with their own modes and times."""
    files = {"docs/a.txt": b"alpha\n", "docs/b.log": b"log\n" * 100, "docs/notes/c.txt": b"gamma\n",
             "docs/notes/cache/d.txt": b"cached\n", "keep/x.bin": os.urandom(300_000),
             "keep/deep/y.log": b"deep log\n", "top.txt": b"top\n"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    with open(os.path.join(os.fsencode(src / "docs"), ODD), "wb") as f:
        f.write(b"odd name\n")
    os.symlink("a.txt", src / "docs" / "link-to-a")
    os.chmod(src / "docs" / "a.txt", 0o640)
    os.chmod(src / "docs" / "notes", 0o750)
    stamp = 1_600_000_000_123_456_789
    for i, d in enumerate(sorted(p for p in src.rglob("*") if p.is_dir() and not p.is_symlink())):
        os.utime(d, ns=(stamp + i, stamp + i))
    os.utime(src, ns=(stamp, stamp))


def expected(src: Path, dst: Path, drop: list[str]) -> Path:
    """A copy of src without the `drop` paths (relative), folders keeping their times."""
    copy_tree(src, dst)
    for rel in drop:
        p = dst / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    for d in [dst, *(p for p in dst.rglob("*") if p.is_dir() and not p.is_symlink())]:
        st = os.stat(src / d.relative_to(dst))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dst


@pytest.fixture(scope="module", params=["embedded", "served"])
def point(request, tmp_path_factory, registered_factory):
    base = tmp_path_factory.mktemp(f"select-{request.param}")
    if request.param == "embedded":
        sr = registered_factory(base)
        server = None
    else:
        from conftest import Strongroom
        from served import VaultServer
        admin = Strongroom(base / "admin-home")
        folder = admin.create_vault(base / "vault")
        server = VaultServer(admin, folder).start()
        sr = Strongroom(base / "home").register(server.credentials(base / "cred"), "sel-01")
    src = base / "src"
    src.mkdir()
    build_tree(src)
    backup = sr.backup(src)
    yield SimpleNamespace(sr=sr, src=src, id=backup["id"])
    if server:
        server.stop()


ALL_BUT_TXT = ["docs/b.log", "docs/link-to-a", "keep", os.fsdecode(b"docs/" + ODD)]


@pytest.mark.parametrize("args,drop", [
    # a name pattern at any depth: the .txt files, and the folders leading to them
    (["--include", "*.txt"], ["docs/b.log", "docs/link-to-a", "keep"]),
    # an included folder brings its whole subtree, whatever the names inside
    (["--include", "keep"], ["docs", "top.txt"]),
    (["--exclude", "*.log", "--exclude", "cache"],
     ["docs/b.log", "keep/deep/y.log", "docs/notes/cache"]),
    (["--include", "docs", "--exclude", "notes"],
     ["keep", "top.txt", "docs/notes"]),
    # `**` crosses folders, `*` stays in one: only docs/*.txt one level down, not notes/
    (["--include", "**/docs/*.txt"], ["docs/b.log", "docs/link-to-a", "keep", "docs/notes", "top.txt"]),
])
def test_include_exclude_restore_exactly_the_selection(point, tmp_path, args, drop):
    target = tmp_path / "t"
    res = point.sr.json("restore", point.id, "--target", target, *args)
    assert res["errors"] == []
    want = expected(point.src, tmp_path / "want", drop)
    assert_trees_equal(want, under(target, point.src))


def test_non_utf8_name_is_matched_by_its_bytes(point, tmp_path):
    target = tmp_path / "t"
    res = point.sr.json("restore", point.id, "--target", target, "--include", "caf?-*")
    assert res["files_restored"] == 1
    restored = os.listdir(os.fsencode(under(target, point.src) / "docs"))
    assert restored == [ODD]


def test_selection_under_a_restored_path(point, tmp_path):
    target = tmp_path / "t"
    point.sr.json("restore", point.id, point.src / "docs", "--target", target, "--exclude", "notes")
    got = under(target, point.src)
    assert sorted(os.listdir(got)) == ["docs"]
    assert sorted(os.listdir(got / "docs")) == sorted(["a.txt", "b.log", "link-to-a", os.fsdecode(ODD)])


def test_a_pattern_that_matches_nothing_restores_nothing_and_exits_0(point, tmp_path):
    target = tmp_path / "t"
    res = point.sr.json("restore", point.id, "--target", target, "--include", "*.nothing")
    assert res["files_restored"] == 0 and res["errors"] == []
    assert not under(target, point.src).exists()


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_says_what_each_conflict_rule_would_do_and_writes_nothing(point, tmp_path):
    target = tmp_path / "t"
    point.sr.json("restore", point.id, point.src / "docs", "--target", target, "--include", "a.txt")
    there = under(target, point.src)
    (there / "docs" / "a.txt").write_bytes(b"changed locally\n")
    before = snapshot(target)
    rows = {}
    for rule in ("skip", "overwrite", "copy"):
        res = point.sr.json("restore", point.id, point.src / "docs", "--target", target, "--dry-run",
                            "--conflict", rule, "--exclude", "notes")
        assert res["dry_run"] is True
        rows[rule] = {e["path"]: e for e in res["entries"]}
        assert snapshot(target) == before, "a dry run changed the target"
        a = rows[rule][str(point.src / "docs" / "a.txt")]
        assert a["action"] == {"skip": "skip", "overwrite": "overwrite", "copy": "copy"}[rule]
        assert rows[rule][str(point.src / "docs" / "b.log")]["action"] == "write"
        assert str(point.src / "docs" / "notes" / "c.txt") not in rows[rule]
        assert res["files_to_write"] == 3  # b.log, link-to-a, the odd name
        assert res["bytes_to_write"] == 400 + len(b"odd name\n") + (6 if rule != "skip" else 0)
    copy = rows["copy"][str(point.src / "docs" / "a.txt")]
    assert os.path.basename(copy["as"]).endswith(" Copy of a.txt")
    # the copy name the dry run announced is the one the restore then uses
    res = point.sr.json("restore", point.id, point.src / "docs" / "a.txt", "--target", target, "--conflict", "copy")
    assert res["files_copied"] == 1 and os.path.exists(copy["as"])


def test_dry_run_into_a_missing_target_creates_nothing(point, tmp_path):
    target = tmp_path / "never"
    res = point.sr.run("restore", point.id, "--target", target, "--dry-run")
    assert not target.exists()
    assert "write" in res.stdout and "nothing was written" in res.stdout


# -- verify ----------------------------------------------------------------------------------


def test_verify_after_a_clean_restore(point, tmp_path):
    res = point.sr.json("restore", point.id, "--target", tmp_path / "t", "--verify")
    assert res["mismatches"] == []
    assert res["verified"] == res["files_restored"] > 0


def test_verify_reports_a_file_changed_after_it_was_written(point, tmp_path):
    target, go = tmp_path / "t", tmp_path / "go"
    proc = subprocess.Popen(point.sr.cmd + ["restore", point.id, "--target", str(target), "--verify", "--json"],
                            env=point.sr.env({"STRONGROOM_TEST_HOOK": f"restore-written=wait:{go}"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not Path(f"{go}.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    restored = under(target, point.src)
    with open(restored / "keep" / "x.bin", "r+b") as f:  # same size, one byte changed
        f.seek(150_000)
        byte = f.read(1)
        f.seek(150_000)
        f.write(bytes([byte[0] ^ 1]))
    os.chmod(restored / "top.txt", 0o600)
    go.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    import json
    doc = json.loads(out)
    bad = {m["path"]: m["error"] for m in doc["mismatches"]}
    assert bad == {str(restored / "keep" / "x.bin"): "verify: content differs",
                   str(restored / "top.txt"): "verify: mode 600, the point has 644"}
    assert doc["verified"] == doc["files_restored"] - 2


def test_dry_run_and_verify_together_are_refused(point, tmp_path):
    res = point.sr.run("restore", point.id, "--target", tmp_path / "t", "--dry-run", "--verify", check=False)
    assert_clean_failure(res, 2, saying("--dry-run", "--verify"))
