#!/usr/bin/env python3
"""The read commands (issue 14) on a tree of many small files: wall time and peak RSS of
`diff` (one file changed between two points), `find` (two points), `ls` (a full walk, for
comparison), `stats` and `dump --archive tar`, each one `strongroom` process; `points` gives
the fixed cost of starting and unwrapping the key (Argon2id), to subtract.

    .venv/bin/python bench/read_cmds.py [--folders 200] [--files-per-folder 50] [--workdir DIR]

Standard library only; the work folder is deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSPHRASE = "correct horse battery staple"


def run(exe: str, env: dict[str, str], *args: str) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in KiB, stdout) of one command (stdout through a file, so that
    the process is reaped by os.wait4, which reports its peak RSS)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen([exe, *args], env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"strongroom {' '.join(args)} failed: {err.read().decode(errors='replace')}")
        out.seek(0)
        return wall, usage.ru_maxrss, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", type=int, default=200)
    ap.add_argument("--files-per-folder", type=int, default=50)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--strongroom-bin", default=shutil.which("strongroom") or str(Path(sys.executable).with_name("strongroom")))
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="read-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STRONGROOM_HOME": str(work / "home"), "STRONGROOM_PASSPHRASE": PASSPHRASE}
    exe = a.strongroom_bin
    try:
        run(exe, env, "vault", "create", str(work / "vault"))
        run(exe, env, "vault", "credentials", str(work / "vault"), "--out", str(work / "cred"))
        run(exe, env, "register", "--credentials", str(work / "cred"), "--machine", "bench")
        src = work / "src"
        for d in range(a.folders):
            (src / f"d{d:04}").mkdir(parents=True)
            for f in range(a.files_per_folder):
                (src / f"d{d:04}" / f"f{f:03}.txt").write_text(f"{d} {f}\n" * 20)
        run(exe, env, "backup", str(src))
        with open(src / "d0000" / "f000.txt", "a") as f:
            f.write("changed\n")
        run(exe, env, "backup", str(src))
        first = json.loads(run(exe, env, "points", "--json")[2])[-1]["id"]
        rows = [("points (start-up and key)", ["points"]), ("diff, 1 file changed", ["diff", first, "latest"]),
                ("find, 2 points", ["find", "f001.txt"]), ("ls, full walk", ["ls", "latest"]),
                ("stats, machine", ["stats", "--json"]), ("stats, one point", ["stats", "latest", "--json"]),
                ("dump --archive tar", ["dump", "latest", str(src), "--archive", "tar"])]
        print(f"| command ({a.folders * a.files_per_folder} files, {a.folders} folders) | wall s | peak RSS MiB |")
        print("|---|---|---|")
        for label, args in rows:
            wall, rss, _ = run(exe, env, *args)
            print(f"| `{label}` | {wall:.2f} | {rss / 1024:.0f} |")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
