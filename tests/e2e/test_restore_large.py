"""Large files in a restore: from restore._STAGED_MIN on, written from page-aligned stages
with O_DIRECT (fsutil.write_staged), new and over existing files, hardlinked too."""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import subprocess
from pathlib import Path

from strongroom.agent.restore import _STAGE, _STAGED_MIN
from treeutil import assert_trees_equal

MTIME = 1_600_000_000_123_456_789


def test_large_files_are_exact_and_written_past_the_page_cache(registered, tmp_path):
    """Files past restore._STAGED_MIN are written from page-aligned stages with O_DIRECT
    (fsutil.write_staged): several stages and an unaligned tail, a hardlink pair, and the same
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
            cached = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES",
                                     str(restored / "tail")], capture_output=True, text=True, check=True).stdout
            assert int(cached.split()[0]) <= 1  # the unaligned tail's page
        assert_trees_equal(src, restored)
    assert os.stat(restored / "linked").st_ino == os.stat(restored / "linked-too").st_ino


def _takes_direct(path: Path) -> bool:
    """Whether the filesystem of `path` (a file) accepts O_DIRECT (tmpfs before Linux 6.6 does not)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


def _peak_rss_mib(sr, *args) -> int:
    """Peak resident memory of one `strongroom ARGS...` (its own rusage, from wait4), in MiB."""
    proc = subprocess.Popen(sr.cmd + [os.fspath(a) for a in args], env=sr.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return usage.ru_maxrss // 1024


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
