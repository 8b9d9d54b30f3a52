"""The first backup's and the unoptimized backup's cheaper paths (issue 11, bench/README.md
"Backup CPU"), end to end: packs written with O_DIRECT, the walk's listing and finalising, the
key derived while the command's modules load, and the exit without the interpreter's teardown.
None of them may change what is stored, what a restore gives back, or what a command prints
and returns."""

from __future__ import annotations

import os
import subprocess

from conftest import Strongroom, assert_clean_failure, packs_in, saying
from treeutil import assert_trees_equal, make_tricky_tree


def _restored(sr: Strongroom, point: str, target) -> None:
    sr.restore(point, target=target)


def test_tricky_tree_first_and_unoptimized_backups_restore_exactly(registered: Strongroom, tmp_path) -> None:
    src = tmp_path / "src"
    make_tricky_tree(src)
    big = os.urandom(3 * 1024 * 1024 + 4097)  # more than one O_DIRECT block run, odd tail
    (src / "big.bin").write_bytes(big)
    first = registered.backup(src)
    packs = packs_in(registered.vault)
    assert packs and all(p.stat().st_size > 0 for p in packs)
    target = tmp_path / "r1"
    _restored(registered, first["id"], target)
    assert_trees_equal(src, target / str(src).lstrip("/"))

    (src / "big.bin").write_bytes(big[:1000] + b"changed" + big[1007:])
    (src / "new.txt").write_text("a file added between the backups\n")
    second = registered.json("backup", src, "--unoptimized")
    assert second["mode"] == "unoptimized"
    assert second["stats"]["files_changed"] == 1 and second["stats"]["files_new"] == 1
    target2 = tmp_path / "r2"
    _restored(registered, second["id"], target2)
    assert_trees_equal(src, target2 / str(src).lstrip("/"))


def test_output_exit_codes_and_catalog_after_the_quick_exit(registered: Strongroom, tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    # --json through a pipe arrives whole (stdout is flushed before the process leaves)
    doc = registered.backup(src)
    assert doc["stats"]["files_new"] == 1
    # the vault's exit handler ran: its write-ahead log was folded into the catalog
    assert not (registered.vault / "catalog.sqlite-wal").exists()
    # a refusal keeps its code and its one line
    assert_clean_failure(registered.run("backup", tmp_path / "missing", check=False), 2,
                         saying("path does not exist"))
    # a command that succeeds without a key (no Argon2 thread) still exits 0 with its output
    res = registered.run("--help")
    assert res.returncode == 0 and "backup" in res.stdout


def test_stdout_closed_early_is_not_a_traceback(registered: Strongroom, tmp_path) -> None:
    """A reader that goes away (`| head -c 1`) costs the output, never a traceback."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    proc = subprocess.Popen(registered.cmd + ["backup", str(src), "--json"], env=registered.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=600)
    assert "Traceback" not in err
