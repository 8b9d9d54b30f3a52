"""Large files in a restore: from restore._STAGED_MIN on, their chunks decoded straight into
page-aligned stages written with O_DIRECT (fsutil.Stage), new and over existing files,
hardlinked too; a tampered chunk leaves nothing of the file."""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import packs_in
from pagecache import resident_pages
from strongroom.agent.restore import _STAGE, _STAGED_MIN
from strongroom.blobs import CODEC_RAW, CODEC_ZSTD
from strongroom.packs import KIND_DATA, read_header
from treeutil import assert_trees_equal

MTIME = 1_600_000_000_123_456_789


def test_large_files_are_exact_and_written_past_the_page_cache(registered, tmp_path):
    """Files past restore._STAGED_MIN are written from page-aligned stages with O_DIRECT
    (fsutil.Stage): several stages and an unaligned tail, a hardlink pair, and the same
    files again over themselves (--conflict overwrite: a temp name renamed over each) come
    back exact; a new file's stages do not stay in the page cache."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    sizes = {"exact-stages": _STAGED_MIN + 2 * _STAGE, "tail": _STAGED_MIN + _STAGE + 4097, "linked": _STAGED_MIN + 1}
    for name, size in sizes.items():  # random bytes (stored raw) and text (compressed)
        text = b"text " * (size // 10)
        (src / name).write_bytes(rng.randbytes(size // 2) + text + rng.randbytes(size - size // 2 - len(text)))
    os.link(src / "linked", src / "linked-too")
    for i, path in enumerate(sorted(src.iterdir())):
        os.chmod(path, 0o640)
        os.utime(path, ns=(MTIME + i, MTIME + 3 * i))
    registered.backup(src)
    target = tmp_path / "out"
    restored = target / str(src).lstrip("/")
    for _ in range(2):  # new files, then over themselves
        doc = registered.restore("latest", target=target, conflict="overwrite")
        assert doc["errors"] == []
        if shutil.which("fincore") is not None and _takes_direct(restored / "tail"):  # before reading it
            assert resident_pages(restored / "tail") <= 1  # the unaligned tail's page
        assert_trees_equal(src, restored)
    assert os.stat(restored / "linked").st_ino == os.stat(restored / "linked-too").st_ino


def test_a_tampered_chunk_of_a_large_file_leaves_nothing_of_it(registered, tmp_path):
    """A chunk of a large file altered in its pack, one stored raw (decrypted straight into the
    stage) and one compressed (decrypted into a scratch buffer): each fails its tag, the file is
    named in the errors and none of it is left, neither a new file nor a temp name beside the
    older version it was to replace, which stays as it was; the rest restores."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    (src / "random.bin").write_bytes(rng.randbytes(_STAGED_MIN + _STAGE))
    # A MiB at a time: this process stays small, since a child's peak RSS (measured by a later
    # test, from wait4) counts the memory of the process it was forked from.
    with open(src / "text.log", "wb") as f:
        for block in range(_STAGED_MIN >> 20):
            f.write(b"".join(b"line %d: %d\n" % (i, rng.randrange(10**9)) for i in range(block << 16, (block + 1) << 16)))
    (src / "small.txt").write_text("small\n")
    registered.backup(src)
    tampered = set()
    for pack in packs_in(registered.vault):
        data = bytearray(pack.read_bytes())
        for ref in read_header(bytes(data)):
            codec = data[ref.offset]  # the envelope's first byte: not sealed
            if ref.kind == KIND_DATA and ref.length > 64 * 1024 and codec not in tampered:
                data[ref.offset + ref.length // 2] ^= 0x01
                tampered.add(codec)
        pack.write_bytes(bytes(data))
    assert tampered == {CODEC_RAW, CODEC_ZSTD}
    restored = tmp_path / "out" / str(src).lstrip("/")
    restored.mkdir(parents=True)
    for name in ("random.bin", "text.log"):
        (restored / name).write_bytes(b"the older version")
    res = registered.run("restore", "latest", "--target", tmp_path / "out", "--conflict", "overwrite", "--json",
                         check=False)
    assert res.returncode == 3
    errors = json.loads(res.stdout)["errors"]
    assert sorted(e["path"] for e in errors) == [str(src / "random.bin"), str(src / "text.log")]
    assert all("authentication failed" in e["error"] for e in errors), errors
    assert sorted(os.listdir(restored)) == ["random.bin", "small.txt", "text.log"]
    for name in ("random.bin", "text.log"):
        assert (restored / name).read_bytes() == b"the older version"
    assert (restored / "small.txt").read_text() == "small\n"
    shutil.rmtree(tmp_path / "out")
    res = registered.run("restore", "latest", "--target", tmp_path / "out", "--json", check=False)
    assert res.returncode == 3
    assert sorted(os.listdir(restored)) == ["small.txt"]


def _takes_direct(path: Path) -> bool:
    """Whether the filesystem of `path` (a file) accepts O_DIRECT (tmpfs before Linux 6.6 does not)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


# Started by a small Python that reports its children's peak: a child's ru_maxrss starts from
# the RSS of the process it was forked from (a /bin/true forked from a 300 MiB Python reports
# 313 MiB), and this pytest's grows with the tests run before.
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def _peak_rss_mib(sr, *args) -> int:
    """Peak resident memory of one `strongroom ARGS...` alone, in MiB."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *sr.cmd, *map(os.fspath, args)], env=sr.env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return int(proc.stderr.split()[-1]) // 1024


def test_a_large_file_restored_over_an_existing_one_is_not_held_whole(registered, tmp_path):
    """A restore's memory is bounded by its windows, not by a file's size: a 256 MiB file,
    new or over an existing one (once held whole in a small-file batch: 325 MiB), restores in
    ~85 MiB."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for _ in range(16):
            f.write(os.urandom(16 << 20))
    registered.backup(src)
    for _ in range(2):  # new, then over itself
        peak = _peak_rss_mib(registered, "restore", "latest", "--target", tmp_path / "out", "--conflict", "overwrite")
        assert peak < 192, f"restore peaked at {peak} MiB for a 256 MiB file"
    assert filecmp.cmp(src / "big", tmp_path / "out" / str(src / "big").lstrip("/"), shallow=False)
