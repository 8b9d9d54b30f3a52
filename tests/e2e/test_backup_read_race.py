"""A file swapped between the walk's stat and its read: the backup stores the file it read,
content and metadata of the same version. The walk's stat stands for the read's first
"before" stat (one system call less per file), so only the stat after the read can tell."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from treeutil import under


def _backup_with_swap(sr, src: Path, go: Path, swap) -> dict:
    proc = subprocess.Popen(sr.cmd + ["backup", str(src), "--json"],
                            env=sr.env({"STRONGROOM_TEST_HOOK": f"backup-file-stat=wait:{go}"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not Path(f"{go}.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    swap()
    go.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_a_file_replaced_after_its_stat_is_stored_as_the_new_file(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    target = src / "f.txt"
    target.write_bytes(b"old content\n")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    new = tmp_path / "new.txt"

    def swap() -> None:  # a new inode of another size and mtime, renamed over the old one
        new.write_bytes(b"the new version, longer than the old one\n" * 3)
        os.utime(new, ns=(2_000_000_000, 2_000_000_000))
        os.chmod(new, 0o600)
        os.rename(new, target)

    point = _backup_with_swap(registered, src, tmp_path / "go", swap)
    assert point["stats"]["files_new"] == 1
    registered.restore(point["id"], target=tmp_path / "r")
    restored = under(tmp_path / "r", src) / "f.txt"
    st = restored.stat()
    assert restored.read_bytes() == target.read_bytes()
    assert (st.st_size, st.st_mtime_ns, st.st_mode & 0o777) == (len(target.read_bytes()), 2_000_000_000, 0o600)

