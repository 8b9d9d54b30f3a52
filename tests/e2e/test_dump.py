"""`strongroom dump`: one file's bytes to stdout, or a folder as a tar stream that GNU tar
extracts into an exact copy (modes, owners, times, links, xattrs, ACLs, sparse files,
non-UTF-8 names); every blob verified as it is read."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Strongroom, assert_clean_failure, packs_in, saying
from treeutil import NON_UTF8_FILE, RANDOM, SPARSE, assert_trees_equal, make_tricky_tree

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")


def dump_bytes(sr: Strongroom, *args: str | Path) -> bytes:
    proc = subprocess.run(sr.cmd + ["dump", *map(os.fspath, args)], env=sr.env(), capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def dump_into_tar(sr: Strongroom, point: str, path: Path, *tar_args: str) -> subprocess.CompletedProcess:
    """`strongroom dump POINT PATH --archive tar | tar TAR_ARGS`, both checked."""
    dumper = subprocess.Popen(sr.cmd + ["dump", point, str(path), "--archive", "tar"], env=sr.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    tar = subprocess.run(["tar", *tar_args], stdin=dumper.stdout, capture_output=True, timeout=300)
    dumper.stdout.close()
    err = dumper.stderr.read().decode(errors="replace")
    assert dumper.wait(60) == 0, err
    assert tar.returncode == 0, tar.stderr.decode(errors="replace")
    return tar


@pytest.fixture(scope="module")
def machine(tmp_path_factory, registered_factory) -> Strongroom:
    """One machine for the module whose latest point holds the tricky tree (made once: slow)."""
    base = tmp_path_factory.mktemp("dump")
    sr = registered_factory(base)
    make_tricky_tree(base / "src", deep=False)  # GNU tar cannot create paths longer than PATH_MAX
    sr.backup(base / "src")
    return sr


@pytest.fixture
def tricky(machine) -> Path:
    return machine.home.parent / "src"


def test_a_folder_as_tar_extracts_into_an_exact_copy(machine, tricky, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dump_into_tar(machine, "latest", tricky, "-x", "-C", str(out), "--xattrs", "--xattrs-include=*", "--acls",
                  "-p", "--numeric-owner", "--same-owner", "--warning=no-unknown-keyword", "--warning=no-timestamp")
    assert_trees_equal(tricky, out / str(tricky).lstrip("/"))


def test_tar_t_lists_every_entry_with_raw_names(machine, tricky):
    listed = dump_into_tar(machine, "latest", tricky, "-t", "--quoting-style=literal",
                           "--warning=no-unknown-keyword").stdout.split(b"\n")
    top = os.fsencode(tricky)
    rel = top.lstrip(b"/")
    expected = {rel} | {rel + b"/" + os.path.relpath(os.path.join(d, n), top)
                        for d, dirs, files in os.walk(top) for n in dirs + files}
    # one name holds a newline, so both sides are compared as lines
    assert {line.rstrip(b"/") for line in listed if line} == {line for p in expected for line in p.split(b"\n")}
    assert rel + b"/" + NON_UTF8_FILE in listed


def test_one_file_comes_out_byte_for_byte(machine, tricky):
    for name in (RANDOM, SPARSE, NON_UTF8_FILE):
        path = os.path.join(os.fsencode(tricky), os.fsencode(name))
        assert dump_bytes(machine, "latest", os.fsdecode(path)) == Path(os.fsdecode(path)).read_bytes()


def test_a_large_multi_blob_file_is_streamed_whole(registered, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    data = os.urandom(9 * 1024 * 1024)  # several chunks
    (src / "blob.bin").write_bytes(data)
    registered.backup(src)
    assert dump_bytes(registered, "latest", src / "blob.bin") == data


def test_refusals_are_one_line(machine, tricky):
    res = machine.run("dump", "latest", tricky, check=False)
    assert_clean_failure(res, 2, saying("is a dir, not a file", "--archive tar"))
    res = machine.run("dump", "latest", tricky / "nope", check=False)
    assert_clean_failure(res, 2, saying("nope", "is not in this recovery point"))
    res = machine.run("dump", "ffffffffffffffff0", tricky / "small.txt", check=False)
    assert_clean_failure(res, 2, saying("no recovery point", "ffffffffffffffff0"))
    res = machine.run("dump", "latest", tricky / "small.txt", "--archive", "zip", check=False)
    assert res.returncode == 2 and "zip" in res.stderr


def test_a_tar_stream_is_not_written_to_a_terminal(machine, tricky):
    leader, follower = os.openpty()
    try:
        proc = subprocess.run(machine.cmd + ["dump", "latest", str(tricky), "--archive", "tar"], env=machine.env(),
                              stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == ("strongroom: error: refusing to write a tar stream to a terminal: "
                                            "pipe it (| tar -t) or redirect it (> FILE)")


def test_a_damaged_pack_stops_the_dump_with_one_line(registered, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(300_000))
    registered.backup(src)
    for pack in packs_in(registered.vault):
        if pack.stat().st_size > 300_000:  # the data pack
            raw = bytearray(pack.read_bytes())
            raw[1000] ^= 0xFF
            pack.write_bytes(bytes(raw))
    res = registered.run("dump", "latest", src / "f.bin", check=False)
    assert_clean_failure(res, 1, saying("blob"))


def test_dump_from_a_served_vault(served_machine, tmp_path):
    web = served_machine("web-01")
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.txt").write_bytes(b"served\n" * 1000)
    os.symlink("a.txt", src / "link")
    web.backup(src)
    assert dump_bytes(web, "latest", src / "a.txt") == b"served\n" * 1000
    out = tmp_path / "out"
    out.mkdir()
    dump_into_tar(web, "latest", src, "-x", "-C", str(out), "-p")
    assert_trees_equal(src, out / str(src).lstrip("/"))
